//! The HTTP surface: the route table, shared filters, security headers and
//! the one place rejections become responses.

pub mod account;
pub mod assets;
pub mod client;
pub mod guard;
pub mod pages;

use std::convert::Infallible;

use tower_sessions::Session;
use warp::{
    http::{header, HeaderMap, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use self::client::ClientAddr;
use crate::{auth::session::AuthSession, error::Error, state::SharedState};

/// Injects the shared state.
pub fn with_state(state: SharedState) -> impl Filter<Extract = (SharedState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The request's typed session (the session layer put the raw one in the
/// request's extensions).
pub fn auth_session(state: SharedState) -> impl Filter<Extract = (AuthSession,), Error = Rejection> + Clone {
    warp::ext::get::<Session>().map(move |session| AuthSession::new(session, state.sessions))
}

/// The client's address, put in the extensions by the accept loop.
pub fn client_addr() -> impl Filter<Extract = (ClientAddr,), Error = Rejection> + Clone {
    warp::ext::get::<ClientAddr>()
}

/// Every route but `/ws` (served before warp, see `realtime::upgrade`).
pub fn routes(state: SharedState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let headers = security_headers(&state);
    pages::index(state.clone())
        .or(account::login_form(state.clone()))
        .unify()
        .or(account::login(state.clone()))
        .unify()
        .or(account::register_form())
        .unify()
        .or(account::register(state.clone()))
        .unify()
        .or(account::logout(state.clone()))
        .unify()
        .or(account::logout_everywhere(state.clone()))
        .unify()
        .or(account::refresh(state.clone()))
        .unify()
        .or(pages::chat_redirect())
        .unify()
        .or(pages::chat_room(state.clone()))
        .unify()
        .or(health(state.clone()))
        .unify()
        .or(assets::route(state))
        .unify()
        .recover(handle_rejection)
        .unify()
        .map(move |mut res: Response| {
            for (name, value) in &headers {
                res.headers_mut().entry(name).or_insert_with(|| value.clone());
            }
            res
        })
}

/// The `/healthz` body, fields in the order SPEC §2 shows them.
#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    backend: &'static str,
}

/// GET /healthz
fn health(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).and(with_state(state)).then(|state: SharedState| async move {
        let backend = state.backend.kind.as_str();
        match state.backend.health.ping().await {
            Ok(()) => warp::reply::json(&Health { status: "ok", backend }).into_response(),
            Err(err) => {
                tracing::warn!(%err, "health check: store unavailable");
                let body = warp::reply::json(&Health { status: "unavailable", backend });
                warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response()
            }
        }
    })
}

/// Headers on every response: a strict CSP (no inline script or style), no
/// framing, no sniffing, and HSTS when serving TLS.
fn security_headers(state: &SharedState) -> HeaderMap {
    // CSP source expressions cannot name IPv6 literals; 'self' covers those.
    let sockets: Vec<String> = state
        .origins
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
    if state.tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    headers
}

/// Turns every rejection into a page with the right status.
async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if let Some(err) = rejection.find::<Error>() {
        err.log();
        (err.status(), err.public_message())
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "There is nothing here.")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "That method is not allowed here.")
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
    Ok(pages::error_page(status, message))
}
