//! The in-process backend: the same contracts as Redis, inside one process.
//!
//! It lets `cargo run` work on a machine with no Redis and keeps unit tests
//! fast. Nothing is shared with other instances and nothing survives a
//! restart, which the start-up log says loudly.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{broadcast, Notify};
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use super::{
    rules, Added, Candidate, Counters, Created, Devices, Event, EventBus, Health, History, Invites, ListedSession,
    Member, Mentioned, Notice, PresenceStore, Removed, RoomOpened, RoomState, Rooms, SecurityLog, SessionIndex,
    SharedSecret, Spend, StoreError, StoreResult, StoredTokenSession, StoredUser, TokenStore, UserStore,
};
use crate::{
    clock::UnixMillis,
    config::ChatConfig,
    model::{
        folded_username, Appended, Invite, Message, MessageId, NewMessage, Role, RoomName, SecurityEvent,
        SecurityEventKind, SessionDescriptor, TokenRecord, User, UserId,
    },
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

    /// The sender's rate bucket as last counted (buckets full again are dropped).
    fn bucket(&self, user: UserId, now: UnixMillis) -> Option<(f64, UnixMillis)> {
        let mut buckets = lock(&self.buckets);
        let refill = self.user_rate.refill_time();
        buckets.retain(|_, (_, at)| *at + refill > now);
        buckets.get(&user).copied()
    }

    /// Counts a new room against `user`'s quota (for a direct room, their
    /// quota of new conversations); `Err(retry_after)` when over it.
    fn charge_new_room(&self, room: &RoomName, user: UserId) -> Result<(), Duration> {
        let (counter, quota) = if room.is_direct() {
            (rules::RoomLimits::direct_counter(user), self.room_limits.new_direct)
        } else {
            (rules::NewRooms::counter(user), self.new_rooms)
        };
        let counted = self.count(&[counter], quota.window);
        quota.allows(counted[0])
    }

    /// Counts a private room against `user`'s new-room quota only if it is
    /// within it: a refusal counts nothing.
    fn charge_if_within(&self, user: UserId) -> Result<(), Duration> {
        let mut counters = lock(&self.counters);
        let now = Instant::now();
        counters.retain(|_, (_, until)| *until > now);
        let (n, until) = counters.entry(rules::NewRooms::counter(user)).or_insert((0, now + self.new_rooms.window));
        if *n >= self.new_rooms.max {
            return Err((*until - now).max(Duration::from_secs(1)));
        }
        *n += 1;
        Ok(())
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

    fn new_messages(&self, cursors: &[(RoomName, MessageId)]) -> Vec<(RoomName, Vec<Message>)> {
        let rooms = self.live_rooms(UnixMillis::now());
        cursors
            .iter()
            .filter_map(|(room, cursor)| {
                let log = rooms.logs.get(room)?;
                let fresh: Vec<Message> = log.after(*cursor).cloned().collect();
                (!fresh.is_empty()).then(|| (room.clone(), fresh))
            })
            .collect()
    }
}

#[async_trait]
impl UserStore for MemoryBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        match lock(&self.users).entry(folded_username(&user.name)) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(slot) => {
                let password_hash = password_hash.to_owned();
                slot.insert(StoredUser { user: user.clone(), password_hash, disabled: false });
                Ok(true)
            }
        }
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        Ok(lock(&self.users).get(&folded_username(name)).cloned())
    }

    async fn set_password(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let mut users = lock(&self.users);
        let Some(stored) = users.get_mut(&folded_username(&user.name)).filter(|s| s.user.id == user.id) else {
            return Ok(false);
        };
        stored.password_hash = password_hash.to_owned();
        Ok(true)
    }

    async fn set_disabled(&self, name: &str, disabled: bool) -> StoreResult<Option<User>> {
        Ok(lock(&self.users).get_mut(&folded_username(name)).map(|stored| {
            stored.disabled = disabled;
            stored.user.clone()
        }))
    }
}

