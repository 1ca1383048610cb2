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

const FILES: &[(&str, &[u8], &str)] = &[
    ("style.css", include_bytes!("../../static/style.css"), "text/css; charset=utf-8"),
    ("chat.js", include_bytes!("../../static/chat.js"), "text/javascript; charset=utf-8"),
    ("format.js", include_bytes!("../../static/format.js"), "text/javascript; charset=utf-8"),
    ("text.js", include_bytes!("../../static/text.js"), "text/javascript; charset=utf-8"),
    ("walk.js", include_bytes!("../../static/walk.js"), "text/javascript; charset=utf-8"),
    ("connection.js", include_bytes!("../../static/connection.js"), "text/javascript; charset=utf-8"),
    ("outbox.js", include_bytes!("../../static/outbox.js"), "text/javascript; charset=utf-8"),
    ("render.js", include_bytes!("../../static/render.js"), "text/javascript; charset=utf-8"),
    ("history.js", include_bytes!("../../static/history.js"), "text/javascript; charset=utf-8"),
    ("attention.js", include_bytes!("../../static/attention.js"), "text/javascript; charset=utf-8"),
    ("ui.js", include_bytes!("../../static/ui.js"), "text/javascript; charset=utf-8"),
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

    #[tokio::test]
    async fn anything_else_is_not_found() {
        let route = route(Arc::new(Assets::default()));
        for name in ["nope.js", "../Cargo.toml", ""] {
            assert!(request(name).filter(&route).await.is_err(), "{name}");
        }
    }
}
