//! The Redis backend, shared by every instance (fred 10), on one Redis or on
//! a Redis Cluster (`REDIS_URL=redis-cluster://…`, docs/cluster.md).
//!
//! Connections:
//! - a small pool for ordinary commands; request paths use it through
//!   `fail_fast` + a timeout, so that a Redis outage turns into a quick 503
//!   instead of requests queueing behind the reconnect loop;
//! - a second small pool for the last step of an append and its `WAIT`
//!   (`REDIS_WAIT_REPLICAS`): `WAIT` counts the writes of the connection it
//!   is sent on, and it blocks that connection while replicas catch up, so
//!   it gets connections of its own that requests never queue behind;
//! - a `SubscriberClient` for the [`EVENTS_CHANNEL`] (a shard channel on a
//!   cluster: `SSUBSCRIBE`/`SPUBLISH`);
//! - one client per room group for `XREAD BLOCK` (a blocking command must
//!   never sit on a pooled connection other commands wait behind), made
//!   when this instance first follows a room of that group: one on a single
//!   Redis, at most [`ROOM_GROUPS`] on a cluster.
//!
//! Every client has a reconnect policy that never gives up. Multi-step
//! operations are small Lua scripts: atomic and one round trip each. On a
//! cluster a script may only touch keys of one hash slot, so every key is
//! named with the hash tag (`{…}`) of what it belongs to; docs/cluster.md
//! lists them with the reasons. The same names are used on a single Redis,
//! so a deployment can move from one to the other with its data.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use async_trait::async_trait;
use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{streams::XReadResponse, ClusterHash, CustomCommand},
};
use tokio::sync::{broadcast, Mutex as AsyncMutex, OnceCell};
use tower_sessions::session::Id;
use tower_sessions_redis_store::RedisStore;

use super::{
    rules, ConnectError, Counters, Event, EventBus, Health, History, Notice, PresenceStore, SessionIndex, StoreError,
    StoreResult, StoredTokenSession, StoredUser, TokenStore, UserStore, EVENTS_CHANNEL,
};
use crate::{
    clock::UnixMillis,
    config::Config,
    meters::Meters,
    model::{folded_username, Appended, Message, MessageId, NewMessage, RoomName, TokenRecord, User, UserId},
};

/// How long a request-path command may take before the store counts as down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled connections for ordinary commands.
const POOL_SIZE: usize = 4;
/// Pooled connections for the durable step of appends (and their `WAIT`).
const APPEND_POOL_SIZE: usize = 2;
/// How many entries one `XREAD` returns per stream at most.
const TAIL_BATCH: u64 = 512;

/// How many groups rooms are spread over. A room's keys carry its group's
/// hash tag, so one `XREAD BLOCK` can follow every room of a group (a
/// multi-key command needs one slot): an instance tails with at most this
/// many blocking connections, however many rooms it follows. More groups
/// spread rooms over more slots (and so more evenly over the masters); fewer
/// need fewer tail connections. Changing it renames every room's keys.
pub const ROOM_GROUPS: usize = 16;

/// The hash tag of room group `group`: a short name whose slot lies near
/// the middle of the group's sixteenth of the slot space, so that the
/// groups spread evenly over masters that own contiguous slot ranges (as
/// `redis-cli --cluster create` assigns them).
pub fn group_tag(group: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        (0..ROOM_GROUPS)
            .map(|g| {
                let span = 16384 / ROOM_GROUPS;
                let middle = (g * span + span / 2) as i64;
                (0..)
                    .map(|n| format!("rooms-{g}-{n}"))
                    .find(|tag| (i64::from(fred::util::redis_keyslot(tag.as_bytes())) - middle).abs() < 64)
                    .expect("some tag lands near every slot")
            })
            .collect()
    });
    &tags[group]
}

/// The group a room's keys live in (stable: a function of the name only).
pub fn room_group(room: &RoomName) -> usize {
    usize::from(fred::util::redis_keyslot(room.as_str().as_bytes())) % ROOM_GROUPS
}

pub mod migrate;

/// Every key palaver writes (docs/cluster.md has the table and the reasons).
pub mod keys {
    use super::{folded_username, group_tag, room_group, Id, RoomName, UserId};

    /// A user by name: `SET NX` makes names unique. Used alone.
    pub fn user(name: &str) -> String {
        format!("palaver:user:{}", folded_username(name))
    }
    /// Per-user keys carry the user id's tag, so that a script may combine
    /// any of them (the rate bucket and the new-room quota do).
    pub fn user_sessions(user: UserId) -> String {
        format!("palaver:user:{{{user}}}:sessions")
    }
    pub fn user_rooms(user: UserId) -> String {
        format!("palaver:user:{{{user}}}:rooms")
    }
    pub fn rate(user: UserId) -> String {
        format!("palaver:rate:{{{user}}}")
    }
    /// Must match tower-sessions-redis-store, which keys a session by its id.
    pub fn session(id: &Id) -> String {
        id.to_string()
    }
    /// A throttle counter. Counters are used one key at a time; the
    /// new-room quota's name carries its user's tag (`rules::NewRooms`).
    pub fn counter(key: &str) -> String {
        format!("palaver:throttle:{key}")
    }
    /// A room's keys carry its group's tag: the append scripts combine
    /// them, and one `XREAD` follows every room of a group.
    fn room(room: &RoomName, what: &str) -> String {
        format!("palaver:room:{{{}}}:{room}:{what}", group_tag(room_group(room)))
    }
    pub fn messages(name: &RoomName) -> String {
        room(name, "messages")
    }
    pub fn active(name: &RoomName) -> String {
        room(name, "active")
    }
    pub fn sent(name: &RoomName, user: UserId, client_id: &str) -> String {
        room(name, &format!("sent:{user}:{client_id}"))
    }
    pub fn presence(name: &RoomName) -> String {
        room(name, "presence")
    }
    /// Pokes one instance's tail of one group: in the group's slot, so the
    /// same `XREAD` waits on it.
    pub fn wake(group: usize, instance: &str) -> String {
        format!("palaver:wake:{{{}}}:{instance}", group_tag(group))
    }
    pub fn secret(name: &str) -> String {
        format!("palaver:{name}")
    }
    pub fn sid(sid: &str) -> String {
        format!("palaver:sid:{sid}")
    }
    pub fn ticket(hash: &str) -> String {
        format!("palaver:ticket:{hash}")
    }
    /// Read markers live with the user's other keys: `mark_read` trims them
    /// against the user's rooms in one script.
    pub fn user_read(user: UserId) -> String {
        format!("palaver:user:{{{user}}}:read")
    }
}

