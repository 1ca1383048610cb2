//! The connection registry: every open socket of this instance, indexed by
//! session, user and room, and what follows from knowing which room each
//! socket is in.
//!
//! [`Registry`] is the socket index: registering and removing sockets, and
//! closing "every socket of session S" or "of user U in room R" at the
//! cost of those sockets, not of a scan of all of them. The other jobs are
//! types of their own, each in its file, that the index holds per room:
//! - [`caps`]: the caps on open sockets, a place reserved before the
//!   upgrade answers;
//! - [`fanout`]: frames to a room's sockets, a step at a time, one
//!   serialization per label;
//! - [`watchers`]: other rooms' sockets counting a room's unread messages;
//! - [`names`]: who is in the room here, for presence;
//! - [`outbox`]: what they all queue for a socket, and its id;
//! - [`revocations`]: the removals applied here, for sockets registering
//!   just after one; and `access` applies membership changes.
//!
//! Two mutexes. The index and the rooms (members, watchers, names and each
//! room's cursor) share one, so a registration, a delivery, a presence
//! read and a removal each see one instant; its critical sections are a
//! few map operations (or a walk over a room's members to make a fan-out),
//! never an await. The caps' counts have their own (see [`caps`]).
//!
//! Which room a socket is in, and what its user calls the room (its
//! label: the name, or `@other` in a direct room), was decided once, at
//! the upgrade ([`crate::auth::access`]); fan-out, presence names and the
//! effects of its read markers all follow from that registration and ask
//! nothing again. A socket that may no longer see its room is taken out of
//! it and closed, through the index, like a socket whose session ended.
//!
//! Only a socket's own task removes its entry (in [`Registry::remove`]), so
//! the bookkeeping that follows a departure (presence, stopping a room's
//! tail) happens in one place. Closing a socket just fires its close signal.

