//! Accounts and sessions over HTTP: register, log in, log out (here or
//! everywhere), refresh. Each handler reads its form and calls one method
//! of [`Sessions`]; what a session is lives in `auth`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::json;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    filters::{body_of_type, client_addr, session, user_agent, with},
    pages::{page, see_other, sign_in_reason, Field, FormPage, FormState, LoginPage},
};
use crate::{
    auth::{
        devices::Device,
        login::{PasswordCheck, Verdict},
        password::Password,
        session::AuthSession,
        throttle::RegisterThrottle,
        Sessions,
    },
    backend::UserStore,
    error::Error,
    meters::{outcome_of, Meters},
    net::ClientAddr,
    realtime::admission::Admission,
};

/// Largest form body accepted.
const MAX_FORM_BYTES: u64 = 16 * 1024;

/// What the account forms use.
#[derive(Clone)]
pub struct Accounts {
    pub users: Arc<dyn UserStore>,
    pub sessions: Sessions,
    pub passwords: PasswordCheck,
    pub registrations: RegisterThrottle,
    pub meters: Meters,
}

/// The `username` and `password` fields of a form; absent fields are `None`.
/// `next` is where to go once signed in (checked by `safe_next` before use);
/// `invite` is the sign-up's invite code; `remember`, "keep me signed in".
#[derive(Debug)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Password>,
    pub next: Option<String>,
    pub invite: Option<String>,
    pub remember: bool,
}

/// Where a successful sign-in goes: `next` when it is a path on this site,
/// else the chat.
pub(super) fn after_sign_in(form: &FormState) -> Response {
    see_other(if form.next.is_empty() { "/chat" } else { &form.next })
}

/// `?next=…&reason=…` of the form pages, read leniently: a query that does
/// not parse counts as none (docs/protocol.md §2.1).
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct FormQuery {
    pub next: Option<String>,
    pub reason: Option<String>,
    /// `/register?invite=CODE`: the invite a link carries.
    pub invite: Option<String>,
}

pub(super) fn form_query() -> impl Filter<Extract = (FormQuery,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| serde_urlencoded::from_str::<FormQuery>(&raw).unwrap_or_default())
}

/// Reads an urlencoded form body (parameters such as `; charset=UTF-8`
/// allowed, any case): 415 for any other type or none (the body is then of
/// no stated type, docs/protocol.md §2.1), 411 without a `Content-Length`,
/// 413 over [`MAX_FORM_BYTES`], all before the body is read. A form-typed
/// body that does not parse is a form without the fields, answered with a
/// clear message by the handler.
pub(super) fn credentials() -> impl Filter<Extract = (Credentials,), Error = Rejection> + Clone {
    body_of_type(
        "application/x-www-form-urlencoded",
        "Send the form as application/x-www-form-urlencoded.",
        MAX_FORM_BYTES,
    )
    .map(|body: Bytes| {
        let mut fields: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        Credentials {
            username: fields.remove("username"),
            password: fields.remove("password").map(Password::new),
            next: fields.remove("next"),
            invite: fields.remove("invite").map(|code| code.trim().to_owned()).filter(|code| !code.is_empty()),
            // A checkbox sends its value ("on") when ticked and nothing when not.
            remember: fields.remove("remember").is_some_and(|v| matches!(v.as_str(), "on" | "true" | "1")),
        }
    })
}

/// GET /login, with `next` (where to go once signed in) and `reason` (why
/// the visitor is here) in the query
pub fn login_form(sessions: Sessions) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(sessions).and(form_query()).and_then(|session: AuthSession, query: FormQuery| async move {
        let mut form = FormState::new(String::new(), query.next.as_deref());
        // Only a request with a cookie costs a store lookup.
        if session.has_cookie() && session.current().await.map_err(Error::from)?.is_some() {
            return Ok(after_sign_in(&form));
        }
        form.notice = query.reason.as_deref().and_then(sign_in_reason);
        page(StatusCode::OK, &LoginPage { form }).map_err(Rejection::from)
    })
}

/// Who asks: the browser's session, its address and what it calls itself.
pub(super) struct Visitor {
    pub session: AuthSession,
    pub addr: ClientAddr,
    pub user_agent: Option<String>,
}

impl Visitor {
    pub fn device(&self) -> Device {
        Device::browser(self.user_agent.as_deref(), self.addr.0.to_canonical().to_string())
    }
}

pub(super) fn visitor(sessions: Sessions) -> impl Filter<Extract = (Visitor,), Error = Rejection> + Clone {
    session(sessions).and(client_addr()).and(user_agent()).map(|session, addr, user_agent| Visitor {
        session,
        addr,
        user_agent,
    })
}

