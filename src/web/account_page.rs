//! `/account` (docs/protocol.md §7): the page where a user sees every
//! session of theirs and ends them, changes their password, reads their
//! security log and, when sign-up takes an invite, makes invite links.
//!
//! Its forms are plain HTML forms answered with 303 back to the page (or
//! the page again, with what went wrong); the route table refuses them
//! from another site, as every unsafe request.

use std::collections::HashMap;

use askama::Template;
use bytes::Bytes;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection,
};

use super::{
    filters::{body_of_type, client_addr, param, session, user_agent, with},
    pages::{error_page, login_url, page, see_other},
};
use crate::{
    auth::{
        devices::{Device, SessionView},
        invites::{self, InviteCodes, USER_INVITE_DAYS},
        journal::Journal,
        password::Password,
        password_change::{Asker, Changed, PasswordChange},
        session::{AuthSession, Current},
        Sessions,
    },
    clock::UnixMillis,
    error::Error,
    model::{EndedBy, SecurityEvent, SecurityEventKind, SessionKind},
    net::ClientAddr,
};

/// Largest form body accepted.
const MAX_FORM_BYTES: u64 = 16 * 1024;

/// The security events the page shows (the API gives all it keeps).
const EVENTS_SHOWN: usize = 20;

/// What the account page and its forms use.
#[derive(Clone)]
pub struct AccountPages {
    pub sessions: Sessions,
    pub change: PasswordChange,
    pub journal: Journal,
    /// Present when sign-up takes an invite and users may make them.
    pub invites: Option<InviteLinks>,
}

/// Invite links users make: the codes, and the origin the links point to.
#[derive(Clone)]
pub struct InviteLinks {
    pub codes: InviteCodes,
    pub origin: String,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub user: String,
    pub notice: Option<&'static str>,
    pub sessions: Vec<SessionRow>,
    pub password: PasswordForm,
    pub invites: InvitesView,
    pub events: Vec<EventRow>,
}

/// A session as the page lists it.
pub struct SessionRow {
    pub id: String,
    pub client: String,
    pub kind: &'static str,
    pub address: String,
    pub created: String,
    pub last_active: String,
    pub current: bool,
    pub long: bool,
}

impl From<SessionView> for SessionRow {
    fn from(s: SessionView) -> Self {
        Self {
            kind: match s.kind {
                SessionKind::Browser => "browser",
                SessionKind::Token => "app or script",
            },
            created: s.created_at.map_or_else(|| "some time ago".to_owned(), when),
            last_active: s.last_active_at.map_or_else(|| "some time ago".to_owned(), when),
            id: s.id,
            client: s.client,
            address: s.address,
            current: s.current,
            long: s.long,
        }
    }
}

/// What the password form shows besides its fields.
#[derive(Debug, Default)]
pub struct PasswordForm {
    pub error: Option<String>,
    /// The field in error: `current` or `new` (empty: none).
    pub invalid: &'static str,
    /// The strength estimator's advice on a refused new password.
    pub advice: Option<String>,
}

/// The invite section: shown when sign-up takes an invite and users may
/// make them.
#[derive(Debug, Default)]
pub struct InvitesView {
    pub enabled: bool,
    /// How long a link made here lasts.
    pub days: u32,
    /// The link just made (shown once: only its hash is kept).
    pub made: Option<String>,
    pub error: Option<String>,
}

/// A security event as the page says it.
pub struct EventRow {
    pub kind: &'static str,
    pub at: String,
    pub iso: String,
    pub text: String,
}

