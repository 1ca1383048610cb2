//! Storage and messaging behind palaver, as traits with two implementations:
//! [`redis`] (shared by every instance) and [`memory`] (one process only).
//!
//! Everything that must be the same on every instance lives behind these
//! traits: users, sessions (through tower-sessions' `SessionStore`), the
//! per-user index of sessions and what each session says of itself,
//! security events, invite codes, login-failure counters, the event bus,
//! room history and presence, private rooms and their members, and the
//! lists of direct conversations. Everything else (open sockets, timers) is
//! local.

mod build;
pub mod memory;
pub mod redis;
pub mod rules;

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use crate::{
    clock::UnixMillis,
    model::{
        Appended, Invite, Message, MessageId, NewMessage, Role, RoomName, SecurityEvent, SessionDescriptor,
        TokenRecord, User, UserId,
    },
};

/// The Redis tried when `REDIS_URL` is unset and the backend is `auto`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A failure of the shared store. Every request that needs the store fails
/// closed on it (503), never open.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("session store: {0}")]
    Session(#[from] session_store::Error),
    #[error("unreadable data in the store: {0}")]
    Corrupt(String),
    /// A write the store made but could not confirm on enough replicas
    /// (`REDIS_WAIT_REPLICAS`): a failover now could lose it, so it is not
    /// reported as stored (nor as not stored).
    #[error("written, but confirmed by {acked} of the {wanted} replicas asked for")]
    Unreplicated { wanted: i64, acked: i64 },
    /// A call the backend cannot serve as made.
    #[error("{0}")]
    Usage(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A user with the password hash, only ever read to verify a login.
#[derive(Clone)]
pub struct StoredUser {
    pub user: User,
    pub password_hash: String,
    /// An operator disabled the account: it may not sign in. A record
    /// written before accounts could be disabled reads as `false`.
    pub disabled: bool,
}

impl fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredUser")
            .field("user", &self.user)
            .field("password_hash", &"[redacted]")
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// Users, one record each under their name (folded), holding the id, the
/// name as registered, the password hash and whether the account is
/// disabled. Each change of a record is one atomic step that leaves its
/// other fields as they are.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates the user unless the name is taken, ignoring case. Atomic: of
    /// two concurrent registrations of one name exactly one returns `true`.
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool>;
    /// Finds a user by name, ignoring case.
    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>>;
    /// Replaces `user`'s password hash. `false` when no record of that
    /// name holds that user's id.
    async fn set_password(&self, user: &User, password_hash: &str) -> StoreResult<bool>;
    /// Disables or enables the account named `name` (ignoring case), and
    /// returns its user; `None` when there is no such user. Setting what
    /// is already set is no error.
    async fn set_disabled(&self, name: &str, disabled: bool) -> StoreResult<Option<User>>;
}

/// The per-user index of live session ids, so that "log out everywhere" can
/// find every session of a user without scanning the store.
#[async_trait]
pub trait SessionIndex: Send + Sync {
    /// Records a new session; `expires_by` is when it ends at the latest
    /// (its absolute lifetime), after which the entry is dropped.
    async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()>;
    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()>;
    /// Removes and returns every session id recorded for the user.
    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>>;
    /// For each id, whether that session still exists in the session store.
    /// One round trip for the whole batch.
    async fn exist(&self, sessions: &[Id]) -> StoreResult<Vec<bool>>;
}

/// A live session of a user as [`Devices::list`] gives it: its store id
/// and what it says of itself, if anything (`None`: a session begun before
/// sessions described themselves; shown as "Unknown").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSession {
    pub id: Id,
    pub descriptor: Option<SessionDescriptor>,
}

