//! `/api/rooms` and `/api/direct`: rooms, their members, and direct
//! conversations, as JSON (docs/protocol.md §6).
//!
//! Every route acts for the caller ([`caller`]: a Bearer token, or the
//! session cookie from this site's pages) and asks the access rule before
//! anything else, through [`Memberships`]: a room the caller may not see
//! is answered exactly as a room that does not exist (404 `not_found`).
//! Every 4xx/5xx is `{"error": "<code>", "message": "…"}`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
    Filter, Rejection, Reply,
};

use super::{
    api::{self, json_body, unreadable},
    caller::{caller, Callers},
    filters::{param, with},
};
use crate::{
    auth::{
        access::{RoomAccess, RoomRef},
        memberships::{Memberships, Refused},
    },
    backend::History,
    error::{Error, NO_SUCH_ROOM},
    model::{MessageId, Role, RoomKind, RoomName, User},
    realtime::{
        reads::ReadBudget,
        unread::{Reader, Starts, Unread},
    },
};

/// What the room routes use.
#[derive(Clone)]
pub struct RoomsApi {
    pub callers: Callers,
    pub memberships: Memberships,
    pub access: RoomAccess,
    /// Read markers and messages, for the unread counts of `GET /api/rooms`.
    pub history: Arc<dyn History>,
    /// The sockets' budget of such reads, which these counts share.
    pub reads: ReadBudget,
}

/// The answer to each refusal (docs/protocol.md §6 lists the codes).
fn refused(refused: Refused) -> Response {
    let (status, code, message) = match refused {
        Refused::NotFound => (StatusCode::NOT_FOUND, "not_found", NO_SUCH_ROOM),
        Refused::NoSuchUser => (StatusCode::NOT_FOUND, "no_such_user", "No user has that name."),
        Refused::Direct => (StatusCode::CONFLICT, "direct_room", "A direct conversation's members never change."),
        Refused::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Only the room's owner removes other members."),
        Refused::RoomFull => {
            (StatusCode::CONFLICT, "room_full", "The room has as many members as a room may have (MAX_ROOM_MEMBERS).")
        }
        Refused::TooManyRooms => (
            StatusCode::CONFLICT,
            "too_many_rooms",
            "The user is a member of as many private rooms as one may be (MAX_PRIVATE_ROOMS_PER_USER).",
        ),
        Refused::Yourself => (StatusCode::UNPROCESSABLE_ENTITY, "yourself", "A conversation needs someone else."),
        Refused::NameTaken => (StatusCode::CONFLICT, "name_taken", "A room of that name exists."),
        Refused::Quota(retry_after) => {
            let mut res = api::error(
                StatusCode::TOO_MANY_REQUESTS,
                "room_quota",
                "You have made many new rooms lately (ROOMS_PER_USER_PER_HOUR); try again later.",
            );
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            return res;
        }
    };
    api::error(status, code, message)
}

fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}

/// The answer of a change: 204, or its refusal.
fn done(outcome: Result<(), Refused>) -> Response {
    outcome.map_or_else(refused, |()| no_content())
}

/// A room as the API lists it.
#[derive(Serialize)]
struct RoomView {
    /// What the caller calls it: `deploys`, or `@bob`.
    name: String,
    visibility: RoomKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unread: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mentions: Option<u32>,
}

#[derive(Deserialize)]
struct NewRoom {
    name: String,
    /// `private` (when absent) or `public`.
    #[serde(default)]
    visibility: Option<RoomKind>,
}

/// POST /api/rooms
pub fn create(api: RoomsApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller(api.callers.clone()).and(json_body::<NewRoom>()).and(with(api)).and_then(
        |user: User, body: Result<NewRoom, serde_json::Error>, api: RoomsApi| async move {
            let body = match body {
                Ok(body) => body,
                Err(err) => return Ok::<_, Rejection>(unreadable(err)),
            };
            create_room(user, body, &api).await.map_err(Rejection::from)
        },
    )
}

async fn create_room(user: User, body: NewRoom, api: &RoomsApi) -> Result<Response, Error> {
    let Some(room) = RoomName::parse(&body.name) else {
        let message = "Room names are 1 to 32 characters: a-z, 0-9 and -.";
        return Ok(api::error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name", message));
    };
    let kind = match body.visibility.unwrap_or(RoomKind::Private) {
        RoomKind::Direct => {
            let message = "visibility is private or public; a direct conversation is POST /api/direct.";
            return Ok(api::error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message));
        }
        kind => kind,
    };
    if let Err(refusal) = api.memberships.create(&user, &room, kind).await? {
        return Ok(refused(refusal));
    }
    let role = (kind == RoomKind::Private).then_some(Role::Owner);
    let view = RoomView { name: room.to_string(), visibility: kind, role, unread: None, mentions: None };
    Ok(warp::reply::with_status(warp::reply::json(&view), StatusCode::CREATED).into_response())
}

