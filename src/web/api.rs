//! `/api/`: tokens for clients that are not browsers (docs/protocol.md §5).
//!
//! JSON in, JSON out; every 4xx/5xx is `{"error": "<code>", "message": "…"}`.
//! These routes read no cookie (a browser sends nothing here by itself), so
//! they need no CSRF defence; the route table still refuses a foreign
//! `Origin` as everywhere. Password checks share the login form's throttle.

use std::time::Duration;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::json;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    filters::{body_of_type, client_addr, user_agent, with},
    pages::classify,
};
use crate::{
    auth::{
        devices::{Device, MAX_CLIENT_CHARS},
        login::{PasswordCheck, Verdict},
        password::Password,
        sessions::TICKET_TTL,
        tokens, RefreshError, Sessions, TokenCurrent,
    },
    backend::{EndReason, StoreError},
    meters::{outcome_of, Meters},
    model::EndedBy,
    net::ClientAddr,
};

/// Largest JSON body accepted.
const MAX_JSON_BYTES: u64 = 16 * 1024;

/// What the token API uses.
#[derive(Clone)]
pub struct Api {
    pub sessions: Sessions,
    pub passwords: PasswordCheck,
    pub meters: Meters,
}

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": code, "message": message })), status).into_response()
}

/// A rejection from an API route, as JSON.
pub fn rejection_json(rejection: warp::Rejection) -> Response {
    let (status, code, message) = classify(&rejection);
    error(status, code, message)
}

fn unavailable(err: StoreError) -> Response {
    let err = crate::error::Error::from(err);
    err.log();
    error(err.status(), err.code(), err.public_message())
}

/// A 200 carrying credentials: never stored by a cache (RFC 6749 §5.1).
fn secret(body: serde_json::Value) -> Response {
    let mut res = warp::reply::json(&body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn too_many(retry_after: Duration) -> Response {
    let mut res = error(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", "Too many attempts; try again later.");
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    res
}

/// A JSON body of type `T` (a body that does not parse is answered with
/// [`unreadable`]), or 415, 411, 413.
pub(super) fn json_body<T: DeserializeOwned + Send>(
) -> impl Filter<Extract = (Result<T, serde_json::Error>,), Error = Rejection> + Clone {
    body_of_type("application/json", "Send JSON, as application/json.", MAX_JSON_BYTES)
        .map(|body: Bytes| serde_json::from_slice::<T>(&body))
}

/// 422 for a JSON body that is not what the route reads.
pub(super) fn unreadable(err: serde_json::Error) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", &format!("The body is not what this route reads: {err}"))
}

/// The bearer token of a request, proved against its session, or the 401.
async fn bearer(api: &Api, authorization: Option<String>) -> Result<TokenCurrent, Response> {
    let refused = || {
        error(StatusCode::UNAUTHORIZED, "invalid_token", "Send a valid access token: Authorization: Bearer <token>.")
    };
    let token = authorization.as_deref().and_then(tokens::bearer).ok_or_else(refused)?;
    match api.sessions.authenticate_token(token).await {
        Ok(Ok(current)) => {
            api.meters.token_check("valid");
            Ok(current)
        }
        Ok(Err(err)) => {
            api.meters.token_check("invalid");
            tracing::debug!(%err, "access token refused");
            Err(refused())
        }
        Err(err) => {
            api.meters.token_check("unavailable");
            Err(unavailable(err))
        }
    }
}

fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
    /// What the session is listed as (at most [`MAX_CLIENT_CHARS`]).
    #[serde(default)]
    client: Option<String>,
}

/// POST /api/token
pub fn token(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    json_body::<Login>().and(client_addr()).and(user_agent()).and(with(api)).then(
        |login: Result<Login, serde_json::Error>, addr: ClientAddr, user_agent: Option<String>, api: Api| async move {
            let res = match login {
                Ok(login) if login.client.as_ref().is_some_and(|c| c.chars().count() > MAX_CLIENT_CHARS) => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    "client names the session in at most 64 characters.",
                ),
                Ok(login) => {
                    let device = Device::token_client(
                        login.client.as_deref(),
                        user_agent.as_deref(),
                        addr.0.to_canonical().to_string(),
                    );
                    sign_in(login, addr, device, &api).await.unwrap_or_else(unavailable)
                }
                Err(err) => unreadable(err),
            };
            api.meters.login("api", outcome_of(res.status()));
            res
        },
    )
}

async fn sign_in(login: Login, addr: ClientAddr, device: Device, api: &Api) -> Result<Response, StoreError> {
    match api.passwords.check(&login.username, Password::new(login.password), addr.0).await? {
        Verdict::Verified(user) => {
            let pair = api.sessions.sign_in_token(user, &device).await?;
            Ok(secret(json!(pair)))
        }
        Verdict::Refused => Ok(error(StatusCode::UNAUTHORIZED, "invalid_credentials", "Wrong username or password.")),
        Verdict::Disabled => Ok(error(StatusCode::UNAUTHORIZED, "account_disabled", "This account is disabled.")),
        Verdict::Throttled(retry_after) => Ok(too_many(retry_after)),
        Verdict::Busy(retry_after) => {
            let mut res =
                error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Too many sign-ins at once; try again.");
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            Ok(res)
        }
    }
}

#[derive(Deserialize)]
struct Refresh {
    refresh_token: String,
}

/// POST /api/token/refresh
pub fn refresh(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    json_body::<Refresh>().and(client_addr()).and(with(api)).then(
        |refresh: Result<Refresh, _>, addr: ClientAddr, api: Api| async move {
            let refresh = match refresh {
                Ok(refresh) => refresh,
                Err(err) => return unreadable(err),
            };
            let from = addr.0.to_canonical().to_string();
            match api.sessions.refresh_token(&refresh.refresh_token, &from).await {
                Ok(Ok(pair)) => secret(json!(pair)),
                Ok(Err(RefreshError::Invalid)) => {
                    error(StatusCode::UNAUTHORIZED, "invalid_grant", "That refresh token is not valid; sign in again.")
                }
                Ok(Err(RefreshError::Reused)) => error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "That refresh token was already used, so its session was ended; sign in again.",
                ),
                Err(err) => unavailable(err),
            }
        },
    )
}

/// POST /api/ws-ticket
pub fn ticket(api: Api) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    authorization().and(with(api)).then(|authorization: Option<String>, api: Api| async move {
        let current = match bearer(&api, authorization).await {
            Ok(current) => current,
            Err(res) => return res,
        };
        let expires = current.token_expires_at.expect("a bearer token has an expiry");
        match api.sessions.issue_ticket(&current.sid, expires).await {
            Ok(ticket) => secret(json!({ "ticket": ticket, "expires_in": TICKET_TTL.as_secs() })),
            Err(err) => unavailable(err),
        }
    })
}

/// POST /api/logout and /api/logout/everywhere
pub fn logout(api: Api, everywhere: bool) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    authorization().and(with(api)).then(move |authorization: Option<String>, api: Api| async move {
        let current = match bearer(&api, authorization).await {
            Ok(current) => current,
            Err(res) => return res,
        };
        let ended = if everywhere {
            api.sessions.end_all(current.user.id, EndReason::LoggedOut, EndedBy::LogoutEverywhere).await.map(drop)
        } else {
            api.sessions.end(current.user.id, current.session_id, EndReason::LoggedOut).await
        };
        match ended {
            Ok(()) => {
                tracing::info!(user = %current.user.name, everywhere, "token session logged out");
                warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
            }
            Err(err) => unavailable(err),
        }
    })
}
