//! The small filters handlers share: the typed session, the client's
//! address, a captured path parameter, and injecting a handle.

use std::convert::Infallible;

use tower_sessions::Session;
use warp::{Filter, Rejection};

use crate::{
    auth::{session::AuthSession, Sessions},
    net::ClientAddr,
};

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