/// GET /api/rooms
pub fn list(api: RoomsApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller(api.callers.clone())
        .and(with(api))
        .and_then(|user: User, api: RoomsApi| async move { list_rooms(user, &api).await.map_err(Rejection::from) })
}

/// Every room the user's sidebar lists, with its unread and mention
/// counts, counted as a socket counts them (from where [`Starts`] says).
async fn list_rooms(user: User, api: &RoomsApi) -> Result<Response, Error> {
    let ((listed, inbox), markers) = tokio::try_join!(api.access.listed(user.id), api.history.read_markers(user.id))?;
    let starts = Starts::new(markers, &inbox);
    let reader = Reader::new(user.name.as_str().into());
    let newest = MessageId { ms: u64::MAX, seq: u64::MAX };
    let counts = futures_util::future::join_all(listed.iter().map(|visible| {
        Unread::stored(&*api.history, &api.reads, &reader, visible.room(), starts.of(visible.room()), newest)
    }))
    .await;
    let rooms: Vec<RoomView> = listed
        .iter()
        .zip(counts)
        .map(|(visible, count)| RoomView {
            name: visible.label().to_string(),
            visibility: visible.kind(),
            role: visible.role(),
            unread: Some(count.unread),
            mentions: Some(count.mentions),
        })
        .collect();
    let mut res = warp::reply::json(&serde_json::json!({ "rooms": rooms })).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// A room named in a path: a name, `@user` or `%40user`; a name that is
/// neither is a room that does not exist.
fn room_ref(raw: &str) -> Result<RoomRef, Refused> {
    RoomRef::parse(raw).ok_or(Refused::NotFound)
}

#[derive(Serialize)]
struct MemberView {
    user: String,
    role: Role,
}

/// GET /api/rooms/{name}/members
pub fn members(api: RoomsApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller(api.callers.clone()).and(param("name")).and(with(api)).and_then(
        |user: User, name: String, api: RoomsApi| async move {
            let listed = match room_ref(&name) {
                Ok(room) => api.memberships.members(&user, &room).await.map_err(|e| Rejection::from(Error::from(e)))?,
                Err(refusal) => Err(refusal),
            };
            Ok::<_, Rejection>(match listed {
                Ok(members) => {
                    let members: Vec<MemberView> =
                        members.into_iter().map(|m| MemberView { user: m.name, role: m.role }).collect();
                    let mut res = warp::reply::json(&serde_json::json!({ "members": members })).into_response();
                    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    res
                }
                Err(refusal) => refused(refusal),
            })
        },
    )
}

/// PUT /api/rooms/{name}/members/{username} (`add`) and DELETE (`!add`).
pub fn member(api: RoomsApi, add: bool) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller(api.callers.clone()).and(param("name")).and(param("username")).and(with(api)).and_then(
        move |user: User, name: String, username: String, api: RoomsApi| async move {
            let room = match room_ref(&name) {
                Ok(room) => room,
                Err(refusal) => return Ok(refused(refusal)),
            };
            let outcome = match add {
                true => api.memberships.add(&user, &room, &username).await,
                false => api.memberships.remove(&user, &room, &username).await,
            };
            outcome.map(done).map_err(|e| Rejection::from(Error::from(e)))
        },
    )
}

#[derive(Deserialize)]
struct NewDirect {
    user: String,
}

/// POST /api/direct
pub fn direct(api: RoomsApi) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    caller(api.callers.clone()).and(json_body::<NewDirect>()).and(with(api)).and_then(
        |user: User, body: Result<NewDirect, serde_json::Error>, api: RoomsApi| async move {
            let body = match body {
                Ok(body) => body,
                Err(err) => return Ok::<_, Rejection>(unreadable(err)),
            };
            let outcome =
                api.memberships.direct(&user, &body.user).await.map_err(|e| Rejection::from(Error::from(e)))?;
            Ok(match outcome {
                Ok(room) => warp::reply::json(&serde_json::json!({ "room": room })).into_response(),
                Err(refusal) => refused(refusal),
            })
        },
    )
}
