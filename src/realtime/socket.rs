//! One socket's task: from `hello` to its close code.
//!
//! A single task per socket owns the WebSocket and selects over: its close
//! signal (logout, revocation, shutdown, slow consumer), its outbox (chat
//! messages and presence from the registry), incoming frames, the ping
//! timer, and the session deadline timer. Nothing else touches the socket,
//! so there is no lock per message.

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{mpsc, oneshot},
    time::{timeout, Instant},
};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame},
        Bytes, Error as WsError, Message as WsMessage, Utf8Bytes,
    },
    WebSocketStream,
};
use tower_sessions::session::Id;

use super::{
    deadline::{Deadline, Lookup, Step},
    hub::Hub,
    limits::{Strikes, TokenBucket},
    presence::Presence,
    registry::{ConnId, Outbound, Registration, Registry, Slot},
    unread::{Reader, Unread},
};
use crate::{
    auth::{
        access::{RoomAccess, Visible},
        Sessions,
    },
    backend::History,
    clock::UnixMillis,
    meters::Meters,
    model::{clean_body, Appended, MessageId, NewMessage, RoomName, User, MAX_CLIENT_ID_CHARS},
    protocol::{self as frames, ClientFrame, CloseReason, ErrorCode, ServerFrame},
};

/// Queued frames per socket before it counts as not reading. Tokio's channel
/// allocates in small blocks as it fills, so an idle socket costs little.
const OUTBOX_CAPACITY: usize = 1024;
/// Messages per replay page. A page is read, written and flushed before
/// the next is read, so replay runs at the pace the client reads, and a
/// client that does not read holds one page, never the room. (At 2000
/// characters a message, a page is at most ~0.5 MB; typically a few KB.)
const REPLAY_PAGE: usize = 32;
/// Frames written per flush when the outbox has a backlog.
const WRITE_BATCH: usize = 64;
/// A write that cannot complete in this long means a dead or stuck peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Invalid frames tolerated per minute before 1008.
const MAX_INVALID_PER_MINUTE: usize = 20;
/// Frames refused as `rate_limited` in a row before 1008.
const MAX_FLOOD: u32 = 10;
const READ_NOT_STORED: &str = "The read marker was not stored; send it again.";

/// The unread count of `room` for `reader` from the store: the messages
/// after their read marker up to `cursor` ([`Unread::of_page`]). A room
/// never marked read counts none: what arrives from now on counts.
async fn stored_unread(
    history: &dyn History,
    reader: &Reader,
    room: &RoomName,
    marker: Option<MessageId>,
    cursor: MessageId,
) -> Unread {
    let Some(marker) = marker.filter(|m| *m < cursor) else { return Unread::default() };
    match history.after(room, marker, Unread::PAGE).await {
        Ok(page) => Unread::of_page(reader, &page, cursor),
        Err(err) => {
            tracing::warn!(%err, %room, "unread count not read: store unavailable");
            Unread::default()
        }
    }
}

/// The runtime instant of a wall-clock time (now, if it has passed).
fn instant_at(at: UnixMillis) -> Instant {
    Instant::now() + UnixMillis::now().until(at)
}

/// The per-socket limits from the configuration.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    /// Sustained `send` frames per second, and the burst above it.
    pub message_rate: f64,
    pub message_burst: u32,
    /// The pace `hello` announces: this socket's, or the user's when that
    /// is lower (the user's is shared by all their sockets).
    pub announced: frames::Rate,
    pub ping_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is dropped.
    pub idle_timeout: Duration,
    /// How long before its deadline a socket is told to re-authenticate.
    pub reauth_warning: Duration,
}

/// What every socket task uses; one shared copy for all of them.
pub struct SocketDeps {
    pub sessions: Sessions,
    /// Which rooms' unread counts a socket follows.
    pub access: RoomAccess,
    pub history: Arc<dyn History>,
    pub registry: Arc<Registry>,
    pub hub: Hub,
    pub presence: Presence,
    pub meters: Meters,
    pub limits: SocketLimits,
}

/// What the socket was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The session cookie.
    Cookie,
    /// An access token (or a ticket) of token session `sid`; the token
    /// expires at `expires_at` (a ticket's socket has none: it lives as its
    /// session does until its first `reauth` brings a token).
    Token { sid: String, expires_at: Option<UnixMillis> },
}