/// "2026-12-08 14:03 UTC".
pub fn when(at: UnixMillis) -> String {
    let t = at.to_datetime();
    format!("{}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

fn iso(at: UnixMillis) -> String {
    let t = at.to_datetime();
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// "Chrome on Linux (192.0.2.1)", or what is known of it.
fn which(client: &str, address: &str) -> String {
    match (client.is_empty(), address.is_empty()) {
        (false, false) => format!("{client} ({address})"),
        (false, true) => client.to_owned(),
        (true, false) => format!("a session from {address}"),
        (true, true) => "a session".to_owned(),
    }
}

impl From<SecurityEvent> for EventRow {
    fn from(event: SecurityEvent) -> Self {
        let (kind, text) = match event.what {
            SecurityEventKind::SignedIn { client, address } => {
                ("signed-in", format!("Signed in: {}.", which(&client, &address)))
            }
            SecurityEventKind::SignInFailed { address, count, .. } => (
                "sign-in-failed",
                format!(
                    "{count} failed sign-in attempt{} from {}.",
                    if count == 1 { "" } else { "s" },
                    if address.is_empty() { "somewhere" } else { &address }
                ),
            ),
            SecurityEventKind::SessionEnded { by, client, address } => {
                let by = match by {
                    EndedBy::You => "You ended",
                    EndedBy::PasswordChange => "A password change ended",
                    EndedBy::LogoutEverywhere => "Logging out everywhere ended",
                    EndedBy::RefreshReuse => "A refresh token used twice ended",
                    EndedBy::Operator => "An administrator ended",
                };
                ("session-ended", format!("{by} the session of {}.", which(&client, &address)))
            }
            SecurityEventKind::PasswordChanged { client, address } => {
                ("password-changed", format!("Password changed from {}.", which(&client, &address)))
            }
            SecurityEventKind::RefreshReuseDetected { client, address } => (
                "refresh-reuse",
                format!(
                    "A refresh token of {} was used again{}.",
                    which(&client, ""),
                    if address.is_empty() { String::new() } else { format!(" from {address}") }
                ),
            ),
        };
        Self { kind, at: when(event.at), iso: iso(event.at), text }
    }
}

/// What `?done=` says happened, as a sentence.
fn done_notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "ended" => Some("That session has ended."),
        "others" => Some("Every other session has ended."),
        "password" => Some("Your password was changed. Every other session has ended."),
        _ => None,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct PageQuery {
    done: Option<String>,
}

impl AccountPages {
    /// The page for `current`, with `password` and `invites` as given.
    pub async fn render(
        &self,
        current: &Current,
        status: StatusCode,
        notice: Option<&'static str>,
        password: PasswordForm,
        invites: InvitesView,
    ) -> Result<Response, Error> {
        let user = current.user.id;
        let (sessions, events) =
            tokio::try_join!(self.sessions.list(user, current.session_id), self.journal.recent(user))?;
        let template = AccountPage {
            user: current.user.name.clone(),
            notice,
            sessions: sessions.into_iter().map(SessionRow::from).collect(),
            password,
            invites,
            events: events.into_iter().take(EVENTS_SHOWN).map(EventRow::from).collect(),
        };
        page(status, &template)
    }

    /// The invite section as it is before anything is made.
    pub fn invites(&self) -> InvitesView {
        InvitesView { enabled: self.invites.is_some(), days: USER_INVITE_DAYS, made: None, error: None }
    }
}

/// The signed-in user, or the sign-in page (coming back here).
async fn signed_in(session: &AuthSession) -> Result<Result<Current, Response>, Error> {
    Ok(session.current().await?.ok_or_else(|| see_other(&login_url("/account"))))
}

/// GET /account
pub fn show(pages: AccountPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(pages.sessions.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with(pages))
        .and_then(|session: AuthSession, query: String, pages: AccountPages| async move {
            let current = match signed_in(&session).await? {
                Ok(current) => current,
                Err(res) => return Ok::<_, Rejection>(res),
            };
            let query: PageQuery = serde_urlencoded::from_str(&query).unwrap_or_default();
            let notice = done_notice(query.done.as_deref());
            let invites = pages.invites();
            Ok(pages.render(&current, StatusCode::OK, notice, PasswordForm::default(), invites).await?)
        })
}

/// POST /account/sessions/{id}/end
pub fn end(pages: AccountPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(pages.sessions.clone()).and(param("id")).and(with(pages)).and_then(
        |session: AuthSession, id: String, pages: AccountPages| async move {
            let current = match signed_in(&session).await? {
                Ok(current) => current,
                Err(res) => return Ok::<_, Rejection>(res),
            };
            let ended =
                pages.sessions.end_listed(current.user.id, &id, current.session_id).await.map_err(Error::from)?;
            Ok(match ended {
                Some(_) => see_other("/account?done=ended"),
                None => error_page(StatusCode::NOT_FOUND, "You have no session with that id."),
            })
        },
    )
}

/// POST /account/sessions/end-others
pub fn end_others(pages: AccountPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(pages.sessions.clone()).and(with(pages)).and_then(|session: AuthSession, pages: AccountPages| async move {
        let current = match signed_in(&session).await? {
            Ok(current) => current,
            Err(res) => return Ok::<_, Rejection>(res),
        };
        let sessions = &pages.sessions;
        sessions.end_others(current.user.id, current.session_id, EndedBy::You).await.map_err(Error::from)?;
        Ok(see_other("/account?done=others"))
    })
}

/// The fields of an urlencoded form, by name (a body that does not parse
/// is a form without fields).
pub fn form_fields() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone {
    body_of_type(
        "application/x-www-form-urlencoded",
        "Send the form as application/x-www-form-urlencoded.",
        MAX_FORM_BYTES,
    )
    .map(|body: Bytes| serde_urlencoded::from_bytes(&body).unwrap_or_default())
}

/// POST /account/password
pub fn password(pages: AccountPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    form_fields().and(session(pages.sessions.clone())).and(client_addr()).and(user_agent()).and(with(pages)).and_then(
        |mut fields: HashMap<String, String>,
         session: AuthSession,
         addr: ClientAddr,
         user_agent: Option<String>,
         pages: AccountPages| async move {
            let current = match signed_in(&session).await? {
                Ok(current) => current,
                Err(res) => return Ok::<_, Rejection>(res),
            };
            let (Some(old), Some(new)) = (fields.remove("current"), fields.remove("new")) else {
                let form = PasswordForm {
                    error: Some("Enter your current password and a new one.".into()),
                    invalid: "current",
                    advice: None,
                };
                let invites = pages.invites();
                return Ok(pages.render(&current, StatusCode::UNPROCESSABLE_ENTITY, None, form, invites).await?);
            };
            let asker = Asker {
                user: &current.user,
                session_id: current.session_id,
                cookie: Some(&session),
                addr: addr.0,
                device: Device::browser(user_agent.as_deref(), addr.0.to_canonical().to_string()),
            };
            let changed =
                pages.change.change(asker, Password::new(old), Password::new(new)).await.map_err(Error::from)?;
            let (status, form, retry) = match changed {
                Changed::Done => return Ok(see_other("/account?done=password")),
                Changed::WrongPassword => (
                    StatusCode::UNAUTHORIZED,
                    PasswordForm {
                        error: Some("Your current password is not that.".into()),
                        invalid: "current",
                        advice: None,
                    },
                    None,
                ),
                Changed::Invalid(why) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    PasswordForm { error: Some(why.into()), invalid: "new", advice: None },
                    None,
                ),
                Changed::Weak(weak) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    PasswordForm {
                        error: Some("Choose a password that is harder to guess.".into()),
                        invalid: "new",
                        advice: Some(weak.advice),
                    },
                    None,
                ),
                Changed::Throttled(after) => {
                    let minutes = after.as_secs().div_ceil(60);
                    let error = format!(
                        "Too many attempts. Try again in {minutes} minute{}.",
                        if minutes == 1 { "" } else { "s" }
                    );
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        PasswordForm { error: Some(error), invalid: "current", advice: None },
                        Some(after),
                    )
                }
                Changed::Busy(after) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    PasswordForm {
                        error: Some("Too many requests at once. Try again in a moment.".into()),
                        invalid: "",
                        advice: None,
                    },
                    Some(after),
                ),
            };
            // The session may have ended meanwhile (a wrong guess does not
            // end it, but another tab may have).
            let invites = pages.invites();
            let mut res = pages.render(&current, status, None, form, invites).await?;
            if let Some(after) = retry {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
            }
            Ok(res)
        },
    )
}