/// What each session of a user says of itself (docs/protocol.md §7): its
/// kind, client, address, when it began and when it was last active.
///
/// The user's [`SessionIndex`] stays the truth of which sessions there
/// are: a descriptor only describes a session indexed there, and one whose
/// session is gone is dropped when found. So a session is indexed before it
/// is described ([`Devices::put`], [`Devices::moved`] after
/// [`SessionIndex::add`]), and removing a descriptor is best effort. On
/// Redis the descriptors are a hash in the user's slot, beside the index.
#[async_trait]
pub trait Devices: Send + Sync {
    /// Describes a session just indexed under `user`, which ends at the
    /// latest at `expires_by` (its absolute lifetime): the descriptors are
    /// kept until the last of them ends. Descriptors of sessions no longer
    /// in the index are dropped on the way, so the user never has more
    /// descriptors than indexed sessions (and this one).
    async fn put(
        &self,
        user: UserId,
        session: Id,
        descriptor: &SessionDescriptor,
        expires_by: UnixMillis,
    ) -> StoreResult<()>;
    /// Records that the session was used at `at`: its `last_active_at`
    /// becomes `at` if it is older than `at - granularity`, else nothing is
    /// written. `true` when it was rewritten; `false` too for a session
    /// with no descriptor (none is made). One atomic step: of concurrent
    /// touches within one granularity at most one writes, and
    /// `last_active_at` never moves back. Costs one round trip per call (a
    /// script that reads one hash field), and a write at most once per
    /// granularity per session.
    async fn touch(&self, user: UserId, session: Id, at: UnixMillis, granularity: Duration) -> StoreResult<bool>;
    /// The session's id changed (a cookie session's id is cycled): its
    /// descriptor moves to `new`, unchanged. `false` when `old` had none.
    /// Call it once `new` is indexed.
    async fn moved(&self, user: UserId, old: Id, new: Id) -> StoreResult<bool>;
    /// Drops the session's descriptor (it ended).
    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()>;
    /// The user's live sessions, newest first (by `created_at`; those with
    /// no descriptor last): at most `limit`, taken from the index entries
    /// that end last. Sessions found gone from the session store are not
    /// listed, and their index entries and descriptors are deleted. One
    /// round trip for the index and the descriptors, one for the sessions'
    /// existence (pipelined: on a cluster each is in a slot of its own), and
    /// one more when something was found gone.
    async fn list(&self, user: UserId, limit: usize) -> StoreResult<Vec<ListedSession>>;
}

/// A user's security log (docs/protocol.md §7): newest first, at most
/// [`rules::SECURITY_EVENTS_KEPT`] entries (older ones drop off), and gone
/// `keep_for` after the last entry was written (each write renews it).
#[async_trait]
pub trait SecurityLog: Send + Sync {
    /// Adds an entry at the head. A failed sign-in goes through
    /// [`SecurityLog::sign_in_failed`] instead, which counts bursts.
    async fn record(&self, user: UserId, event: &SecurityEvent, keep_for: Duration) -> StoreResult<()>;
    /// Records a failed sign-in from `address` at `at`. When the newest
    /// entry is a failure from the same address whose burst began within
    /// `burst` before `at`, its count goes up and its `at` moves to `at`;
    /// else a new entry (count 1) heads the log. One atomic step: N
    /// concurrent failures from one address in one burst leave one entry
    /// counting N. Returns the entry's count.
    async fn sign_in_failed(
        &self,
        user: UserId,
        address: &str,
        at: UnixMillis,
        burst: Duration,
        keep_for: Duration,
    ) -> StoreResult<u32>;
    /// The newest `limit` entries, newest first. An entry this version
    /// cannot read (a kind from a newer one) is skipped.
    async fn recent(&self, user: UserId, limit: usize) -> StoreResult<Vec<SecurityEvent>>;
}

/// What [`Invites::spend`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    /// One use taken; the invite as it is now.
    Spent(Invite),
    /// No such code (never made, or forgotten
    /// [`rules::INVITE_REMEMBERED_AFTER_EXPIRY`] after it expired).
    Unknown,
    /// Every use was taken.
    UsedUp,
    /// Past its expiry.
    Expired,
}

