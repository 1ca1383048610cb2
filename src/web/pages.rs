//! The server-rendered pages: templates and the page routes.

use std::sync::Arc;

use askama::Template;
use warp::{
    http::{header, HeaderValue, StatusCode, Uri},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::filters::{param, session, with};
use crate::{
    auth::{
        access::{RoomAccess, RoomRef},
        session::AuthSession,
        Sessions,
    },
    backend::{History, RoomOpened},
    clock::UnixMillis,
    error::Error,
    model::{Message, MessageId, Role, RoomKind},
    net::from_another_site,
    realtime::unread::Starts,
};

/// Messages rendered on a room's page.
const RECENT_MESSAGES: usize = 50;

/// The field of an account form an error is about: marked invalid,
/// described by the error, and focused when the page loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Username,
    Password,
}

/// What the sign-in and register forms show besides their fields.
#[derive(Debug, Clone, Default)]
pub struct FormState {
    pub error: Option<String>,
    pub invalid: Option<Field>,
    pub username: String,
    /// Where to go once signed in: a checked same-origin path ([`safe_next`]), or empty.
    pub next: String,
    /// Why the visitor was sent here (`/login?reason=`), as a sentence.
    pub notice: Option<&'static str>,
    /// The strength estimator's advice on a refused password, shown
    /// beside the field.
    pub advice: Option<String>,
    /// "Keep me signed in" stays ticked when the form comes back.
    pub remember: bool,
}

impl FormState {
    pub fn new(username: String, next: Option<&str>) -> Self {
        Self { username, next: next.and_then(safe_next).unwrap_or_default().to_owned(), ..Self::default() }
    }

    pub fn with_error(mut self, error: impl Into<String>, field: Option<Field>) -> Self {
        self.error = Some(error.into());
        self.invalid = field;
        self
    }

    /// `aria-invalid` and `autofocus` for a field, as template conditions.
    pub fn is_invalid(&self, field: &str) -> bool {
        match self.invalid {
            Some(Field::Username) => field == "username",
            Some(Field::Password) => field == "password",
            None => false,
        }
    }

    /// The field focused on load: the one in error, else the username.
    pub fn focus(&self, field: &str) -> bool {
        match self.invalid {
            Some(Field::Password) => field == "password",
            _ => field == "username",
        }
    }

