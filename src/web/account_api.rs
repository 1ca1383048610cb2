//! `/api/sessions` (docs/protocol.md §7): a user's sessions, as JSON, and
//! ending them.
//!
//! Every route acts for the caller ([`caller_session`]: a Bearer token, or
//! the session cookie from this site's pages), on the caller's own
//! sessions only: another user's session id is answered as one that does
//! not exist (404 `not_found`). Every 4xx/5xx is `{"error","message"}`.

use serde_json::json;
use warp::{http::StatusCode, reply::Response, Filter, Rejection, Reply};

use super::{
    api,
    caller::{caller_session, Caller, Callers},
    filters::{param, with},
};
use crate::{auth::Sessions, error::Error};

/// What the account routes use.
#[derive(Clone)]
pub struct AccountApi {
    pub callers: Callers,
    pub sessions: Sessions,
}

fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}

/// GET /api/sessions
pub fn list(api: AccountApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller_session(api.callers.clone()).and(with(api)).and_then(|caller: Caller, api: AccountApi| async move {
        let sessions = api.sessions.list(caller.user.id, caller.session_id).await.map_err(Error::from)?;
        Ok::<_, Rejection>(warp::reply::json(&json!({ "sessions": sessions })).into_response())
    })
}

/// DELETE /api/sessions/{id}
pub fn end(api: AccountApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller_session(api.callers.clone()).and(param("id")).and(with(api)).and_then(
        |caller: Caller, id: String, api: AccountApi| async move {
            let ended = api.sessions.end_listed(caller.user.id, &id, caller.session_id).await.map_err(Error::from)?;
            Ok::<_, Rejection>(match ended {
                Some(_) => no_content(),
                None => api::error(StatusCode::NOT_FOUND, "not_found", "You have no session with that id."),
            })
        },
    )
}

/// POST /api/sessions/end-others
pub fn end_others(api: AccountApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller_session(api.callers.clone()).and(with(api)).and_then(|caller: Caller, api: AccountApi| async move {
        api.sessions.end_others(caller.user.id, caller.session_id).await.map_err(Error::from)?;
        Ok::<_, Rejection>(no_content())
    })
}