/// POST /login
pub fn login(accounts: Accounts) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    credentials().and(visitor(accounts.sessions.clone())).and(with(accounts)).and_then(
        |form: Credentials, visitor: Visitor, accounts: Accounts| async move {
            let meters = accounts.meters.clone();
            let answer = handle_login(form, visitor, accounts).await;
            meters.login("form", answer.as_ref().map_or("unavailable", |res| outcome_of(res.status())));
            answer.map_err(Rejection::from)
        },
    )
}

async fn handle_login(form: Credentials, visitor: Visitor, accounts: Accounts) -> Result<Response, Error> {
    let addr = &visitor.addr;
    let (Some(username), Some(password)) = (form.username, form.password) else {
        let form = FormState::new(String::new(), form.next.as_deref())
            .with_error("Enter your username and password.", Some(Field::Username));
        return page(StatusCode::UNPROCESSABLE_ENTITY, &LoginPage { form });
    };
    let mut state = FormState::new(username.trim().to_owned(), form.next.as_deref());
    state.remember = form.remember;
    match accounts.passwords.check(&username, password, addr.0).await? {
        Verdict::Verified(user) => {
            accounts.sessions.sign_in(&visitor.session, user, &visitor.device(), form.remember).await?;
            Ok(after_sign_in(&state))
        }
        Verdict::Disabled => {
            tracing::info!(user = %state.username, "sign-in to a disabled account refused");
            let form = state.with_error("This account is disabled.", None);
            page(StatusCode::UNAUTHORIZED, &LoginPage { form })
        }
        Verdict::Refused => {
            // The password is the field to type again (which one was wrong is never said).
            let form = state.with_error("Wrong username or password.", Some(Field::Password));
            page(StatusCode::UNAUTHORIZED, &LoginPage { form })
        }
        Verdict::Throttled(retry_after) => too_many_attempts(LoginPage { form: state }, retry_after),
        Verdict::Busy(retry_after) => {
            let form = state.with_error("Too many sign-ins at once. Try again in a moment.", Some(Field::Password));
            let mut res = page(StatusCode::SERVICE_UNAVAILABLE, &LoginPage { form })?;
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            Ok(res)
        }
    }
}

/// A page with the form again, a 503 and when to retry: the password
/// threads are too busy.
pub(super) fn busy_page(mut form: impl FormPage, retry_after: Duration) -> Result<Response, Error> {
    form.set_error("Too many requests at once. Try again in a moment.".to_owned());
    let mut res = page(StatusCode::SERVICE_UNAVAILABLE, &form)?;
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    Ok(res)
}

/// A page with the form again, a 429 and when to retry.
pub(super) fn too_many_attempts(mut form: impl FormPage, retry_after: Duration) -> Result<Response, Error> {
    let minutes = retry_after.as_secs().div_ceil(60);
    form.set_error(format!("Too many attempts. Try again in {minutes} minute{}.", if minutes == 1 { "" } else { "s" }));
    let mut res = page(StatusCode::TOO_MANY_REQUESTS, &form)?;
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    Ok(res)
}

/// POST /logout
pub fn logout(sessions: Sessions) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(sessions.clone()).and(with(sessions)).and_then(|session: AuthSession, sessions: Sessions| async move {
        sessions.sign_out(&session).await.map_err(Error::from)?;
        Ok::<_, Rejection>(see_other("/login"))
    })
}

/// POST /logout/everywhere
pub fn logout_everywhere(sessions: Sessions) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(sessions.clone()).and(with(sessions)).and_then(|session: AuthSession, sessions: Sessions| async move {
        sessions.sign_out_everywhere(&session).await.map_err(Error::from)?;
        Ok::<_, Rejection>(see_other("/login"))
    })
}

/// POST /session/refresh
///
/// Also how a browser learns why its upgrades fail (it cannot read their
/// status): while this instance is turning upgrades away, the answer
/// carries `Retry-After` (docs/protocol.md §3.5).
pub fn refresh(
    sessions: Sessions,
    admission: Arc<Admission>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(sessions.clone()).and(with(sessions)).and(with(admission)).and_then(
        |session: AuthSession, sessions: Sessions, admission: Arc<Admission>| async move {
            let mut res = match sessions.refresh(&session).await.map_err(Error::from)? {
                Some(current) => warp::reply::json(&json!({ "expires_at": current.expires_at })).into_response(),
                None => warp::reply::with_status(
                    warp::reply::json(&json!({ "error": "not signed in" })),
                    StatusCode::UNAUTHORIZED,
                )
                .into_response(),
            };
            if let Some(secs) = admission.retry_after() {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok::<_, Rejection>(res)
        },
    )
}