fn is_live(record: &Record) -> bool {
    record.expiry_date > OffsetDateTime::now_utc()
}

#[async_trait]
impl SessionStore for MemoryBackend {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let mut sessions = lock(&self.sessions);
        if self.session_creates.fetch_add(1, Ordering::Relaxed) % 256 == 0 {
            sessions.retain(|_, r| is_live(r));
        }
        while sessions.contains_key(&record.id) {
            record.id = Id::default();
        }
        sessions.insert(record.id, record.clone());
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Like Redis `SET XX`: saving never resurrects a deleted session.
        if let Some(existing) = lock(&self.sessions).get_mut(&record.id) {
            *existing = record.clone();
        }
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(record) if is_live(record) => Ok(Some(record.clone())),
            Some(_) => {
                sessions.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        // An id names a cookie session or a token session; ending either
        // is deleting it (as in Redis, where both live under their id).
        lock(&self.sessions).remove(id);
        lock(&self.tokens).remove(id);
        Ok(())
    }
}

#[async_trait]
impl SessionIndex for MemoryBackend {
    async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()> {
        let mut index = lock(&self.index);
        let sessions = index.entry(user).or_default();
        let now = UnixMillis::now();
        sessions.retain(|_, by| *by > now);
        sessions.insert(session, expires_by);
        Ok(())
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        if let Some(sessions) = lock(&self.index).get_mut(&user) {
            sessions.remove(&session);
        }
        Ok(())
    }

    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
        Ok(lock(&self.index).remove(&user).map(|s| s.into_keys().collect()).unwrap_or_default())
    }

    async fn exist(&self, ids: &[Id]) -> StoreResult<Vec<bool>> {
        let sessions = lock(&self.sessions);
        let tokens = lock(&self.tokens);
        let now = UnixMillis::now();
        Ok(ids
            .iter()
            .map(|id| sessions.get(id).is_some_and(is_live) || tokens.get(id).is_some_and(|(_, until)| *until > now))
            .collect())
    }
}

/// `user`'s descriptors, unless their time is up (then they are dropped,
/// as the Redis hash expires).
fn live_descriptors(
    devices: &mut HashMap<UserId, Descriptors>,
    user: UserId,
    now: UnixMillis,
) -> Option<&mut Descriptors> {
    if devices.get(&user).is_some_and(|mine| mine.until <= now) {
        devices.remove(&user);
    }
    devices.get_mut(&user)
}

/// As the Redis backend: every step on one user's descriptors is taken
/// under their lock (with the index's, where a script reads both); a
/// listing reads the index, then the sessions, then drops what is gone.
#[async_trait]
impl Devices for MemoryBackend {
    async fn put(
        &self,
        user: UserId,
        session: Id,
        descriptor: &SessionDescriptor,
        expires_by: UnixMillis,
    ) -> StoreResult<()> {
        let now = UnixMillis::now();
        let index = lock(&self.index);
        let mut devices = lock(&self.devices);
        devices.retain(|_, mine| mine.until > now);
        let mine = devices.entry(user).or_default();
        let indexed = index.get(&user);
        mine.sessions.retain(|id, _| *id == session || indexed.is_some_and(|ids| ids.contains_key(id)));
        mine.sessions.insert(session, descriptor.clone());
        mine.until = mine.until.max(expires_by);
        Ok(())
    }

