//! The route table and the policy every route gets at the boundary.
//!
//! The table is a list of (method, path pattern, handler) rows; the router
//! matches a request against it and:
//! - answers 404 when no path matches, and 405 with `Allow` when the path
//!   matches but not the method (HEAD is served by every GET route);
//! - refuses a cross-origin request with 403 on every unsafe method, before
//!   any handler runs: a new POST, PUT or DELETE route is protected without
//!   anyone remembering to (the upgrade, a GET, checks the origin itself,
//!   and so do the JSON routes that take the session cookie: see
//!   [`super::caller`]);
//! - hands the path's parameters to the handler ([`param`]);
//! - puts the security headers on every answer.
//!
//! Handlers are warp filters (or the upgrade); they carry no method or path
//! filter of their own, so the table is the one place paths are spelled.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, task::Context, task::Poll};

use hyper::body::Incoming;
use warp::{
    filters::BoxedFilter,
    http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode},
    reply::Response,
    Filter, Rejection,
};

use super::{
    api,
    filters::PathParams,
    pages::{error_page, rejection_page},
};
use crate::{net::OriginPolicy, realtime::upgrade};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(&'static str),
    Param(&'static str),
}

fn parse_pattern(pattern: &'static str) -> Vec<Segment> {
    assert!(pattern.starts_with('/'), "route patterns start with /: {pattern}");
    pattern[1..]
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => Segment::Param(name),
            None => Segment::Literal(s),
        })
        .collect()
}

/// The parameters if `path` matches `pattern`.
fn matches(pattern: &[Segment], path: &str) -> Option<PathParams> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    // "/chat/" is not "/chat": only a bare "/" may end in a slash.
    if path.len() > 1 && path.ends_with('/') {
        return None;
    }
    if parts.len() != pattern.len() {
        return None;
    }
    let mut params = Vec::new();
    for (segment, part) in pattern.iter().zip(parts) {
        match segment {
            Segment::Literal(literal) if *literal == part => {}
            Segment::Literal(_) => return None,
            Segment::Param(name) => params.push((*name, part.to_owned())),
        }
    }
    Some(PathParams::new(params))
}

/// What a row of the table runs.
#[derive(Clone)]
pub enum Handler {
    Web(BoxedFilter<(Response,)>),
    Upgrade(Arc<upgrade::Upgrader>),
}

/// A handler from a warp filter; its rejections become error pages here.
pub fn web<F>(filter: F) -> Handler
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    Handler::Web(filter.recover(handle_rejection).unify().boxed())
}

/// A handler of the JSON API; its rejections become JSON errors here.
pub fn json_api<F>(filter: F) -> Handler
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    Handler::Web(
        filter.recover(|rejection| async move { Ok::<_, Infallible>(api::rejection_json(rejection)) }).unify().boxed(),
    )
}

/// The answer the table itself gives (404, 405, 403): JSON under `/api/`,
/// a page elsewhere.
fn refusal(path: &str, status: StatusCode, code: &str, message: &str) -> Response {
    if path.starts_with("/api/") {
        api::error(status, code, message)
    } else {
        error_page(status, message)
    }
}

/// One row of the table.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    segments: Vec<Segment>,
    handler: Handler,
}

/// Methods that change something: cross-origin protection applies.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// The table, and the policy applied at its boundary.
#[derive(Clone)]
pub struct Router {
    routes: Arc<Vec<Route>>,
    origins: Arc<OriginPolicy>,
    headers: Arc<HeaderMap>,
}

async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_page(rejection))
}

impl Router {
    /// An empty table; `tls` adds HSTS to the security headers.
    pub fn new(origins: Arc<OriginPolicy>, tls: bool) -> Self {
        let headers = security_headers(&origins, tls);
        Self { routes: Arc::new(Vec::new()), origins, headers: Arc::new(headers) }
    }

    fn add(mut self, method: Method, path: &'static str, handler: Handler) -> Self {
        let segments = parse_pattern(path);
        let routes = Arc::get_mut(&mut self.routes).expect("the table is built before it is shared");
        assert!(
            !routes.iter().any(|r| r.method == method && r.segments == segments),
            "{method} {path} is in the table twice"
        );
        routes.push(Route { method, path, segments, handler });
        self
    }

    pub fn get(self, path: &'static str, handler: Handler) -> Self {
        self.add(Method::GET, path, handler)
    }

