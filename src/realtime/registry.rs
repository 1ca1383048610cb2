//! The connection registry: every open socket of this instance, indexed by
//! session, user and room.
//!
//! Closing "every socket of session S" or "of user U" costs the number of
//! those sockets, not a scan of all of them, and fan-out to a room walks only
//! that room. One mutex guards it all; every critical section is a few map
//! operations (or one `try_send` per member for fan-out), never an await.
//!
//! Only a socket's own task removes its entry (in [`Registry::remove`]), so
//! the bookkeeping that follows a departure (presence, stopping a room's
//! tail) happens in one place. Closing a socket just fires its close signal.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tower_sessions::session::Id;

use crate::{
    auth::{Ended, SessionsEnded},
    backend::EndReason,
    model::{Message, MessageId, RoomName, UserId},
    protocol::{self as frames, CloseReason},
};

use super::unread::{self, Reader, Unread};

pub type ConnId = u64;

/// A frame the registry pushes to sockets, serialized once and shared by
/// every socket it goes to. (One pointer per queue slot also keeps an idle
/// socket's queue small: tokio allocates it 32 slots at a time.)
#[derive(Debug)]
pub struct OutFrame {
    /// Set on chat messages: a socket skips ids it already sent (the
    /// overlap between replay and live delivery).
    pub id: Option<MessageId>,
    pub text: Utf8Bytes,
}

pub type Outbound = Arc<OutFrame>;

/// How many sockets one step of a fan-out reaches before the runtime gets
/// to run them, and anything more urgent: a close for a logout waits behind
/// at most one step of bulk work, never behind a whole room's. Smaller
/// steps cost messages latency (each step waits its turn behind everything
/// else runnable): at 128, a 2,000-socket room's p99 was 25-50 ms worse
/// than unstepped, at 512 within noise of it (BENCHMARKS.md, fan-out).
pub const FANOUT_STEP: usize = 512;
/// The step of a paced fan-out (presence), which can take its time.
pub const PACED_STEP: usize = 128;

/// Frames for a room's sockets as they stood when it was made (a socket
/// that registers later starts after these). Made under the registry's
/// lock; sent outside it, a step at a time.
#[must_use = "a fan-out does nothing until it is sent"]
pub struct FanOut {
    room: RoomName,
    frames: Vec<Outbound>,
    members: Vec<(ConnId, mpsc::Sender<Outbound>)>,
    /// Frames for one socket each (unread counts), sent after the members'.
    singles: Vec<(ConnId, mpsc::Sender<Outbound>, Outbound)>,
    /// A pause between steps, for work that can wait (see [`FanOut::paced`]).
    gap: Option<std::time::Duration>,
}

impl FanOut {
    fn empty(room: &RoomName) -> Self {
        Self { room: room.clone(), frames: Vec::new(), members: Vec::new(), singles: Vec::new(), gap: None }
    }

    fn new(name: &RoomName, room: &Room, frames: Vec<Outbound>) -> Self {
        let members = match frames.is_empty() {
            true => Vec::new(),
            false => room.members.iter().map(|(id, outbox)| (*id, outbox.clone())).collect(),
        };
        Self { room: name.clone(), frames, members, singles: Vec::new(), gap: None }
    }

    /// Pauses `gap` between steps: a big room's sockets are reached over a
    /// few hundred milliseconds instead of in one burst that takes every
    /// core, so the work that cannot wait (a handshake, a logout on another
    /// instance on the same machine) still gets the processor.
    pub fn paced(self, gap: std::time::Duration) -> Self {
        Self { gap: Some(gap), ..self }
    }