/// Invite codes for invite-only sign-up, stored by the code's hash (the
/// code itself never is). Each is used alone (on a cluster: one key,
/// untagged), and each step on it is atomic.
#[async_trait]
pub trait Invites: Send + Sync {
    /// Stores a new invite under `code_hash` unless one is there already
    /// (`false`). It is remembered until
    /// [`rules::INVITE_REMEMBERED_AFTER_EXPIRY`] past its expiry, so that
    /// a late visitor is told it expired.
    async fn create(&self, code_hash: &str, invite: &Invite) -> StoreResult<bool>;
    /// Takes one use of the code at `at`. Atomic: of N concurrent spends of
    /// a code with k uses left, exactly k are [`Spend::Spent`].
    async fn spend(&self, code_hash: &str, at: UnixMillis) -> StoreResult<Spend>;
    /// Gives back a use taken by a sign-up that then failed (the name was
    /// taken), never beyond the uses it was made with. `false` when the
    /// code is gone or has every use.
    async fn give_back(&self, code_hash: &str) -> StoreResult<bool>;
}

/// A token session as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTokenSession {
    /// Its session id: the key it is indexed, swept and ended under, like
    /// a cookie session's. Never given to the client.
    pub id: Id,
    pub record: TokenRecord,
    pub expires_at: UnixMillis,
}

/// Token sessions (docs/protocol.md §5), one-use WebSocket tickets, and the
/// signing key instances share when none is configured.
///
/// A token session lives in the same key space as cookie sessions, under
/// its id, so the per-user index, the revalidation sweep and "log out
/// everywhere" (which delete by id) treat both kinds alike; it is found by
/// its public `sid` through a pointer that expires with it.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token session until `expires_at`; its `sid` finds it
    /// until `end_by` (its absolute lifetime) at the latest.
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()>;
    /// The live session `sid` names.
    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>>;
    /// Replaces the session's record and expiry if its current refresh
    /// token is still `expected` (a compare-and-set); `false` when another
    /// refresh got there first, or the session is gone.
    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool>;
    /// Keeps a one-use ticket (by its hash) with what it grants, for `ttl`.
    async fn put_ticket(&self, ticket_hash: &str, value: &str, ttl: Duration) -> StoreResult<()>;
    /// Takes a ticket: what it grants, once.
    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>>;
    /// Secrets every instance must share (a generated signing key, the
    /// refresh-token key), in one round trip: each one's value in the
    /// store ([`Candidate`]), and what it keeps of values retired from it.
    async fn share_secrets(&self, candidates: &[Candidate<'_>], now: UnixMillis) -> StoreResult<Vec<SharedSecret>>;
}

/// What an instance holds of a shared secret ([`TokenStore::share_secrets`]).
///
/// The store keeps `value` under `name` when it holds none (the first
/// instance's; or, after the store lost it, the first to write one back:
/// one atomic step, so every instance adopts the same). With `retire`,
/// `value` is one this instance has used: if another is current, what
/// others must still accept of it (`retire.0`, e.g. its public key) is
/// kept beside the secret until `retire.1` (the latest of those asked).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub retire: Option<(&'a [u8], UnixMillis)>,
}

/// A shared secret as the store holds it ([`TokenStore::share_secrets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSecret {
    pub current: Vec<u8>,
    /// Values retired from it whose time is not past, and until when.
    pub retired: Vec<(Vec<u8>, UnixMillis)>,
}

/// Fixed-window counters, for throttling.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Each counter's value and the time left in its window (zero if unset).
    async fn get(&self, keys: &[String]) -> StoreResult<Vec<(u64, Duration)>>;
    /// Increments each counter (the first increment opens its window) and
    /// returns each one's new value and the time left in its window. Atomic:
    /// of N concurrent increments, each sees a different value.
    async fn incr(&self, keys: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>>;
    /// Takes one increment back (never below zero), keeping the window.
    async fn decr(&self, key: &str) -> StoreResult<()>;
    async fn reset(&self, key: &str) -> StoreResult<()>;
}

