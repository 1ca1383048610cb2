//! `GET /ws`: the upgrade, authenticated before anything is upgraded.
//!
//! This runs as a plain tower service behind the session layer (so the
//! request's `Session` is in its extensions) rather than as a warp filter:
//! warp's `ws()` cannot be given tungstenite's `read_buffer_size`, and its
//! default 128 KiB read buffer per socket is what makes idle sockets
//! expensive. Here the upgrade is taken from hyper directly and the
//! WebSocket is built with small buffers (see [`ws_config`]).
//!
//! Every check answers with a status before any 101: the origin (403: a GET
//! is not covered by the POST checks, and a browser sends cookies on
//! cross-site WebSocket upgrades), the query (400), the credential (an
//! access token in one of three places, a ticket, or the session cookie)
//! against the shared store (401, or 503 when the store does not answer),
//! whether the user may see the room (403, the same for a room that does
//! not exist as for one the user may not see; see [`RoomAccess`]), the
//! caps (503, 429). A room is named by its name or `@username`.
//!
//! Before the first check that waits on the store, the upgrade takes a
//! place among those in flight ([`Admission`]); with none free it is
//! answered 503 with `Retry-After` at once.

use std::sync::Arc;

use hyper::{body::Incoming, header, upgrade::OnUpgrade, Method, Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
    WebSocketStream,
};
use tower_sessions::Session;
use warp::Reply;

use super::{
    admission::{Admission, Shed},
    registry::{Full, Registry},
    socket::{self, Credential, SocketContext, SocketDeps},
};
use crate::{
    auth::{
        access::{Access, RoomAccess, RoomRef, Visible},
        tokens, Sessions, TokenCurrent,
    },
    clock::UnixMillis,
    meters::{outcome_of, Meters},
    model::{MessageId, RoomName},
    net::OriginPolicy,
};

/// Largest WebSocket frame or message a client may send (1009 above).
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

/// Small buffers: most sockets are idle most of the time, and tungstenite's
/// default 128 KiB read buffer would cost that much per socket.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Most frames from clients are small (a send, a pong); a big one
        // grows the buffer for the frame and costs a few more reads.
        .read_buffer_size(512)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// What the upgrade checks against and hands the socket to.
pub struct Upgrader {
    pub origins: Arc<OriginPolicy>,
    pub sessions: Sessions,
    pub access: RoomAccess,
    pub registry: Arc<Registry>,
    pub socket: Arc<SocketDeps>,
    pub meters: Meters,
    /// Shared with `POST /session/refresh`, which tells a browser when
    /// this instance is turning upgrades away.
    pub admission: Arc<Admission>,
}

type Response = warp::reply::Response;

/// An answer other than 101: its status and a sentence, and when to try
/// again if that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    message: &'static str,
    /// Whole seconds, for `Retry-After`.
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal { status, message, retry_after: None }
}

/// Every place for upgrades in flight is taken: 503, and when to come back.
fn busy(shed: Shed) -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "too many connections are being opened; try again shortly",
        retry_after: Some(shed.retry_after),
    }
}

impl Refusal {
    fn response(self) -> Response {
        let mut res = warp::reply::with_status(self.message, self.status).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // A 426 names the protocol to upgrade to.
            res.headers_mut().insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        res
    }
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[derive(serde::Deserialize)]
struct Query {
    room: Option<String>,
    after: Option<String>,
    /// `1` or `true`: this socket follows the user's other rooms' unread
    /// counts (docs/protocol.md §3.8); a page's one socket asks for it.
    unread: Option<String>,
    ticket: Option<String>,
    token: Option<String>,
}

/// The credential an upgrade presents: the first one present wins
/// (docs/protocol.md §5).
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    Bearer(String),
    /// `Sec-WebSocket-Protocol: jwt, <token>`: the 101 must answer `jwt`.
    Subprotocol(String),
    Ticket(String),
    QueryToken(String),
    Cookie,
}

fn presented(headers: &header::HeaderMap, query: &mut Query) -> Presented {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = authorization.and_then(tokens::bearer) {
        return Presented::Bearer(token.to_owned());
    }
    let protocols: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let ["jwt", token, ..] = protocols.as_slice() {
        return Presented::Subprotocol((*token).to_owned());
    }
    if let Some(ticket) = query.ticket.take() {
        return Presented::Ticket(ticket);
    }
    if let Some(token) = query.token.take() {
        return Presented::QueryToken(token);
    }
    Presented::Cookie
}

