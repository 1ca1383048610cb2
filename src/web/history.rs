//! `GET /chat/{room}/history`: a room's older messages, a page at a time,
//! as JSON for the chat page's script (static/history.js), which asks for
//! the page before the oldest message it shows as the reader nears the top.
//!
//! It only reads: it never creates a room (a room that does not exist, or
//! that the user may not see, is the same 404) and so never counts against
//! the new-room quota. `{room}` is a room's name or `@username`. Like the page, it
//! needs a signed-in session (401 otherwise, as JSON, so the script can send
//! the reader to sign in) and slides it; or an access token
//! (`Authorization: Bearer`, what palaver-cli sends), which slides nothing.

use std::sync::Arc;

use warp::{
    http::{header, HeaderValue},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    caller::Callers,
    filters::{param, session, with},
};
use crate::{
    auth::{
        access::{RoomAccess, RoomRef},
        session::AuthSession,
        Sessions,
    },
    backend::History,
    clock::UnixMillis,
    error::Error,
    model::{Message, MessageId, RoomKind, User},
};

/// Messages per page when the request names no `limit` (what the page's
/// script asks for).
pub const DEFAULT_PAGE: usize = 50;

/// What the history route reads.
#[derive(Clone)]
pub struct RoomHistory {
    pub sessions: Sessions,
    /// Proves an access token, as for every route that takes one.
    pub callers: Callers,
    pub access: RoomAccess,
    pub history: Arc<dyn History>,
    /// The largest `limit` answered (`HISTORY_PAGE_MAX`).
    pub max_page: usize,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Query {
    before: Option<String>,
    limit: Option<String>,
}

/// One page: oldest first; `start` when nothing older is left.
#[derive(serde::Serialize)]
struct Page<'a> {
    messages: Vec<Item<'a>>,
    start: bool,
}

#[derive(serde::Serialize)]
struct Item<'a> {
    id: MessageId,
    user: &'a str,
    body: &'a str,
    sent_at: UnixMillis,
}

impl<'a> From<&'a Message> for Item<'a> {
    fn from(m: &'a Message) -> Self {
        Self { id: m.id, user: &m.user, body: &m.body, sent_at: m.sent_at }
    }
}

/// GET /chat/{room}/history?before=<id>&limit=<n>
pub fn route(rooms: RoomHistory) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // The query is read as text and parsed after the session check: a
    // signed-out request is a 401 whatever its query says.
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    param("room")
        .and(warp::header::value(header::AUTHORIZATION.as_str()).map(Some).or(warp::any().map(|| None)).unify())
        .and(session(rooms.sessions.clone()))
        .and(raw_query)
        .and(with(rooms))
        .and_then(
            |room: String,
             authorization: Option<HeaderValue>,
             session: AuthSession,
             query: String,
             rooms: RoomHistory| async move {
                let user = reader(authorization, session, &rooms.callers).await.map_err(Rejection::from)?;
                page(room, user, &query, &rooms).await.map_err(Rejection::from)
            },
        )
}

/// Who reads: the bearer of an access token (palaver-cli shows the last
/// messages before going live), proven where every route proves one
/// ([`Callers::bearer`]), else the session cookie's user. A token is sent by
/// no browser on its own, so it needs no origin check; a cookie reads only
/// what the same-origin policy lets its own page read.
async fn reader(authorization: Option<HeaderValue>, session: AuthSession, callers: &Callers) -> Result<User, Error> {
    match authorization {
        Some(value) => Ok(callers.bearer(&value).await?.user),
        None => Ok(session.current().await?.ok_or(Error::Unauthorized)?.user),
    }
}

async fn page(room: String, user: User, query: &str, rooms: &RoomHistory) -> Result<Response, Error> {
    let room = RoomRef::parse(&room).ok_or(Error::NoSuchRoom)?;
    let query: Query = serde_urlencoded::from_str(query).map_err(|_| Error::BadRequest("That query is malformed."))?;
    let before = match query.before.as_deref().filter(|b| !b.is_empty()) {
        None => None,
        Some(id) => Some(
            id.parse::<MessageId>()
                .map_err(|()| Error::BadRequest("before must be a message id, like 1732579200123-0."))?,
        ),
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE.min(rooms.max_page),
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=rooms.max_page).contains(n))
            .ok_or(Error::BadRequest("limit must be a whole number from 1 to the page size (HISTORY_PAGE_MAX)."))?,
    };
    let visible = rooms.access.check(user.id, &room).await?.visible().ok_or(Error::NoSuchRoom)?;
    let room = visible.room();
    let history = &*rooms.history;
    // A private room exists while the rule says it may be seen; a direct
    // room is its members' from its first message on (before it, its
    // history is empty, not missing).
    if visible.kind() == RoomKind::Public && !room.is_lobby() && !history.room_exists(room).await? {
        return Err(Error::NoSuchRoom);
    }
    // One more than asked tells whether anything older is left.
    let mut messages = match before {
        Some(before) => history.before(room, before, limit + 1).await?,
        None => history.recent(room, limit + 1).await?,
    };
    let start = messages.len() <= limit;
    if !start {
        messages.remove(0);
    }
    let page = Page { messages: messages.iter().map(Item::from).collect(), start };
    let mut res = warp::reply::json(&page).into_response();
    // It carries what a signed-in user may read: never kept by a cache.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
