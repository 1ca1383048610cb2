//! The small filters handlers share: the typed session, the client's
//! address and `User-Agent`, a captured path parameter, and injecting a
//! handle.

use std::convert::Infallible;

use bytes::Bytes;
use tower_sessions::Session;
use warp::{
    http::{header, HeaderValue},
    Filter, Rejection,
};

use crate::{
    auth::{session::AuthSession, Sessions},
    error::Error,
    net::ClientAddr,
};

/// Whether a `Content-Type` is `mime` (any case, parameters allowed).
fn is_type(content_type: Option<&HeaderValue>, mime: &str) -> bool {
    let Some(Ok(value)) = content_type.map(HeaderValue::to_str) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(mime)
}

/// A body of type `mime` (else 415 with `why`), with a `Content-Length`
/// (else 411) of at most `max` bytes (else 413), all checked before the
/// body is read.
pub fn body_of_type(
    mime: &'static str,
    why: &'static str,
    max: u64,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::value(header::CONTENT_TYPE.as_str())
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
        .and_then(move |content_type: Option<HeaderValue>| async move {
            if is_type(content_type.as_ref(), mime) {
                Ok(())
            } else {
                Err(Rejection::from(Error::UnsupportedMediaType(why)))
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(max))
        .and(warp::body::bytes())
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

/// The request's `User-Agent`, if any (what a session is described by).
pub fn user_agent() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("user-agent")
}

/// Injects a handle.
pub fn with<T: Clone + Send + Sync + 'static>(value: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// The parameters a path pattern captured, by name.
#[derive(Debug, Clone, Default)]
pub struct PathParams(Vec<(&'static str, String)>);

impl PathParams {
    /// The parameters a matched route captured.
    pub fn new(params: Vec<(&'static str, String)>) -> Self {
        Self(params)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// A path parameter the table captured, e.g. `param("room")` for
/// `/chat/{room}`.
pub fn param(name: &'static str) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::ext::get::<PathParams>().and_then(move |params: PathParams| async move {
        params.get(name).map(str::to_owned).ok_or_else(warp::reject::not_found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_matches_ignoring_case_and_parameters() {
        const FORM: &str = "application/x-www-form-urlencoded";
        let is = |v: &str| is_type(Some(&HeaderValue::from_str(v).unwrap()), FORM);
        for form in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-URLEncoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            " application/x-www-form-urlencoded ;charset=utf-8",
        ] {
            assert!(is(form), "{form}");
        }
        for other in ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencodedx", ""] {
            assert!(!is(other), "{other}");
        }
        assert!(!is_type(None, FORM));
        assert!(!is_type(Some(&HeaderValue::from_bytes(b"application/x-www-form-urlencoded\xff").unwrap()), FORM));
        assert!(is_type(Some(&HeaderValue::from_static("application/json; charset=utf-8")), "application/json"));
    }
}