/// The store did not answer: 503, and the client tries again.
fn unavailable(err: &dyn std::fmt::Display) -> Refusal {
    tracing::warn!(%err, "upgrade refused: store unavailable");
    refuse(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
}

/// Who the upgrade proved it is.
struct Proven {
    user: crate::model::User,
    session_id: tower_sessions::session::Id,
    credential: Credential,
    expires_at: UnixMillis,
}

/// Checks the credential against the store: `Err` is the refusal.
async fn prove(upgrader: &Upgrader, req: &Request<Incoming>, presented: Presented) -> Result<Proven, Refusal> {
    let sessions = &upgrader.sessions;
    let token = |current: TokenCurrent| Proven {
        credential: Credential::Token { sid: current.sid, expires_at: current.token_expires_at },
        user: current.user,
        session_id: current.session_id,
        expires_at: current.expires_at,
    };
    match presented {
        Presented::Bearer(t) | Presented::Subprotocol(t) | Presented::QueryToken(t) => {
            match sessions.authenticate_token(&t).await {
                Ok(Ok(current)) => {
                    upgrader.meters.token_check("valid");
                    Ok(token(current))
                }
                Ok(Err(err)) => {
                    upgrader.meters.token_check("invalid");
                    tracing::debug!(%err, "upgrade refused: token");
                    Err(refuse(StatusCode::UNAUTHORIZED, "invalid or expired token"))
                }
                Err(err) => {
                    upgrader.meters.token_check("unavailable");
                    Err(unavailable(&err))
                }
            }
        }
        Presented::Ticket(ticket) => match sessions.redeem_ticket(&ticket).await {
            Ok(Some(current)) => Ok(token(current)),
            Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, "invalid, expired or spent ticket")),
            Err(err) => Err(unavailable(&err)),
        },
        Presented::Cookie => {
            let Some(session) = req.extensions().get::<Session>().cloned() else {
                return Err(refuse(StatusCode::UNAUTHORIZED, "not signed in"));
            };
            match sessions.refresh(&sessions.cookie(session)).await {
                Ok(Some(current)) => Ok(Proven {
                    user: current.user,
                    session_id: current.session_id,
                    credential: Credential::Cookie,
                    expires_at: current.expires_at,
                }),
                Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, "not signed in")),
                Err(err) => Err(unavailable(&err)),
            }
        }
    }
}

/// Handles `GET /ws`, counted and timed by outcome.
pub async fn handle(upgrader: Arc<Upgrader>, req: Request<Incoming>) -> Response {
    let started = std::time::Instant::now();
    let meters = upgrader.meters.clone();
    let res = upgrade(upgrader, req).await.unwrap_or_else(Refusal::response);
    meters.upgrade(outcome_of(res.status()), started.elapsed());
    res
}

/// Every check in order, then the 101 and the socket's task.
async fn upgrade(upgrader: Arc<Upgrader>, mut req: Request<Incoming>) -> Result<Response, Refusal> {
    let accept = handshake(&req)?;
    if upgrader.origins.check(req.headers()).is_err() {
        tracing::warn!(origin = ?req.headers().get(header::ORIGIN), "cross-origin WebSocket upgrade refused");
        return Err(refuse(StatusCode::FORBIDDEN, "cross-origin WebSocket refused"));
    }
    let (wanted, mut query) = wanted(&req)?;
    let presented = presented(req.headers(), &mut query);
    let subprotocol = matches!(presented, Presented::Subprotocol(_));
    // Held until this returns: the 101, or any refusal.
    let _pending = upgrader.admission.enter().map_err(busy)?;
    let current = prove(&upgrader, &req, presented).await?;
    // Before the check: a removal applied between the check and the
    // socket's registration is found by the registration.
    let epoch = upgrader.registry.epoch();
    let room = see(&upgrader.access, &current, &wanted.room).await?;
    let slot = upgrader.registry.reserve(current.user.id, current.session_id).map_err(|full| match full {
        Full::Instance => refuse(StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
        Full::User => refuse(StatusCode::TOO_MANY_REQUESTS, "too many sockets for this user"),
        Full::Session => refuse(StatusCode::TOO_MANY_REQUESTS, "too many sockets for this session"),
    })?;
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return Err(refuse(StatusCode::BAD_REQUEST, "connection cannot be upgraded"));
    };
    let context = SocketContext {
        session_id: current.session_id,
        user: current.user,
        credential: current.credential,
        room,
        epoch,
        after: wanted.after,
        unread: wanted.unread,
        expires_at: current.expires_at,
        slot,
    };
    tokio::spawn(open(Box::new((upgrader.socket.clone(), on_upgrade, context))));
    Ok(switching(accept, subprotocol))
}

