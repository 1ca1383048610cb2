//! `/api/sessions`, `/api/password` and `/api/security-events`
//! (docs/protocol.md §7): a user's sessions and ending them, changing the
//! password, and the security log, as JSON.
//!
//! Every route acts for the caller ([`caller_session`]: a Bearer token, or
//! the session cookie from this site's pages), on the caller's own
//! sessions only: another user's session id is answered as one that does
//! not exist (404 `not_found`). Every 4xx/5xx is `{"error","message"}`.

use serde::Deserialize;
use serde_json::json;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    api::{self, json_body, unreadable},
    caller::{caller_session, Caller, Callers},
    filters::{client_addr, param, user_agent, with},
};
use crate::{
    auth::{
        devices::Device,
        journal::Journal,
        password::Password,
        password_change::{Asker, Changed, PasswordChange},
        Sessions,
    },
    error::Error,
    model::EndedBy,
    net::ClientAddr,
};

/// What the account routes use.
#[derive(Clone)]
pub struct AccountApi {
    pub callers: Callers,
    pub sessions: Sessions,
    pub change: PasswordChange,
    pub journal: Journal,
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
        api.sessions.end_others(caller.user.id, caller.session_id, EndedBy::You).await.map_err(Error::from)?;
        Ok::<_, Rejection>(no_content())
    })
}

#[derive(Deserialize)]
struct NewPassword {
    current: String,
    new: String,
}

/// POST /api/password
pub fn password(api: AccountApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller_session(api.callers.clone())
        .and(json_body::<NewPassword>())
        .and(client_addr())
        .and(user_agent())
        .and(with(api))
        .and_then(
            |caller: Caller,
             body: Result<NewPassword, serde_json::Error>,
             addr: ClientAddr,
             user_agent: Option<String>,
             api: AccountApi| async move {
                let body = match body {
                    Ok(body) => body,
                    Err(err) => return Ok::<_, Rejection>(unreadable(err)),
                };
                let address = addr.0.to_canonical().to_string();
                let device = match caller.cookie {
                    Some(_) => Device::browser(user_agent.as_deref(), address),
                    None => Device::token_client(None, user_agent.as_deref(), address),
                };
                let asker = Asker {
                    user: &caller.user,
                    session_id: caller.session_id,
                    cookie: caller.cookie.as_ref(),
                    addr: addr.0,
                    device,
                };
                let changed = api
                    .change
                    .change(asker, Password::new(body.current), Password::new(body.new))
                    .await
                    .map_err(Error::from)?;
                Ok(changed_json(changed))
            },
        )
}

/// The answer to a password change, as JSON.
fn changed_json(changed: Changed) -> Response {
    let retry = |mut res: Response, after: std::time::Duration| {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        res
    };
    match changed {
        Changed::Done => no_content(),
        Changed::WrongPassword => {
            api::error(StatusCode::UNAUTHORIZED, "invalid_credentials", "The current password is wrong.")
        }
        Changed::Invalid(why) => api::error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_password", why),
        Changed::Weak(weak) => api::error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", &weak.advice),
        Changed::Throttled(after) => retry(
            api::error(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", "Too many attempts; try again later."),
            after,
        ),
        Changed::Busy(after) => retry(
            api::error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Too many password checks at once; try again."),
            after,
        ),
    }
}

/// GET /api/security-events
pub fn security_events(api: AccountApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller_session(api.callers.clone()).and(with(api)).and_then(|caller: Caller, api: AccountApi| async move {
        let events = api.journal.recent(caller.user.id).await.map_err(Error::from)?;
        Ok::<_, Rejection>(warp::reply::json(&json!({ "events": events })).into_response())
    })
}