/// A Lua script run by digest, loaded on first use (or after a Redis restart
/// or a failover emptied the script cache).
struct Script {
    /// For metrics: the command label of its calls.
    name: &'static str,
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self { name, source, sha: fred::util::sha1_hash(source) }
    }
}

struct Scripts {
    index_add: Script,
    index_take_all: Script,
    counter_get: Script,
    counter_incr: Script,
    counter_decr: Script,
    append_check: Script,
    append_take: Script,
    append_store: Script,
    append_confirm: Script,
    open_room: Script,
    open_room_user: Script,
    token_find: Script,
    token_read: Script,
    token_update: Script,
    mark_read: Script,
    wake: Script,
    presence_update: Script,
    presence_online: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            // KEYS[1] index; ARGV: now, expires_by, session id
            index_add: Script::new(
                "index_add",
                "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
                 redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
                 local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
                 redis.call('PEXPIREAT', KEYS[1], last[2])
                 return 1",
            ),
            // KEYS[1] index
            index_take_all: Script::new(
                "index_take_all",
                "local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
                 redis.call('DEL', KEYS[1])
                 return ids",
            ),
            // KEYS[1] counter; returns {value, pttl}
            counter_get: Script::new(
                "counter_get",
                "return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}",
            ),
            // KEYS[1] counter; ARGV[1] window ms; returns {value, pttl}
            counter_incr: Script::new(
                "counter_incr",
                "local n = redis.call('INCR', KEYS[1])
                 if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
                 return {n, redis.call('PTTL', KEYS[1])}",
            ),
            // KEYS[1] counter: one back, never below zero, window kept
            counter_decr: Script::new(
                "counter_decr",
                "if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
                 return 1",
            ),
            // An append is three steps, because a room's keys and a user's
            // keys are in different slots (docs/cluster.md, "Appending").
            //
            // 1. The room, read only. KEYS: the room's active key, then the
            //    dedupe key if the message has a client_id.
            //    Returns {id of the stored first copy or '', room exists 1/0}.
            append_check: Script::new(
                "append_check",
                "if KEYS[2] then
                   local seen = redis.call('GET', KEYS[2])
                   if seen then return {seen, 1} end
                 end
                 return {'', redis.call('EXISTS', KEYS[1])}",
            ),
            // 2. The sender. KEYS: rate bucket, new-room counter.
            //    ARGV: now, rate per s, burst, the room is new (1/0), new
            //    rooms allowed, new-room window ms. Returns 1 (go on), 2 over
            //    the rate (nothing written), 3 over the new-room quota (the
            //    attempt is counted, the token is not taken). The bucket is
            //    backend::rules::UserRate::take.
            append_take: Script::new(
                "append_take",
                "local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
                 local bucket = redis.call('HMGET', KEYS[1], 't', 'at')
                 local tokens = tonumber(bucket[1]) or burst
                 local at = tonumber(bucket[2]) or now
                 tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
                 if tokens < 1 then return 2 end
                 if ARGV[4] == '1' then
                   local n = redis.call('INCR', KEYS[2])
                   if n == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[6]) end
                   if n > tonumber(ARGV[5]) then return 3 end
                 end
                 redis.call('HSET', KEYS[1], 't', tostring(tokens - 1), 'at', ARGV[1])
                 redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
                 return 1",
            ),
            // 3. The room again. KEYS: stream, active key, then the dedupe
            //    key if any. ARGV: maxlen, user, body, sent_at, client_id,
            //    show client_id (1/0), dedupe secs, now, room ttl ms.
            //    Returns {id, 1} stored, {id, 0} a resend stored meanwhile.
            append_store: Script::new(
                "append_store",
                "if KEYS[3] then
                   local seen = redis.call('GET', KEYS[3])
                   if seen then
                     -- A write that changes nothing, for the WAIT after it.
                     redis.call('PEXPIREAT', KEYS[3], redis.call('PEXPIRETIME', KEYS[3]))
                     return {seen, 0}
                   end
                 end
                 local id
                 if ARGV[6] == '1' then
                   id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                     'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4], 'client_id', ARGV[5])
                 else
                   id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                     'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4])
                 end
                 if KEYS[3] then redis.call('SET', KEYS[3], id, 'EX', ARGV[7]) end
                 -- The stream expires exactly when the room stops existing.
                 local until_ms = tonumber(ARGV[8]) + tonumber(ARGV[9])
                 redis.call('PEXPIREAT', KEYS[1], until_ms)
                 redis.call('SET', KEYS[2], ARGV[8], 'PXAT', until_ms)
                 return {id, 1}",
            ),
            // A resend of a stored message, before it is acknowledged again:
            // a write that changes nothing (the dedupe key keeps its
            // expiry) but is replicated, so that the WAIT after it covers
            // the first copy, which came earlier in the replication stream.
            // KEYS[1] dedupe key. Returns the stored id, or '' if it expired
            // meanwhile.
            append_confirm: Script::new(
                "append_confirm",
                "local seen = redis.call('GET', KEYS[1])
                 if not seen then return '' end
                 redis.call('PEXPIREAT', KEYS[1], redis.call('PEXPIRETIME', KEYS[1]))
                 return seen",
            ),
            // KEYS: the room's active key, its stream; ARGV: now, room ttl ms
            open_room: Script::new(
                "open_room",
                "local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
                 redis.call('SET', KEYS[1], ARGV[1], 'PXAT', until_ms)
                 redis.call('PEXPIREAT', KEYS[2], until_ms)
                 return 1",
            ),
            // KEYS[1] the user's rooms; ARGV: room, now, room ttl ms, kept
            open_room_user: Script::new(
                "open_room_user",
                "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
                 redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[4]))
                 redis.call('PEXPIRE', KEYS[1], ARGV[3])
                 return 1",
            ),
            // Single Redis only (the session key is in another slot than the
            // pointer). KEYS[1] the sid pointer. Returns {id, record JSON,
            // expiry ms} of the live token session it names, or nil.
            token_find: Script::new(
                "token_find",
                "local id = redis.call('GET', KEYS[1])
                 if not id then return nil end
                 local record = redis.call('GET', id)
                 if not record then return nil end
                 return {id, record, redis.call('PEXPIRETIME', id)}",
            ),
            // KEYS[1] a token session's key. Returns {record JSON, expiry ms}
            // or nil.
            token_read: Script::new(
                "token_read",
                "local record = redis.call('GET', KEYS[1])
                 if not record then return nil end
                 return {record, redis.call('PEXPIRETIME', KEYS[1])}",
            ),
            // KEYS[1] a token session's key; ARGV: expected current refresh
            // hash, new record JSON, new expiry (ms). A compare-and-set: 1
            // when replaced, 0 when the session is gone or already rotated.
            token_update: Script::new(
                "token_update",
                "local record = redis.call('GET', KEYS[1])
                 if not record then return 0 end
                 if cjson.decode(record)['refresh']['current'] ~= ARGV[1] then return 0 end
                 redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
                 return 1",
            ),
            // KEYS: the user's read hash, the user's rooms zset
            // ARGV: room, ms, seq, room ttl ms, markers kept
            // Moves the marker only forward (ids compare as (ms, seq); both
            // fit a Lua number exactly). Past the cap, markers of rooms no
            // longer in the user's list go. Returns 1 when it moved.
            mark_read: Script::new(
                "mark_read",
                "local cur = redis.call('HGET', KEYS[1], ARGV[1])
                 local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
                 if cur then
                   local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
                   cms, cseq = tonumber(cms), tonumber(cseq)
                   if cms and (cms > ms or (cms == ms and cseq >= seq)) then return 0 end
                 end
                 redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '-' .. ARGV[3])
                 if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then
                   for _, room in ipairs(redis.call('HKEYS', KEYS[1])) do
                     if not redis.call('ZSCORE', KEYS[2], room) then redis.call('HDEL', KEYS[1], room) end
                   end
                 end
                 redis.call('PEXPIRE', KEYS[1], ARGV[4])
                 return 1",
            ),
            // KEYS[1] wake stream
            wake: Script::new(
                "wake",
                "redis.call('XADD', KEYS[1], 'MAXLEN', '~', 16, '*', 'w', 1)
                 redis.call('PEXPIRE', KEYS[1], 3600000)
                 return 1",
            ),
            // KEYS: presence zsets of one group, first the online ones then
            // the offline ones. ARGV: deadline, number online, then one
            // member per key. A room's key lives as long as its latest
            // entry, whichever instance wrote it.
            presence_update: Script::new(
                "presence_update",
                "local online = tonumber(ARGV[2])
                 for i, key in ipairs(KEYS) do
                   if i <= online then
                     redis.call('ZADD', key, ARGV[1], ARGV[i + 2])
                     local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
                     redis.call('PEXPIREAT', key, last[2])
                   else
                     redis.call('ZREM', key, ARGV[i + 2])
                   end
                 end
                 return 1",
            ),
            // KEYS: presence zsets of one group; ARGV[1] now. Drops expired
            // entries first.
            presence_online: Script::new(
                "presence_online",
                "local out = {}
                 for i, key in ipairs(KEYS) do
                   redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
                   out[i] = redis.call('ZRANGE', key, 0, -1)
                 end
                 return out",
            ),
        }
    }

    fn all(&self) -> [&Script; 17] {
        [
            &self.index_add,
            &self.index_take_all,
            &self.counter_get,
            &self.counter_incr,
            &self.counter_decr,
            &self.append_check,
            &self.append_take,
            &self.append_store,
            &self.append_confirm,
            &self.open_room,
            &self.open_room_user,
            &self.token_find,
            &self.token_read,
            &self.token_update,
            &self.wake,
            &self.presence_update,
            &self.presence_online,
        ]
    }
}