/// Checks the request is a WebSocket handshake this server speaks (405,
/// 426, 400 otherwise); the `Sec-WebSocket-Accept` it is answered with.
fn handshake(req: &Request<Incoming>) -> Result<String, Refusal> {
    if req.method() != Method::GET {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET to open a WebSocket"));
    }
    if !header_has_token(req, header::UPGRADE, "websocket") {
        return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this endpoint speaks WebSocket only"));
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = req.headers().get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    match (key, version_ok, header_has_token(req, header::CONNECTION, "upgrade"), req.version()) {
        (Some(accept), true, true, Version::HTTP_11) => Ok(accept),
        _ => Err(refuse(StatusCode::BAD_REQUEST, "malformed WebSocket handshake")),
    }
}

/// What the socket is asked to be: its room, where its replay starts, and
/// whether it follows unread counts.
struct Wanted {
    room: RoomRef,
    after: Option<MessageId>,
    unread: bool,
}

/// Reads the query (400 when any of it is malformed); the query's
/// credentials are left in it for [`presented`].
fn wanted(req: &Request<Incoming>) -> Result<(Wanted, Query), Refusal> {
    let query: Query = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "malformed query"))?;
    let room = match query.room.as_deref() {
        None => RoomRef::Named(RoomName::lobby()),
        Some(name) => RoomRef::parse(name).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "invalid room name"))?,
    };
    let after = match query.after.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(after) => {
            Some(after.parse::<MessageId>().map_err(|()| refuse(StatusCode::BAD_REQUEST, "invalid after id"))?)
        }
    };
    let unread = match query.unread.as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(_) => return Err(refuse(StatusCode::BAD_REQUEST, "invalid unread: 1 or 0")),
    };
    Ok((Wanted { room, after, unread }, query))
}

/// Asks whether the proven user may see the room: 403 when not, before
/// anything of it is sent (and with the same words whether it exists or
/// not); 503 when the store does not answer.
async fn see(access: &RoomAccess, current: &Proven, room: &RoomRef) -> Result<Visible, Refusal> {
    match access.check(current.user.id, room).await {
        Ok(Access::Visible(room)) => Ok(room),
        Ok(Access::Hidden) => Err(refuse(StatusCode::FORBIDDEN, "no such room, or you are not a member")),
        Err(err) => Err(unavailable(&err)),
    }
}

/// What a socket's task starts from.
pub(crate) type Opening = (Arc<SocketDeps>, OnUpgrade, SocketContext);

/// Once hyper hands over the connection: the WebSocket, with small
/// buffers, and its task. Everything up to the socket's loop runs boxed,
/// and the task holds what it starts from in a box too: a task's state is
/// sized for the largest of its steps and kept for its whole life, so an
/// idle socket then costs its loop, not its start (BENCHMARKS.md, idle
/// sockets).
pub(crate) async fn open(opening: Box<Opening>) {
    let live = Box::pin(async move {
        let (deps, on_upgrade, context) = *opening;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config())).await;
                socket::start(deps, ws, context).await
            }
            Err(err) => {
                tracing::debug!(%err, "upgrade did not complete");
                None
            }
        }
    })
    .await;
    if let Some(live) = live {
        live.run().await;
    }
}

/// The 101. A socket opened with the `jwt` subprotocol is answered with
/// the protocol's name, never the token.
fn switching(accept: String, subprotocol: bool) -> Response {
    let mut res = warp::reply::reply().into_response();
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("base64 is a valid header value"));
    if subprotocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static("jwt"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(ticket: Option<&str>, token: Option<&str>) -> Query {
        Query { room: None, after: None, unread: None, ticket: ticket.map(Into::into), token: token.map(Into::into) }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> header::HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn the_first_credential_present_wins() {
        let all = headers(&[("authorization", "Bearer b"), ("sec-websocket-protocol", "jwt, s")]);
        assert_eq!(presented(&all, &mut query(Some("k"), Some("q"))), Presented::Bearer("b".into()));
        let proto = headers(&[("sec-websocket-protocol", "jwt, s")]);
        assert_eq!(presented(&proto, &mut query(Some("k"), Some("q"))), Presented::Subprotocol("s".into()));
        assert_eq!(presented(&headers(&[]), &mut query(Some("k"), Some("q"))), Presented::Ticket("k".into()));
        assert_eq!(presented(&headers(&[]), &mut query(None, Some("q"))), Presented::QueryToken("q".into()));
        assert_eq!(presented(&headers(&[]), &mut query(None, None)), Presented::Cookie);
        // Other schemes and subprotocols are not tokens.
        let basic = headers(&[("authorization", "Basic abc"), ("sec-websocket-protocol", "chat")]);
        assert_eq!(presented(&basic, &mut query(None, None)), Presented::Cookie);
        let lower = headers(&[("authorization", "bearer b")]);
        assert_eq!(presented(&lower, &mut query(None, None)), Presented::Bearer("b".into()));
    }
}
