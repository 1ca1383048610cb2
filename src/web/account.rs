//! Accounts and sessions over HTTP: register, log in, log out (here or
//! everywhere), refresh.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use serde_json::json;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    auth_session,
    client::ClientAddr,
    client_addr,
    guard::same_origin,
    pages::{page, see_other, LoginPage, RegisterPage},
    with_state,
};
use crate::{
    auth::{
        password::{self, Password},
        session::{AuthSession, Current},
        valid_username, validate_new_account,
    },
    backend::{StoreError, User, UserId},
    error::Error,
    realtime::lifecycle::announce_logout,
    state::SharedState,
};

/// Largest form body accepted.
const MAX_FORM_BYTES: u64 = 16 * 1024;

/// The `username` and `password` fields of a form; absent fields are `None`.
#[derive(Debug)]
pub struct Credentials {
    username: Option<String>,
    password: Option<Password>,
}

/// Reads an urlencoded form body leniently: a body that is not a form is a
/// form without the fields, answered with a clear message by the handler.
fn credentials() -> impl Filter<Extract = (Credentials,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_FORM_BYTES).and(warp::body::bytes()).map(|body: Bytes| {
        let mut fields: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        Credentials { username: fields.remove("username"), password: fields.remove("password").map(Password::new) }
    })
}

/// GET /login
pub fn login_form(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("login").and(warp::get()).and(auth_session(state)).and_then(|session: AuthSession| async move {
        // Only a request with a cookie costs a store lookup.
        if session.has_cookie() && session.current().await.map_err(Error::from)?.is_some() {
            return Ok(see_other("/chat"));
        }
        page(StatusCode::OK, &LoginPage { error: None, username: String::new() }).map_err(Rejection::from)
    })
}

/// POST /login
pub fn login(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("login")
        .and(warp::post())
        .and(same_origin(state.clone()))
        .and(credentials())
        .and(auth_session(state.clone()))
        .and(client_addr())
        .and(with_state(state))
        .and_then(|form: Credentials, session: AuthSession, addr: ClientAddr, state: SharedState| async move {
            handle_login(form, session, addr, state).await.map_err(Rejection::from)
        })
}

async fn handle_login(
    form: Credentials,
    session: AuthSession,
    addr: ClientAddr,
    state: SharedState,
) -> Result<Response, Error> {
    let (Some(username), Some(password)) = (form.username, form.password) else {
        let error = Some("Enter your username and password.".to_owned());
        return page(StatusCode::UNPROCESSABLE_ENTITY, &LoginPage { error, username: String::new() });
    };
    let username = username.trim().to_owned();
    let ip = addr.0;
    if let Some(retry_after) = state.throttle.check(&username, ip).await? {
        tracing::warn!(%ip, "login throttled");
        return too_many_attempts(&username, retry_after);
    }
    // A name that cannot exist is not looked up, but it is verified against
    // the dummy hash all the same: every failure takes the same time.
    let stored = if valid_username(&username) { state.backend.users.find(&username).await? } else { None };
    let verified = password::verify(password, stored.as_ref().map(|s| s.password_hash.clone())).await;
    match stored {
        Some(stored) if verified => {
            state.throttle.succeeded(&username, ip).await?;
            sign_in(&session, &state, stored.user).await?;
            Ok(see_other("/chat"))
        }
        _ => {
            state.throttle.failed(&username, ip).await?;
            let error = Some("Wrong username or password.".to_owned());
            page(StatusCode::UNAUTHORIZED, &LoginPage { error, username })
        }
    }
}

fn too_many_attempts(username: &str, retry_after: Duration) -> Result<Response, Error> {
    let minutes = retry_after.as_secs().div_ceil(60);
    let error = Some(format!(
        "Too many failed attempts. Try again in {minutes} minute{}.",
        if minutes == 1 { "" } else { "s" }
    ));
    let mut res = page(StatusCode::TOO_MANY_REQUESTS, &LoginPage { error, username: username.to_owned() })?;
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    Ok(res)
}

/// Starts a session for `user` under a new id and indexes it under the user.
/// A session the browser was signed in with before ends, sockets included.
async fn sign_in(session: &AuthSession, state: &SharedState, user: User) -> Result<Current, Error> {
    let previous = session.current().await?;
    let current = session.sign_in(user).await?;
    let end_by = session.policy().end_by(crate::chat::now_ms() / 1000);
    if let Err(err) = state.backend.session_index.add(current.user.id, current.session_id, end_by).await {
        // A session "log out everywhere" cannot find must not exist.
        let _ = session.sign_out().await;
        return Err(err.into());
    }
    if let Some(previous) = previous {
        // `sign_in` deleted it from the store already; its sockets go now.
        let _ = state.backend.session_index.remove(previous.user.id, previous.session_id).await;
        announce_logout(state, previous.user.id, &[previous.session_id], false).await;
    }
    Ok(current)
}

