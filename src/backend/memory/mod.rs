//! The in-process backend: the same contracts as Redis, inside one process.
//!
//! It lets `cargo run` work on a machine with no Redis and keeps unit tests
//! fast. Nothing is shared with other instances and nothing survives a
//! restart, which the start-up log says loudly.
//!
//! Layout: this file holds the backend's state (every map, each under its
//! own lock), `new` and the helpers more than one store uses; one file per
//! store trait implements it over that state, as `redis/` does.

mod bus;
mod counters;
mod devices;
mod health;
mod history;
mod invites;
mod presence;
mod rooms;
mod security_log;
mod sessions;
mod users;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{atomic::AtomicU64, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, Notify};
use tower_sessions::session::{Id, Record};

use crate::{
    backend::{rules, Mentioned, Notice, SharedSecret, StoredUser},
    clock::UnixMillis,
    config::ChatConfig,
    model::{Invite, Message, MessageId, Role, RoomName, SecurityEvent, SessionDescriptor, TokenRecord, User, UserId},
};

/// `(room, sender, client_id)` -> the id stored for it, and when.
type SentIndex = HashMap<(RoomName, UserId, String), (MessageId, Instant)>;
/// room -> `(instance, user)` -> deadline.
type PresenceEntries = HashMap<RoomName, HashMap<(String, String), Instant>>;
/// user -> direct room -> (the other member's name, its last message).
type DirectLists = HashMap<UserId, HashMap<RoomName, (String, UnixMillis)>>;

#[derive(Debug)]
struct RoomLog {
    messages: VecDeque<Message>,
    last_id: MessageId,
    /// The last message or visit: a public room lives for its lifetime
    /// after it.
    active_at: UnixMillis,
    /// A private or direct room's: it never expires.
    lasting: bool,
}

impl RoomLog {
    fn new(now: UnixMillis, lasting: bool) -> Self {
        Self { messages: VecDeque::new(), last_id: MessageId::ZERO, active_at: now, lasting }
    }

    /// The messages after `id`, oldest first (ids are ascending: a binary search).
    fn after(&self, id: MessageId) -> impl Iterator<Item = &Message> {
        self.messages.range(self.messages.partition_point(|m| m.id <= id)..)
    }
}

/// Every room, under one lock: what a name is (a public room, a private
/// one, free) is decided under it, as the Redis backend decides it in one
/// script in the room's slot.
#[derive(Debug, Default)]
struct RoomTable {
    logs: HashMap<RoomName, RoomLog>,
    private: HashMap<RoomName, PrivateRoom>,
    /// user -> the private rooms they are a member of. Written under the
    /// same lock as the rooms, so exact (the Redis index is checked
    /// against the rooms when read).
    memberships: HashMap<UserId, HashSet<RoomName>>,
}

#[derive(Debug)]
struct PrivateRoom {
    owner: UserId,
    /// Longest-standing first.
    members: Vec<(User, UnixMillis)>,
}

impl PrivateRoom {
    fn is_member(&self, user: UserId) -> bool {
        self.members.iter().any(|(m, _)| m.id == user)
    }

    fn role(&self, user: UserId) -> Role {
        if self.owner == user {
            Role::Owner
        } else {
            Role::Member
        }
    }
}

impl RoomTable {
    fn exists(&self, room: &RoomName) -> bool {
        self.logs.contains_key(room) || self.private.contains_key(room)
    }

    /// Whether `user` may write in `room` now.
    fn writable(&self, room: &RoomName, user: UserId) -> bool {
        if room.is_direct() {
            return room.other_member(user).is_some();
        }
        self.private.get(room).is_none_or(|p| p.is_member(user))
    }

    fn private_count(&self, user: UserId) -> u64 {
        self.memberships.get(&user).map_or(0, |rooms| rooms.len() as u64)
    }
}