/// One script call, to be sent alone or in a pipeline.
struct Call<'a> {
    script: &'a Script,
    keys: Vec<String>,
    args: Vec<Value>,
}

impl<'a> Call<'a> {
    fn new(script: &'a Script, keys: Vec<String>, args: Vec<Value>) -> Self {
        Self { script, keys, args }
    }

    /// `EVALSHA` as a command fred can pipeline and route: to the slot of
    /// its first key (every key of a call shares it).
    fn command(&self) -> (CustomCommand, Vec<Value>) {
        let slot = self.keys.first().map(|k| fred::util::redis_keyslot(k.as_bytes())).unwrap_or(0);
        let mut args: Vec<Value> = Vec::with_capacity(2 + self.keys.len() + self.args.len());
        args.push(self.script.sha.as_str().into());
        args.push((self.keys.len() as i64).into());
        args.extend(self.keys.iter().map(|k| Value::from(k.as_str())));
        args.extend(self.args.iter().cloned());
        (CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false), args)
    }
}

/// Whether a reply says the script cache lacks the script.
fn is_noscript(result: &Result<Value, fred::error::Error>) -> bool {
    matches!(result, Err(err) if err.details().starts_with("NOSCRIPT"))
}

/// A time as a script argument.
fn millis(at: UnixMillis) -> Value {
    at.as_millis().into()
}

/// Options for every request-path command: fail at once while disconnected
/// (the caller answers 503) and never wait long.
fn request_options() -> Options {
    Options { fail_fast: true, timeout: Some(COMMAND_TIMEOUT), max_attempts: Some(1), ..Default::default() }
}

/// Bounds a command's wait whatever the client does: a request must never
/// hang on the store. (fred's own `timeout` option is set too, but a command
/// sent just as the connection drops was seen to wait past it.)
pub(crate) async fn guarded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT + Duration::from_millis(500), fut).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!("redis {what} timed out");
            Err(StoreError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("{what} timed out"),
            )))
        }
    }
}

/// What an acknowledged append waits for (`REDIS_WAIT_REPLICAS`,
/// `REDIS_WAIT_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy)]
struct Durability {
    replicas: i64,
    timeout_ms: i64,
}

/// One room group's tail: its blocking connection, made on first use, and
/// the last poke it has seen on its wake stream.
struct Tail {
    client: OnceCell<Client>,
    wake_cursor: AsyncMutex<Option<String>>,
    wake_key: String,
}

pub struct RedisBackend {
    /// Whether `REDIS_URL` names a cluster.
    cluster: bool,
    pool: Pool,
    /// The pool with `fail_fast` and a timeout: every request-path command.
    fast: fred::clients::WithOptions<Pool>,
    /// The durable step of appends, and its `WAIT`.
    appends: Pool,
    subscriber: SubscriberClient,
    /// Whether the subscriber holds its subscription (for `/readyz`).
    subscribed: Arc<AtomicBool>,
    /// Makes tail clients (same server, same policies).
    builder: Builder,
    /// One per tail group: one on a single Redis, [`ROOM_GROUPS`] on a cluster.
    tails: Vec<Tail>,
    durability: Option<Durability>,
    events: broadcast::Sender<Notice>,
    scripts: Scripts,
    history_max_len: u64,
    dedupe_window: Duration,
    room_ttl: Duration,
    user_rate: rules::UserRate,
    new_rooms: rules::NewRooms,
    meters: Meters,
}