    pub fn post(self, path: &'static str, handler: Handler) -> Self {
        self.add(Method::POST, path, handler)
    }

    pub fn put(self, path: &'static str, handler: Handler) -> Self {
        self.add(Method::PUT, path, handler)
    }

    pub fn delete(self, path: &'static str, handler: Handler) -> Self {
        self.add(Method::DELETE, path, handler)
    }

    /// Every (method, path pattern) served, in table order.
    pub fn table(&self) -> Vec<(Method, &'static str)> {
        self.routes.iter().map(|r| (r.method.clone(), r.path)).collect()
    }

    /// Answers a request.
    pub async fn serve(&self, req: Request<Incoming>) -> Response {
        let mut res = self.dispatch(req).await;
        for (name, value) in self.headers.iter() {
            res.headers_mut().entry(name).or_insert_with(|| value.clone());
        }
        res
    }

    async fn dispatch(&self, mut req: Request<Incoming>) -> Response {
        let path = req.uri().path().to_owned();
        let wanted = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
        let mut allowed: Vec<&Method> = Vec::new();
        let mut found = None;
        for route in self.routes.iter() {
            if let Some(params) = matches(&route.segments, &path) {
                if route.method == wanted {
                    found = Some((route, params));
                    break;
                }
                allowed.push(&route.method);
            }
        }
        let Some((route, params)) = found else {
            if allowed.is_empty() {
                return refusal(&path, StatusCode::NOT_FOUND, "not_found", "There is nothing here.");
            }
            let mut res = refusal(
                &path,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "That method is not allowed here.",
            );
            let mut methods: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            if methods.contains(&"GET") {
                methods.push("HEAD");
            }
            let allow = HeaderValue::from_str(&methods.join(", ")).expect("method names are valid header text");
            res.headers_mut().insert(header::ALLOW, allow);
            return res;
        };
        if is_unsafe(req.method()) && self.origins.check(req.headers()).is_err() {
            tracing::warn!(method = %req.method(), path, origin = ?req.headers().get(header::ORIGIN), "cross-origin request refused");
            return refusal(
                &path,
                StatusCode::FORBIDDEN,
                "cross_origin",
                "This request came from another site and was refused.",
            );
        }
        req.extensions_mut().insert(params);
        match &route.handler {
            Handler::Web(filter) => {
                let mut service = warp::service(filter.clone());
                match tower::Service::call(&mut service, req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            }
            Handler::Upgrade(upgrader) => upgrade::handle(upgrader.clone(), req).await,
        }
    }
}

impl tower::Service<Request<Incoming>> for Router {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.serve(req).await) })
    }
}

/// Headers on every response: a strict CSP (no inline script or style), no
/// framing, no sniffing, and HSTS when serving TLS.
fn security_headers(origins: &OriginPolicy, tls: bool) -> HeaderMap {
    // CSP source expressions cannot name IPv6 literals; 'self' covers those.
    let sockets: Vec<String> = origins
        .origins()
        .filter(|o| !o.contains("://["))
        .filter_map(|o| {
            o.strip_prefix("https://")
                .map(|h| format!("wss://{h}"))
                .or_else(|| o.strip_prefix("http://").map(|h| format!("ws://{h}")))
        })
        .collect();
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' {}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        sockets.join(" ")
    );
    let mut headers = HeaderMap::new();
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&csp).expect("origins are valid header text"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_paths_and_capture_parameters() {
        let chat = parse_pattern("/chat/{room}");
        assert_eq!(matches(&chat, "/chat/lobby").unwrap().get("room"), Some("lobby"));
        for other in ["/chat", "/chat/", "/chat/a/b", "/chats/lobby", "/chat/lobby/"] {
            assert!(matches(&chat, other).is_none(), "{other}");
        }
        let root = parse_pattern("/");
        assert!(matches(&root, "/").is_some());
        assert!(matches(&root, "/x").is_none());
        let nested = parse_pattern("/logout/everywhere");
        assert!(matches(&nested, "/logout/everywhere").is_some());
        assert!(matches(&nested, "/logout").is_none());
    }

    #[test]
    fn unsafe_methods_are_the_ones_that_change_things() {
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(is_unsafe(&m), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!is_unsafe(&m), "{m}");
        }
    }
}