#[derive(Debug)]
pub struct MemoryBackend {
    users: Mutex<HashMap<String, StoredUser>>,
    sessions: Mutex<HashMap<Id, Record>>,
    /// Token sessions, by id, beside the cookie sessions; `sids` finds them.
    tokens: Mutex<HashMap<Id, (TokenRecord, UnixMillis)>>,
    sids: Mutex<HashMap<String, (Id, UnixMillis)>>,
    tickets: Mutex<HashMap<String, (String, Instant)>>,
    /// name -> the current value, and the retired ones with their time.
    secrets: Mutex<HashMap<String, SharedSecret>>,
    session_creates: AtomicU64,
    index: Mutex<HashMap<UserId, HashMap<Id, UnixMillis>>>,
    /// user -> what their sessions say of themselves. Locked after `index`
    /// when both are, as the Redis scripts see both at once.
    devices: Mutex<HashMap<UserId, Descriptors>>,
    /// user -> their security log.
    security: Mutex<HashMap<UserId, SecurityEntries>>,
    /// code hash -> invite.
    invites: Mutex<HashMap<String, Invite>>,
    counters: Mutex<HashMap<String, (u64, Instant)>>,
    bus: broadcast::Sender<Notice>,
    rooms: Mutex<RoomTable>,
    direct: Mutex<DirectLists>,
    /// user -> room -> when they last opened it.
    user_rooms: Mutex<HashMap<UserId, HashMap<RoomName, UnixMillis>>>,
    /// user -> their read markers.
    read: Mutex<HashMap<UserId, ReadMarkers>>,
    /// user -> their mention inbox.
    mentioned: Mutex<HashMap<UserId, MentionInbox>>,
    /// sender -> their message-rate bucket.
    buckets: Mutex<HashMap<UserId, (f64, UnixMillis)>>,
    sent: Mutex<SentIndex>,
    /// Woken on every append, for `tail`.
    appended: Notify,
    /// Poked by `wake_tail`. A poke with no tail waiting is kept for the
    /// next one (like the Redis backend's wake stream), so that a room joined
    /// just before the tail starts waiting is not missed.
    wake: Notify,
    presence: Mutex<PresenceEntries>,
    history_max_len: usize,
    dedupe_window: Duration,
    room_ttl: Duration,
    user_rate: rules::UserRate,
    new_rooms: rules::NewRooms,
    room_limits: rules::RoomLimits,
    mention_inbox_len: usize,
}

/// One user's session descriptors. Like the Redis hash they expire
/// together, when the last of their sessions ends at the latest.
#[derive(Debug, Default)]
struct Descriptors {
    sessions: HashMap<Id, SessionDescriptor>,
    until: UnixMillis,
}

/// One user's security log, newest first; gone at `until` (renewed by
/// each write), like the Redis list.
#[derive(Debug, Default)]
struct SecurityEntries {
    entries: VecDeque<SecurityEvent>,
    until: UnixMillis,
}

impl SecurityEntries {
    fn push(&mut self, event: SecurityEvent) {
        self.entries.push_front(event);
        self.entries.truncate(rules::SECURITY_EVENTS_KEPT);
    }
}

/// One user's read markers. Like the Redis hash they expire together, a
/// room lifetime after the last one moved.
#[derive(Debug)]
struct ReadMarkers {
    moved_at: UnixMillis,
    rooms: HashMap<RoomName, MessageId>,
}

/// One user's mention inbox, newest first. Like the Redis list it goes a
/// room lifetime after the newest note.
#[derive(Debug)]
struct MentionInbox {
    noted_at: UnixMillis,
    notes: VecDeque<Mentioned>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (every
    // critical section is a single map operation), so poisoning is ignored.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryBackend {
    pub fn new(config: &ChatConfig) -> Self {
        Self {
            users: Mutex::default(),
            sessions: Mutex::default(),
            tokens: Mutex::default(),
            sids: Mutex::default(),
            tickets: Mutex::default(),
            secrets: Mutex::default(),
            session_creates: AtomicU64::new(0),
            index: Mutex::default(),
            devices: Mutex::default(),
            security: Mutex::default(),
            invites: Mutex::default(),
            counters: Mutex::default(),
            bus: broadcast::channel(1024).0,
            rooms: Mutex::default(),
            direct: Mutex::default(),
            user_rooms: Mutex::default(),
            read: Mutex::default(),
            mentioned: Mutex::default(),
            buckets: Mutex::default(),
            sent: Mutex::default(),
            appended: Notify::new(),
            wake: Notify::new(),
            presence: Mutex::default(),
            history_max_len: rules::history_cap(config) as usize,
            dedupe_window: rules::dedupe_window(config),
            room_ttl: rules::room_ttl(config),
            user_rate: rules::UserRate::from_config(config),
            new_rooms: rules::NewRooms::from_config(config),
            room_limits: rules::RoomLimits::from_config(config),
            mention_inbox_len: config.mention_inbox_len.max(1),
        }
    }

    /// The rooms, with public ones unused for their lifetime forgotten (as
    /// Redis expires their keys).
    fn live_rooms(&self, now: UnixMillis) -> MutexGuard<'_, RoomTable> {
        let mut rooms = lock(&self.rooms);
        rooms.logs.retain(|_, log| log.lasting || log.active_at + self.room_ttl > now);
        rooms
    }

    /// Increments fixed-window counters: each one's new value and time left.
    fn count(&self, keys: &[String], window: Duration) -> Vec<(u64, Duration)> {
        let mut counters = lock(&self.counters);
        let now = Instant::now();
        counters.retain(|_, (_, until)| *until > now);
        keys.iter()
            .map(|key| {
                let (n, until) = counters.entry(key.clone()).or_insert((0, now + window));
                *n += 1;
                (*n, *until - now)
            })
            .collect()
    }
}