    /// `?next=…` for a link to the other form, or empty.
    pub fn next_query(&self) -> String {
        if self.next.is_empty() {
            String::new()
        } else {
            format!("?{}", serde_urlencoded::to_string([("next", self.next.as_str())]).unwrap_or_default())
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub form: FormState,
}

#[derive(Template)]
#[template(path = "register.html")]
pub struct RegisterPage {
    pub form: FormState,
    /// The invite code the sign-up carries (a hidden field), or empty.
    pub invite: String,
    /// Signing up takes an invite (`REGISTRATION=invite`).
    pub invite_only: bool,
}

/// A page with a form that can show one error.
pub trait FormPage: Template {
    fn set_error(&mut self, error: String);
}

impl FormPage for LoginPage {
    fn set_error(&mut self, error: String) {
        self.form.error = Some(error);
    }
}

impl FormPage for RegisterPage {
    fn set_error(&mut self, error: String) {
        self.form.error = Some(error);
    }
}

/// Where `next` may send a browser after signing in: a path on this site
/// only. It must start with one `/` (not `//` or `/\`, which browsers read
/// as another host), hold printable ASCII only (no backslash, no space, no
/// control character: browsers drop tabs and newlines, turning `/\t/x`
/// into `//x`), and parse as a path. Anything else is refused, and the
/// caller goes to `/chat`: never an open redirect.
pub fn safe_next(raw: &str) -> Option<&str> {
    let ok = raw.starts_with('/')
        && !raw.starts_with("//")
        && raw.len() <= 1024
        && raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && raw.parse::<Uri>().is_ok_and(|u| u.scheme().is_none() && u.authority().is_none());
    ok.then_some(raw)
}

/// The sign-in page, coming back to `next` afterwards.
pub fn login_url(next: &str) -> String {
    match safe_next(next) {
        Some(next) => format!("/login?{}", serde_urlencoded::to_string([("next", next)]).unwrap_or_default()),
        None => "/login".to_owned(),
    }
}

/// Why `/login?reason=` says the visitor is there: a fixed set of codes,
/// each with its sentence; anything else says nothing.
pub fn sign_in_reason(code: &str) -> Option<&'static str> {
    match code {
        "logged_out" => Some("You were signed out on another device or tab."),
        "expired" => Some("Your session expired."),
        "revoked" => Some("Your session was ended."),
        _ => None,
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub title: String,
    pub message: String,
}

/// A public room that does not exist, reached by another site's link: a
/// link on this site opens it.
#[derive(Template)]
#[template(path = "open_room.html")]
pub struct OpenRoomPage {
    pub room: String,
}

#[derive(Template)]
#[template(path = "chat.html")]
pub struct ChatPage {
    pub user: String,
    /// The room as this user names it: `deploys`, or `@bob` for a direct
    /// conversation (what its frames carry, and `data-room` everywhere).
    pub room: String,
    pub kind: RoomKind,
    /// The user's role in a private room: `owner`, `member`; else empty.
    pub role: &'static str,
    /// The sidebar, in sections: public rooms, private rooms, direct
    /// conversations.
    pub public_rooms: Vec<SideRoom>,
    pub private_rooms: Vec<SideRoom>,
    pub direct_rooms: Vec<SideRoom>,
    pub messages: Vec<MessageView>,
    /// The messages shown begin at the room's first (nothing older to page back to).
    pub history_start: bool,
    pub last_id: String,
    /// Where "new since your last visit" goes: after this id (the read
    /// marker before this visit, docs/protocol.md §3.8); empty: nowhere.
    pub since: String,
}

/// A room in the sidebar: what the user calls it, and its page.
pub struct SideRoom {
    pub label: String,
    pub href: String,
}

impl SideRoom {
    pub fn new(label: &str) -> Self {
        Self { label: label.to_owned(), href: format!("/chat/{label}") }
    }
}

/// A message as the page carries it: data only (`<template id="history">`);
/// static/render.js makes every message's markup, these included.
pub struct MessageView {
    pub id: String,
    pub user: String,
    pub body: String,
    pub sent_at: UnixMillis,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self { id: m.id.to_string(), user: m.user, body: m.body, sent_at: m.sent_at }
    }
}

/// Renders a page with a status; pages are never cached (they show who is
/// signed in).
pub fn page(status: StatusCode, template: &impl Template) -> Result<Response, Error> {
    let mut res = warp::reply::with_status(warp::reply::html(template.render()?), status).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    let template = ErrorPage { status: status.as_u16(), title, message: message.to_owned() };
    page(status, &template).unwrap_or_else(|err| {
        tracing::error!(%err, "error page failed to render");
        warp::reply::with_status(message.to_owned(), status).into_response()
    })
}

/// Turns every rejection into a page with the right status.
pub fn rejection_page(rejection: Rejection) -> Response {
    let (status, _, message) = classify(&rejection);
    error_page(status, message)
}

/// What a rejection means: its status, a machine-readable code (for the
/// JSON API) and a sentence for people. Causes are logged here.
pub fn classify(rejection: &Rejection) -> (StatusCode, &'static str, &'static str) {
    if let Some(err) = rejection.find::<Error>() {
        err.log();
        (err.status(), err.code(), err.public_message())
    } else if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found", "There is nothing here.")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large", "That request is too large.")
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "length_required", "Send a Content-Length with the body.")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "invalid_request", "That query string is malformed.")
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "invalid_request", "That request could not be understood.")
    }
}

pub fn see_other(location: &str) -> Response {
    let uri: Uri = location.parse().expect("redirect targets are valid paths");
    warp::redirect::see_other(uri).into_response()
}

/// GET /
pub fn index(sessions: Sessions) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    session(sessions).and_then(|session: AuthSession| async move {
        let target = if session.current().await.map_err(Error::from)?.is_some() { "/chat" } else { "/login" };
        Ok::<_, Rejection>(see_other(target))
    })
}

#[derive(serde::Deserialize)]
struct OpenRoom {
    room: Option<String>,
}