impl RedisBackend {
    /// Connects every client; fails when Redis does not answer now.
    pub async fn connect(url: &str, config: &Config, instance_id: &str, meters: Meters) -> Result<Self, ConnectError> {
        let bad_url = |source| ConnectError::BadUrl { url: url.to_owned(), source };
        let unreachable = |source| ConnectError::Unreachable { url: url.to_owned(), source };

        let redis_config = fred::types::config::Config::from_url(url).map_err(bad_url)?;
        let cluster = redis_config.server.is_clustered();
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
                // After a failover the cluster's map is read again at once:
                // the first MOVED or a dropped master starts it.
                c.max_redirections = 10;
            })
            .with_performance_config(|p| p.broadcast_channel_capacity = 1024)
            // Never give up: a Redis restart (or a master's failover) must
            // heal by itself.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));

        let pool = builder.build_pool(POOL_SIZE).map_err(bad_url)?;
        let appends = builder.build_pool(APPEND_POOL_SIZE).map_err(bad_url)?;
        let subscriber = builder.build_subscriber_client().map_err(bad_url)?;
        pool.init().await.map_err(unreachable)?;
        appends.init().await.map_err(unreachable)?;
        subscriber.init().await.map_err(unreachable)?;

        if !cluster {
            match migrate::run(&pool, rules::room_ttl(config)).await.map_err(unreachable)? {
                Some(moved) if moved != migrate::Moved::default() => {
                    tracing::info!(?moved, "keys of an earlier palaver moved to today's names")
                }
                Some(_) => tracing::debug!("key layout {} recorded", migrate::SCHEMA),
                None => {}
            }
        }

        let fast = pool.with_options(&request_options());
        let groups = if cluster { ROOM_GROUPS } else { 1 };
        let tails = (0..groups)
            .map(|group| Tail {
                client: OnceCell::new(),
                wake_cursor: AsyncMutex::new(None),
                wake_key: keys::wake(group, instance_id),
            })
            .collect();
        // Unset: one replica on a cluster (which has them for failover), none
        // on a single Redis (which has none to wait for).
        let replicas = config.redis_wait_replicas.unwrap_or(if cluster { 1 } else { 0 });
        let durability = (replicas > 0).then(|| Durability {
            replicas: i64::from(replicas),
            timeout_ms: config.redis_wait_timeout.as_millis() as i64,
        });

        let (events, _) = broadcast::channel(1024);
        let backend = RedisBackend {
            cluster,
            pool,
            fast,
            appends,
            subscriber,
            subscribed: Arc::new(AtomicBool::new(false)),
            builder,
            tails,
            durability,
            events,
            scripts: Scripts::new(),
            history_max_len: rules::history_cap(config),
            dedupe_window: rules::dedupe_window(config),
            room_ttl: rules::room_ttl(config),
            user_rate: rules::UserRate::from_config(config),
            new_rooms: rules::NewRooms::from_config(config),
            meters,
        };
        backend.start_subscriber().await.map_err(unreachable)?;
        tracing::info!(
            cluster,
            wait_replicas = replicas,
            "connected to Redis{}",
            if cluster { " Cluster" } else { "" }
        );
        Ok(backend)
    }

    /// The tower-sessions store over the same pool (fail fast, timed out).
    pub fn session_store(&self) -> RedisStore<fred::clients::WithOptions<Pool>> {
        RedisStore::new(self.fast.clone())
    }

    async fn subscribe_events(subscriber: &SubscriberClient, cluster: bool) -> Result<(), fred::error::Error> {
        if cluster {
            subscriber.ssubscribe(EVENTS_CHANNEL).await
        } else {
            subscriber.subscribe(EVENTS_CHANNEL).await
        }
    }

    /// Subscribes to the events channel and forwards what arrives to local
    /// receivers. After every reconnect (on a cluster also after a failover
    /// moved the channel's slot to another node) it subscribes again
    /// *before* telling receivers to resync, so that the resync sweep cannot
    /// run ahead of a subscription that is not back yet.
    async fn start_subscriber(&self) -> Result<(), fred::error::Error> {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        Self::subscribe_events(&self.subscriber, self.cluster).await?;
        self.subscribed.store(true, Ordering::Release);

        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        let Some(text) = message.value.as_str() else { continue };
                        match serde_json::from_str::<Event>(&text) {
                            Ok(event) => {
                                let _ = events.send(Notice::Event(event));
                            }
                            Err(err) => tracing::warn!(%err, "ignoring malformed event on {EVENTS_CHANNEL}"),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event subscriber fell behind; resyncing");
                        let _ = events.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });

        let subscriber = self.subscriber.clone();
        let events = self.events.clone();
        let subscribed = self.subscribed.clone();
        let cluster = self.cluster;
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => {
                        subscribed.store(false, Ordering::Release);
                        // Retry until the subscription is back: an instance that
                        // silently stops hearing logouts is the failure to avoid.
                        // (Subscribing again where the subscription still
                        // stands is harmless.)
                        let mut delay = Duration::from_millis(50);
                        while let Err(err) = Self::subscribe_events(&subscriber, cluster).await {
                            tracing::warn!(%err, "resubscribing to {EVENTS_CHANNEL} failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        subscribed.store(true, Ordering::Release);
                        tracing::info!(%server, "event subscriber reconnected and resubscribed; resyncing");
                        let _ = events.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = events.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }

    async fn run<R: FromValue>(&self, script: &Script, keys: Vec<String>, args: Vec<Value>) -> StoreResult<R> {
        let result = self
            .timed(script.name, self.fast.evalsha::<R, _, _, _>(script.sha.as_str(), keys.clone(), args.clone()))
            .await;
        match result {
            Err(StoreError::Redis(err)) if err.details().starts_with("NOSCRIPT") => {
                self.timed(script.name, self.fast.eval::<R, _, _, _>(script.source, keys, args)).await
            }
            other => other,
        }
    }

    /// [`guarded`], timed and counted in the metrics under `what`.
    async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> StoreResult<T> {
        let started = std::time::Instant::now();
        let result = guarded(what, fut).await;
        self.meters.store_command(what, started.elapsed(), result.is_ok());
        result
    }

    /// Loads every script on every master (after a restart or a failover
    /// the script cache is empty).
    async fn load_scripts(&self) -> StoreResult<()> {
        for script in self.scripts.all() {
            let client = self.pool.next().with_options(&request_options());
            if self.cluster {
                self.timed("script load", client.script_load_cluster::<(), _>(script.source)).await?;
            } else {
                self.timed("script load", client.script_load::<String, _>(script.source)).await?;
            }
        }
        Ok(())
    }

    /// Sends script calls in one pipeline on `client` (each to its own
    /// slot's master), then `WAIT` on the slot of the last one when `wait`
    /// is given; returns each call's reply, and `WAIT`'s last. Loads the
    /// scripts and sends again when the script cache was empty.
    async fn pipelined(
        &self,
        client: &Client,
        calls: &[Call<'_>],
        wait: Option<Durability>,
    ) -> StoreResult<Vec<Value>> {
        for attempt in 0..2 {
            let pipeline = client.pipeline().with_options(&request_options());
            for call in calls {
                let (command, args) = call.command();
                let _: () = pipeline.custom(command, args).await?;
            }
            if let (Some(wait), Some(last)) = (wait, calls.last()) {
                // WAIT counts the writes of this connection: the calls just
                // before it, on the same slot's master.
                let slot = last.keys.first().map(|k| fred::util::redis_keyslot(k.as_bytes())).unwrap_or(0);
                let command = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), true);
                let _: () = pipeline.custom(command, vec![Value::from(wait.replicas), wait.timeout_ms.into()]).await?;
            }
            // Labelled by what it is: the durable step with its WAIT, one
            // script, or several.
            let label = match (wait, calls) {
                (Some(_), _) => "append_wait",
                (None, [call]) => call.script.name,
                (None, _) => "pipeline",
            };
            let results = self.timed(label, async { Ok(pipeline.try_all::<Value>().await) }).await?;
            if attempt == 0 && results.iter().any(is_noscript) {
                self.load_scripts().await?;
                continue;
            }
            return results.into_iter().map(|r| r.map_err(StoreError::from)).collect();
        }
        unreachable!("the second attempt returns")
    }

    /// Script calls in one round trip, on the ordinary pool.
    async fn run_all(&self, calls: &[Call<'_>]) -> StoreResult<Vec<Value>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.pipelined(self.pool.next(), calls, None).await
    }

    /// One script call whose writes must reach the replicas before it is
    /// answered (`REDIS_WAIT_REPLICAS`): the call and its `WAIT` go out
    /// together on one connection of the append pool. A `WAIT` that counts
    /// fewer replicas than asked is an error: the write may be lost in a
    /// failover, so the caller must not say it is stored.
    async fn run_durably(&self, call: Call<'_>) -> StoreResult<Value> {
        let mut replies = self.pipelined(self.appends.next(), std::slice::from_ref(&call), self.durability).await?;
        if let Some(wanted) = self.durability {
            let acked: i64 = replies.pop().expect("WAIT's reply").convert()?;
            if acked < wanted.replicas {
                self.meters.store_error("wait");
                return Err(StoreError::Unreplicated { wanted: wanted.replicas, acked });
            }
        }
        Ok(replies.pop().expect("the call's reply"))
    }

    fn parse_entry(id: &str, mut fields: HashMap<String, String>) -> StoreResult<Message> {
        let corrupt = || StoreError::Corrupt(format!("stream entry {id}"));
        Ok(Message {
            id: id.parse().map_err(|_| corrupt())?,
            user: fields.remove("user").ok_or_else(corrupt)?,
            body: fields.remove("body").ok_or_else(corrupt)?,
            sent_at: fields
                .get("sent_at")
                .and_then(|t| t.parse().ok())
                .map(UnixMillis::from_millis)
                .ok_or_else(corrupt)?,
            client_id: fields.remove("client_id"),
        })
    }

    async fn range(
        &self,
        room: &RoomName,
        start: String,
        end: &str,
        limit: usize,
        rev: bool,
    ) -> StoreResult<Vec<Message>> {
        let key = keys::messages(room);
        let entries: Vec<(String, HashMap<String, String>)> = if rev {
            self.timed("xrevrange", self.fast.xrevrange_values(key, end, start, Some(limit as u64))).await?
        } else {
            self.timed("xrange", self.fast.xrange_values(key, start, end, Some(limit as u64))).await?
        };
        entries.into_iter().map(|(id, fields)| Self::parse_entry(&id, fields)).collect()
    }

    /// The tail group of `room` on this deployment.
    fn group_of(&self, room: &RoomName) -> usize {
        if self.cluster {
            room_group(room)
        } else {
            0
        }
    }

    /// The blocking client of a tail group, connected on first use.
    async fn tail_client(&self, tail: &Tail) -> StoreResult<Client> {
        let client = tail
            .client
            .get_or_try_init(|| async {
                let client = self.builder.build()?;
                client.init().await?;
                Ok::<_, fred::error::Error>(client)
            })
            .await?;
        Ok(client.clone())
    }
}

#[async_trait]
impl UserStore for RedisBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let record = serde_json::json!({ "id": user.id, "name": user.name, "hash": password_hash }).to_string();
        let set: Option<String> =
            self.timed("set", self.fast.set(keys::user(&user.name), record, None, Some(SetOptions::NX), false)).await?;
        Ok(set.is_some())
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        let Some(record): Option<String> = self.timed("get", self.fast.get(keys::user(name))).await? else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Record {
            id: UserId,
            name: String,
            hash: String,
        }
        let r: Record = serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("user record: {e}")))?;
        Ok(Some(StoredUser { user: User { id: r.id, name: r.name }, password_hash: r.hash }))
    }
}