/// Who a new socket belongs to, as the upgrade established it.
pub struct SocketContext {
    pub session_id: Id,
    pub user: User,
    pub credential: Credential,
    /// The room, as the upgrade was allowed to open it.
    pub room: Visible,
    pub after: Option<MessageId>,
    /// Whether the socket follows the user's other rooms' unread counts.
    pub unread: bool,
    /// The session's expiry: with the token's, the socket's first deadline.
    pub expires_at: UnixMillis,
    pub slot: Slot,
}

/// What the loop does next.
enum Flow {
    Continue,
    Close(CloseReason),
    /// The peer is gone or broken: no close handshake.
    Drop,
}

/// Removes the socket from the registry however its task ends.
struct Registered {
    deps: Arc<SocketDeps>,
    id: ConnId,
    room: RoomName,
    name: Arc<str>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.deps.registry.remove(self.id);
        self.deps.presence.touched(&self.room, &self.name);
    }
}

struct Socket<S> {
    deps: Arc<SocketDeps>,
    ws: WebSocketStream<S>,
    session_id: Id,
    user: User,
    credential: Credential,
    name: Arc<str>,
    room: RoomName,
    /// The newest message id this socket has sent, or the client had seen
    /// when it joined: nothing at or before it is sent again, which makes
    /// replay and live delivery meet seamlessly.
    last_sent: MessageId,
    /// When the session ends unless it is found slid or re-authenticated.
    deadline: Deadline,
    last_seen: Instant,
    bucket: TokenBucket,
    flood: u32,
    invalid: Strikes,
}

