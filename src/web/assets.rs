//! `GET /static/...`: the page assets, compiled into the binary so that it
//! runs from any working directory with nothing beside it.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::filters::{param, with};

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `static/`. The chat page's modules import each other
/// by these names; a test checks that every import is here.
const FILES: &[(&str, &[u8], &str)] = &[
    ("style.css", include_bytes!("../../static/style.css"), "text/css; charset=utf-8"),
    ("chat.js", include_bytes!("../../static/chat.js"), JS),
    ("connection.js", include_bytes!("../../static/connection.js"), JS),
    ("frames.js", include_bytes!("../../static/frames.js"), JS),
    ("session.js", include_bytes!("../../static/session.js"), JS),
    ("timeline.js", include_bytes!("../../static/timeline.js"), JS),
    ("render.js", include_bytes!("../../static/render.js"), JS),
    ("walk.js", include_bytes!("../../static/walk.js"), JS),
    ("history.js", include_bytes!("../../static/history.js"), JS),
    ("composer.js", include_bytes!("../../static/composer.js"), JS),
    ("outbox.js", include_bytes!("../../static/outbox.js"), JS),
    ("presence.js", include_bytes!("../../static/presence.js"), JS),
    ("reading.js", include_bytes!("../../static/reading.js"), JS),
    ("attention.js", include_bytes!("../../static/attention.js"), JS),
    ("status.js", include_bytes!("../../static/status.js"), JS),
    ("ui.js", include_bytes!("../../static/ui.js"), JS),
    ("text.js", include_bytes!("../../static/text.js"), JS),
    ("format.js", include_bytes!("../../static/format.js"), JS),
    ("refresh.js", include_bytes!("../../static/refresh.js"), JS),
    ("labels.js", include_bytes!("../../static/labels.js"), JS),
    ("api.js", include_bytes!("../../static/api.js"), JS),
    ("sidebar.js", include_bytes!("../../static/sidebar.js"), JS),
    ("sideform.js", include_bytes!("../../static/sideform.js"), JS),
    ("newroom.js", include_bytes!("../../static/newroom.js"), JS),
    ("members.js", include_bytes!("../../static/members.js"), JS),
    ("welcome.js", include_bytes!("../../static/welcome.js"), JS),
    ("favicon.svg", include_bytes!("../../static/favicon.svg"), "image/svg+xml"),
];

struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

/// The assets by file name, with an ETag each: browsers revalidate
/// (`no-cache`) and get a 304 until a new build changes the file.
pub struct Assets {
    files: HashMap<&'static str, Asset>,
}

impl Default for Assets {
    fn default() -> Self {
        let files = FILES
            .iter()
            .map(|(name, body, content_type)| {
                let mut hasher = DefaultHasher::new();
                body.hash(&mut hasher);
                let etag =
                    HeaderValue::from_str(&format!("\"{:016x}\"", hasher.finish())).expect("hex is a valid header");
                (*name, Asset { body, content_type, etag })
            })
            .collect();
        Self { files }
    }
}

/// GET /static/{file}
pub fn route(assets: Arc<Assets>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    param("file").and(warp::header::optional::<String>("if-none-match")).and(with(assets)).and_then(
        |name: String, if_none_match: Option<String>, assets: Arc<Assets>| async move {
            let asset = assets.files.get(name.as_str()).ok_or_else(warp::reject::not_found)?;
            let mut res = if if_none_match.as_deref() == asset.etag.to_str().ok() {
                warp::reply::with_status(warp::reply(), StatusCode::NOT_MODIFIED).into_response()
            } else {
                let mut res = Response::new(bytes::Bytes::from_static(asset.body).into());
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
                res
            };
            res.headers_mut().insert(header::ETAG, asset.etag.clone());
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            Ok::<_, Rejection>(res)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::filters::PathParams;

    fn request(file: &str) -> warp::test::RequestBuilder {
        warp::test::request().extension(PathParams::new(vec![("file", file.to_owned())]))
    }

    #[tokio::test]
    async fn assets_are_served_with_their_type_and_revalidated_by_etag() {
        let route = route(Arc::new(Assets::default()));
        let res = request("chat.js").reply(&route).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");
        assert_eq!(res.headers()["cache-control"], "no-cache");
        assert_eq!(res.body().as_ref(), include_bytes!("../../static/chat.js"));
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();

        let again = request("chat.js").header("if-none-match", &etag).reply(&route).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(again.body().is_empty());
        let stale = request("chat.js").header("if-none-match", "\"other\"").reply(&route).await;
        assert_eq!(stale.status(), StatusCode::OK);
        assert_ne!(request("style.css").reply(&route).await.headers()["etag"], etag.as_str(), "one tag per file");
    }

    #[test]
    fn every_file_in_static_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("static/")
            .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
            .collect();
        let mut served: Vec<String> = FILES.iter().map(|(name, ..)| (*name).to_owned()).collect();
        on_disk.sort();
        served.sort();
        assert_eq!(served, on_disk, "FILES lists exactly the files of static/");
    }

    /// The relative modules a module imports (`from "./x.js"` and
    /// `import("./x.js")`), by file name.
    fn imports(source: &str) -> Vec<&str> {
        ["from \"./", "import(\"./"]
            .iter()
            .flat_map(|lead| source.match_indices(lead).map(move |(at, _)| &source[at + lead.len()..]))
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
            .collect()
    }

    #[test]
    fn the_modules_import_only_served_modules_and_never_in_a_circle() {
        let modules: HashMap<&str, Vec<&str>> = FILES
            .iter()
            .filter(|(name, ..)| name.ends_with(".js"))
            .map(|(name, body, _)| (*name, imports(std::str::from_utf8(body).expect("UTF-8"))))
            .collect();
        assert!(modules["chat.js"].contains(&"session.js"), "the import scan sees imports: {:?}", modules["chat.js"]);
        for (module, imported) in &modules {
            for name in imported {
                assert!(modules.contains_key(name), "{module} imports {name}, which is not served");
            }
        }
        // Depth-first from every module; meeting a module still on the path is a circle.
        fn visit<'a>(
            name: &'a str,
            modules: &HashMap<&'a str, Vec<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut Vec<&'a str>,
        ) {
            if done.contains(&name) {
                return;
            }
            if let Some(at) = path.iter().position(|m| *m == name) {
                panic!("import circle: {} -> {name}", path[at..].join(" -> "));
            }
            path.push(name);
            for next in &modules[name] {
                visit(next, modules, path, done);
            }
            path.pop();
            done.push(name);
        }
        let mut done = Vec::new();
        for name in modules.keys() {
            visit(name, &modules, &mut Vec::new(), &mut done);
        }
    }

    #[tokio::test]
    async fn anything_else_is_not_found() {
        let route = route(Arc::new(Assets::default()));
        for name in ["nope.js", "../Cargo.toml", ""] {
            assert!(request(name).filter(&route).await.is_err(), "{name}");
        }
    }
}