#[async_trait]
impl SessionIndex for RedisBackend {
    async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()> {
        let args = vec![millis(UnixMillis::now()), millis(expires_by), session.to_string().into()];
        self.run::<()>(&self.scripts.index_add, vec![keys::user_sessions(user)], args).await
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        self.timed("zrem", self.fast.zrem(keys::user_sessions(user), session.to_string())).await
    }

    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
        let ids: Vec<String> = self.run(&self.scripts.index_take_all, vec![keys::user_sessions(user)], vec![]).await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// One `EXISTS` per session, pipelined: sessions are keyed by their
    /// bare ids (tower-sessions-redis-store), so on a cluster each is in a
    /// slot of its own; still one round trip (per master).
    async fn exist(&self, sessions: &[Id]) -> StoreResult<Vec<bool>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.pool.next().pipeline().with_options(&request_options());
        for id in sessions {
            let _: () = pipeline.exists(keys::session(id)).await?;
        }
        let found: Vec<i64> = self.timed("exists", pipeline.all()).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }
}

fn token_json(record: &TokenRecord) -> String {
    serde_json::to_string(record).expect("records serialize")
}

fn token_session(id: &str, record: &str, expires_at: i64) -> StoreResult<StoredTokenSession> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("token session {what}"));
    Ok(StoredTokenSession {
        id: id.parse().map_err(|_| corrupt("id"))?,
        record: serde_json::from_str(record).map_err(|_| corrupt("record"))?,
        expires_at: UnixMillis::from_millis(expires_at),
    })
}

impl RedisBackend {
    /// The session id a token session's `sid` names. (On a cluster the
    /// pointer and the session are in different slots: it is read first.)
    async fn token_session_id(&self, sid: &str) -> StoreResult<Option<String>> {
        self.timed("get", self.fast.get(keys::sid(sid))).await
    }
}