    /// Queues the frames on every socket, [`FANOUT_STEP`] sockets at a
    /// time ([`PACED_STEP`] when paced); closes the sockets whose queue is
    /// full. Fan-outs of one room
    /// must be sent one after the other, in the order they were made.
    pub async fn send(self, registry: &Registry) {
        let mut slow = Vec::new();
        let step_size = if self.gap.is_some() { PACED_STEP } else { FANOUT_STEP };
        for (step, members) in self.members.chunks(step_size).enumerate() {
            match (step, self.gap) {
                (0, _) => {}
                (_, None) => tokio::task::yield_now().await,
                (_, Some(gap)) => tokio::time::sleep(gap).await,
            }
            for (id, outbox) in members {
                for frame in &self.frames {
                    match outbox.try_send(frame.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            slow.push(*id);
                            break;
                        }
                        // It is closing; its task removes it.
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
        for (step, singles) in self.singles.chunks(FANOUT_STEP).enumerate() {
            if step > 0 || !self.members.is_empty() {
                tokio::task::yield_now().await;
            }
            for (id, outbox, frame) in singles {
                if let Err(mpsc::error::TrySendError::Full(_)) = outbox.try_send(frame.clone()) {
                    slow.push(*id);
                }
            }
        }
        if !slow.is_empty() {
            tracing::warn!(room = %self.room, sockets = slow.len(), "closing sockets that stopped reading");
            Registry::close_ids(&mut registry.lock(), &slow, frames::SLOW_CONSUMER);
        }
    }
}

/// Everything needed to register a socket.
pub struct Registration {
    pub session: Id,
    pub user: UserId,
    pub name: Arc<str>,
    pub room: RoomName,
    pub outbox: mpsc::Sender<Outbound>,
    pub close: oneshot::Sender<CloseReason>,
    /// Where to start tailing the room if this instance does not follow it yet.
    pub room_start: MessageId,
}

/// The result of registering.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub id: ConnId,
    /// Every message after this id reaches the socket through its outbox.
    pub cursor: MessageId,
    /// This instance did not follow the room before.
    pub new_room: bool,
}

struct Conn {
    session: Id,
    user: UserId,
    name: Arc<str>,
    room: RoomName,
    /// The other rooms whose unread counts it follows (see [`Registry::watch`]).
    watching: Vec<RoomName>,
    /// Taken by whoever closes the socket first.
    close: Option<oneshot::Sender<CloseReason>>,
}

/// A socket in another room that shows this room's unread count. Counting
/// here, as messages are delivered, costs one comparison per message and
/// watcher, and no store round trip; only a socket's start reads the store.
struct Watcher {
    user: UserId,
    reader: Reader,
    outbox: mpsc::Sender<Outbound>,
    count: Unread,
    /// The count from the store was added ([`Registry::settle_unread`]):
    /// changes are sent from now on, not before, so the first frame the
    /// socket sends is the whole count.
    ready: bool,
}

impl Watcher {
    fn frame(&self, room: &RoomName) -> Outbound {
        Arc::new(OutFrame { id: None, text: self.count.frame(room) })
    }
}

struct Room {
    members: HashMap<ConnId, mpsc::Sender<Outbound>>,
    /// Sockets of other rooms counting this room's unread messages.
    watchers: HashMap<ConnId, Watcher>,
    /// name -> number of that user's sockets in the room on this instance.
    online: BTreeMap<Arc<str>, usize>,
    /// The last message delivered to the room's sockets: the tail reads on
    /// from here. Kept under the same lock as `members`, so a socket's
    /// registration and a delivery are totally ordered.
    cursor: MessageId,
}

impl Room {
    fn new(cursor: MessageId) -> Self {
        Self { members: HashMap::new(), watchers: HashMap::new(), online: BTreeMap::new(), cursor }
    }

    /// No socket is in it or counts it: this instance stops following it.
    fn is_unused(&self) -> bool {
        self.members.is_empty() && self.watchers.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Conn>,
    by_session: HashMap<Id, Vec<ConnId>>,
    by_user: HashMap<UserId, Vec<ConnId>>,
    rooms: HashMap<RoomName, Room>,
}

/// The caps on open sockets: per instance, per user, per session.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub instance: usize,
    pub per_user: usize,
    pub per_session: usize,
}

/// Which cap a new socket would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The instance is at `MAX_CONNECTIONS`, or shutting down.
    Instance,
    /// This user has `MAX_SOCKETS_PER_USER` open here.
    User,
    /// This session has `MAX_SOCKETS_PER_SESSION` open here.
    Session,
}

/// Sockets open or being opened, counted against the caps.
#[derive(Default)]
struct Reserved {
    total: usize,
    by_user: HashMap<UserId, usize>,
    by_session: HashMap<Id, usize>,
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A reserved place under the caps; released on drop.
pub struct Slot {
    reserved: Arc<Mutex<Reserved>>,
    user: UserId,
    session: Id,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        reserved.total -= 1;
        release(&mut reserved.by_user, &self.user);
        release(&mut reserved.by_session, &self.session);
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Sockets open or being opened, for the caps.
    reserved: Arc<Mutex<Reserved>>,
    caps: Caps,
    /// Set at shutdown: no new sockets.
    closing: AtomicBool,
    /// Notified whenever the registry becomes empty.
    emptied: Notify,
    /// Sockets removed since the instance started (see `departures`).
    departed: AtomicU64,
}

fn remove_from(index: &mut Vec<ConnId>, id: ConnId) {
    if let Some(pos) = index.iter().position(|c| *c == id) {
        index.swap_remove(pos);
    }
}

impl Registry {
    pub fn new(caps: Caps) -> Self {
        Self {
            inner: Mutex::default(),
            next_id: AtomicU64::new(1),
            reserved: Arc::default(),
            caps,
            closing: AtomicBool::new(false),
            emptied: Notify::new(),
            departed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves a place for a new socket of `user` in `session`, unless a
    /// cap is reached or the instance is shutting down.
    pub fn reserve(&self, user: UserId, session: Id) -> Result<Slot, Full> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Full::Instance);
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if reserved.total >= self.caps.instance {
            return Err(Full::Instance);
        }
        if reserved.by_user.get(&user).copied().unwrap_or(0) >= self.caps.per_user {
            return Err(Full::User);
        }
        if reserved.by_session.get(&session).copied().unwrap_or(0) >= self.caps.per_session {
            return Err(Full::Session);
        }
        reserved.total += 1;
        *reserved.by_user.entry(user).or_default() += 1;
        *reserved.by_session.entry(session).or_default() += 1;
        Ok(Slot { reserved: self.reserved.clone(), user, session })
    }