mod access;
mod caps;
mod fanout;
mod names;
mod outbox;
mod revocations;
mod watchers;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio::sync::{oneshot, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tower_sessions::session::Id;

use self::{
    caps::Places,
    names::Names,
    revocations::{Revocations, Since},
    watchers::Watchers,
};
pub use self::{
    caps::{Caps, Full, Slot},
    fanout::FanOut,
    outbox::{ConnId, OutFrame, Outbound, Outbox, Watch},
    revocations::Epoch,
};
use crate::{
    auth::{Ended, SessionsEnded},
    backend::EndReason,
    model::{Message, MessageId, RoomKind, RoomName, UserId},
    protocol::{self as frames, CloseReason},
    realtime::unread::{Reader, Unread},
};

/// Everything needed to register a socket.
pub struct Registration {
    pub session: Id,
    pub user: UserId,
    pub name: Arc<str>,
    pub room: RoomName,
    /// What the user calls the room: what its frames say.
    pub label: Arc<str>,
    pub kind: RoomKind,
    pub outbox: Outbox,
    pub close: oneshot::Sender<CloseReason>,
    /// Where to start tailing the room if this instance does not follow it yet.
    pub room_start: MessageId,
    /// Taken before the user's access to the room was checked.
    pub epoch: Epoch,
}

/// The result of registering.
#[derive(Debug, Clone)]
pub struct Joined {
    pub id: ConnId,
    /// Every message after this id reaches the socket through its outbox.
    pub cursor: MessageId,
    /// This instance did not follow the room before.
    pub new_room: bool,
    /// Set once the socket may no longer see its room.
    pub revoked: Revoked,
}

/// Whether a socket's user may no longer see its room: set under the
/// registry's lock when the removal is applied, read by the socket's task
/// before every frame it writes, so that nothing of the room reaches it
/// after (not even what was queued before).
#[derive(Debug, Clone, Default)]
pub struct Revoked(Arc<AtomicBool>);

impl Revoked {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Conn {
    session: Id,
    user: UserId,
    name: Arc<str>,
    room: RoomName,
    label: Arc<str>,
    kind: RoomKind,
    /// Still among the room's members (a revoked socket is taken out at
    /// once, before its task removes it).
    in_room: bool,
    outbox: Outbox,
    revoked: Revoked,
    /// The other rooms whose unread counts it follows (see [`Registry::watch`]).
    watching: Vec<RoomName>,
    /// It counts its user's other rooms (it asked to, and [`Registry::watch`]
    /// ran): a room added to the user is counted too.
    counts_others: bool,
    /// Taken by whoever closes the socket first.
    close: Option<oneshot::Sender<CloseReason>>,
}

/// A room's sockets here, by label: one group in most rooms, at most two
/// in a direct room (each of its users calls it by the other's name).
#[derive(Default)]
struct Members(Vec<(Arc<str>, HashMap<ConnId, Outbox>)>);

impl Members {
    fn insert(&mut self, label: &Arc<str>, id: ConnId, outbox: Outbox) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, group)) => {
                group.insert(id, outbox);
            }
            None => self.0.push((label.clone(), HashMap::from([(id, outbox)]))),
        }
    }

    fn remove(&mut self, label: &str, id: ConnId) {
        if let Some(at) = self.0.iter().position(|(l, _)| &**l == label) {
            self.0[at].1.remove(&id);
            if self.0[at].1.is_empty() {
                self.0.swap_remove(at);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.0.iter().flat_map(|(_, group)| group.keys().copied())
    }
}

struct Room {
    members: Members,
    /// Sockets of other rooms counting this room's unread messages.
    watchers: Watchers,
    /// The names of the members.
    online: Names,
    /// The last message delivered to the room's sockets: the tail reads on
    /// from here. Kept under the same lock as `members`, so a socket's
    /// registration and a delivery are totally ordered.
    cursor: MessageId,
}

impl Room {
    fn new(cursor: MessageId) -> Self {
        Self { members: Members::default(), watchers: Watchers::default(), online: Names::default(), cursor }
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
    revocations: Revocations,
}

impl Inner {
    /// Forgets a room nothing uses any more.
    fn drop_if_unused(&mut self, room: &RoomName) {
        if self.rooms.get(room).is_some_and(Room::is_unused) {
            self.rooms.remove(room);
        }
    }
}

pub struct Registry {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Sockets open or being opened, for the caps.
    places: Places,
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
            places: Places::new(caps),
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
        self.places.reserve(user, session)
    }

    /// Now, in the order of removals applied here: an upgrade takes it
    /// before it checks the user's access to the room.
    pub fn epoch(&self) -> Epoch {
        self.lock().revocations.epoch()
    }

    /// Registers a socket, unless its user was removed from its room since
    /// its epoch: then `Err` holds what the socket is closed with at once
    /// (see [`revocations`]).
    pub fn register(&self, reg: Registration) -> Result<Joined, CloseReason> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let inner = &mut *inner;
        match inner.revocations.since(reg.epoch, &reg.room, reg.user) {
            Since::Clear => {}
            Since::Revoked => return Err(frames::ACCESS_REVOKED),
            Since::Forgotten => return Err(frames::STORE_UNAVAILABLE),
        }
        inner.by_session.entry(reg.session).or_default().push(id);
        inner.by_user.entry(reg.user).or_default().push(id);
        let new_room = !inner.rooms.contains_key(&reg.room);
        let room = inner.rooms.entry(reg.room.clone()).or_insert_with(|| Room::new(reg.room_start));
        room.members.insert(&reg.label, id, reg.outbox.clone());
        room.online.join(reg.name.clone());
        let cursor = room.cursor;
        let revoked = Revoked::default();
        inner.conns.insert(
            id,
            Conn {
                session: reg.session,
                user: reg.user,
                name: reg.name,
                room: reg.room,
                label: reg.label,
                kind: reg.kind,
                in_room: true,
                outbox: reg.outbox,
                revoked: revoked.clone(),
                watching: Vec::new(),
                counts_others: false,
                close: Some(reg.close),
            },
        );
        // An upgrade accepted just before shutdown began must not slip past
        // `close_all`.
        if self.closing.load(Ordering::Acquire) {
            Self::close_ids(inner, &[id], frames::SHUTTING_DOWN);
        }
        Ok(Joined { id, cursor, new_room, revoked })
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
        if conn.in_room {
            if let Some(room) = inner.rooms.get_mut(&conn.room) {
                room.members.remove(&conn.label, id);
                room.online.leave(&conn.name);
            }
            inner.drop_if_unused(&conn.room);
        }
        for watched in &conn.watching {
            if let Some(room) = inner.rooms.get_mut(watched) {
                room.watchers.remove(id);
            }
            inner.drop_if_unused(watched);
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

    /// The distinct sessions with open sockets, for the revalidation sweep.
    pub fn sessions(&self) -> Vec<Id> {
        self.lock().by_session.keys().copied().collect()
    }

    /// What the revalidation sweep checks against the store: every
    /// (private room, user) pair with a socket here, and every public room
    /// with a socket here (with one of its users: a public room's state is
    /// the same for everyone). Direct rooms' members never change.
    pub fn access_pairs(&self) -> Vec<(RoomName, UserId, RoomKind)> {
        let inner = self.lock();
        let mut seen: std::collections::HashSet<(&RoomName, Option<UserId>)> = Default::default();
        let mut pairs = Vec::new();
        for conn in inner.conns.values().filter(|c| c.in_room) {
            let key = match conn.kind {
                RoomKind::Private => (&conn.room, Some(conn.user)),
                RoomKind::Public => (&conn.room, None),
                RoomKind::Direct => continue,
            };
            if seen.insert(key) {
                pairs.push((conn.room.clone(), conn.user, conn.kind));
            }
        }
        pairs
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
    /// when the returned fan-out is sent (see [`Registry::send`]), made
    /// once per label; each socket of another room that counts this room's
    /// unread messages gets its new count after them. A socket whose
    /// outbox is full is closed: it is not reading, and it will catch up
    /// with `after=` when it reconnects.
    pub fn deliver(&self, room_name: &RoomName, messages: &[Message]) -> FanOut {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(room_name) else { return FanOut::empty(room_name) };
        let fresh: Vec<&Message> = messages.iter().filter(|m| m.id > room.cursor).collect();
        if let Some(last) = fresh.last() {
            room.cursor = last.id;
        }
        let singles = room.watchers.count_delivered(&fresh);
        let frames = |label: &str| -> Vec<Outbound> {
            fresh
                .iter()
                .map(|message| {
                    Arc::new(OutFrame { id: Some(message.id), text: frames::message(label, message), watch: None })
                })
                .collect()
        };
        match fresh.is_empty() {
            true => FanOut::empty(room_name),
            false => FanOut::new(room_name, room.members.0.iter(), frames),
        }
        .with_singles(singles)
    }

    /// A frame for every socket in the room (presence), made by `frame` for
    /// each label. A socket whose outbox is full is closed as a slow
    /// consumer: it would miss a diff, and a missed diff is a wrong list
    /// until it reconnects.
    pub fn broadcast(&self, room_name: &RoomName, frame: impl Fn(&str) -> Utf8Bytes) -> FanOut {
        let inner = self.lock();
        let Some(room) = inner.rooms.get(room_name) else { return FanOut::empty(room_name) };
        FanOut::new(room_name, room.members.0.iter(), |label| vec![Arc::new(OutFrame::text(frame(label)))])
    }

    /// Sends a fan-out: queues its frames on its sockets, a step at a time,
    /// and closes the sockets whose queue was full. Fan-outs of one room
    /// must be sent one after the other, in the order they were made.
    pub async fn send(&self, fan_out: FanOut) {
        let room = fan_out.room().clone();
        let slow = fan_out.reach().await;
        if !slow.is_empty() {
            tracing::warn!(%room, sockets = slow.len(), "closing sockets that stopped reading");
            Self::close_ids(&mut self.lock(), &slow, frames::SLOW_CONSUMER);
        }
    }

    /// Makes socket `id` count the unread messages of `rooms` (its user's
    /// other rooms, each with what the user calls it and where to start
    /// following it when this instance does not yet): every message
    /// delivered in them from now on counts. Returns each room's cursor,
    /// from which on messages are counted here (the socket counts those up
    /// to it from the store, then calls [`Registry::settle_unread`]), and
    /// the rooms this instance did not follow before (the tail must look
    /// at the room set again). A socket whose room was revoked meanwhile
    /// watches nothing.
    pub fn watch(
        &self,
        id: ConnId,
        outbox: &Outbox,
        rooms: &[(RoomName, Arc<str>, MessageId)],
    ) -> (Vec<(RoomName, MessageId)>, Vec<RoomName>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(conn) = inner.conns.get_mut(&id).filter(|c| c.in_room) else { return (Vec::new(), Vec::new()) };
        conn.counts_others = true;
        let (user, reader) = (conn.user, Reader::new(conn.name.clone()));
        let mut cursors = Vec::with_capacity(rooms.len());
        let mut new_rooms = Vec::new();
        for (room_name, label, start) in rooms {
            if *room_name == conn.room || conn.watching.contains(room_name) {
                continue;
            }
            if !inner.rooms.contains_key(room_name) {
                new_rooms.push(room_name.clone());
            }
            let room = inner.rooms.entry(room_name.clone()).or_insert_with(|| Room::new(*start));
            room.watchers.add(id, user, reader.clone(), label.clone(), outbox.clone());
            conn.watching.push(room_name.clone());
            cursors.push((room_name.clone(), room.cursor));
        }
        (cursors, new_rooms)
    }

    /// Adds what the store counted (messages up to the cursor [`Registry::watch`]
    /// gave) to what was delivered since; from now on changes are sent.
    /// Returns the whole count.
    pub fn settle_unread(&self, id: ConnId, room: &RoomName, from: MessageId, stored: Unread) -> Option<Unread> {
        self.lock().rooms.get_mut(room)?.watchers.settle(id, from, stored)
    }

    /// `user` has read `room` up to `up_to`: their sockets on this instance
    /// that count its unread messages start again from zero when that is
    /// the newest message delivered here (short of it, which of the counted
    /// messages were read is not known, and the counts stand until the
    /// page is loaded again).
    pub fn read(&self, user: UserId, room_name: &RoomName, up_to: MessageId) -> FanOut {
        let mut inner = self.lock();
        let Some(room) = inner.rooms.get_mut(room_name) else { return FanOut::empty(room_name) };
        let singles = if up_to >= room.cursor { room.watchers.clear(user) } else { Vec::new() };
        FanOut::empty(room_name).with_singles(singles)
    }

    /// Whether this instance has sockets in the room.
    pub fn follows(&self, room: &RoomName) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| !r.members.is_empty())
    }

    /// The names with at least one socket in the room on this instance.
    pub fn local_names(&self, room: &RoomName) -> Vec<String> {
        self.lock().rooms.get(room).map(|r| r.online.iter().map(str::to_owned).collect()).unwrap_or_default()
    }

    /// Whether `name` has a socket in the room on this instance.
    pub fn is_online(&self, room: &RoomName, name: &str) -> bool {
        self.lock().rooms.get(room).is_some_and(|r| r.online.contains(name))
    }

    /// Every (room, name) pair present on this instance, for the heartbeat.
    pub fn presence_pairs(&self) -> Vec<(RoomName, String)> {
        let inner = self.lock();
        inner
            .rooms
            .iter()
            .flat_map(|(room, r)| r.online.iter().map(move |name| (room.clone(), name.to_owned())))
            .collect()
    }
}

impl SessionsEnded for Registry {
    fn ended(&self, ended: &Ended) -> usize {
        self.close_ended(ended)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::clock::UnixMillis;

    pub(crate) const CAPS: Caps = Caps { instance: 10, per_user: 10, per_session: 10 };

    /// The far end of a registered socket, as its task would hold it.
    pub(crate) struct Joined {
        pub id: ConnId,
        pub outbox: mpsc::Receiver<Outbound>,
        pub close: oneshot::Receiver<CloseReason>,
    }

    /// Where a test socket is, and since when its access was known.
    pub(crate) struct Place<'a> {
        pub room: RoomName,
        pub label: &'a str,
        pub kind: RoomKind,
        pub epoch: Epoch,
    }

    impl Place<'_> {
        /// A public room, checked just now.
        pub(crate) fn public(reg: &Registry, room: &str) -> Place<'static> {
            let room = RoomName::parse(room).unwrap();
            let label: &'static str = Box::leak(room.as_str().into());
            Place { room, label, kind: RoomKind::Public, epoch: reg.epoch() }
        }
    }

    /// Registers a socket as its task would; `Err` is what it is closed with.
    pub(crate) fn register_at(
        reg: &Registry,
        session: Id,
        user: UserId,
        name: &str,
        place: Place<'_>,
        start: MessageId,
        capacity: usize,
    ) -> Result<Joined, CloseReason> {
        let (tx, outbox) = mpsc::channel(capacity);
        let (close_tx, close) = oneshot::channel();
        let joined = reg.register(Registration {
            session,
            user,
            name: name.into(),
            room: place.room,
            label: place.label.into(),
            kind: place.kind,
            outbox: tx,
            close: close_tx,
            room_start: start,
            epoch: place.epoch,
        })?;
        Ok(Joined { id: joined.id, outbox, close })
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
        register_at(reg, session, user, name, Place::public(reg, room), start, capacity).expect("registered")
    }

    pub(crate) fn join_as(
        reg: &Registry,
        session: Id,
        user: UserId,
        name: &str,
        room: &str,
        capacity: usize,
    ) -> Joined {
        register(reg, session, user, name, room, MessageId::ZERO, capacity)
    }

    /// Registers a socket of a new session of a new user, starting at `start`.
    pub(crate) fn join(reg: &Registry, name: &str, room: &str, start: MessageId, capacity: usize) -> Joined {
        register(reg, Id::default(), UserId::new_v4(), name, room, start, capacity)
    }

    pub(crate) fn message(id: u64) -> Message {
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
        assert!(reg.len() == 0 && reg.cursors().is_empty() && reg.sessions().is_empty());
    }

    #[test]
    fn a_socket_registered_during_shutdown_is_closed_at_once() {
        let reg = Registry::new(CAPS);
        reg.close_all(frames::SHUTTING_DOWN);
        let mut late = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        assert_eq!(late.close.try_recv().unwrap(), frames::SHUTTING_DOWN);
        assert_eq!(reg.reserve(UserId::new_v4(), Id(2)).unwrap_err(), Full::Instance, "no new sockets either");
    }
}