#[async_trait]
impl TokenStore for RedisBackend {
    /// The session and its pointer are set in one pipeline: a pointer to a
    /// session not (yet) there finds nothing, and a session without its
    /// pointer can never be found; either way nothing is let in.
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()> {
        let pipeline = self.pool.next().pipeline().with_options(&request_options());
        let at = |ms: UnixMillis| Some(Expiration::PXAT(ms.as_millis()));
        let _: () = pipeline.set(keys::session(&id), token_json(record), at(expires_at), None, false).await?;
        let _: () = pipeline.set(keys::sid(&record.sid), keys::session(&id), at(end_by), None, false).await?;
        self.timed("set", pipeline.all::<()>()).await
    }

    /// One round trip on a single Redis (a script follows the pointer); two
    /// on a cluster, where the pointer and the session are in other slots.
    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>> {
        if !self.cluster {
            let found: Option<(String, String, i64)> =
                self.run(&self.scripts.token_find, vec![keys::sid(sid)], vec![]).await?;
            return found.map(|(id, record, expires_at)| token_session(&id, &record, expires_at)).transpose();
        }
        let Some(id) = self.token_session_id(sid).await? else { return Ok(None) };
        let found: Option<(String, i64)> = self.run(&self.scripts.token_read, vec![id.clone()], vec![]).await?;
        found.map(|(record, expires_at)| token_session(&id, &record, expires_at)).transpose()
    }

    /// The pointer never changes once set, so following it first and then
    /// comparing-and-setting the session alone is as safe as one script.
    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool> {
        let Some(id) = self.token_session_id(sid).await? else { return Ok(false) };
        let args = vec![expected.into(), token_json(record).into(), millis(expires_at)];
        let replaced: i64 = self.run(&self.scripts.token_update, vec![id], args).await?;
        Ok(replaced == 1)
    }

    async fn put_ticket(&self, ticket_hash: &str, sid: &str, ttl: Duration) -> StoreResult<()> {
        let expire = Some(Expiration::PX(ttl.as_millis() as i64));
        self.timed("set", self.fast.set::<(), _, _>(keys::ticket(ticket_hash), sid, expire, None, false)).await
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>> {
        self.timed("getdel", self.fast.getdel(keys::ticket(ticket_hash))).await
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let key = keys::secret(name);
        let encoded = STANDARD.encode(candidate);
        let _: Option<String> =
            self.timed("set", self.fast.set(&key, encoded, None, Some(SetOptions::NX), false)).await?;
        let stored: String = self.timed("get", self.fast.get(&key)).await?;
        STANDARD.decode(stored).map_err(|_| StoreError::Corrupt(format!("the shared secret {name}")))
    }
}

/// `(value, pttl)` from a counter script.
fn count(reply: Value) -> StoreResult<(u64, Duration)> {
    let (n, pttl): (i64, i64) = reply.convert()?;
    Ok((n.max(0) as u64, Duration::from_millis(pttl.max(0) as u64)))
}

/// Counters are independent keys (a login attempt counts one per address
/// and one per (name, address), in different slots): one script call per
/// key, atomic per key, all in one pipeline.
#[async_trait]
impl Counters for RedisBackend {
    async fn get(&self, names: &[String]) -> StoreResult<Vec<(u64, Duration)>> {
        let calls: Vec<Call> =
            names.iter().map(|k| Call::new(&self.scripts.counter_get, vec![keys::counter(k)], vec![])).collect();
        self.run_all(&calls).await?.into_iter().map(count).collect()
    }

    async fn incr(&self, names: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>> {
        let window: Value = (window.as_millis() as i64).into();
        let calls: Vec<Call> = names
            .iter()
            .map(|k| Call::new(&self.scripts.counter_incr, vec![keys::counter(k)], vec![window.clone()]))
            .collect();
        self.run_all(&calls).await?.into_iter().map(count).collect()
    }

    async fn decr(&self, name: &str) -> StoreResult<()> {
        self.run::<()>(&self.scripts.counter_decr, vec![keys::counter(name)], vec![]).await
    }

    async fn reset(&self, name: &str) -> StoreResult<()> {
        self.timed("del", self.fast.del(keys::counter(name))).await
    }
}

/// On a cluster the events channel is a shard channel: `SPUBLISH` goes to
/// the master owning its slot and reaches that shard's subscribers only,
/// where a classic `PUBLISH` is copied to every node of the cluster.
#[async_trait]
impl EventBus for RedisBackend {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        let payload = serde_json::to_string(event).expect("events serialize");
        let client = self.pool.next().with_options(&request_options());
        if self.cluster {
            self.timed("spublish", client.spublish(EVENTS_CHANNEL, payload)).await
        } else {
            self.timed("publish", client.publish(EVENTS_CHANNEL, payload)).await
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }
}

#[async_trait]
impl History for RedisBackend {
    /// Three steps (docs/cluster.md, "Appending"): read the room (a resend?
    /// does it exist?), charge the sender (rate, new-room quota), store in
    /// the room (and, with `REDIS_WAIT_REPLICAS`, wait for the replicas).
    async fn append(&self, room: &RoomName, message: NewMessage) -> StoreResult<Appended> {
        let client_id = message.client_id.clone().filter(|c| !c.is_empty());
        let dedupe = client_id.as_deref().map(|cid| keys::sent(room, message.sender, cid));
        let now = UnixMillis::now();

        // 1. The room: a resend, and whether the room exists.
        let mut check_keys = vec![keys::active(room)];
        check_keys.extend(dedupe.clone());
        let (seen, exists): (String, i64) = self.run(&self.scripts.append_check, check_keys, vec![]).await?;
        if !seen.is_empty() {
            return self.confirm_resend(room, dedupe.as_deref().expect("seen by its key")).await;
        }

        // 2. The sender: their rate, and their quota if the room is new.
        let new_room = exists == 0 && room.as_str() != crate::model::LOBBY;
        let take_keys = vec![keys::rate(message.sender), keys::counter(&rules::NewRooms::counter(message.sender))];
        let take_args: Vec<Value> = vec![
            millis(now),
            self.user_rate.rate.into(),
            self.user_rate.burst.into(),
            (if new_room { "1" } else { "0" }).into(),
            (self.new_rooms.max as i64).into(),
            (self.new_rooms.window.as_millis() as i64).into(),
        ];
        match self.run::<i64>(&self.scripts.append_take, take_keys, take_args).await? {
            2 => return Ok(Appended::Throttled),
            3 => return Ok(Appended::NewRoomRefused),
            _ => {}
        }

        // 3. The room: store (unless a resend got there first), then WAIT.
        let mut store_keys = vec![keys::messages(room), keys::active(room)];
        store_keys.extend(dedupe);
        let args: Vec<Value> = vec![
            (self.history_max_len as i64).into(),
            message.user.as_str().into(),
            message.body.as_str().into(),
            millis(message.sent_at),
            client_id.as_deref().unwrap_or_default().into(),
            (if message.client_id_shown && client_id.is_some() { "1" } else { "0" }).into(),
            (self.dedupe_window.as_secs() as i64).into(),
            millis(now),
            (self.room_ttl.as_millis() as i64).into(),
        ];
        let (id, stored): (String, i64) =
            self.run_durably(Call::new(&self.scripts.append_store, store_keys, args)).await?.convert()?;
        let id: MessageId = id.parse().map_err(|_| StoreError::Corrupt(format!("stream id {id}")))?;
        Ok(if stored == 1 { Appended::New(message.stored(id)) } else { Appended::Duplicate(id) })
    }