/// An event every instance must hear about, published on the channel
/// [`EVENTS_CHANNEL`] as JSON.
///
/// Pub/sub does not queue: an instance whose subscriber is away misses
/// events. That is why nothing depends on events alone: sockets of ended
/// sessions are also found by the revalidation sweep, which runs on every
/// reconnect, and presence is recomputed on a timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sessions ended by `POST /logout` (one id) or `/logout/everywhere`
    /// (`everywhere: true`: every socket of the user goes, whatever its
    /// session), or revoked (`reason`).
    Logout {
        user_id: UserId,
        sessions: Vec<String>,
        everywhere: bool,
        #[serde(default)]
        reason: EndReason,
        /// When it was published: the time to close is measured from it
        /// (metrics). Absent from older instances' events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<UnixMillis>,
    },
    /// A membership changed: `user` was added to or removed from `room`
    /// (a private room's key), or the room was deleted (`user` is `None`).
    /// Every instance forgets what it knew of the room, and closes the
    /// sockets that may no longer see it (4403 `access revoked`).
    Access {
        room: String,
        /// The instance that made the change (and applied it already).
        #[serde(default)]
        instance: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
        change: AccessChange,
        /// For an `Added` user: what they call the room when it is not its
        /// name (a direct room: `@` and the other's name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        /// For an `Added` user: the first message they have not seen (a
        /// direct conversation's first), from which their unread count
        /// starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// When it was published (metrics: the time to close).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<UnixMillis>,
    },
    /// Who joined and left a room on one instance.
    Presence {
        room: String,
        #[serde(default)]
        instance: String,
        #[serde(default)]
        joined: Vec<String>,
        #[serde(default)]
        left: Vec<String>,
    },
}

/// What an [`Event::Access`] says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessChange {
    Added,
    Removed,
    /// The room is gone (its last member left).
    Deleted,
    /// A message (`since`) of a public room mentions `user`: the room is
    /// in their list from now on, through their mention inbox, and their
    /// sockets that count other rooms start counting it if they do not.
    Mentioned,
}

/// Why sessions ended, which their sockets' close reason says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The user logged out (here or everywhere).
    #[default]
    LoggedOut,
    /// The session was ended for them (found gone, or a credential misused).
    Revoked,
}

/// The pub/sub channel carrying [`Event`]s between instances.
pub const EVENTS_CHANNEL: &str = "palaver:events";

/// What a bus subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Event(Event),
    /// The subscription was re-established (or the local receiver fell
    /// behind): events may have been missed, so state must be re-checked.
    Resync,
}

#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &Event) -> StoreResult<()>;
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
}