/// GET /register
pub fn register_form() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("register").and(warp::get()).and_then(|| async {
        page(StatusCode::OK, &RegisterPage { error: None, username: String::new() }).map_err(Rejection::from)
    })
}

/// POST /register
pub fn register(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("register")
        .and(warp::post())
        .and(same_origin(state.clone()))
        .and(credentials())
        .and(auth_session(state.clone()))
        .and(with_state(state))
        .and_then(|form: Credentials, session: AuthSession, state: SharedState| async move {
            handle_register(form, session, state).await.map_err(Rejection::from)
        })
}

async fn handle_register(form: Credentials, session: AuthSession, state: SharedState) -> Result<Response, Error> {
    let refuse =
        |status, error: &str, username: String| page(status, &RegisterPage { error: Some(error.to_owned()), username });
    let (Some(username), Some(password)) = (form.username, form.password) else {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "Choose a username and a password.", String::new());
    };
    let username = username.trim().to_owned();
    if let Err(why) = validate_new_account(&username, password.expose()) {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, why, username);
    }
    const TAKEN: &str = "That username is taken. Choose another one.";
    // Checked first to spare the hashing; `create` below is what decides.
    if state.backend.users.find(&username).await?.is_some() {
        return refuse(StatusCode::CONFLICT, TAKEN, username);
    }
    let hash = password::hash(password).await;
    let user = User { id: UserId::new_v4(), name: username };
    if !state.backend.users.create(&user, &hash).await? {
        return refuse(StatusCode::CONFLICT, TAKEN, user.name);
    }
    tracing::info!(user = %user.name, "registered");
    sign_in(&session, &state, user).await?;
    Ok(see_other("/chat"))
}

/// POST /logout
pub fn logout(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("logout")
        .and(warp::post())
        .and(same_origin(state.clone()))
        .and(auth_session(state.clone()))
        .and(with_state(state))
        .and_then(|session: AuthSession, state: SharedState| async move {
            end_sessions(session, state, false).await.map_err(Rejection::from)
        })
}

/// POST /logout/everywhere
pub fn logout_everywhere(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("logout" / "everywhere")
        .and(warp::post())
        .and(same_origin(state.clone()))
        .and(auth_session(state.clone()))
        .and(with_state(state))
        .and_then(|session: AuthSession, state: SharedState| async move {
            end_sessions(session, state, true).await.map_err(Rejection::from)
        })
}

/// Ends this session, or every session of the user, in the store first and
/// then on every instance's sockets.
async fn end_sessions(session: AuthSession, state: SharedState, everywhere: bool) -> Result<Response, Error> {
    let Some(current) = session.current().await? else { return Ok(see_other("/login")) };
    let user = current.user.id;
    let mut ended = vec![current.session_id];
    if everywhere {
        for id in state.backend.session_index.take_all(user).await? {
            if id != current.session_id {
                state.backend.sessions.0.delete(&id).await.map_err(StoreError::from)?;
                ended.push(id);
            }
        }
    }
    session.sign_out().await?;
    if !everywhere {
        if let Err(err) = state.backend.session_index.remove(user, current.session_id).await {
            // Harmless: the entry points at a deleted session and ages out.
            tracing::warn!(%err, "session index entry not removed");
        }
    }
    tracing::info!(user = %current.user.name, sessions = ended.len(), everywhere, "logged out");
    announce_logout(&state, user, &ended, everywhere).await;
    Ok(see_other("/login"))
}

/// POST /session/refresh
pub fn refresh(state: SharedState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("session" / "refresh")
        .and(warp::post())
        .and(same_origin(state.clone()))
        .and(auth_session(state))
        .and_then(|session: AuthSession| async move {
            let res = match session.current().await.map_err(Error::from)? {
                Some(current) => warp::reply::json(&json!({ "expires_at": current.expires_at })).into_response(),
                None => warp::reply::with_status(
                    warp::reply::json(&json!({ "error": "not signed in" })),
                    StatusCode::UNAUTHORIZED,
                )
                .into_response(),
            };
            Ok::<_, Rejection>(res)
        })
}