    async fn after(&self, room: &RoomName, after: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        self.range(room, format!("({after}"), "+", limit, false).await
    }

    async fn recent(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>> {
        let mut messages = self.range(room, "-".into(), "+", limit, true).await?;
        messages.reverse();
        Ok(messages)
    }

    async fn before(&self, room: &RoomName, before: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        // Nothing is before 0-0 (and Redis refuses "(0-0" as an end).
        if before == MessageId::ZERO || limit == 0 {
            return Ok(Vec::new());
        }
        let mut messages = self.range(room, "-".into(), &format!("({before}"), limit, true).await?;
        messages.reverse();
        Ok(messages)
    }

    async fn last_id(&self, room: &RoomName) -> StoreResult<MessageId> {
        Ok(self.range(room, "-".into(), "+", 1, true).await?.first().map(|m| m.id).unwrap_or(MessageId::ZERO))
    }

    fn tail_groups(&self) -> usize {
        self.tails.len()
    }

    fn tail_group(&self, room: &RoomName) -> usize {
        self.group_of(room)
    }

    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>> {
        let Some((first, _)) = cursors.first() else {
            return Err(StoreError::Usage("a tail needs a room to follow".into()));
        };
        let group = self.group_of(first);
        if let Some((other, _)) = cursors.iter().find(|(room, _)| self.group_of(room) != group) {
            return Err(StoreError::Usage(format!("rooms {first} and {other} are tailed by different groups")));
        }
        let tail = &self.tails[group];
        let mut wake_cursor = tail.wake_cursor.lock().await;
        if wake_cursor.is_none() {
            // Start after whatever wake entries exist, so old pokes are ignored.
            let last: Vec<(String, HashMap<String, String>)> =
                self.timed("xrevrange", self.fast.xrevrange_values(&tail.wake_key, "+", "-", Some(1))).await?;
            *wake_cursor = Some(last.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
        }
        let mut stream_keys: Vec<String> = cursors.iter().map(|(room, _)| keys::messages(room)).collect();
        let mut ids: Vec<String> = cursors.iter().map(|(_, id)| id.to_string()).collect();
        stream_keys.push(tail.wake_key.clone());
        ids.push(wake_cursor.clone().unwrap_or_default());

        let client = self.tail_client(tail).await?;
        let read = client.xread::<Value, _, _>(Some(TAIL_BATCH), Some(wait.as_millis() as u64), stream_keys, ids);
        // A blocking read in flight when the connection dropped was seen to
        // never return; the cursors make a retry safe, so give up on it and
        // start over on a fresh connection.
        let reply = match tokio::time::timeout(wait + COMMAND_TIMEOUT, read).await {
            Ok(reply) => reply?,
            Err(_) => {
                tracing::warn!(group, "XREAD BLOCK did not return; reconnecting the tail connection");
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, client.force_reconnection()).await;
                return Err(StoreError::Redis(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "XREAD BLOCK did not return",
                )));
            }
        };
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let mut reply: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
        if let Some(pokes) = reply.remove(&tail.wake_key) {
            if let Some((id, _)) = pokes.last() {
                *wake_cursor = Some(id.clone());
            }
        }
        let mut out = Vec::new();
        for (room, _) in cursors {
            if let Some(entries) = reply.remove(&keys::messages(room)) {
                let messages = entries
                    .into_iter()
                    .map(|(id, fields)| Self::parse_entry(&id, fields))
                    .collect::<StoreResult<Vec<_>>>()?;
                out.push((room.clone(), messages));
            }
        }
        Ok(out)
    }

    async fn wake_tail(&self, room: &RoomName) -> StoreResult<()> {
        let key = self.tails[self.group_of(room)].wake_key.clone();
        self.run::<()>(&self.scripts.wake, vec![key], vec![]).await
    }

    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool> {
        let exists: i64 = self.timed("exists", self.fast.exists(keys::active(room))).await?;
        Ok(exists == 1)
    }

    /// The room's part and the user's part are in different slots: two
    /// script calls, one round trip.
    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<()> {
        let (now, ttl) = (millis(UnixMillis::now()), Value::from(self.room_ttl.as_millis() as i64));
        let calls = [
            Call::new(
                &self.scripts.open_room,
                vec![keys::active(room), keys::messages(room)],
                vec![now.clone(), ttl.clone()],
            ),
            Call::new(
                &self.scripts.open_room_user,
                vec![keys::user_rooms(user)],
                vec![room.as_str().into(), now, ttl, (rules::USER_ROOMS_KEPT as i64).into()],
            ),
        ];
        self.run_all(&calls).await?;
        Ok(())
    }

    /// The user's list, then whether each room still exists (pipelined).
    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>> {
        let names: Vec<String> =
            self.timed("zrevrange", self.fast.zrevrange(keys::user_rooms(user), 0, -1, false)).await?;
        let rooms: Vec<RoomName> = names.iter().filter_map(|name| RoomName::parse(name)).collect();
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.pool.next().pipeline().with_options(&request_options());
        for room in &rooms {
            let _: () = pipeline.exists(keys::active(room)).await?;
        }
        let exist: Vec<i64> = self.timed("exists", pipeline.all()).await?;
        Ok(rooms.into_iter().zip(exist).filter(|(_, e)| *e == 1).map(|(room, _)| room).take(limit).collect())
    }

    async fn mark_read(&self, user: UserId, room: &RoomName, up_to: MessageId) -> StoreResult<bool> {
        let keys = vec![keys::user_read(user), keys::user_rooms(user)];
        let args = vec![
            room.as_str().into(),
            (up_to.ms as i64).into(),
            (up_to.seq as i64).into(),
            (self.room_ttl.as_millis() as i64).into(),
            ((rules::USER_ROOMS_KEPT + 1) as i64).into(),
        ];
        let moved: i64 = self.run(&self.scripts.mark_read, keys, args).await?;
        Ok(moved == 1)
    }