    pub fn register(&self, reg: Registration) -> Joined {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.by_session.entry(reg.session).or_default().push(id);
        inner.by_user.entry(reg.user).or_default().push(id);
        let new_room = !inner.rooms.contains_key(&reg.room);
        let room = inner.rooms.entry(reg.room.clone()).or_insert_with(|| Room::new(reg.room_start));
        room.members.insert(id, reg.outbox);
        *room.online.entry(reg.name.clone()).or_default() += 1;
        let cursor = room.cursor;
        inner.conns.insert(
            id,
            Conn {
                session: reg.session,
                user: reg.user,
                name: reg.name,
                room: reg.room,
                watching: Vec::new(),
                close: Some(reg.close),
            },
        );
        // An upgrade accepted just before shutdown began must not slip past
        // `close_all`.
        if self.closing.load(Ordering::Acquire) {
            Self::close_ids(inner, &[id], frames::SHUTTING_DOWN);
        }
        Joined { id, cursor, new_room }
    }

    /// How many sockets have closed since the instance started.
    pub fn departures(&self) -> u64 {
        self.departed.load(Ordering::Relaxed)
    }

    /// Removes a socket; called by its own task as it ends.
    pub fn remove(&self, id: ConnId) {
        let mut inner = self.lock();
        let Some(conn) = inner.conns.remove(&id) else { return };
        self.departed.fetch_add(1, Ordering::Relaxed);
        if let Some(ids) = inner.by_session.get_mut(&conn.session) {
            remove_from(ids, id);
            if ids.is_empty() {
                inner.by_session.remove(&conn.session);
            }
        }
        if let Some(ids) = inner.by_user.get_mut(&conn.user) {
            remove_from(ids, id);
            if ids.is_empty() {
                inner.by_user.remove(&conn.user);
            }
        }
        if let Some(room) = inner.rooms.get_mut(&conn.room) {
            room.members.remove(&id);
            if let Some(count) = room.online.get_mut(&conn.name) {
                *count -= 1;
                if *count == 0 {
                    room.online.remove(&conn.name);
                }
            }
            if room.is_unused() {
                inner.rooms.remove(&conn.room);
            }
        }
        for watched in &conn.watching {
            if let Some(room) = inner.rooms.get_mut(watched) {
                room.watchers.remove(&id);
                if room.is_unused() {
                    inner.rooms.remove(watched);
                }
            }
        }
        if inner.conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn close_ids(inner: &mut Inner, ids: &[ConnId], reason: CloseReason) -> usize {
        ids.iter()
            .filter_map(|id| inner.conns.get_mut(id)?.close.take())
            .map(|close| {
                let _ = close.send(reason);
            })
            .count()
    }

    /// Closes every socket opened with this session; returns how many.
    pub fn close_session(&self, session: &Id, reason: CloseReason) -> usize {
        let mut inner = self.lock();
        let ids = inner.by_session.get(session).cloned().unwrap_or_default();
        Self::close_ids(&mut inner, &ids, reason)
    }

    /// Closes every socket of this user, whatever its session.
    pub fn close_user(&self, user: &UserId, reason: CloseReason) -> usize {
        let mut inner = self.lock();
        let ids = inner.by_user.get(user).cloned().unwrap_or_default();
        Self::close_ids(&mut inner, &ids, reason)
    }

    /// Closes the sockets of sessions that ended.
    pub fn close_ended(&self, ended: &Ended) -> usize {
        let reason = match ended.reason {
            EndReason::LoggedOut => frames::LOGGED_OUT,
            EndReason::Revoked => frames::SESSION_REVOKED,
        };
        if ended.everywhere {
            self.close_user(&ended.user, reason)
        } else {
            ended.sessions.iter().map(|s| self.close_session(s, reason)).sum()
        }
    }

    /// Refuses new sockets from now on (a drain before shutdown).
    pub fn refuse_new(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Refuses new sockets from now on and closes every open one.
    pub fn close_all(&self, reason: CloseReason) -> usize {
        self.closing.store(true, Ordering::Release);
        let mut inner = self.lock();
        let ids: Vec<ConnId> = inner.conns.keys().copied().collect();
        Self::close_ids(&mut inner, &ids, reason)
    }

    /// Waits until no socket is registered.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.lock().conns.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct sessions with open sockets, for the revalidation sweep.
    pub fn sessions(&self) -> Vec<Id> {
        self.lock().by_session.keys().copied().collect()
    }

    /// The rooms this instance follows and the last id delivered in each.
    pub fn cursors(&self) -> Vec<(RoomName, MessageId)> {
        self.lock().rooms.iter().map(|(name, room)| (name.clone(), room.cursor)).collect()
    }

    /// Whether this instance follows the room already (then its cursor).
    pub fn room_cursor(&self, room: &RoomName) -> Option<MessageId> {
        self.lock().rooms.get(room).map(|r| r.cursor)
    }

    /// Hands freshly stored messages to every socket in the room, in order,
    /// skipping any at or before the room's cursor (a tail that raced a
    /// re-registration). The cursor moves now, under the lock (a socket
    /// registering later replays these from the store); the frames go out
    /// when the returned fan-out is sent. A socket whose outbox is full is
    /// closed: it is not reading, and it will catch up with `after=` when it
    /// reconnects.
    pub fn deliver(&self, room_name: &RoomName, messages: &[Message]) -> FanOut {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(room_name) else { return FanOut::empty(room_name) };
        let fresh: Vec<&Message> = messages.iter().filter(|m| m.id > room.cursor).collect();
        let frames: Vec<Outbound> = fresh
            .iter()
            .map(|message| Arc::new(OutFrame { id: Some(message.id), text: frames::message(room_name, message) }))
            .collect();
        if let Some(last) = fresh.last() {
            room.cursor = last.id;
        }
        let singles = match room.watchers.is_empty() {
            true => Vec::new(),
            false => Self::count_unread(room_name, room, &fresh),
        };
        FanOut { singles, ..FanOut::new(room_name, room, frames) }
    }

    /// Adds fresh messages to the room's watchers' unread counts; the frames
    /// of the counts that changed and may be sent.
    fn count_unread(
        name: &RoomName,
        room: &mut Room,
        fresh: &[&Message],
    ) -> Vec<(ConnId, mpsc::Sender<Outbound>, Outbound)> {
        // Each message's mentions are found once, whatever the watchers.
        let mentioned: Vec<Vec<String>> = fresh.iter().map(|m| unread::mentioned(m)).collect();
        let mut out = Vec::new();
        for (id, watcher) in room.watchers.iter_mut() {
            let before = watcher.count;
            for (message, names) in fresh.iter().zip(&mentioned) {
                watcher.count.count(&watcher.reader, message, names);
            }
            if watcher.ready && watcher.count != before {
                out.push((*id, watcher.outbox.clone(), watcher.frame(name)));
            }
        }
        out
    }

    /// Makes socket `id` count the unread messages of `rooms` (its user's
    /// other rooms, each with where to start following it when this
    /// instance does not yet): every message delivered in them from now on
    /// counts. Returns each room's cursor, from which on messages are
    /// counted here (the socket counts those up to it from the store, then
    /// calls [`Registry::settle_unread`]), and the rooms this instance did
    /// not follow before (the tail must look at the room set again).
    pub fn watch(
        &self,
        id: ConnId,
        outbox: &mpsc::Sender<Outbound>,
        rooms: &[(RoomName, MessageId)],
    ) -> (Vec<(RoomName, MessageId)>, Vec<RoomName>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(conn) = inner.conns.get_mut(&id) else { return (Vec::new(), Vec::new()) };
        let (user, reader) = (conn.user, Reader::new(conn.name.clone()));
        let mut cursors = Vec::with_capacity(rooms.len());
        let mut new_rooms = Vec::new();
        for (room_name, start) in rooms {
            if *room_name == conn.room || conn.watching.contains(room_name) {
                continue;
            }
            if !inner.rooms.contains_key(room_name) {
                new_rooms.push(room_name.clone());
            }
            let room = inner.rooms.entry(room_name.clone()).or_insert_with(|| Room::new(*start));
            room.watchers.insert(
                id,
                Watcher {
                    user,
                    reader: reader.clone(),
                    outbox: outbox.clone(),
                    count: Unread::default(),
                    ready: false,
                },
            );
            conn.watching.push(room_name.clone());
            cursors.push((room_name.clone(), room.cursor));
        }
        (cursors, new_rooms)
    }

    /// Adds what the store counted (messages up to the cursor [`Registry::watch`]
    /// gave) to what was delivered since; from now on changes are sent.
    /// Returns the whole count.
    pub fn settle_unread(&self, id: ConnId, room: &RoomName, stored: Unread) -> Option<Unread> {
        let mut inner = self.lock();
        let watcher = inner.rooms.get_mut(room)?.watchers.get_mut(&id)?;
        watcher.count = watcher.count.plus(stored);
        watcher.ready = true;
        Some(watcher.count)
    }

    /// `user` has read `room` up to `up_to`: their sockets on this instance
    /// that count its unread messages start again from zero when that is
    /// the newest message delivered here (short of it, which of the counted
    /// messages were read is not known, and the counts stand until the
    /// page is loaded again).
    pub fn read(&self, user: UserId, room_name: &RoomName, up_to: MessageId) -> FanOut {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(room_name) else { return FanOut::empty(room_name) };
        let mut singles = Vec::new();
        if up_to >= room.cursor {
            for (id, watcher) in room.watchers.iter_mut().filter(|(_, w)| w.user == user) {
                if !watcher.count.is_zero() {
                    watcher.count = Unread::default();
                    if watcher.ready {
                        singles.push((*id, watcher.outbox.clone(), watcher.frame(room_name)));
                    }
                }
            }
        }
        FanOut { singles, ..FanOut::empty(room_name) }
    }

    /// A frame for every socket in the room (presence). A socket whose
    /// outbox is full is closed as a slow consumer: it would miss a diff,
    /// and a missed diff is a wrong list until it reconnects.
    pub fn broadcast(&self, room_name: &RoomName, frame: Utf8Bytes) -> FanOut {
        let inner = self.lock();
        let Some(room) = inner.rooms.get(room_name) else { return FanOut::empty(room_name) };
        FanOut::new(room_name, room, vec![Arc::new(OutFrame { id: None, text: frame })])
    }

    /// Whether this instance has sockets in the room.
    pub fn follows(&self, room: &RoomName) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| !r.members.is_empty())
    }

