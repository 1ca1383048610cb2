//! One socket's task: from `hello` to its close code.
//!
//! A single task per socket owns the WebSocket and selects over: its close
//! signal (logout, revocation, shutdown, slow consumer), its outbox (chat
//! messages and presence from the registry), incoming frames, the ping
//! timer, and the session deadline timer. Nothing else touches the socket,
//! so there is no lock per message.
//!
//! Its steps, each in its file: the start (`hello`, presence, the replay,
//! and the unread counts it follows: [`start`]), the loop here, and what
//! it does with each frame from the client ([`incoming`]). Every frame it
//! writes carries its room's label (what its user calls the room), and
//! none is written once its user may no longer see the room.

mod incoming;
mod start;

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
        Bytes, Message as WsMessage, Utf8Bytes,
    },
    WebSocketStream,
};
use tower_sessions::session::Id;

use super::{
    deadline::Deadline,
    hub::Hub,
    limits::{Strikes, TokenBucket},
    presence::Presence,
    reads::ReadBudget,
    registry::{ConnId, Epoch, Outbound, Outbox, Registration, Registry, Revoked, Slot},
};
use crate::{
    auth::{
        access::{RoomAccess, Visible},
        memberships::Memberships,
        Sessions,
    },
    backend::{History, Rooms},
    clock::UnixMillis,
    meters::Meters,
    model::{MessageId, RoomKind, RoomName, User},
    protocol::{self as frames, CloseReason},
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
    /// What replays and unread counts may read of `history` at once.
    pub reads: ReadBudget,
    /// The lists of direct conversations, which a first message enters.
    pub rooms: Arc<dyn Rooms>,
    /// Tells the other user of a direct conversation this socket starts.
    pub memberships: Memberships,
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
    /// The registry's epoch, taken before access to the room was checked.
    pub epoch: Epoch,
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
    /// What the user calls the room: the `room` of every frame.
    label: Arc<str>,
    /// The other user, in a direct room.
    other: Option<User>,
    /// Public, private or direct: a public room's mentions go to the
    /// mentioned users' inboxes.
    kind: RoomKind,
    /// A direct room: this socket recorded its conversation in both
    /// users' lists already (after its first message).
    noted: bool,
    /// Set by the registry once the user may no longer see the room.
    revoked: Revoked,
    /// Its id and queue, once it counts the user's other rooms: a room
    /// added later is counted through them too.
    counting: Option<(ConnId, Outbox)>,
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

/// Runs a socket to its end (the upgrade's task does the same from a box:
/// `upgrade::open`).
#[cfg(test)]
pub async fn serve<S>(deps: Arc<SocketDeps>, ws: WebSocketStream<S>, ctx: SocketContext)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(live) = Box::pin(start(deps, ws, ctx)).await {
        live.run().await;
    }
}

/// A socket past its start: in the room, greeted, with what it holds until
/// it ends (its place in the registry, the caps and the metrics). This,
/// and its loop, is what an idle socket's task holds for its whole life;
/// the start's locals and the futures it waited on are not (see
/// `upgrade::open`).
pub struct Live<S> {
    socket: Box<Socket<S>>,
    outbox: mpsc::Receiver<Outbound>,
    close_rx: oneshot::Receiver<CloseReason>,
    /// How the start ended: `Continue` to run.
    flow: Flow,
    _registered: Registered,
    _open: crate::meters::OpenSocket,
    _slot: Slot,
}

impl<S> Live<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The socket's loop, then its close.
    pub async fn run(mut self) {
        let mut flow = self.flow;
        if let Flow::Continue = flow {
            flow = self.socket.run(&mut self.outbox, &mut self.close_rx).await;
        }
        if let Flow::Close(reason) = flow {
            Box::pin(self.socket.close(reason)).await;
        }
    }
}