    async fn read_markers(&self, user: UserId) -> StoreResult<HashMap<RoomName, MessageId>> {
        let all: HashMap<String, String> = self.timed("hgetall", self.fast.hgetall(keys::user_read(user))).await?;
        // A field that does not parse (written by hand) counts as no marker.
        Ok(all.iter().filter_map(|(room, id)| Some((RoomName::parse(room)?, id.parse().ok()?))).collect())
    }
}

impl RedisBackend {
    /// A resend of a stored message: acknowledged with the first id, once
    /// the first copy is known to be on the replicas (the confirming write
    /// and its `WAIT` come after it in the replication stream).
    async fn confirm_resend(&self, room: &RoomName, dedupe: &str) -> StoreResult<Appended> {
        let call = Call::new(&self.scripts.append_confirm, vec![dedupe.to_owned()], vec![]);
        let seen: String = match self.durability {
            Some(_) => self.run_durably(call).await?.convert()?,
            None => self.run(call.script, call.keys, call.args).await?,
        };
        if seen.is_empty() {
            // It expired between the two reads: not stored, as far as anyone
            // can tell now; the sender sends it again.
            return Err(StoreError::Usage(format!("the first copy of a resend in {room} expired meanwhile")));
        }
        let id: MessageId = seen.parse().map_err(|_| StoreError::Corrupt(format!("stream id {seen}")))?;
        Ok(Appended::Duplicate(id))
    }
}

fn presence_member(instance: &str, user: &str) -> String {
    format!("{instance}|{user}")
}

/// Indexes of `rooms` by tail group, in first-seen order.
fn by_group(rooms: impl Iterator<Item = usize>) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, group) in rooms.enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(i),
            None => groups.push((group, vec![i])),
        }
    }
    groups
}

/// Presence keys of a room group share its slot: one script call per group
/// touched, all in one pipeline.
#[async_trait]
impl PresenceStore for RedisBackend {
    async fn update(
        &self,
        instance: &str,
        online: &[(RoomName, String)],
        offline: &[(RoomName, String)],
        ttl: Duration,
    ) -> StoreResult<()> {
        if online.is_empty() && offline.is_empty() {
            return Ok(());
        }
        let deadline = millis(UnixMillis::now() + ttl);
        let pairs: Vec<(&(RoomName, String), bool)> =
            online.iter().map(|p| (p, true)).chain(offline.iter().map(|p| (p, false))).collect();
        let groups = by_group(pairs.iter().map(|((room, _), _)| room_group(room)));
        let calls: Vec<Call> = groups
            .iter()
            .map(|(_, members)| {
                // Online entries first, as the script expects.
                let ordered: Vec<&(&(RoomName, String), bool)> = members
                    .iter()
                    .map(|i| &pairs[*i])
                    .filter(|(_, on)| *on)
                    .chain(members.iter().map(|i| &pairs[*i]).filter(|(_, on)| !*on))
                    .collect();
                let keys = ordered.iter().map(|((room, _), _)| keys::presence(room)).collect();
                let mut args = vec![deadline.clone(), (ordered.iter().filter(|(_, on)| *on).count() as i64).into()];
                args.extend(ordered.iter().map(|((_, user), _)| Value::from(presence_member(instance, user))));
                Call::new(&self.scripts.presence_update, keys, args)
            })
            .collect();
        self.run_all(&calls).await?;
        Ok(())
    }

    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = millis(UnixMillis::now());
        let groups = by_group(rooms.iter().map(room_group));
        let calls: Vec<Call> = groups
            .iter()
            .map(|(_, members)| {
                let keys = members.iter().map(|i| keys::presence(&rooms[*i])).collect();
                Call::new(&self.scripts.presence_online, keys, vec![now.clone()])
            })
            .collect();
        let mut out = vec![Vec::new(); rooms.len()];
        for ((_, members), reply) in groups.iter().zip(self.run_all(&calls).await?) {
            let lists: Vec<Vec<String>> = reply.convert()?;
            for (i, list) in members.iter().zip(lists) {
                out[*i] = list
                    .into_iter()
                    .filter_map(|m| m.split_once('|').map(|(instance, user)| (instance.to_owned(), user.to_owned())))
                    .collect();
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Health for RedisBackend {
    async fn ping(&self) -> StoreResult<()> {
        let _: String = self.timed("ping", self.fast.ping(None)).await?;
        Ok(())
    }

    fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.subscriber.is_connected()
    }

    async fn close(&self) {
        // The hub's tasks are gone, but their XREAD BLOCKs may still be
        // waiting on the tail connections, and QUIT would queue behind them
        // for up to the block time: answer them first.
        for tail in &self.tails {
            if tail.client.get().is_some() {
                let _ = self.run::<()>(&self.scripts.wake, vec![tail.wake_key.clone()], vec![]).await;
            }
        }
        let quit = async {
            let tails = futures_util::future::join_all(
                self.tails.iter().filter_map(|tail| tail.client.get()).map(|client| client.quit()),
            );
            let _ = tokio::join!(self.subscriber.quit(), tails, self.appends.quit(), self.pool.quit());
        };
        if tokio::time::timeout(COMMAND_TIMEOUT, quit).await.is_err() {
            tracing::warn!("Redis connections did not close in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_groups_spread_evenly_over_the_slot_space() {
        let span = 16384 / ROOM_GROUPS;
        for group in 0..ROOM_GROUPS {
            let slot = usize::from(fred::util::redis_keyslot(group_tag(group).as_bytes()));
            assert_eq!(slot / span, group, "{} is in slot {slot}", group_tag(group));
        }
    }

    #[test]
    fn every_key_of_a_room_is_in_its_groups_slot_and_every_key_of_a_user_in_the_users() {
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        let user = UserId::new_v4();
        for name in ["lobby", "a", "rust-users", "0"] {
            let room = RoomName::parse(name).unwrap();
            let group = slot(&keys::wake(room_group(&room), "i1"));
            for key in [
                keys::messages(&room),
                keys::active(&room),
                keys::presence(&room),
                keys::sent(&room, user, "c{1}"),
                keys::wake(room_group(&room), "other"),
            ] {
                assert_eq!(slot(&key), group, "{key}");
            }
        }
        let own = slot(&keys::rate(user));
        for key in [
            keys::user_sessions(user),
            keys::user_rooms(user),
            keys::counter(&rules::NewRooms::counter(user)),
            keys::user_read(user),
        ] {
            assert_eq!(slot(&key), own, "{key}");
        }
    }
}