/// GET /chat (and GET /chat?room=name from the sidebar's form; `@user`
/// opens the conversation with that user)
pub fn chat_redirect() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::query::<OpenRoom>().and_then(|query: OpenRoom| async move {
        let Some(name) = query.room.as_deref().map(str::trim) else {
            return Ok::<_, Rejection>(see_other("/chat/lobby"));
        };
        // Room names are lower case (a username keeps its case: it is
        // found ignoring it).
        let name = if name.starts_with('@') { name.to_owned() } else { name.to_ascii_lowercase() };
        match RoomRef::parse(&name) {
            Some(room) => Ok(see_other(&format!("/chat/{room}"))),
            None => Err(Error::BadRequest("Room names are 1 to 32 characters: a-z, 0-9 and -.").into()),
        }
    })
}

/// `/chat/Deploys` is `/chat/deploys`: room names are lower case, and a
/// capital typed by hand opens (or creates) no other room. The page's
/// address in lower case, when that is a room name the given one is not;
/// a username (`@Bob`) keeps its case (it is found ignoring it).
fn lower_case_name(room: &str) -> Option<Uri> {
    if !room.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    match RoomRef::parse(&room.to_ascii_lowercase())? {
        RoomRef::Named(name) => format!("/chat/{name}").parse().ok(),
        RoomRef::Direct(_) => None,
    }
}

/// What a room's page reads.
#[derive(Clone)]
pub struct RoomPages {
    pub sessions: Sessions,
    pub access: RoomAccess,
    pub history: Arc<dyn History>,
}

/// GET /chat/{room}
pub fn chat_room(rooms: RoomPages) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let fetch_site = warp::header::optional::<String>("sec-fetch-site");
    param("room").and(session(rooms.sessions.clone())).and(fetch_site).and(with(rooms)).and_then(
        |room: String, session: AuthSession, fetch_site: Option<String>, rooms: RoomPages| async move {
            let elsewhere = from_another_site(fetch_site.as_deref());
            render_room(room, session, elsewhere, &rooms).await.map_err(Rejection::from)
        },
    )
}