    async fn touch(&self, user: UserId, session: Id, at: UnixMillis, granularity: Duration) -> StoreResult<bool> {
        let mut devices = lock(&self.devices);
        let found = live_descriptors(&mut devices, user, UnixMillis::now()).and_then(|m| m.sessions.get_mut(&session));
        match found {
            Some(descriptor) if descriptor.last_active_at < at - granularity => {
                descriptor.last_active_at = at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn moved(&self, user: UserId, old: Id, new: Id) -> StoreResult<bool> {
        let mut devices = lock(&self.devices);
        let Some(mine) = live_descriptors(&mut devices, user, UnixMillis::now()) else { return Ok(false) };
        let Some(descriptor) = mine.sessions.remove(&old) else { return Ok(false) };
        mine.sessions.insert(new, descriptor);
        Ok(true)
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        if let Some(mine) = live_descriptors(&mut lock(&self.devices), user, UnixMillis::now()) {
            mine.sessions.remove(&session);
        }
        Ok(())
    }

    async fn list(&self, user: UserId, limit: usize) -> StoreResult<Vec<ListedSession>> {
        let now = UnixMillis::now();
        // The entries that end last, as Redis's ZREVRANGEBYSCORE takes them.
        let mut indexed: Vec<(Id, UnixMillis)> = lock(&self.index)
            .get(&user)
            .map(|ids| ids.iter().filter(|(_, by)| **by > now).map(|(id, by)| (*id, *by)).collect())
            .unwrap_or_default();
        indexed.sort_by_key(|(id, by)| std::cmp::Reverse((*by, id.to_string())));
        indexed.truncate(limit);
        let ids: Vec<Id> = indexed.into_iter().map(|(id, _)| id).collect();
        let exist = SessionIndex::exist(self, &ids).await?;
        let mut index = lock(&self.index);
        let mut devices = lock(&self.devices);
        let mut mine = live_descriptors(&mut devices, user, now);
        let mut sessions = Vec::new();
        for (id, exists) in ids.into_iter().zip(exist) {
            if exists {
                let descriptor = mine.as_ref().and_then(|m| m.sessions.get(&id)).cloned();
                sessions.push(ListedSession { id, descriptor });
            } else {
                if let Some(m) = mine.as_mut() {
                    m.sessions.remove(&id);
                }
                if let Some(entries) = index.get_mut(&user) {
                    entries.remove(&id);
                }
            }
        }
        rules::newest_first(&mut sessions);
        Ok(sessions)
    }
}

/// `user`'s security log, empty if its time is up.
fn live_log(logs: &mut HashMap<UserId, SecurityEntries>, user: UserId, now: UnixMillis) -> &mut SecurityEntries {
    let mine = logs.entry(user).or_default();
    if mine.until <= now {
        mine.entries.clear();
    }
    mine
}

/// Each write under the logs' lock: one atomic step, as one script is.
#[async_trait]
impl SecurityLog for MemoryBackend {
    async fn record(&self, user: UserId, event: &SecurityEvent, keep_for: Duration) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut logs = lock(&self.security);
        logs.retain(|_, mine| mine.until > now);
        let mine = live_log(&mut logs, user, now);
        mine.push(event.clone());
        mine.until = now + keep_for;
        Ok(())
    }

    async fn sign_in_failed(
        &self,
        user: UserId,
        address: &str,
        at: UnixMillis,
        burst: Duration,
        keep_for: Duration,
    ) -> StoreResult<u32> {
        let now = UnixMillis::now();
        let mut logs = lock(&self.security);
        let mine = live_log(&mut logs, user, now);
        let burst_began_after = at - burst;
        let count = match mine.entries.front_mut() {
            Some(SecurityEvent { at: last, what: SecurityEventKind::SignInFailed { address: from, count, since } })
                if from == address && *since > burst_began_after =>
            {
                *count += 1;
                *last = (*last).max(at);
                *count
            }
            _ => {
                let what = SecurityEventKind::SignInFailed { address: address.to_owned(), count: 1, since: at };
                mine.push(SecurityEvent { at, what });
                1
            }
        };
        mine.until = now + keep_for;
        Ok(count)
    }

    async fn recent(&self, user: UserId, limit: usize) -> StoreResult<Vec<SecurityEvent>> {
        let now = UnixMillis::now();
        let logs = lock(&self.security);
        Ok(match logs.get(&user) {
            Some(mine) if mine.until > now => mine.entries.iter().take(limit).cloned().collect(),
            _ => Vec::new(),
        })
    }
}

/// Whether the store still remembers an invite (as Redis expires its key).
fn remembered(invite: &Invite, now: UnixMillis) -> bool {
    invite.expires_at + rules::INVITE_REMEMBERED_AFTER_EXPIRY > now
}

/// Each step under the invites' lock: one atomic step, as one script is.
#[async_trait]
impl Invites for MemoryBackend {
    async fn create(&self, code_hash: &str, invite: &Invite) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        invites.retain(|_, i| remembered(i, now));
        match invites.entry(code_hash.to_owned()) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(slot) => {
                slot.insert(invite.clone());
                Ok(true)
            }
        }
    }