/// Joins the room and greets the client; `None` when the socket ended
/// (closed with its reason) before it could run.
pub async fn start<S>(deps: Arc<SocketDeps>, ws: WebSocketStream<S>, ctx: SocketContext) -> Option<Live<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let slot = ctx.slot;
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
        label: ctx.room.label().clone(),
        other: ctx.room.other().cloned(),
        kind: ctx.room.kind(),
        noted: false,
        revoked: Revoked::default(),
        counting: None,
        room: ctx.room.room().clone(),
        last_sent: MessageId::ZERO,
        last_seen: now,
        flood: 0,
    });

    let start = match deps.hub.start_for(&socket.room).await {
        Ok(start) => start,
        Err(err) => {
            tracing::warn!(%err, "socket refused after upgrade: store unavailable");
            socket.close(frames::STORE_UNAVAILABLE).await;
            return None;
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
                socket.close(frames::STORE_UNAVAILABLE).await;
                return None;
            }
        },
        _ => MessageId::ZERO,
    };
    let (outbox_tx, outbox) = mpsc::channel(OUTBOX_CAPACITY);
    let unread_outbox = ctx.unread.then(|| outbox_tx.clone());
    let (close_tx, close_rx) = oneshot::channel();
    let joined = deps.registry.register(Registration {
        session: socket.session_id,
        user: socket.user.id,
        name: name.clone(),
        room: socket.room.clone(),
        label: socket.label.clone(),
        kind: ctx.room.kind(),
        outbox: outbox_tx,
        close: close_tx,
        room_start: start,
        epoch: ctx.epoch,
    });
    // Removed from the room between the access check and now: closed
    // before anything of the room is written.
    let joined = match joined {
        Ok(joined) => joined,
        Err(reason) => {
            socket.close(reason).await;
            return None;
        }
    };
    socket.revoked = joined.revoked.clone();
    let registered = Registered { deps: deps.clone(), id: joined.id, room: socket.room.clone(), name };
    let open = deps.meters.socket_opened();
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
    Some(Live { socket, outbox, close_rx, flow, _registered: registered, _open: open, _slot: slot })
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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

    /// Sends one outbox item and whatever else is queued, in one flush.
    async fn forward(&mut self, first: Outbound, outbox: &mut mpsc::Receiver<Outbound>) -> Flow {
        let mut frames = Vec::new();
        let mut added = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next {
            if let Some(watch) = &out.watch {
                added.push((watch.room.clone(), watch.label.clone(), watch.since));
            }
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
        match self.write(frames).await {
            Flow::Continue if !added.is_empty() => Box::pin(self.count_added(added)).await,
            flow => flow,
        }
    }

    /// Writes frames and flushes them; stops, and closes with 4403, at the
    /// first frame found after the user's access to the room was revoked
    /// (a batch already queued included).
    async fn write(&mut self, frames: impl IntoIterator<Item = Utf8Bytes>) -> Flow {
        let (ws, revoked) = (&mut self.ws, &self.revoked);
        let sent = timeout(WRITE_TIMEOUT, async {
            for frame in frames {
                if revoked.is_set() {
                    return Ok(false);
                }
                ws.feed(WsMessage::Text(frame)).await?;
            }
            ws.flush().await.map(|()| true)
        })
        .await;
        match sent {
            Ok(Ok(true)) => Flow::Continue,
            Ok(Ok(false)) => Flow::Close(frames::ACCESS_REVOKED),
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
mod sizes {
    use super::*;
    type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;

    fn three<A, B, C, F>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn one<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn two<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    #[ignore = "a probe: prints the sizes of the socket task's futures"]
    fn print_future_sizes() {
        eprintln!("serve: {}", three(serve::<Io>));
        eprintln!("start: {}", three(start::<Io>));
        eprintln!("Live::run: {}", one(Live::<Io>::run));
        eprintln!("open: {}", one(crate::realtime::upgrade::open));
        eprintln!("run: {}", three(Socket::<Io>::run));
        eprintln!("forward: {}", three(Socket::<Io>::forward));
        eprintln!("write_message: {}", two(Socket::<Io>::write_message));
        eprintln!("close: {}", two(Socket::<Io>::close));
        eprintln!("greet: {}", two(Socket::<Io>::greet));
        eprintln!("Socket: {}", std::mem::size_of::<Socket<Io>>());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::sync::watch;

    use crate::state::testing::{closed, next_of, receive, send, Received, Rig, SignedIn};
    use crate::{
        auth::memberships::Change,
        backend::{AccessChange, EndReason},
        clock::UnixMillis,
        config::Config,
        model::RoomName,
    };

    fn team() -> RoomName {
        RoomName::parse("team").unwrap()
    }

    /// Alice's private room, with bob in it.
    async fn team_of(rig: &Rig, alice: &SignedIn, bob: &SignedIn) {
        let rooms = &rig.backend.rooms;
        rooms.create_private(&team(), &alice.current.user).await.unwrap();
        rooms.add_member(&team(), alice.current.user.id, &bob.current.user).await.unwrap();
    }

    /// Bob leaves, as the memberships service does it: the store, then here.
    async fn bob_leaves(rig: &Rig, bob: &SignedIn) {
        let bob = bob.current.user.id;
        rig.backend.rooms.remove_member(&team(), bob, bob).await.unwrap();
        rig.registry.apply(&Change::of(team(), Some(bob), AccessChange::Removed));
    }

    #[tokio::test]
    async fn a_removal_between_the_access_check_and_the_registration_closes_the_socket_before_hello() {
        let rig = Rig::new(Config::default());
        let (alice, bob) = (rig.sign_in("alice").await, rig.sign_in("bob").await);
        team_of(&rig, &alice, &bob).await;
        let epoch = rig.registry.epoch();
        let checked = rig.visible(&bob, "team").await.expect("bob is a member when checked");
        bob_leaves(&rig, &bob).await;
        let (mut ws, _task) = rig.open_checked(&bob, checked, epoch, None).await;
        assert_eq!(receive(&mut ws).await, Received::Close(4403, "access revoked".into()), "nothing before the close");
        assert_eq!(rig.registry.len(), 0);
    }

    #[tokio::test]
    async fn a_removed_member_s_open_socket_closes_with_4403_and_a_send_the_store_refuses_does_too() {
        let rig = Rig::new(Config::default());
        let (alice, bob) = (rig.sign_in("alice").await, rig.sign_in("bob").await);
        team_of(&rig, &alice, &bob).await;
        let (mut bobs, _) = rig.open(&bob, "team", None).await;
        let (mut alices, _) = rig.open(&alice, "team", None).await;
        assert_eq!(next_of(&mut bobs, "hello").await["room"], "team");
        next_of(&mut alices, "hello").await;
        // Alice removed in the store alone (as if her instance never heard):
        // the store refuses her message, and the socket closes as the event
        // would have closed it.
        rig.backend.rooms.remove_member(&team(), alice.current.user.id, alice.current.user.id).await.unwrap();
        send(&mut alices, json!({"type": "send", "body": "anyone?"})).await;
        assert_eq!(closed(&mut alices).await, (4403, "access revoked".into()));
        bob_leaves(&rig, &bob).await;
        assert_eq!(closed(&mut bobs).await, (4403, "access revoked".into()));
    }

    #[tokio::test]
    async fn a_direct_room_carries_each_sides_name_for_the_other_and_its_first_message_lists_it() {
        let rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.hub.clone().run(stopped));
        let (alice, bob) = (rig.sign_in("alice").await, rig.sign_in("Bob").await);
        let (mut alices, _) = rig.open(&alice, "@bob", None).await;
        let (mut bobs, _) = rig.open(&bob, "@ALICE", None).await;
        assert_eq!(next_of(&mut alices, "hello").await["room"], "@Bob", "as bob registered");
        assert_eq!(next_of(&mut bobs, "hello").await["room"], "@alice");
        assert_eq!(next_of(&mut bobs, "presence").await["room"], "@alice");
        send(&mut alices, json!({"type": "send", "body": "hi bob"})).await;
        assert_eq!(next_of(&mut alices, "message").await["room"], "@Bob");
        assert_eq!(next_of(&mut bobs, "message").await["room"], "@alice");
        let listed = rig.backend.rooms.direct_rooms(bob.current.user.id, 10).await.unwrap();
        let room = RoomName::direct(alice.current.user.id, bob.current.user.id);
        assert_eq!(listed, [(room, "alice".to_owned())]);
        assert!(rig.visible(&alice, "@alice").await.is_none(), "no conversation with oneself");
    }

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