/// Runs a socket to its end.
pub async fn serve<S>(deps: Arc<SocketDeps>, ws: WebSocketStream<S>, ctx: SocketContext)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _slot = ctx.slot;
    let now = Instant::now();
    let name: Arc<str> = ctx.user.name.as_str().into();
    let limits = &deps.limits;
    // On the heap: the task's future then holds a pointer, and the futures
    // of its methods borrow it instead of each keeping a copy in the task's
    // state (which is what an idle socket costs for its whole life).
    let mut socket = Box::new(Socket {
        bucket: TokenBucket::new(limits.message_rate, limits.message_burst, now.into_std()),
        invalid: Strikes::new(MAX_INVALID_PER_MINUTE, Duration::from_secs(60)),
        deadline: Deadline::new(
            ctx.expires_at,
            match &ctx.credential {
                Credential::Token { expires_at, .. } => *expires_at,
                Credential::Cookie => None,
            },
            limits.reauth_warning,
        ),
        credential: ctx.credential,
        deps: deps.clone(),
        ws,
        session_id: ctx.session_id,
        user: ctx.user,
        name: name.clone(),
        room: ctx.room.into_room(),
        last_sent: MessageId::ZERO,
        last_seen: now,
        flood: 0,
    });

    let start = match deps.hub.start_for(&socket.room).await {
        Ok(start) => start,
        Err(err) => {
            tracing::warn!(%err, "socket refused after upgrade: store unavailable");
            return socket.close(frames::STORE_UNAVAILABLE).await;
        }
    };
    // An `after` past the room's cursor: the client saw messages this
    // instance's tail has not handed out yet (through another instance, or
    // just before it reconnected). They come live, and are not sent again.
    // The store's newest id, read before the socket joins, bounds what is
    // skipped, so an `after` beyond it (a far-future id, or one from a store
    // since emptied) is read as that newest message: what is stored once
    // the socket has joined still reaches it.
    let seen = match ctx.after {
        Some(after) if after > start => match deps.history.last_id(&socket.room).await {
            Ok(newest) => after.min(newest),
            Err(err) => {
                tracing::warn!(%err, "socket refused after upgrade: store unavailable");
                return socket.close(frames::STORE_UNAVAILABLE).await;
            }
        },
        _ => MessageId::ZERO,
    };
    let (outbox_tx, mut outbox) = mpsc::channel(OUTBOX_CAPACITY);
    let unread_outbox = ctx.unread.then(|| outbox_tx.clone());
    let (close_tx, mut close_rx) = oneshot::channel();
    let joined = deps.registry.register(Registration {
        session: socket.session_id,
        user: socket.user.id,
        name: name.clone(),
        room: socket.room.clone(),
        outbox: outbox_tx,
        close: close_tx,
        room_start: start,
    });
    let _registered = Registered { deps: deps.clone(), id: joined.id, room: socket.room.clone(), name };
    let _open = deps.meters.socket_opened();
    deps.presence.touched(&socket.room, &socket.name);
    if joined.new_room {
        // The tail may be blocked on the old room set: make it look again.
        deps.hub.follow_new_room(&socket.room).await;
    }
    socket.last_sent = joined.cursor.max(seen);

    let mut flow = Box::pin(socket.greet(ctx.after)).await;
    if let (Flow::Continue, Some(outbox_tx)) = (&flow, unread_outbox) {
        flow = Box::pin(socket.follow_unread(joined.id, outbox_tx)).await;
    }
    if let Flow::Continue = flow {
        flow = socket.run(&mut outbox, &mut close_rx).await;
    }
    match flow {
        Flow::Close(reason) => socket.close(reason).await,
        Flow::Continue | Flow::Drop => {}
    }
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `hello`, the room's presence, then every stored message after `after`.
    async fn greet(&mut self, after: Option<MessageId>) -> Flow {
        let hello = ServerFrame::Hello {
            user: &self.user.name,
            room: &self.room,
            expires_at: self.deadline.at(),
            rate: self.deps.limits.announced,
            read_markers: true,
        }
        .to_text();
        let (online, count) = self.deps.presence.snapshot(&self.room).await;
        let presence = ServerFrame::Presence { room: &self.room, online: &online, count }.to_text();
        if let flow @ (Flow::Drop | Flow::Close(_)) = self.write([hello, presence]).await {
            return flow;
        }
        let Some(after) = after else { return Flow::Continue };
        // Everything after the room's cursor at registration (`last_sent`)
        // reaches this socket live, so replay covers (after, last_sent].
        // An `after` beyond it replays nothing.
        let until = self.last_sent;
        let mut cursor = after;
        while cursor < until {
            let page = match self.deps.history.after(&self.room, cursor, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    // Closing (rather than going on without the replay) keeps
                    // the promise of no gap: the client reconnects with the
                    // same `after` once the store is back.
                    tracing::warn!(%err, "replay failed: store unavailable");
                    return Flow::Close(frames::STORE_UNAVAILABLE);
                }
            };
            let full = page.len() == REPLAY_PAGE;
            let frames: Vec<Utf8Bytes> =
                page.iter().take_while(|m| m.id <= until).map(|m| frames::message(&self.room, m)).collect();
            let Some(last) = page.last() else { break };
            cursor = last.id;
            drop(page);
            if let flow @ (Flow::Drop | Flow::Close(_)) = self.write(frames).await {
                return flow;
            }
            if !full {
                break;
            }
        }
        Flow::Continue
    }

    /// Starts counting the unread messages of the user's other listed rooms
    /// ([`RoomAccess::listed`], as the page's sidebar shows them): from
    /// the store up to each room's cursor, then as messages are delivered
    /// (the registry counts those). Sends the counts that are not zero. A
    /// store failure here costs the counts, not the socket.
    async fn follow_unread(&mut self, id: ConnId, outbox: mpsc::Sender<Outbound>) -> Flow {
        let (deps, user) = (self.deps.clone(), self.user.id);
        let found = tokio::try_join!(deps.access.listed(user), deps.history.read_markers(user));
        let (listed, markers) = match found {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(%err, "no unread counts for this socket: store unavailable");
                return Flow::Continue;
            }
        };
        let rooms: Vec<RoomName> =
            listed.into_iter().map(Visible::into_room).filter(|room| *room != self.room).collect();
        let starts = futures_util::future::join_all(rooms.iter().map(|r| deps.hub.start_for(r))).await;
        let rooms: Vec<(RoomName, MessageId)> =
            rooms.into_iter().zip(starts).filter_map(|(room, start)| Some((room, start.ok()?))).collect();
        let (cursors, new_rooms) = deps.registry.watch(id, &outbox, &rooms);
        drop(outbox);
        // Their groups' tails, not this socket's room's: on a cluster they
        // may be other groups.
        deps.hub.follow_new_rooms(&new_rooms).await;
        let reader = Reader::new(self.name.clone());
        let counts =
            futures_util::future::join_all(cursors.iter().map(|(room, cursor)| {
                stored_unread(&*deps.history, &reader, room, markers.get(room).copied(), *cursor)
            }))
            .await;
        let mut out = Vec::new();
        for ((room, _), stored) in cursors.iter().zip(counts) {
            match deps.registry.settle_unread(id, room, stored) {
                Some(count) if !count.is_zero() => out.push(count.frame(room)),
                _ => {}
            }
        }
        self.write(out).await
    }

    async fn run(
        &mut self,
        outbox: &mut mpsc::Receiver<Outbound>,
        close_rx: &mut oneshot::Receiver<CloseReason>,
    ) -> Flow {
        let (ping_every, idle_limit) = (self.deps.limits.ping_interval, self.deps.limits.idle_timeout);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut armed_for = self.deadline.wake_at();
        let timer = tokio::time::sleep_until(instant_at(armed_for));
        tokio::pin!(timer);

        loop {
            let flow = tokio::select! {
                biased;
                reason = &mut *close_rx => match reason {
                    Ok(reason) => Flow::Close(reason),
                    // The registry dropped the sender: it is going away.
                    Err(_) => Flow::Close(frames::SHUTTING_DOWN),
                },
                out = outbox.recv() => match out {
                    Some(out) => self.forward(out, outbox).await,
                    None => Flow::Close(frames::SHUTTING_DOWN),
                },
                frame = self.ws.next() => Box::pin(self.incoming(frame)).await,
                _ = ping.tick() => {
                    if self.last_seen.elapsed() > idle_limit {
                        tracing::debug!(user = %self.user.name, "dropping a socket that stopped answering pings");
                        Flow::Drop
                    } else {
                        self.write_message(WsMessage::Ping(Bytes::new())).await
                    }
                },
                _ = &mut timer => {
                    // Re-armed below even if the target did not move (a
                    // timer that fired a hair early waits again).
                    armed_for = UnixMillis::EPOCH;
                    Box::pin(self.on_timer()).await
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
            if self.deadline.wake_at() != armed_for {
                armed_for = self.deadline.wake_at();
                timer.as_mut().reset(instant_at(armed_for));
            }
        }
    }

    /// Asks the store whether this is still the user's live session.
    async fn recheck(&mut self) -> Lookup {
        let sessions = &self.deps.sessions;
        let found = match &self.credential {
            Credential::Cookie => {
                sessions.lookup(&self.session_id).await.map(|live| live.map(|live| (live.user.id, live.expires_at)))
            }
            Credential::Token { sid, .. } => sessions
                .token_session(sid, self.user.id)
                .await
                .map(|live| live.map(|live| (live.user.id, live.expires_at))),
        };
        if let Err(err) = &found {
            tracing::warn!(%err, "session not re-checked: store unavailable");
        }
        Lookup::judge(found, self.user.id, UnixMillis::now())
    }

    async fn on_timer(&mut self) -> Flow {
        let step = match self.deadline.on_timer(UnixMillis::now()) {
            Step::Recheck => {
                let found = self.recheck().await;
                self.deadline.at_deadline(UnixMillis::now(), found)
            }
            step => step,
        };
        self.carry_out(step).await
    }

    async fn on_reauth(&mut self, token: Option<String>) -> Flow {
        if let Err(flow) = self.rate_limit(None).await {
            return flow;
        }
        self.flood = 0;
        // A token socket proves itself with a new token of the same user
        // and session; anything else ends it.
        let token_expires_at = match &self.credential {
            Credential::Cookie => None,
            Credential::Token { sid, .. } => {
                let claims = token.as_deref().map(|t| self.deps.sessions.verify_token(t));
                match claims {
                    Some(Ok(claims)) if claims.sub == self.user.id && claims.sid == *sid => Some(claims.expires_at()),
                    Some(Err(err)) => {
                        tracing::info!(%err, user = %self.user.name, "reauth with an invalid token");
                        return Flow::Close(frames::INVALID_TOKEN);
                    }
                    _ => return Flow::Close(frames::INVALID_TOKEN),
                }
            }
        };
        let found = self.recheck().await;
        let step = self.deadline.on_reauth(UnixMillis::now(), token_expires_at, found);
        self.carry_out(step).await
    }

    /// Does what the deadline decided.
    async fn carry_out(&mut self, step: Step) -> Flow {
        match step {
            Step::Wait | Step::Recheck => Flow::Continue,
            Step::Warn(expires_at) => self.write([ServerFrame::Reauthenticate { expires_at }.to_text()]).await,
            Step::Reauthenticated(expires_at) => {
                self.write([ServerFrame::Reauthenticated { expires_at }.to_text()]).await
            }
            Step::RetryLater => {
                self.error(ErrorCode::Unavailable, "The session could not be checked; try again.", None).await
            }
            Step::Expire => Flow::Close(frames::SESSION_EXPIRED),
            Step::TokenExpired => Flow::Close(frames::TOKEN_EXPIRED),
            // Unverifiable is not valid: the socket does not outlive the
            // deadline it knows. 1013 makes the client come back later.
            Step::StoreUnavailable => Flow::Close(frames::STORE_UNAVAILABLE),
        }
    }

    async fn incoming(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Flow {
        let message = match frame {
            None => return Flow::Drop,
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(_))) => return Flow::Close(frames::TOO_BIG),
            Some(Err(WsError::Protocol(err))) => {
                tracing::debug!(%err, "WebSocket protocol error");
                return Flow::Close(frames::PROTOCOL_ERROR);
            }
            Some(Err(WsError::Utf8(_))) => return Flow::Close(frames::INVALID_TEXT),
            Some(Err(err)) => {
                tracing::debug!(%err, "socket read failed");
                return Flow::Drop;
            }
        };
        self.last_seen = Instant::now();
        match message {
            WsMessage::Text(text) => match serde_json::from_str::<ClientFrame>(&text) {
                // Boxed: their futures are large and would otherwise be part
                // of every idle socket's task for its whole life.
                Ok(ClientFrame::Send { body, client_id }) => Box::pin(self.on_send(body, client_id)).await,
                Ok(ClientFrame::Reauth { token }) => Box::pin(self.on_reauth(token)).await,
                Ok(ClientFrame::Read { up_to }) => Box::pin(self.on_read(up_to)).await,
                Err(_) => self.refuse("Frames are JSON objects with a known \"type\".", None).await,
            },
            WsMessage::Binary(_) => self.refuse("Binary frames are not accepted.", None).await,
            // Pongs only prove liveness; tungstenite answers pings itself.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Flow::Continue,
            // tungstenite has queued the reply to the peer's close.
            WsMessage::Close(_) => {
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                Flow::Drop
            }
        }
    }

    /// Answers an invalid frame; too many in a minute end the socket.
    async fn refuse(&mut self, message: &str, client_id: Option<&str>) -> Flow {
        if self.invalid.hit(Instant::now().into_std()) {
            return Flow::Close(frames::POLICY_VIOLATION);
        }
        self.error(ErrorCode::Invalid, message, client_id).await
    }

    async fn error(&mut self, code: ErrorCode, message: &str, client_id: Option<&str>) -> Flow {
        self.write([ServerFrame::Error { code, message, client_id }.to_text()]).await
    }

    /// The rate limit for frames that cost a store round trip. `Err` holds
    /// what to do instead of handling the frame.
    async fn rate_limit(&mut self, client_id: Option<&str>) -> Result<(), Flow> {
        if self.bucket.take(Instant::now().into_std()) {
            return Ok(());
        }
        Err(self.too_fast(client_id).await)
    }

    /// Acknowledges a stored message: an accepted frame, which ends a run
    /// of refusals (docs/protocol.md §3.6).
    async fn acknowledge(&mut self, client_id: Option<&str>, id: MessageId) -> Flow {
        self.flood = 0;
        self.write([ServerFrame::Ack { client_id, id }.to_text()]).await
    }

    /// Answers a frame refused for its rate; flooding on ends the socket.
    /// `flood` counts refusals since the last accepted frame (a `reauth` or
    /// `read` past the bucket, or a stored `send`).
    async fn too_fast(&mut self, client_id: Option<&str>) -> Flow {
        self.flood += 1;
        if self.flood > MAX_FLOOD {
            return Flow::Close(frames::POLICY_VIOLATION);
        }
        self.error(ErrorCode::RateLimited, "Too many messages; slow down.", client_id).await
    }

    async fn on_send(&mut self, body: String, client_id: Option<String>) -> Flow {
        let given = client_id.filter(|c| !c.is_empty());
        if given.as_deref().is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS) {
            return self.refuse("client_id is at most 64 characters.", None).await;
        }
        let Some(body) = clean_body(&body) else {
            return self.refuse("A message is 1 to 2000 characters.", given.as_deref()).await;
        };
        // Every message gets an id to recognise a resend by: the sender's, or
        // one assigned here and echoed in the ack or error, so that a resend
        // after an unconfirmed store is never stored twice.
        let shown = given.is_some();
        let client_id = given.unwrap_or_else(|| format!("s-{}", uuid::Uuid::new_v4().simple()));
        if let Err(flow) = self.rate_limit(Some(&client_id)).await {
            return flow;
        }
        let message = NewMessage {
            sender: self.user.id,
            user: self.user.name.clone(),
            body: body.to_owned(),
            client_id: Some(client_id.clone()),
            client_id_shown: shown,
            sent_at: UnixMillis::now(),
        };
        let cid = Some(client_id.as_str());
        match self.deps.history.append(&self.room, message).await {
            Ok(Appended::New(stored)) => self.acknowledge(cid, stored.id).await,
            Ok(Appended::Duplicate(id)) => {
                tracing::debug!(%id, "resend of a stored message acknowledged again");
                self.acknowledge(cid, id).await
            }
            // Over the user's rate across all their sockets: as flooding.
            Ok(Appended::Throttled) => self.too_fast(cid).await,
            Ok(Appended::NewRoomRefused) => {
                let message = "This room does not exist, and you have opened many new rooms lately. Try later.";
                self.error(ErrorCode::RateLimited, message, cid).await
            }
            Ok(Appended::NotVisible) => {
                let message = "You may not write in this room.";
                self.error(ErrorCode::Invalid, message, cid).await
            }
            Err(err) => {
                // A store that did not answer may still have stored it (a
                // command can run after its caller gave up): say so, and
                // let the resend, with the same client_id, settle it.
                tracing::warn!(%err, "message not confirmed by the store");
                let message = "The store did not confirm the message, so it may or may not be stored. \
                               Send it again with the same client_id: it will not be stored twice.";
                self.error(ErrorCode::Unavailable, message, cid).await
            }
        }
    }

    /// Moves the user's read marker in this room. Only ids the room has are
    /// taken, so a marker never runs ahead of it: those this socket was
    /// sent (or could have been: up to the room's cursor when it joined),
    /// and beyond them, what the store has.
    async fn on_read(&mut self, up_to: String) -> Flow {
        let Ok(up_to) = up_to.parse::<MessageId>() else {
            return self.refuse("up_to is a message id.", None).await;
        };
        // Costs a store round trip, like a send (the client spends a token too).
        if let Err(flow) = self.rate_limit(None).await {
            return flow;
        }
        if up_to > self.last_sent {
            // Not sent here (yet): the client may have it from the page, or
            // as its own message's ack, before the tail brings it here.
            match self.deps.history.last_id(&self.room).await {
                Ok(newest) if up_to <= newest => {}
                Ok(_) => return self.refuse("up_to is after the newest message of this room.", None).await,
                Err(err) => {
                    tracing::warn!(%err, "read marker not checked: store unavailable");
                    return self.error(ErrorCode::Unavailable, READ_NOT_STORED, None).await;
                }
            }
        }
        self.flood = 0;
        match self.deps.history.mark_read(self.user.id, &self.room, up_to).await {
            Ok(_) => {
                let registry = &self.deps.registry;
                registry.send(registry.read(self.user.id, &self.room, up_to)).await;
                Flow::Continue
            }
            Err(err) => {
                tracing::warn!(%err, "read marker not stored");
                self.error(ErrorCode::Unavailable, READ_NOT_STORED, None).await
            }
        }
    }

    /// Sends one outbox item and whatever else is queued, in one flush.
    async fn forward(&mut self, first: Outbound, outbox: &mut mpsc::Receiver<Outbound>) -> Flow {
        let mut frames = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next {
            match out.id {
                Some(id) if id <= self.last_sent => {}
                Some(id) => {
                    self.last_sent = id;
                    // A message id is its store time: the lag from there
                    // to this write (the flush follows at once).
                    let stored = UnixMillis::from_millis(i64::try_from(id.ms).unwrap_or(i64::MAX));
                    self.deps.meters.fanout_lag(stored.until(UnixMillis::now()));
                    frames.push(out.text.clone());
                }
                None => frames.push(out.text.clone()),
            }
            next = if frames.len() < WRITE_BATCH { outbox.try_recv().ok() } else { None };
        }
        self.write(frames).await
    }

    async fn write(&mut self, frames: impl IntoIterator<Item = Utf8Bytes>) -> Flow {
        let ws = &mut self.ws;
        let sent = timeout(WRITE_TIMEOUT, async {
            for frame in frames {
                ws.feed(WsMessage::Text(frame)).await?;
            }
            ws.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => Flow::Continue,
            _ => Flow::Drop,
        }
    }

    async fn write_message(&mut self, message: WsMessage) -> Flow {
        match timeout(WRITE_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Flow::Continue,
            _ => Flow::Drop,
        }
    }

    /// Sends the close frame and waits briefly for the peer's reply.
    async fn close(&mut self, reason: CloseReason) {
        self.deps.meters.socket_closed(reason.reason);
        let frame = CloseFrame { code: CloseCode::from(reason.code), reason: reason.reason.into() };
        let _ = timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::sync::watch;

    use crate::state::testing::{closed, next_of, receive, send, Received, Rig};
    use crate::{backend::EndReason, clock::UnixMillis, config::Config};

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::from_map(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[tokio::test]
    async fn hello_comes_first_then_presence_then_the_replay_then_live_messages_once() {
        let rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.hub.clone().run(stopped));
        let alice = rig.sign_in("alice").await;
        let mut ids = Vec::new();
        for body in ["m0", "m1", "m2"] {
            ids.push(rig.store("lobby", "bob", body).await);
        }

        let (mut ws, _task) = rig.open(&alice, "lobby", Some(ids[0])).await;
        let Received::Json(hello) = receive(&mut ws).await else { panic!("hello first") };
        assert_eq!(
            hello,
            json!({"type": "hello", "user": "alice", "room": "lobby", "expires_at": alice.current.expires_at,
                   "rate": {"per_sec": 10.0, "burst": 20}, "read_markers": true})
        );
        let Received::Json(presence) = receive(&mut ws).await else { panic!("presence second") };
        assert_eq!(presence["online"], json!(["alice"]));
        assert_eq!(next_of(&mut ws, "message").await["body"], "m1");
        assert_eq!(next_of(&mut ws, "message").await["body"], "m2");

        send(&mut ws, json!({"type": "send", "body": "live \n", "client_id": "c1"})).await;
        let ack = next_of(&mut ws, "ack").await;
        assert_eq!(ack["client_id"], "c1");
        let live = next_of(&mut ws, "message").await;
        assert_eq!((live["id"].clone(), live["body"].clone()), (ack["id"].clone(), json!("live")));
    }

    #[tokio::test]
    async fn what_the_client_has_seen_is_not_sent_again_when_the_tail_lags_behind_it() {
        let rig = Rig::new(Config::default());
        // Bob's socket fixes the room's cursor; the tail is not running, so
        // it stays there while three messages are stored.
        let bob = rig.sign_in("bob").await;
        let (mut bob_ws, _bob) = rig.open(&bob, "lobby", None).await;
        next_of(&mut bob_ws, "presence").await;
        let mut ids = Vec::new();
        for body in ["m0", "m1", "m2"] {
            ids.push(rig.store("lobby", "bob", body).await);
        }
        // Alice saw m1 (through another instance, say); Carol's id is from
        // the far future.
        let alice = rig.sign_in("alice").await;
        let (mut alice_ws, _alice) = rig.open(&alice, "lobby", Some(ids[1])).await;
        next_of(&mut alice_ws, "presence").await;
        let carol = rig.sign_in("carol").await;
        let far = "99999999999999-0".parse().unwrap();
        let (mut carol_ws, _carol) = rig.open(&carol, "lobby", Some(far)).await;
        next_of(&mut carol_ws, "presence").await;

        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.hub.clone().run(stopped));
        let m3 = rig.store("lobby", "bob", "m3").await;
        for body in ["m0", "m1", "m2", "m3"] {
            assert_eq!(next_of(&mut bob_ws, "message").await["body"], body);
        }
        let alice_got = next_of(&mut alice_ws, "message").await;
        assert_eq!(alice_got["id"], ids[2].to_string(), "m0 and m1 are not sent again: {alice_got}");
        assert_eq!(next_of(&mut alice_ws, "message").await["body"], "m3");
        // What was stored before Carol joined is behind her `after`; what
        // comes later reaches her live.
        assert_eq!(next_of(&mut carol_ws, "message").await["id"], m3.to_string());
    }

    #[tokio::test]
    async fn a_marker_for_a_message_not_yet_sent_here_is_taken_when_the_room_has_it() {
        // The tail is not running: the sender's own message is stored and
        // acked, and never delivered to its socket.
        let rig = Rig::new(Config::default());
        let alice = rig.sign_in("alice").await;
        let (mut ws, _task) = rig.open(&alice, "lobby", None).await;
        next_of(&mut ws, "presence").await;
        send(&mut ws, json!({"type": "send", "body": "mine", "client_id": "c1"})).await;
        let id = next_of(&mut ws, "ack").await["id"].as_str().unwrap().to_owned();
        send(&mut ws, json!({"type": "read", "up_to": id})).await;
        // A refused frame after it: its error is the first one back only if
        // the marker was taken.
        send(&mut ws, json!({"type": "read", "up_to": "not an id"})).await;
        let error = next_of(&mut ws, "error").await;
        assert!(error["message"].as_str().unwrap().contains("message id"), "the marker was refused: {error}");
        let markers = rig.deps.history.read_markers(alice.current.user.id).await.unwrap();
        assert_eq!(markers.get(&crate::model::RoomName::lobby()).map(|m| m.to_string()), Some(id));
        // Beyond the room's newest message: refused.
        send(&mut ws, json!({"type": "read", "up_to": "99999999999999-0"})).await;
        let error = next_of(&mut ws, "error").await;
        assert!(error["message"].as_str().unwrap().contains("newest"), "{error}");
    }

    #[tokio::test]
    async fn invalid_frames_get_invalid_and_too_many_close_with_1008() {
        let rig = Rig::new(Config::default());
        let alice = rig.sign_in("alice").await;
        let (mut ws, _task) = rig.open(&alice, "lobby", None).await;
        next_of(&mut ws, "hello").await;
        for _ in 0..20 {
            send(&mut ws, json!({"type": "shout"})).await;
            assert_eq!(next_of(&mut ws, "error").await["code"], "invalid");
        }
        send(&mut ws, json!({"type": "send", "body": ""})).await;
        assert_eq!(closed(&mut ws).await, (1008, "policy violation".into()));
    }

    #[tokio::test]
    async fn the_socket_is_warned_before_its_deadline_and_a_reauth_moves_it() {
        let rig = Rig::new(config(&[("SESSION_TTL_SECS", "3"), ("REAUTH_WARNING_SECS", "2")]));
        let alice = rig.sign_in("alice").await;
        let (mut ws, _task) = rig.open(&alice, "lobby", None).await;
        next_of(&mut ws, "hello").await;
        let warned = next_of(&mut ws, "reauthenticate").await;
        assert_eq!(warned["expires_at"], json!(alice.current.expires_at));

        // The client refreshed over HTTP: the session slid in the store.
        let slid = rig.sessions.refresh(&alice.cookie).await.unwrap().unwrap();
        alice.session.save().await.unwrap();
        send(&mut ws, json!({"type": "reauth"})).await;
        let moved = next_of(&mut ws, "reauthenticated").await;
        assert_eq!(moved["expires_at"], json!(slid.expires_at));
        assert!(slid.expires_at >= alice.current.expires_at);
    }

    #[tokio::test]
    async fn without_a_reauth_the_socket_closes_at_its_deadline() {
        let rig = Rig::new(config(&[("SESSION_TTL_SECS", "2"), ("REAUTH_WARNING_SECS", "1")]));
        let alice = rig.sign_in("alice").await;
        let (mut ws, _task) = rig.open(&alice, "lobby", None).await;
        next_of(&mut ws, "reauthenticate").await;
        assert_eq!(closed(&mut ws).await, (4401, "session expired".into()));
        assert!(UnixMillis::now() >= alice.current.expires_at, "not closed before the deadline");
    }

    #[tokio::test]
    async fn ending_its_session_closes_the_socket_with_4401_and_unregisters_it() {
        let rig = Rig::new(Config::default());
        let alice = rig.sign_in("alice").await;
        let bob = rig.sign_in("bob").await;
        let (mut alices, task) = rig.open(&alice, "lobby", None).await;
        let (mut bobs, _) = rig.open(&bob, "lobby", None).await;
        next_of(&mut alices, "hello").await;
        next_of(&mut bobs, "hello").await;

        rig.sessions.sign_out(&alice.cookie).await.unwrap();
        assert_eq!(closed(&mut alices).await, (4401, "logged out".into()));
        tokio::time::timeout(crate::state::testing::DEADLINE, task).await.unwrap().unwrap();
        assert_eq!(rig.registry.sessions(), [bob.current.session_id], "alice's socket left the registry; bob's stayed");

        rig.sessions.end(bob.current.user.id, bob.current.session_id, EndReason::Revoked).await.unwrap();
        assert_eq!(closed(&mut bobs).await, (4401, "session revoked".into()));
    }
}