/// Durable, ordered room history, and which rooms exist.
///
/// A public room exists once someone opens it and lives as long as it is
/// used: a message or a visit keeps it (and its history) for the room
/// lifetime (`ROOM_TTL_SECS`); a room nobody uses for that long is
/// forgotten. Private and direct rooms never expire: a private room lives
/// from [`Rooms::create_private`] until its last member leaves, a direct
/// room from its first message on.
#[async_trait]
pub trait History: Send + Sync {
    /// Stores a message, unless it is a resend or its sender is over their
    /// rate. A resend with the same `(user, client_id)` within the dedupe
    /// window returns the first one's id instead of storing it twice; a
    /// sender over `USER_MESSAGE_RATE_PER_SEC` (counted across all their
    /// sockets, on every instance) gets [`Appended::Throttled`]. A first
    /// message into a room that does not exist creates it, which counts
    /// against the sender's new-room quota ([`Appended::NewRoomRefused`]);
    /// into a direct room, against their quota of new conversations
    /// ([`rules::RoomLimits::new_direct`]) instead. Nothing is stored, and
    /// [`Appended::NotVisible`] answered, when the sender is not a member
    /// of the private or direct room, or the name is a private room's.
    async fn append(&self, room: &RoomName, message: NewMessage) -> StoreResult<Appended>;
    /// [`History::append`] for several messages of one sender, stored in
    /// their order; each answered as `append` would. A store may take
    /// them in one round trip: a sender whose messages wait behind a busy
    /// room's fan-out then keeps its pace (BENCHMARKS.md, fan-out).
    async fn append_all(&self, room: &RoomName, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        let mut answers = Vec::with_capacity(messages.len());
        for message in messages {
            answers.push(self.append(room, message).await);
        }
        answers
    }
    /// Up to `limit` messages after `after`, oldest first.
    async fn after(&self, room: &RoomName, after: MessageId, limit: usize) -> StoreResult<Vec<Message>>;
    /// [`History::after`] as an unread count reads it: a body that cannot
    /// mention `reader` (their name in lowercase) may come back empty, so
    /// that counting a room of long messages does not fetch them whole.
    async fn unread_after(
        &self,
        room: &RoomName,
        after: MessageId,
        limit: usize,
        reader: &str,
    ) -> StoreResult<Vec<Message>> {
        let _ = reader;
        self.after(room, after, limit).await
    }
    /// The last `limit` messages, oldest first.
    async fn recent(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>>;
    /// The last `limit` messages strictly before `before`, oldest first:
    /// paging back through history.
    async fn before(&self, room: &RoomName, before: MessageId, limit: usize) -> StoreResult<Vec<Message>>;
    /// The id of the newest message, or [`MessageId::ZERO`].
    async fn last_id(&self, room: &RoomName) -> StoreResult<MessageId>;
    /// How many tails it takes to follow every room: rooms fall into this
    /// many groups, and one [`History::tail`] follows rooms of one group.
    /// One, except on a Redis Cluster (where a blocking read can only wait on
    /// keys of one slot).
    fn tail_groups(&self) -> usize {
        1
    }
    /// The group `room` is tailed in, below [`History::tail_groups`].
    fn tail_group(&self, _room: &RoomName) -> usize {
        0
    }
    /// Waits up to `wait` for messages after each room's cursor and returns
    /// what arrived, per room, oldest first. Returns early, possibly empty,
    /// after [`History::wake_tail`] of one of the rooms' group. The rooms
    /// must be of one tail group, and at least one.
    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>>;
    /// Interrupts a pending [`History::tail`] of `room`'s group so that it
    /// picks up a new room set.
    async fn wake_tail(&self, room: &RoomName) -> StoreResult<()>;
    /// Whether the room exists: a public room used within the room
    /// lifetime, a private room, a direct room with a message.
    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool>;
    /// Records that `user` opened the room: it exists (or lives on), and it
    /// heads that user's list of rooms. Opening a room that does not exist
    /// (the lobby always does) creates it, which counts against the user's
    /// new-room quota, on the counter a first message into a new room
    /// counts on ([`rules::NewRooms`]); past the quota nothing is written
    /// ([`RoomOpened::NewRoomRefused`]). Nothing is written either for a
    /// private room's name ([`RoomOpened::Private`]) or a direct room
    /// (its first message makes it; [`Rooms::direct_rooms`] lists it).
    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<RoomOpened>;
    /// The rooms `user` opened that still exist, most recently opened first.
    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>>;
    /// Moves `user`'s read marker in `room` to `up_to`, only ever forward
    /// (`false`: it was there or beyond already). Markers live as long as
    /// rooms do (`ROOM_TTL_SECS` after the last one moved), and a user keeps
    /// at most [`rules::USER_ROOMS_KEPT`] + 1: past that, those of rooms no
    /// longer in their list go.
    async fn mark_read(&self, user: UserId, room: &RoomName, up_to: MessageId) -> StoreResult<bool>;
    /// `user`'s read markers, by room.
    async fn read_markers(&self, user: UserId) -> StoreResult<HashMap<RoomName, MessageId>>;
    /// Notes in `user`'s mention inbox that message `id` of `room`
    /// mentions them. The inbox keeps the newest `MENTION_INBOX_LEN`
    /// notes and goes a room lifetime (`ROOM_TTL_SECS`) after the newest.
    async fn note_mention(&self, user: UserId, room: &RoomName, id: MessageId) -> StoreResult<()>;
    /// `user`'s mention inbox, newest first.
    async fn mentions(&self, user: UserId) -> StoreResult<Vec<Mentioned>>;
}

/// A note of the mention inbox: message `id` of `room` mentions its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mentioned {
    pub room: RoomName,
    pub id: MessageId,
}