    async fn spend(&self, code_hash: &str, at: UnixMillis) -> StoreResult<Spend> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        let Some(invite) = invites.get_mut(code_hash).filter(|i| remembered(i, now)) else {
            return Ok(Spend::Unknown);
        };
        if invite.expires_at <= at {
            return Ok(Spend::Expired);
        }
        if invite.uses_left == 0 {
            return Ok(Spend::UsedUp);
        }
        invite.uses_left -= 1;
        Ok(Spend::Spent(invite.clone()))
    }

    async fn give_back(&self, code_hash: &str) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        match invites.get_mut(code_hash).filter(|i| remembered(i, now)) {
            Some(invite) if invite.uses_left < invite.uses => {
                invite.uses_left += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl TokenStore for MemoryBackend {
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut sids = lock(&self.sids);
        sids.retain(|_, (_, until)| *until > now);
        sids.insert(record.sid.clone(), (id, end_by));
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, (_, until)| *until > now);
        tokens.insert(id, (record.clone(), expires_at));
        Ok(())
    }

    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>> {
        let now = UnixMillis::now();
        let Some((id, _)) = lock(&self.sids).get(sid).copied().filter(|(_, until)| *until > now) else {
            return Ok(None);
        };
        Ok(lock(&self.tokens).get(&id).filter(|(_, until)| *until > now).map(|(record, until)| StoredTokenSession {
            id,
            record: record.clone(),
            expires_at: *until,
        }))
    }

    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let Some((id, _)) = lock(&self.sids).get(sid).copied().filter(|(_, until)| *until > now) else {
            return Ok(false);
        };
        let mut tokens = lock(&self.tokens);
        match tokens.get_mut(&id) {
            Some((stored, until)) if *until > now && stored.refresh.current == expected => {
                *stored = record.clone();
                *until = expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_ticket(&self, ticket_hash: &str, sid: &str, ttl: Duration) -> StoreResult<()> {
        let now = Instant::now();
        let mut tickets = lock(&self.tickets);
        tickets.retain(|_, (_, until)| *until > now);
        tickets.insert(ticket_hash.to_owned(), (sid.to_owned(), now + ttl));
        Ok(())
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>> {
        let now = Instant::now();
        Ok(lock(&self.tickets).remove(ticket_hash).filter(|(_, until)| *until > now).map(|(sid, _)| sid))
    }

    async fn share_secrets(&self, candidates: &[Candidate<'_>], now: UnixMillis) -> StoreResult<Vec<SharedSecret>> {
        let mut secrets = lock(&self.secrets);
        let share = |candidate: &Candidate<'_>| {
            let secret = secrets
                .entry(candidate.name.to_owned())
                .or_insert_with(|| SharedSecret { current: candidate.value.to_vec(), retired: Vec::new() });
            if let Some((kept, until)) = candidate.retire.filter(|_| secret.current != candidate.value) {
                match secret.retired.iter_mut().find(|(value, _)| value == kept) {
                    Some((_, at)) => *at = (*at).max(until),
                    None => secret.retired.push((kept.to_vec(), until)),
                }
            }
            secret.retired.retain(|(_, until)| *until > now);
            secret.clone()
        };
        Ok(candidates.iter().map(share).collect())
    }
}

#[async_trait]
impl Counters for MemoryBackend {
    async fn get(&self, keys: &[String]) -> StoreResult<Vec<(u64, Duration)>> {
        let counters = lock(&self.counters);
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| match counters.get(k) {
                Some((n, until)) if *until > now => (*n, *until - now),
                _ => (0, Duration::ZERO),
            })
            .collect())
    }

    async fn incr(&self, keys: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>> {
        Ok(self.count(keys, window))
    }

    async fn decr(&self, key: &str) -> StoreResult<()> {
        if let Some((n, until)) = lock(&self.counters).get_mut(key) {
            if *until > Instant::now() {
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    async fn reset(&self, key: &str) -> StoreResult<()> {
        lock(&self.counters).remove(key);
        Ok(())
    }
}

#[async_trait]
impl EventBus for MemoryBackend {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        // No receiver is not an error: nobody is listening yet.
        let _ = self.bus.send(Notice::Event(event.clone()));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.bus.subscribe()
    }
}

#[async_trait]
impl History for MemoryBackend {
    async fn append(&self, room: &RoomName, message: NewMessage) -> StoreResult<Appended> {
        let now = Instant::now();
        let dedupe_key = message.client_id.clone().map(|cid| (room.clone(), message.sender, cid));
        let mut sent = lock(&self.sent);
        let clock = UnixMillis::now();
        if !self.live_rooms(clock).writable(room, message.sender) {
            return Ok(Appended::NotVisible);
        }
        sent.retain(|_, (_, at)| now.duration_since(*at) < self.dedupe_window);
        if let Some((id, _)) = dedupe_key.as_ref().and_then(|k| sent.get(k)) {
            return Ok(Appended::Duplicate(*id));
        }
        let Some(bucket) = self.user_rate.take(self.bucket(message.sender, clock), clock) else {
            return Ok(Appended::Throttled);
        };
        let exists = room.is_lobby() || self.live_rooms(clock).exists(room);
        if !exists && self.charge_new_room(room, message.sender).is_err() {
            return Ok(Appended::NewRoomRefused);
        }
        lock(&self.buckets).insert(message.sender, bucket);
        let stored = {
            let mut rooms = self.live_rooms(clock);
            // Looked at again where it is stored: the room may have become
            // private, or the sender left it, meanwhile.
            if !rooms.writable(room, message.sender) {
                return Ok(Appended::NotVisible);
            }
            let lasting = room.is_direct() || rooms.private.contains_key(room);
            let log = rooms.logs.entry(room.clone()).or_insert_with(|| RoomLog::new(clock, lasting));
            // Like a Redis stream id: the time, then a sequence within it.
            let ms = message.sent_at.as_millis().max(0) as u64;
            let id = if ms > log.last_id.ms {
                MessageId { ms, seq: 0 }
            } else {
                MessageId { ms: log.last_id.ms, seq: log.last_id.seq + 1 }
            };
            log.last_id = id;
            log.active_at = log.active_at.max(clock);
            let stored = message.stored(id);
            log.messages.push_back(stored.clone());
            while log.messages.len() > self.history_max_len {
                log.messages.pop_front();
            }
            stored
        };
        if let Some(key) = dedupe_key {
            sent.insert(key, (stored.id, now));
        }
        drop(sent);
        self.appended.notify_waiters();
        Ok(Appended::New(stored))
    }

    async fn after(&self, room: &RoomName, after: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms.logs.get(room).map(|log| log.after(after).take(limit).cloned().collect()).unwrap_or_default())
    }

    async fn recent(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms
            .logs
            .get(room)
            .map(|log| log.messages.iter().skip(log.messages.len().saturating_sub(limit)).cloned().collect())
            .unwrap_or_default())
    }

    async fn before(&self, room: &RoomName, before: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms
            .logs
            .get(room)
            .map(|log| {
                let end = log.messages.partition_point(|m| m.id < before);
                log.messages.range(end.saturating_sub(limit)..end).cloned().collect()
            })
            .unwrap_or_default())
    }

    async fn last_id(&self, room: &RoomName) -> StoreResult<MessageId> {
        Ok(self.live_rooms(UnixMillis::now()).logs.get(room).map(|log| log.last_id).unwrap_or(MessageId::ZERO))
    }

    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>> {
        let deadline = tokio::time::Instant::now() + wait;
        let woken = self.wake.notified();
        tokio::pin!(woken);
        loop {
            // Register interest before looking, so an append between the look
            // and the wait is not missed.
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let fresh = self.new_messages(cursors);
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            // An append to a room not followed here is no reason to return.
            tokio::select! {
                _ = appended => {}
                _ = woken.as_mut() => return Ok(self.new_messages(cursors)),
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn wake_tail(&self, _room: &RoomName) -> StoreResult<()> {
        self.wake.notify_one();
        Ok(())
    }

    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool> {
        Ok(self.live_rooms(UnixMillis::now()).exists(room))
    }

    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<RoomOpened> {
        if room.is_direct() {
            return Ok(RoomOpened::Open);
        }
        let now = UnixMillis::now();
        {
            // Looked at and charged under the rooms' lock: of two opening
            // one new room, one makes it, and a private room cannot be made
            // of its name meanwhile.
            let mut rooms = self.live_rooms(now);
            if rooms.private.contains_key(room) {
                return Ok(RoomOpened::Private);
            }
            if !room.is_lobby() && !rooms.logs.contains_key(room) {
                if let Err(retry_after) = self.charge_new_room(room, user) {
                    return Ok(RoomOpened::NewRoomRefused { retry_after });
                }
            }
            rooms
                .logs
                .entry(room.clone())
                .and_modify(|log| log.active_at = now)
                .or_insert_with(|| RoomLog::new(now, false));
        }
        let mut user_rooms = lock(&self.user_rooms);
        let mine = user_rooms.entry(user).or_default();
        mine.insert(room.clone(), now);
        if mine.len() > rules::USER_ROOMS_KEPT {
            let oldest = mine.iter().min_by_key(|(_, at)| **at).map(|(room, _)| room.clone());
            if let Some(oldest) = oldest {
                mine.remove(&oldest);
            }
        }
        Ok(RoomOpened::Open)
    }

    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>> {
        let live = self.live_rooms(UnixMillis::now());
        let user_rooms = lock(&self.user_rooms);
        let mut mine: Vec<(&RoomName, &UnixMillis)> = user_rooms
            .get(&user)
            .map(|m| m.iter().filter(|(room, _)| live.logs.get(*room).is_some_and(|log| !log.lasting)).collect())
            .unwrap_or_default();
        mine.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        Ok(mine.into_iter().take(limit).map(|(room, _)| room.clone()).collect())
    }

    async fn mark_read(&self, user: UserId, room: &RoomName, up_to: MessageId) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut read = lock(&self.read);
        let mine = read.entry(user).or_insert_with(|| ReadMarkers { moved_at: now, rooms: HashMap::new() });
        if mine.moved_at <= now - self.room_ttl {
            mine.rooms.clear();
        }
        if mine.rooms.get(room).is_some_and(|id| *id >= up_to) {
            return Ok(false);
        }
        mine.rooms.insert(room.clone(), up_to);
        mine.moved_at = now;
        if mine.rooms.len() > rules::USER_ROOMS_KEPT + 1 {
            let user_rooms = lock(&self.user_rooms);
            let opened = user_rooms.get(&user);
            let rooms = lock(&self.rooms);
            let private = rooms.memberships.get(&user);
            let direct = lock(&self.direct);
            let direct = direct.get(&user);
            mine.rooms.retain(|room, _| {
                opened.is_some_and(|l| l.contains_key(room))
                    || private.is_some_and(|p| p.contains(room))
                    || direct.is_some_and(|d| d.contains_key(room))
            });
        }
        Ok(true)
    }

    async fn read_markers(&self, user: UserId) -> StoreResult<HashMap<RoomName, MessageId>> {
        let read = lock(&self.read);
        Ok(match read.get(&user) {
            Some(mine) if mine.moved_at > UnixMillis::now() - self.room_ttl => mine.rooms.clone(),
            _ => HashMap::new(),
        })
    }

    async fn note_mention(&self, user: UserId, room: &RoomName, id: MessageId) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut inboxes = lock(&self.mentioned);
        let inbox = inboxes.entry(user).or_insert_with(|| MentionInbox { noted_at: now, notes: VecDeque::new() });
        if inbox.noted_at <= now - self.room_ttl {
            inbox.notes.clear();
        }
        inbox.notes.push_front(Mentioned { room: room.clone(), id });
        inbox.notes.truncate(self.mention_inbox_len);
        inbox.noted_at = now;
        Ok(())
    }

    async fn mentions(&self, user: UserId) -> StoreResult<Vec<Mentioned>> {
        let inboxes = lock(&self.mentioned);
        Ok(match inboxes.get(&user) {
            Some(inbox) if inbox.noted_at > UnixMillis::now() - self.room_ttl => inbox.notes.iter().cloned().collect(),
            _ => Vec::new(),
        })
    }
}

/// A direct room's key must be the pair's.
fn check_direct(room: &RoomName, a: UserId, b: UserId) -> StoreResult<()> {
    if *room == RoomName::direct(a, b) {
        Ok(())
    } else {
        Err(StoreError::Usage(format!("{room} is not the direct room of {a} and {b}")))
    }
}

/// Every call decides under the rooms' lock: one atomic step, as on Redis.
#[async_trait]
impl Rooms for MemoryBackend {
    async fn state(&self, room: &RoomName, user: UserId) -> StoreResult<RoomState> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("the state of direct room {room} is its key")));
        }
        if room.is_lobby() {
            return Ok(RoomState::Public);
        }
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(match rooms.private.get(room) {
            Some(p) => RoomState::Private(p.is_member(user).then(|| p.role(user))),
            None if rooms.logs.contains_key(room) => RoomState::Public,
            None => RoomState::Missing,
        })
    }

    async fn states(&self, pairs: &[(RoomName, UserId)]) -> StoreResult<Vec<RoomState>> {
        let mut out = Vec::with_capacity(pairs.len());
        for (room, user) in pairs {
            out.push(self.state(room, *user).await?);
        }
        Ok(out)
    }

    async fn create_private(&self, room: &RoomName, owner: &User) -> StoreResult<Created> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("direct room {room} cannot be made private")));
        }
        let now = UnixMillis::now();
        let mut rooms = self.live_rooms(now);
        if room.is_lobby() || rooms.exists(room) {
            return Ok(Created::NameTaken);
        }
        if rooms.private_count(owner.id) >= self.room_limits.max_private_rooms {
            return Ok(Created::TooManyRooms);
        }
        if let Err(retry_after) = self.charge_if_within(owner.id) {
            return Ok(Created::QuotaRefused { retry_after });
        }
        let members = vec![(owner.clone(), now)];
        rooms.private.insert(room.clone(), PrivateRoom { owner: owner.id, members });
        rooms.memberships.entry(owner.id).or_default().insert(room.clone());
        Ok(Created::Created)
    }

    async fn members(&self, room: &RoomName) -> StoreResult<Option<Vec<Member>>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms.private.get(room).map(|p| {
            p.members
                .iter()
                .map(|(user, joined_at)| Member { user: user.clone(), role: p.role(user.id), joined_at: *joined_at })
                .collect()
        }))
    }

    async fn add_member(&self, room: &RoomName, by: UserId, user: &User) -> StoreResult<Added> {
        let now = UnixMillis::now();
        let mut rooms = self.live_rooms(now);
        let count = rooms.private_count(user.id);
        let Some(p) = rooms.private.get_mut(room).filter(|p| p.is_member(by)) else {
            return Ok(Added::NotFound);
        };
        if p.is_member(user.id) {
            return Ok(Added::AlreadyMember);
        }
        if count >= self.room_limits.max_private_rooms {
            return Ok(Added::TooManyRooms);
        }
        if p.members.len() as u64 >= self.room_limits.max_members {
            return Ok(Added::RoomFull);
        }
        p.members.push((user.clone(), now));
        rooms.memberships.entry(user.id).or_default().insert(room.clone());
        Ok(Added::Added)
    }

    async fn remove_member(&self, room: &RoomName, by: UserId, user: UserId) -> StoreResult<Removed> {
        let mut rooms = self.live_rooms(UnixMillis::now());
        let Some(p) = rooms.private.get_mut(room).filter(|p| p.is_member(by) && p.is_member(user)) else {
            return Ok(Removed::NotFound);
        };
        if by != user && p.owner != by {
            return Ok(Removed::Forbidden);
        }
        p.members.retain(|(m, _)| m.id != user);
        let new_owner = match p.members.first() {
            Some((next, _)) if p.owner == user => {
                p.owner = next.id;
                Some(next.id)
            }
            _ => None,
        };
        let deleted = p.members.is_empty();
        if let Some(mine) = rooms.memberships.get_mut(&user) {
            mine.remove(room);
        }
        if deleted {
            rooms.private.remove(room);
            rooms.logs.remove(room);
            lock(&self.presence).remove(room);
        }
        Ok(Removed::Removed { new_owner, deleted })
    }

    async fn private_rooms(&self, user: UserId) -> StoreResult<Vec<(RoomName, Role)>> {
        let rooms = self.live_rooms(UnixMillis::now());
        let mut mine: Vec<(UnixMillis, RoomName, Role)> = rooms
            .memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|room| {
                let p = rooms.private.get(room)?;
                let (_, joined_at) = p.members.iter().find(|(m, _)| m.id == user)?;
                Some((*joined_at, room.clone(), p.role(user)))
            })
            .collect();
        mine.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(mine.into_iter().map(|(_, room, role)| (room, role)).collect())
    }

    async fn note_direct(&self, room: &RoomName, a: &User, b: &User, at: UnixMillis) -> StoreResult<()> {
        check_direct(room, a.id, b.id)?;
        let mut direct = lock(&self.direct);
        for (me, other) in [(a, b), (b, a)] {
            let entry = direct.entry(me.id).or_default().entry(room.clone()).or_insert((other.name.clone(), at));
            entry.1 = entry.1.max(at);
        }
        Ok(())
    }

    async fn direct_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<(RoomName, String)>> {
        let direct = lock(&self.direct);
        let mut mine: Vec<(&RoomName, &(String, UnixMillis))> = direct.get(&user).into_iter().flatten().collect();
        // Most recent first; at one time, as Redis's ZREVRANGE orders them.
        mine.sort_by(|(ra, (_, a)), (rb, (_, b))| (b, rb).cmp(&(a, ra)));
        Ok(mine.into_iter().take(limit).map(|(room, (name, _))| (room.clone(), name.clone())).collect())
    }
}

#[async_trait]
impl PresenceStore for MemoryBackend {
    async fn update(
        &self,
        instance: &str,
        online: &[(RoomName, String)],
        offline: &[(RoomName, String)],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut presence = lock(&self.presence);
        let until = Instant::now() + ttl;
        for (room, user) in online {
            presence.entry(room.clone()).or_default().insert((instance.to_owned(), user.clone()), until);
        }
        for (room, user) in offline {
            if let Some(entries) = presence.get_mut(room) {
                entries.remove(&(instance.to_owned(), user.clone()));
            }
        }
        Ok(())
    }

    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        let mut presence = lock(&self.presence);
        let now = Instant::now();
        Ok(rooms
            .iter()
            .map(|room| {
                let Some(entries) = presence.get_mut(room) else { return Vec::new() };
                entries.retain(|_, until| *until > now);
                entries.keys().cloned().collect()
            })
            .collect())
    }
}

#[async_trait]
impl Health for MemoryBackend {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn close(&self) {}
}