/// GET /chat/{room}: `{room}` is a room's name, or `@username` (`%40`
/// too) for the direct conversation with that user. A name that is no
/// room, and a room the user may not see, get the same 404 page. Reached
/// from another site's page (`elsewhere`), it writes nothing.
async fn render_room(
    room: String,
    session: AuthSession,
    elsewhere: bool,
    pages: &RoomPages,
) -> Result<Response, Error> {
    if let Some(lower) = lower_case_name(&room) {
        return Ok(warp::redirect::permanent(lower).into_response());
    }
    let wanted = RoomRef::parse(&room);
    let Some(current) = session.current().await? else {
        // Back to this room after signing in (a name that is not one is not carried).
        let back = wanted.map(|r| format!("/chat/{r}")).unwrap_or_default();
        return Ok(see_other(&login_url(&back)));
    };
    let wanted = wanted.ok_or(Error::NoSuchRoom)?;
    let visible = pages.access.check(current.user.id, &wanted).await?.visible().ok_or(Error::NoSuchRoom)?;
    let room = visible.room();
    let history = &*pages.history;
    // A public room that does not exist yet costs the store for as long as
    // it lives: opening one counts against the user's quota. Private and
    // direct rooms are not opened: they exist (or come with their first
    // message) without it, and cost no quota.
    if visible.kind() == RoomKind::Public && elsewhere {
        // Another site's link must not spend the user's quota nor fill their
        // list: a room that exists is shown as it is, else the user is asked.
        if !room.is_lobby() && !history.room_exists(room).await? {
            return page(StatusCode::OK, &OpenRoomPage { room: visible.label().to_string() });
        }
    } else if visible.kind() == RoomKind::Public {
        match history.open_room(room, current.user.id).await? {
            RoomOpened::Open => {}
            // The name became a private room's since the check.
            RoomOpened::Private => return Err(Error::NoSuchRoom),
            RoomOpened::NewRoomRefused { retry_after } => {
                tracing::warn!(user = %current.user.name, "new-room quota reached");
                let minutes = retry_after.as_secs().div_ceil(60);
                let message = format!("You have opened many new rooms lately. Try again in {minutes} minutes.");
                let mut res = error_page(StatusCode::TOO_MANY_REQUESTS, &message);
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
                return Ok(res);
            }
        }
    }
    // One more than shown tells whether anything older is left.
    let (mut recent, (listed, inbox), markers) = tokio::try_join!(
        history.recent(room, RECENT_MESSAGES + 1),
        pages.access.listed(current.user.id),
        history.read_markers(current.user.id),
    )?;
    let history_start = recent.len() <= RECENT_MESSAGES;
    if !history_start {
        recent.remove(0);
    }
    // Each section in name order, whatever order the store keeps (most
    // recently opened first): a visit never moves a link.
    let section = |kind: RoomKind| -> Vec<SideRoom> {
        let mut rooms: Vec<SideRoom> =
            listed.iter().filter(|l| l.kind() == kind).map(|l| SideRoom::new(l.label())).collect();
        rooms.sort_by_cached_key(|r| (r.label.to_lowercase(), r.label.clone()));
        rooms
    };
    let since = Starts::new(markers, &inbox).since(room).map(|id| id.to_string()).unwrap_or_default();
    // Opening the room is reading what it shows: the marker moves to its
    // newest message (to 0-0 in an empty room), so whatever comes after
    // counts as unread on every device, even if the page is left at once.
    if !elsewhere {
        let newest = recent.last().map_or(MessageId::ZERO, |m| m.id);
        history.mark_read(current.user.id, room, newest).await?;
    }
    let last_id = recent.last().map(|m| m.id.to_string()).unwrap_or_default();
    let messages = recent.into_iter().map(MessageView::from).collect();
    page(
        StatusCode::OK,
        &ChatPage {
            user: current.user.name,
            room: visible.label().to_string(),
            kind: visible.kind(),
            role: match visible.role() {
                Some(Role::Owner) => "owner",
                Some(Role::Member) => "member",
                None => "",
            },
            public_rooms: section(RoomKind::Public),
            private_rooms: section(RoomKind::Private),
            direct_rooms: section(RoomKind::Direct),
            messages,
            history_start,
            last_id,
            since,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_path_on_this_site_or_nothing() {
        for ok in ["/", "/chat", "/chat/some-room", "/chat/x?y=1&z=%2F", "/a/b/"] {
            assert_eq!(safe_next(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "chat",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "/a\\b",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ x",
            "https://evil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            "/caf\u{e9}",
            &format!("/{}", "a".repeat(1024)),
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
        assert_eq!(login_url("/chat/a-b"), "/login?next=%2Fchat%2Fa-b");
        assert_eq!(login_url("//evil.example"), "/login");
        assert_eq!(login_url(""), "/login");
    }

    #[test]
    fn a_room_name_with_capitals_is_sent_to_its_lower_case_page() {
        assert_eq!(lower_case_name("Deploys").map(|u| u.to_string()).as_deref(), Some("/chat/deploys"));
        assert_eq!(lower_case_name("DEV-2").map(|u| u.to_string()).as_deref(), Some("/chat/dev-2"));
        for unchanged in ["deploys", "@Bob", "Not_A_Room", "%40Bob", ""] {
            assert_eq!(lower_case_name(unchanged), None, "{unchanged}");
        }
    }

    #[test]
    fn reasons_are_a_fixed_set() {
        assert_eq!(sign_in_reason("logged_out"), Some("You were signed out on another device or tab."));
        assert_eq!(sign_in_reason("expired"), Some("Your session expired."));
        assert_eq!(sign_in_reason("revoked"), Some("Your session was ended."));
        for other in ["", "Expired", "logged out", "<b>"] {
            assert_eq!(sign_in_reason(other), None);
        }
    }

    #[test]
    fn the_field_in_error_is_focused_and_marked() {
        let form = FormState::new("alice".into(), Some("/chat/x")).with_error("Wrong.", Some(Field::Password));
        assert!(form.is_invalid("password") && !form.is_invalid("username"));
        assert!(form.focus("password") && !form.focus("username"));
        assert_eq!(form.next_query(), "?next=%2Fchat%2Fx");
        let plain = FormState::new(String::new(), Some("//evil"));
        assert!(plain.focus("username") && plain.next.is_empty() && plain.next_query().is_empty());
    }
}