/// What [`History::open_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomOpened {
    /// The room exists (it did, or it does now) and heads the user's list.
    Open,
    /// The room does not exist, and the user has brought enough rooms into
    /// existence lately: they may try again after `retry_after`.
    NewRoomRefused { retry_after: Duration },
    /// The name is a private room's: nothing is written (whether the user
    /// may see it is [`Rooms::state`]'s to say, not this).
    Private,
}

/// What a room is now, for one user: what the access rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomState {
    /// No room of that name is in use (a public room nobody used within
    /// `ROOM_TTL_SECS`, or never).
    Missing,
    /// A public room in use.
    Public,
    /// A private room, and the user's role in it (`None`: not a member).
    Private(Option<Role>),
}

/// A member of a private room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user: User,
    pub role: Role,
    pub joined_at: UnixMillis,
}

/// What [`Rooms::create_private`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    /// A room of any kind has the name.
    NameTaken,
    /// The owner brought enough rooms into existence lately (the quota
    /// public rooms count on too).
    QuotaRefused {
        retry_after: Duration,
    },
    /// The owner is a member of `MAX_PRIVATE_ROOMS_PER_USER` private rooms.
    TooManyRooms,
}

/// What [`Rooms::add_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Added,
    AlreadyMember,
    /// No such private room, or the one adding is not a member of it.
    NotFound,
    /// The room has `MAX_ROOM_MEMBERS` members.
    RoomFull,
    /// The user added is a member of `MAX_PRIVATE_ROOMS_PER_USER` rooms.
    TooManyRooms,
}

/// What [`Rooms::remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Gone. `new_owner`: the owner left and this member took over;
    /// `deleted`: it was the last member, and the room and its history are
    /// gone.
    Removed { new_owner: Option<UserId>, deleted: bool },
    /// No such private room, the one removing is not a member, or the user
    /// removed is not one.
    NotFound,
    /// A member (not the owner) tried to remove someone else.
    Forbidden,
}

/// Private rooms and their members, and the lists of direct conversations
/// (docs/protocol.md §6). Public rooms are [`History`]'s: they exist while
/// used. A direct room's members are in its key ([`RoomName::direct`]):
/// nothing here decides who may see one.
///
/// Public and private rooms share one namespace: a name is taken whatever
/// its kind. Every decision about one room is made in one atomic step in
/// the store (on Redis, a script on keys of the room's slot), so two
/// creators of one name, or a creator and someone opening the name as a
/// public room, cannot both win. A user's list of their private rooms is
/// kept apart (on a cluster, in their own slot): the room's members are the
/// truth, written first, and the list is checked against them when read.
#[async_trait]
pub trait Rooms: Send + Sync {
    /// `room`'s kind now, and `user`'s role if it is private. One read
    /// (none for the lobby, which is always public). Never asked of a
    /// direct room.
    async fn state(&self, room: &RoomName, user: UserId) -> StoreResult<RoomState>;
    /// [`Rooms::state`] for many pairs (the revalidation sweep), in one
    /// round trip per store node.
    async fn states(&self, pairs: &[(RoomName, UserId)]) -> StoreResult<Vec<RoomState>>;
    /// Creates private room `room` with `owner` as its owner and only
    /// member, unless the name is taken, the owner is over the new-room
    /// quota ([`rules::NewRooms`], charged only when created) or over
    /// [`rules::RoomLimits::max_private_rooms`]. Nothing is written when
    /// refused.
    async fn create_private(&self, room: &RoomName, owner: &User) -> StoreResult<Created>;
    /// A private room's members, longest-standing first; `None` when
    /// `room` is not a private room.
    async fn members(&self, room: &RoomName) -> StoreResult<Option<Vec<Member>>>;
    /// `by`, who must be a member, adds `user` as a member
    /// ([`Added::NotFound`] for a room that is not private, a direct one
    /// too).
    async fn add_member(&self, room: &RoomName, by: UserId, user: &User) -> StoreResult<Added>;
    /// `by` removes `user`: themselves (leaving) or, as the owner, anyone.
    /// When the owner goes, the longest-standing member becomes owner; when
    /// the last member goes, the room is deleted with its history.
    async fn remove_member(&self, room: &RoomName, by: UserId, user: UserId) -> StoreResult<Removed>;
    /// The private rooms `user` is a member of, with their role, in the
    /// order they joined them (earliest first); every entry checked against
    /// its room.
    async fn private_rooms(&self, user: UserId) -> StoreResult<Vec<(RoomName, Role)>>;
    /// Records that direct room `room` (of `a` and `b`) has a message, at
    /// `at`, in both members' lists (with the other's name). Idempotent.
    async fn note_direct(&self, room: &RoomName, a: &User, b: &User, at: UnixMillis) -> StoreResult<()>;
    /// The direct rooms of `user` with a message, most recent first, each
    /// with the other member's name.
    async fn direct_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<(RoomName, String)>>;
}

