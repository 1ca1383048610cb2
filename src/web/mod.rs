//! The HTTP surface: the route table, the filters handlers share, security
//! headers, and the one place rejections become responses.

pub mod account;
pub mod assets;
pub mod pages;
pub mod router;

use std::sync::Arc;

use tower_sessions::Session;
use warp::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use self::router::{web, Handler, Router};
use crate::{
    auth::{session::AuthSession, Sessions},
    backend::{BackendKind, Health},
    error::Error,
    net::{ClientAddr, OriginPolicy},
    state::AppState,
};

/// The route table: every method and path palaver answers.
pub fn routes(state: &AppState) -> Router {
    let sessions = &state.sessions;
    Router::new(state.origins.clone(), security_headers(&state.origins, state.tls))
        .get("/", web(pages::index(sessions.clone())))
        .get("/login", web(account::login_form(sessions.clone())))
        .post("/login", web(account::login(state.accounts.clone())))
        .get("/register", web(account::register_form()))
        .post("/register", web(account::register(state.accounts.clone())))
        .post("/logout", web(account::logout(sessions.clone())))
        .post("/logout/everywhere", web(account::logout_everywhere(sessions.clone())))
        .post("/session/refresh", web(account::refresh(sessions.clone())))
        .get("/chat", web(pages::chat_redirect()))
        .get("/chat/{room}", web(pages::chat_room(state.rooms.clone())))
        .get("/ws", Handler::Upgrade(state.upgrader.clone()))
        .get("/healthz", web(health(state.health.clone(), state.backend_kind)))
        .get("/static/{file}", web(assets::route(state.assets.clone())))
}

/// The request's typed session (the session layer put the raw one in the
/// request's extensions).
pub fn session(sessions: Sessions) -> impl Filter<Extract = (AuthSession,), Error = Rejection> + Clone {
    warp::ext::get::<Session>().map(move |session| sessions.cookie(session))
}

/// The client's address, put in the extensions by the accept loop.
pub fn client_addr() -> impl Filter<Extract = (ClientAddr,), Error = Rejection> + Clone {
    warp::ext::get::<ClientAddr>()
}

/// Injects a handle.
pub fn with<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Filter<Extract = (T,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// The `/healthz` body, fields in a fixed order.
#[derive(serde::Serialize)]
struct HealthBody {
    status: &'static str,
    backend: &'static str,
}

/// GET /healthz
fn health(health: Arc<dyn Health>, kind: BackendKind) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    with(health).and_then(move |health: Arc<dyn Health>| async move {
        let backend = kind.as_str();
        Ok::<_, Rejection>(match health.ping().await {
            Ok(()) => warp::reply::json(&HealthBody { status: "ok", backend }).into_response(),
            Err(err) => {
                tracing::warn!(%err, "health check: store unavailable");
                let body = warp::reply::json(&HealthBody { status: "unavailable", backend });
                warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
        })
    })
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

/// Turns every rejection into a page with the right status.
pub fn rejection_page(rejection: Rejection) -> Response {
    let (status, message) = if let Some(err) = rejection.find::<Error>() {
        err.log();
        (err.status(), err.public_message())
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "There is nothing here.")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "That request is too large.")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "Send a Content-Length with the form.")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "That query string is malformed.")
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "That request could not be understood.")
    };
    pages::error_page(status, message)
}