    /// The names with at least one socket in the room on this instance.
    pub fn local_names(&self, room: &RoomName) -> Vec<String> {
        self.lock().rooms.get(room).map(|r| r.online.keys().map(|n| n.to_string()).collect()).unwrap_or_default()
    }

    /// Whether `name` has a socket in the room on this instance.
    pub fn is_online(&self, room: &RoomName, name: &str) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| r.online.contains_key(name))
    }

    /// Every (room, name) pair present on this instance, for the heartbeat.
    pub fn presence_pairs(&self) -> Vec<(RoomName, String)> {
        let inner = self.lock();
        inner
            .rooms
            .iter()
            .flat_map(|(room, r)| r.online.keys().map(move |name| (room.clone(), name.to_string())))
            .collect()
    }

    /// The rooms with sockets on this instance.
    pub fn rooms(&self) -> Vec<RoomName> {
        self.lock().rooms.iter().filter(|(_, r)| !r.members.is_empty()).map(|(name, _)| name.clone()).collect()
    }
}

impl SessionsEnded for Registry {
    fn ended(&self, ended: &Ended) -> usize {
        self.close_ended(ended)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::UnixMillis;

    const CAPS: Caps = Caps { instance: 10, per_user: 10, per_session: 10 };

    /// The far end of a registered socket, as its task would hold it.
    pub(crate) struct Joined {
        pub id: ConnId,
        pub outbox: mpsc::Receiver<Outbound>,
        pub close: oneshot::Receiver<CloseReason>,
    }

    fn register(
        reg: &Registry,
        session: Id,
        user: UserId,
        name: &str,
        room: &str,
        start: MessageId,
        capacity: usize,
    ) -> Joined {
        let (tx, outbox) = mpsc::channel(capacity);
        let (close_tx, close) = oneshot::channel();
        let joined = reg.register(Registration {
            session,
            user,
            name: name.into(),
            room: RoomName::parse(room).unwrap(),
            outbox: tx,
            close: close_tx,
            room_start: start,
        });
        Joined { id: joined.id, outbox, close }
    }

    fn join_as(reg: &Registry, session: Id, user: UserId, name: &str, room: &str, capacity: usize) -> Joined {
        register(reg, session, user, name, room, MessageId::ZERO, capacity)
    }

    /// Registers a socket of a new session of a new user, starting at `start`.
    pub(crate) fn join(reg: &Registry, name: &str, room: &str, start: MessageId, capacity: usize) -> Joined {
        register(reg, Id::default(), UserId::new_v4(), name, room, start, capacity)
    }

    fn message(id: u64) -> Message {
        Message {
            id: MessageId { ms: id, seq: 0 },
            user: "a".into(),
            body: "b".into(),
            sent_at: UnixMillis::now(),
            client_id: None,
        }
    }

    #[test]
    fn closing_a_session_reaches_exactly_its_sockets() {
        let reg = Registry::new(CAPS);
        let (s1, s2, u) = (Id(1), Id(2), UserId::new_v4());
        let mut a = join_as(&reg, s1, u, "al", "lobby", 4);
        let mut b = join_as(&reg, s1, u, "al", "other", 4);
        let mut c = join_as(&reg, s2, u, "al", "lobby", 4);
        assert_eq!(reg.close_session(&s1, frames::LOGGED_OUT), 2);
        assert_eq!(a.close.try_recv().unwrap(), frames::LOGGED_OUT);
        assert_eq!(b.close.try_recv().unwrap(), frames::LOGGED_OUT);
        assert!(c.close.try_recv().is_err());
        assert_eq!(reg.close_session(&s1, frames::LOGGED_OUT), 0, "a socket is closed once");
        assert_eq!(reg.close_user(&u, frames::LOGGED_OUT), 1);
        for s in [&a, &b, &c] {
            reg.remove(s.id);
        }
        assert!(reg.is_empty() && reg.cursors().is_empty() && reg.sessions().is_empty());
    }

    #[tokio::test]
    async fn delivery_is_per_room_ordered_and_never_repeats() {
        let reg = Registry::new(CAPS);
        let mut lobby = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 8);
        let mut other = join_as(&reg, Id(2), UserId::new_v4(), "bo", "other", 8);
        let room = RoomName::lobby();
        reg.deliver(&room, &[message(1), message(2)]).send(&reg).await;
        reg.deliver(&room, &[message(2), message(3)]).send(&reg).await;
        let ids: Vec<u64> = std::iter::from_fn(|| lobby.outbox.try_recv().ok()?.id.map(|id| id.ms)).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(other.outbox.try_recv().is_err());
        assert_eq!(reg.room_cursor(&room), Some(MessageId { ms: 3, seq: 0 }));
    }