/// Who is online where, shared by all instances. Each instance writes its own
/// entries with a deadline and refreshes them on a heartbeat, so the entries
/// of an instance that died vanish by themselves.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    /// Marks `(room, user)` pairs online (until `ttl` from now) or offline for
    /// this instance.
    async fn update(
        &self,
        instance: &str,
        online: &[(RoomName, String)],
        offline: &[(RoomName, String)],
        ttl: Duration,
    ) -> StoreResult<()>;
    /// For each room, the live `(instance, user)` entries (expired ones are dropped).
    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>>;
}

#[async_trait]
pub trait Health: Send + Sync {
    /// Answers when the store is reachable.
    async fn ping(&self) -> StoreResult<()>;
    /// Whether this instance hears events from the others now (its
    /// subscription stands). Readiness, not liveness: while it does not,
    /// logouts elsewhere reach its sockets only through the sweep.
    fn subscribed(&self) -> bool {
        true
    }
    /// Closes connections; called once at the end of graceful shutdown.
    async fn close(&self);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Redis,
    Memory,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Redis => "redis",
            BackendKind::Memory => "memory",
        }
    }
}

/// The store handles the application uses, whichever backend is behind them.
#[derive(Clone)]
pub struct Backend {
    pub kind: BackendKind,
    pub users: Arc<dyn UserStore>,
    pub sessions: SharedSessionStore,
    pub session_index: Arc<dyn SessionIndex>,
    pub devices: Arc<dyn Devices>,
    pub security_log: Arc<dyn SecurityLog>,
    pub invites: Arc<dyn Invites>,
    pub counters: Arc<dyn Counters>,
    pub tokens: Arc<dyn TokenStore>,
    pub bus: Arc<dyn EventBus>,
    pub history: Arc<dyn History>,
    pub presence: Arc<dyn PresenceStore>,
    pub rooms: Arc<dyn Rooms>,
    pub health: Arc<dyn Health>,
}

/// Why no backend could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid REDIS_URL {url:?}: {source}")]
    BadUrl { url: String, source: fred::error::Error },
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable { url: String, source: fred::error::Error },
}

/// The session store handed to tower-sessions' layer, whichever backend.
#[derive(Clone)]
pub struct SharedSessionStore(pub Arc<dyn SessionStore>);

impl fmt::Debug for SharedSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSessionStore")
    }
}

/// How long a session store call may take before the store counts as down.
const SESSION_STORE_TIMEOUT: Duration = Duration::from_millis(2500);

async fn bounded<T>(fut: impl std::future::Future<Output = session_store::Result<T>>) -> session_store::Result<T> {
    tokio::time::timeout(SESSION_STORE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(session_store::Error::Backend("session store timed out".into())))
}

/// Every call is bounded in time: a request fails closed rather than hang.
#[async_trait]
impl SessionStore for SharedSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        bounded(self.0.create(record)).await
    }
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        bounded(self.0.save(record)).await
    }
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        bounded(self.0.load(id)).await
    }
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        bounded(self.0.delete(id)).await
    }
}