/// POST /account/invites: a one-use link, shown once; a few a day.
pub fn make_invite(pages: AccountPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(pages.sessions.clone()).and(with(pages)).and_then(|session: AuthSession, pages: AccountPages| async move {
        let current = match signed_in(&session).await? {
            Ok(current) => current,
            Err(res) => return Ok::<_, Rejection>(res),
        };
        let Some(links) = &pages.invites else {
            return Ok(error_page(StatusCode::NOT_FOUND, "Invites are not made here."));
        };
        let made = links.codes.make_for(current.user.id).await.map_err(Error::from)?;
        let mut view = pages.invites();
        let (status, retry) = match made {
            Ok(code) => {
                view.made = Some(invites::link(&links.origin, &code));
                (StatusCode::OK, None)
            }
            Err(after) => {
                let hours = after.as_secs().div_ceil(3600);
                view.error = Some(format!(
                    "You have made as many invites as you may today. Try again in {hours} hour{}.",
                    if hours == 1 { "" } else { "s" }
                ));
                (StatusCode::TOO_MANY_REQUESTS, Some(after))
            }
        };
        let mut res = pages.render(&current, status, None, PasswordForm::default(), view).await?;
        if let Some(after) = retry {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        Ok(res)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc_to_the_minute() {
        let at = UnixMillis::from_millis(1_796_669_242_383);
        assert_eq!(when(at), "2026-12-07 18:47 UTC");
        assert_eq!(iso(at), "2026-12-07T18:47:22Z");
    }

    #[test]
    fn events_read_as_sentences() {
        let at = UnixMillis::from_secs(0);
        let row = |what| EventRow::from(SecurityEvent { at, what }).text;
        let text = |s: &str| s.to_owned();
        assert_eq!(
            row(SecurityEventKind::SessionEnded { by: EndedBy::Operator, client: text("bot"), address: text("::1") }),
            "An administrator ended the session of bot (::1)."
        );
        assert_eq!(
            row(SecurityEventKind::SignInFailed { address: text("192.0.2.1"), count: 3, since: at }),
            "3 failed sign-in attempts from 192.0.2.1."
        );
        assert_eq!(row(SecurityEventKind::SignedIn { client: text(""), address: text("") }), "Signed in: a session.");
    }
}