    fn said(id: u64, user: &str, body: &str) -> Message {
        Message { user: user.into(), body: body.into(), ..message(id) }
    }

    fn unread_frames(outbox: &mut mpsc::Receiver<Outbound>) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| outbox.try_recv().ok())
            .map(|f| serde_json::from_str::<serde_json::Value>(f.text.as_str()).unwrap())
            .filter(|v| v["type"] == "unread")
            .collect()
    }

    #[tokio::test]
    async fn a_watcher_counts_others_messages_and_mentions_of_it_from_its_cursor_and_a_read_clears_them() {
        let reg = Registry::new(CAPS);
        let (al, dev) = (UserId::new_v4(), RoomName::parse("dev").unwrap());
        let (tx, mut outbox) = mpsc::channel(64);
        let (close, _closed) = oneshot::channel();
        let joined = reg.register(Registration {
            session: Id(1),
            user: al,
            name: "Ali".into(),
            room: RoomName::lobby(),
            outbox: tx.clone(),
            close,
            room_start: MessageId::ZERO,
        });
        let (cursors, new_rooms) = reg.watch(joined.id, &tx, &[(dev.clone(), MessageId { ms: 5, seq: 0 })]);
        assert_eq!(cursors, [(dev.clone(), MessageId { ms: 5, seq: 0 })]);
        assert_eq!(new_rooms, std::slice::from_ref(&dev), "the tail must start following dev");
        assert!(!reg.follows(&dev), "dev has no sockets of its own here");
        // Before the store's count is in, deliveries count but send nothing.
        reg.deliver(&dev, &[said(6, "bo", "hi @ali"), said(7, "Ali", "mine")]).send(&reg).await;
        assert!(unread_frames(&mut outbox).is_empty());
        assert_eq!(
            reg.settle_unread(joined.id, &dev, Unread { unread: 2, mentions: 0 }),
            Some(Unread { unread: 3, mentions: 1 })
        );
        reg.deliver(&dev, &[said(8, "bo", "`@ali` in code"), said(9, "cy", "@ALI!")]).send(&reg).await;
        let frames = unread_frames(&mut outbox);
        assert_eq!(frames, [serde_json::json!({"type": "unread", "room": "dev", "unread": 5, "mentions": 2})]);
        // Read short of the newest: the count stands; up to it: zero.
        reg.read(al, &dev, MessageId { ms: 8, seq: 0 }).send(&reg).await;
        assert!(unread_frames(&mut outbox).is_empty());
        reg.read(UserId::new_v4(), &dev, MessageId { ms: 9, seq: 0 }).send(&reg).await;
        assert!(unread_frames(&mut outbox).is_empty(), "someone else's read is theirs");
        reg.read(al, &dev, MessageId { ms: 9, seq: 0 }).send(&reg).await;
        assert_eq!(unread_frames(&mut outbox)[0]["unread"], 0);
        // Leaving drops the watch, and the room with it.
        reg.remove(joined.id);
        assert_eq!(reg.room_cursor(&dev), None);
    }

    /// A close asked for while a fan-out is under way reaches its socket
    /// after at most a step or two of the fan-out, not after all of it.
    #[tokio::test]
    async fn a_close_is_not_queued_behind_a_whole_rooms_fan_out() {
        const MEMBERS: usize = 2560;
        let reg = Arc::new(Registry::new(Caps { instance: MEMBERS + 1, per_user: 1, per_session: 1 }));
        let reached = Arc::new(AtomicU64::new(0));
        for i in 0..MEMBERS {
            let mut member = join(&reg, &format!("m{i}"), "big", MessageId::ZERO, 4);
            let reached = reached.clone();
            tokio::spawn(async move {
                if member.outbox.recv().await.is_some() {
                    reached.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let victim = join(&reg, "victim", "big", MessageId::ZERO, 4);
        let victim_session = reg.lock().conns[&victim.id].session;
        let seen_by_victim = {
            let reached = reached.clone();
            tokio::spawn(async move {
                victim.close.await.unwrap();
                reached.load(Ordering::Relaxed)
            })
        };
        let fan_out = reg.broadcast(&RoomName::parse("big").unwrap(), "presence".into());
        let sending = tokio::spawn({
            let reg = reg.clone();
            async move { fan_out.send(&reg).await }
        });
        // The logout arrives once the fan-out has begun.
        while reached.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reg.close_session(&victim_session, frames::LOGGED_OUT), 1);
        let seen = seen_by_victim.await.unwrap() as usize;
        sending.await.unwrap();
        assert!(seen <= 3 * FANOUT_STEP, "the close ran after {seen} of {MEMBERS} sockets got the bulk frame");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while (reached.load(Ordering::Relaxed) as usize) < MEMBERS {
            assert!(tokio::time::Instant::now() < deadline, "the fan-out reached every socket");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_socket_that_does_not_read_is_closed() {
        let reg = Registry::new(CAPS);
        let mut s = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        reg.deliver(&RoomName::lobby(), &[message(1), message(2)]).send(&reg).await;
        assert_eq!(s.close.try_recv().unwrap(), frames::SLOW_CONSUMER);
    }

    #[test]
    fn a_socket_registered_during_shutdown_is_closed_at_once() {
        let reg = Registry::new(CAPS);
        reg.close_all(frames::SHUTTING_DOWN);
        let mut late = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        assert_eq!(late.close.try_recv().unwrap(), frames::SHUTTING_DOWN);
    }

    #[test]
    fn the_caps_count_reserved_slots_per_instance_user_and_session() {
        let reg = Registry::new(Caps { instance: 4, per_user: 3, per_session: 2 });
        let (alice, bob) = (UserId::new_v4(), UserId::new_v4());
        let (tab, phone) = (Id(1), Id(2));
        let a1 = reg.reserve(alice, tab).unwrap();
        let _a2 = reg.reserve(alice, tab).unwrap();
        assert_eq!(reg.reserve(alice, tab).unwrap_err(), Full::Session);
        let _a3 = reg.reserve(alice, phone).unwrap();
        assert_eq!(reg.reserve(alice, Id(3)).unwrap_err(), Full::User);
        let _b1 = reg.reserve(bob, Id(4)).unwrap();
        assert_eq!(reg.reserve(bob, Id(4)).unwrap_err(), Full::Instance);
        drop(a1);
        assert!(reg.reserve(alice, tab).is_ok(), "a closed socket frees its places");
        reg.close_all(frames::SHUTTING_DOWN);
        assert_eq!(reg.reserve(bob, Id(5)).unwrap_err(), Full::Instance, "no new sockets while shutting down");
    }

    #[test]
    fn presence_counts_sockets_per_user() {
        let reg = Registry::new(CAPS);
        let room = RoomName::lobby();
        let a = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        let b = join_as(&reg, Id(2), UserId::new_v4(), "al", "lobby", 1);
        let _c = join_as(&reg, Id(3), UserId::new_v4(), "bo", "lobby", 1);
        assert_eq!(reg.local_names(&room), ["al", "bo"]);
        reg.remove(a.id);
        assert!(reg.is_online(&room, "al"));
        reg.remove(b.id);
        assert!(!reg.is_online(&room, "al"));
        assert_eq!(reg.presence_pairs(), [(room, "bo".to_string())]);
    }
}
