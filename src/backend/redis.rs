//! The Redis backend, shared by every instance (fred 10).
//!
//! Connections:
//! - a small pool for ordinary commands; request paths use it through
//!   `fail_fast` + a timeout, so that a Redis outage turns into a quick 503
//!   instead of requests queueing behind the reconnect loop;
//! - a `SubscriberClient` for the [`EVENTS_CHANNEL`];
//! - a dedicated client for `XREAD BLOCK` (a blocking command must never sit
//!   on a pooled connection other commands wait behind).
//!
//! Every client has a reconnect policy that never gives up. Multi-step
//! operations are small Lua scripts: atomic and one round trip each.
//!
//! Keys (all prefixed `palaver:` except the sessions, which
//! tower-sessions-redis-store keys by the bare session id):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `palaver:user:{name lowercased}` | string | JSON `{id, name, hash}`; `SET NX` makes names unique |
//! | `palaver:user:{id}:sessions` | zset | session ids scored by their latest possible end |
//! | `palaver:user:{id}:rooms` | zset | the rooms the user opened, scored by their last visit |
//! | `palaver:user:{id}:read` | hash | room -> the id the user has read up to (expires with the rooms: `ROOM_TTL_SECS` after it last moved) |
//! | `palaver:rate:{name lowercased}` | hash | the user's message-rate bucket: tokens `t`, counted at `at` |
//! | `palaver:throttle:{key}` | string | a throttle counter with its window as TTL |
//! | `palaver:room:{room}:messages` | stream | the room's history; the entry id is the message id; expires with the room |
//! | `palaver:room:{room}:sent:{user}:{client_id}` | string | id of a stored message, to drop resends |
//! | `palaver:room:{room}:presence` | zset | `{instance}\|{user}` scored by the entry's deadline |
//! | `{session id}` | string | a token session: JSON `TokenRecord`, expiring with the session (the key shape of a cookie session, so both are swept and ended alike) |
//! | `palaver:sid:{sid}` | string | the session id a token session's public `sid` names (expires at its absolute end) |
//! | `palaver:ticket:{hash}` | string | the `sid` a one-use WebSocket ticket is for (30 s) |
//! | `palaver:token-signing-key` | string | the generated signing key, base64 PKCS#8, when none is configured |
//! | `palaver:refresh-key` | string | the key refresh-token successors are derived with, base64 |
//! | `palaver:rooms` | zset | the rooms that exist, scored by their last message or visit |
//! | `palaver:instance:{id}:wake` | stream | pokes this instance's `XREAD BLOCK` (1 h TTL) |

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use fred::{clients::SubscriberClient, prelude::*, types::streams::XReadResponse};
use tokio::sync::{broadcast, Mutex as AsyncMutex};
use tower_sessions::session::Id;
use tower_sessions_redis_store::RedisStore;

use super::{
    rules, ConnectError, Counters, Event, EventBus, Health, History, Notice, PresenceStore, SessionIndex, StoreError,
    StoreResult, StoredTokenSession, StoredUser, TokenStore, UserStore, EVENTS_CHANNEL,
};
use crate::{
    clock::UnixMillis,
    config::Config,
    model::{folded_username, Appended, Message, MessageId, NewMessage, RoomName, TokenRecord, User, UserId},
};

/// How long a request-path command may take before the store counts as down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled connections for ordinary commands.
const POOL_SIZE: usize = 4;
/// How many entries one `XREAD` returns per stream at most.
const TAIL_BATCH: u64 = 512;

mod keys {
    use super::{folded_username, Id, RoomName, UserId};

    pub fn user(name: &str) -> String {
        format!("palaver:user:{}", folded_username(name))
    }
    pub fn user_sessions(user: UserId) -> String {
        format!("palaver:user:{user}:sessions")
    }
    /// Must match tower-sessions-redis-store, which keys a session by its id.
    pub fn session(id: &Id) -> String {
        id.to_string()
    }
    pub fn counter(key: &str) -> String {
        format!("palaver:throttle:{key}")
    }
    pub fn messages(room: &RoomName) -> String {
        format!("palaver:room:{room}:messages")
    }
    pub fn sent(room: &RoomName, user: &str, client_id: &str) -> String {
        format!("palaver:room:{room}:sent:{user}:{client_id}")
    }
    pub fn presence(room: &RoomName) -> String {
        format!("palaver:room:{room}:presence")
    }
    pub const ROOMS: &str = "palaver:rooms";
    pub fn secret(name: &str) -> String {
        format!("palaver:{name}")
    }
    pub fn sid(sid: &str) -> String {
        format!("palaver:sid:{sid}")
    }
    pub fn ticket(hash: &str) -> String {
        format!("palaver:ticket:{hash}")
    }
    pub fn user_rooms(user: UserId) -> String {
        format!("palaver:user:{user}:rooms")
    }
    pub fn user_read(user: UserId) -> String {
        format!("palaver:user:{user}:read")
    }
    pub fn rate(name: &str) -> String {
        format!("palaver:rate:{}", folded_username(name))
    }
    pub fn wake(instance: &str) -> String {
        format!("palaver:instance:{instance}:wake")
    }
}

/// A Lua script run by digest, loaded on first use (or after a Redis restart
/// emptied the script cache).
struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        Self { source, sha: fred::util::sha1_hash(source) }
    }
}

struct Scripts {
    index_add: Script,
    index_take_all: Script,
    exist: Script,
    counters_get: Script,
    counters_incr: Script,
    counters_decr: Script,
    append: Script,
    open_room: Script,
    token_find: Script,
    token_update: Script,
    token_create: Script,
    user_rooms: Script,
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
                "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
                 redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
                 local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
                 redis.call('PEXPIREAT', KEYS[1], last[2])
                 return 1",
            ),
            // KEYS[1] index
            index_take_all: Script::new(
                "local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
                 redis.call('DEL', KEYS[1])
                 return ids",
            ),
            // KEYS: session keys
            exist: Script::new(
                "local out = {}
                 for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
                 return out",
            ),
            // KEYS: counters; returns value, pttl pairs flattened
            counters_get: Script::new(
                "local out = {}
                 for i, key in ipairs(KEYS) do
                   out[2 * i - 1] = tonumber(redis.call('GET', key) or '0')
                   out[2 * i] = redis.call('PTTL', key)
                 end
                 return out",
            ),
            // KEYS: counters; ARGV[1] window ms; returns value, pttl pairs flattened
            counters_incr: Script::new(
                "local out = {}
                 for i, key in ipairs(KEYS) do
                   local n = redis.call('INCR', key)
                   if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
                   out[2 * i - 1] = n
                   out[2 * i] = redis.call('PTTL', key)
                 end
                 return out",
            ),
            // KEYS[1] counter: one back, never below zero, window kept
            counters_decr: Script::new(
                "if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
                 return 1",
            ),
            // KEYS: stream, dedupe key (or '' when no client_id), rooms zset,
            //       sender's rate bucket, sender's new-room counter
            // ARGV: maxlen, user, body, sent_at, client_id, room, dedupe secs,
            //       now, rate per s, burst, room ttl ms, show client_id (1/0),
            //       new rooms allowed, new-room window ms
            // Returns {id, 1} when stored, {id, 0} for a resend of a stored
            // message, {'', 2} when the sender is over their rate (the bucket
            // is backend::rules::UserRate::take), {'', 3} when the room does
            // not exist and the sender may not bring another into existence
            // (lobby always exists: model::LOBBY).
            append: Script::new(
                "if KEYS[2] ~= '' then
                   local seen = redis.call('GET', KEYS[2])
                   if seen then return {seen, 0} end
                 end
                 local now, rate, burst = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
                 local bucket = redis.call('HMGET', KEYS[4], 't', 'at')
                 local tokens = tonumber(bucket[1]) or burst
                 local at = tonumber(bucket[2]) or now
                 tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
                 if tokens < 1 then return {'', 2} end
                 local active = redis.call('ZSCORE', KEYS[3], ARGV[6])
                 if ARGV[6] ~= 'lobby' and (not active or tonumber(active) <= now - tonumber(ARGV[11])) then
                   local n = redis.call('INCR', KEYS[5])
                   if n == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[14]) end
                   if n > tonumber(ARGV[13]) then return {'', 3} end
                 end
                 redis.call('HSET', KEYS[4], 't', tostring(tokens - 1), 'at', ARGV[8])
                 redis.call('PEXPIRE', KEYS[4], math.ceil(burst / rate * 1000) + 1000)
                 local id
                 if ARGV[5] ~= '' and ARGV[12] == '1' then
                   id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                     'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4], 'client_id', ARGV[5])
                 else
                   id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                     'user', ARGV[2], 'body', ARGV[3], 'sent_at', ARGV[4])
                 end
                 if ARGV[5] ~= '' then redis.call('SET', KEYS[2], id, 'EX', ARGV[7]) end
                 -- The stream expires exactly when the room stops existing.
                 redis.call('PEXPIREAT', KEYS[1], now + tonumber(ARGV[11]))
                 redis.call('ZADD', KEYS[3], now, ARGV[6])
                 return {id, 1}",
            ),
            // KEYS[1] the sid pointer. Returns {id, record JSON, expiry ms}
            // of the live token session it names, or nil.
            token_find: Script::new(
                "local id = redis.call('GET', KEYS[1])
                 if not id then return nil end
                 local record = redis.call('GET', id)
                 if not record then return nil end
                 return {id, record, redis.call('PEXPIRETIME', id)}",
            ),
            // KEYS[1] the sid pointer; ARGV: expected current refresh hash,
            // new record JSON, new expiry (ms). A compare-and-set: 1 when
            // replaced, 0 when the session is gone or already rotated.
            token_update: Script::new(
                "local id = redis.call('GET', KEYS[1])
                 if not id then return 0 end
                 local record = redis.call('GET', id)
                 if not record then return 0 end
                 if cjson.decode(record)['refresh']['current'] ~= ARGV[1] then return 0 end
                 redis.call('SET', id, ARGV[2], 'PXAT', ARGV[3])
                 return 1",
            ),
            // KEYS: the session key, its sid pointer; ARGV: record JSON,
            // expiry ms, absolute end ms.
            token_create: Script::new(
                "redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
                 redis.call('SET', KEYS[2], KEYS[1], 'PXAT', ARGV[3])
                 return 1",
            ),
            // KEYS: rooms zset, the user's rooms zset, the room's stream
            // ARGV: room, now, room ttl ms, rooms kept per user
            open_room: Script::new(
                "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
                 redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
                 redis.call('PEXPIREAT', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]))
                 redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
                 redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[4]))
                 redis.call('PEXPIRE', KEYS[2], ARGV[3])
                 return 1",
            ),
            // KEYS: the user's rooms zset, rooms zset; ARGV: now, room ttl ms, limit
            // The user's rooms, newest first, that still exist.
            user_rooms: Script::new(
                "local since = tonumber(ARGV[1]) - tonumber(ARGV[2])
                 local out = {}
                 for _, room in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
                   local active = redis.call('ZSCORE', KEYS[2], room)
                   if active and tonumber(active) > since then
                     out[#out + 1] = room
                     if #out >= tonumber(ARGV[3]) then break end
                   end
                 end
                 return out",
            ),
            // KEYS: the user's read hash, the user's rooms zset
            // ARGV: room, ms, seq, room ttl ms, markers kept
            // Moves the marker only forward (ids compare as (ms, seq); both
            // fit a Lua number exactly). Past the cap, markers of rooms no
            // longer in the user's list go. Returns 1 when it moved.
            mark_read: Script::new(
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
                "redis.call('XADD', KEYS[1], 'MAXLEN', '~', 16, '*', 'w', 1)
                 redis.call('PEXPIRE', KEYS[1], 3600000)
                 return 1",
            ),
            // KEYS: presence zsets, first the online ones then the offline ones
            // ARGV: deadline, number online, then one member per key
            // A room's key lives as long as its latest entry, whichever
            // instance wrote it (not as long as the last one written).
            presence_update: Script::new(
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
            // KEYS: presence zsets; ARGV[1] now. Drops expired entries first.
            presence_online: Script::new(
                "local out = {}
                 for i, key in ipairs(KEYS) do
                   redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
                   out[i] = redis.call('ZRANGE', key, 0, -1)
                 end
                 return out",
            ),
        }
    }
}

/// `(value, pttl)` pairs from a counters script.
fn counts(flat: &[i64]) -> Vec<(u64, Duration)> {
    flat.chunks(2).map(|pair| (pair[0].max(0) as u64, Duration::from_millis(pair[1].max(0) as u64))).collect()
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

pub struct RedisBackend {
    pool: Pool,
    /// The pool with `fail_fast` and a timeout: every request-path command.
    fast: fred::clients::WithOptions<Pool>,
    subscriber: SubscriberClient,
    /// Dedicated to `XREAD BLOCK`; the lock keeps one reader at a time.
    tail_client: Client,
    /// Last entry seen on this instance's wake stream.
    wake_cursor: AsyncMutex<Option<String>>,
    wake_key: String,
    events: broadcast::Sender<Notice>,
    scripts: Scripts,
    history_max_len: u64,
    dedupe_window: Duration,
    room_ttl: Duration,
    user_rate: rules::UserRate,
    new_rooms: rules::NewRooms,
}

impl RedisBackend {
    /// Connects every client; fails when Redis does not answer now.
    pub async fn connect(url: &str, config: &Config, instance_id: &str) -> Result<Self, ConnectError> {
        let bad_url = |source| ConnectError::BadUrl { url: url.to_owned(), source };
        let unreachable = |source| ConnectError::Unreachable { url: url.to_owned(), source };

        let mut builder = Builder::from_config(fred::types::config::Config::from_url(url).map_err(bad_url)?);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
            })
            .with_performance_config(|p| p.broadcast_channel_capacity = 1024)
            // Never give up: a Redis restart must heal by itself.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));

        let pool = builder.build_pool(POOL_SIZE).map_err(bad_url)?;
        let subscriber = builder.build_subscriber_client().map_err(bad_url)?;
        let tail_client = builder.build().map_err(bad_url)?;
        pool.init().await.map_err(unreachable)?;
        subscriber.init().await.map_err(unreachable)?;
        tail_client.init().await.map_err(unreachable)?;

        let fast = pool.with_options(&request_options());

        let (events, _) = broadcast::channel(1024);
        let backend = RedisBackend {
            pool,
            fast,
            subscriber,
            tail_client,
            wake_cursor: AsyncMutex::new(None),
            wake_key: keys::wake(instance_id),
            events,
            scripts: Scripts::new(),
            history_max_len: rules::history_cap(config),
            dedupe_window: rules::dedupe_window(config),
            room_ttl: rules::room_ttl(config),
            user_rate: rules::UserRate::from_config(config),
            new_rooms: rules::NewRooms::from_config(config),
        };
        backend.start_subscriber().await.map_err(unreachable)?;
        Ok(backend)
    }

    /// The tower-sessions store over the same pool (fail fast, timed out).
    pub fn session_store(&self) -> RedisStore<fred::clients::WithOptions<Pool>> {
        RedisStore::new(self.fast.clone())
    }

    /// Subscribes to the events channel and forwards what arrives to local
    /// receivers. After every reconnect it subscribes again *before* telling
    /// receivers to resync, so that the resync sweep cannot run ahead of a
    /// subscription that is not back yet.
    async fn start_subscriber(&self) -> Result<(), fred::error::Error> {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        self.subscriber.subscribe(EVENTS_CHANNEL).await?;

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
        tokio::spawn(async move {
            loop {
                match reconnects.recv().await {
                    Ok(server) => {
                        // Retry until the subscription is back: an instance that
                        // silently stops hearing logouts is the failure to avoid.
                        let mut delay = Duration::from_millis(50);
                        while let Err(err) = subscriber.resubscribe_all().await {
                            tracing::warn!(%err, "resubscribing to {EVENTS_CHANNEL} failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
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
        let result =
            guarded("evalsha", self.fast.evalsha::<R, _, _, _>(script.sha.as_str(), keys.clone(), args.clone())).await;
        match result {
            Err(StoreError::Redis(err)) if err.details().starts_with("NOSCRIPT") => {
                guarded("eval", self.fast.eval::<R, _, _, _>(script.source, keys, args)).await
            }
            other => other,
        }
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
            guarded("xrevrange", self.fast.xrevrange_values(key, end, start, Some(limit as u64))).await?
        } else {
            guarded("xrange", self.fast.xrange_values(key, start, end, Some(limit as u64))).await?
        };
        entries.into_iter().map(|(id, fields)| Self::parse_entry(&id, fields)).collect()
    }
}

#[async_trait]
impl UserStore for RedisBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let record = serde_json::json!({ "id": user.id, "name": user.name, "hash": password_hash }).to_string();
        let set: Option<String> =
            guarded("set", self.fast.set(keys::user(&user.name), record, None, Some(SetOptions::NX), false)).await?;
        Ok(set.is_some())
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        let Some(record): Option<String> = guarded("get", self.fast.get(keys::user(name))).await? else {
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
        guarded("zrem", self.fast.zrem(keys::user_sessions(user), session.to_string())).await
    }

    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
        let ids: Vec<String> = self.run(&self.scripts.index_take_all, vec![keys::user_sessions(user)], vec![]).await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn exist(&self, sessions: &[Id]) -> StoreResult<Vec<bool>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<i64> =
            self.run(&self.scripts.exist, sessions.iter().map(keys::session).collect(), vec![]).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }
}

fn token_json(record: &TokenRecord) -> String {
    serde_json::to_string(record).expect("records serialize")
}

#[async_trait]
impl TokenStore for RedisBackend {
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()> {
        let keys = vec![keys::session(&id), keys::sid(&record.sid)];
        let args = vec![token_json(record).into(), millis(expires_at), millis(end_by)];
        self.run::<()>(&self.scripts.token_create, keys, args).await
    }

    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>> {
        let found: Option<(String, String, i64)> =
            self.run(&self.scripts.token_find, vec![keys::sid(sid)], vec![]).await?;
        let Some((id, record, expires_at)) = found else { return Ok(None) };
        let corrupt = |what: &str| StoreError::Corrupt(format!("token session {what}"));
        Ok(Some(StoredTokenSession {
            id: id.parse().map_err(|_| corrupt("id"))?,
            record: serde_json::from_str(&record).map_err(|_| corrupt("record"))?,
            expires_at: UnixMillis::from_millis(expires_at),
        }))
    }

    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool> {
        let args = vec![expected.into(), token_json(record).into(), millis(expires_at)];
        let replaced: i64 = self.run(&self.scripts.token_update, vec![keys::sid(sid)], args).await?;
        Ok(replaced == 1)
    }

    async fn put_ticket(&self, ticket_hash: &str, sid: &str, ttl: Duration) -> StoreResult<()> {
        let expire = Some(Expiration::PX(ttl.as_millis() as i64));
        guarded("set", self.fast.set::<(), _, _>(keys::ticket(ticket_hash), sid, expire, None, false)).await
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>> {
        guarded("getdel", self.fast.getdel(keys::ticket(ticket_hash))).await
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let key = keys::secret(name);
        let encoded = STANDARD.encode(candidate);
        let _: Option<String> = guarded("set", self.fast.set(&key, encoded, None, Some(SetOptions::NX), false)).await?;
        let stored: String = guarded("get", self.fast.get(&key)).await?;
        STANDARD.decode(stored).map_err(|_| StoreError::Corrupt(format!("the shared secret {name}")))
    }
}

#[async_trait]
impl Counters for RedisBackend {
    async fn get(&self, names: &[String]) -> StoreResult<Vec<(u64, Duration)>> {
        let keys = names.iter().map(|k| keys::counter(k)).collect();
        let flat: Vec<i64> = self.run(&self.scripts.counters_get, keys, vec![]).await?;
        Ok(counts(&flat))
    }

    async fn incr(&self, names: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>> {
        let keys = names.iter().map(|k| keys::counter(k)).collect();
        let flat: Vec<i64> =
            self.run(&self.scripts.counters_incr, keys, vec![(window.as_millis() as i64).into()]).await?;
        Ok(counts(&flat))
    }

    async fn decr(&self, name: &str) -> StoreResult<()> {
        self.run::<()>(&self.scripts.counters_decr, vec![keys::counter(name)], vec![]).await
    }

    async fn reset(&self, name: &str) -> StoreResult<()> {
        guarded("del", self.fast.del(keys::counter(name))).await
    }
}

#[async_trait]
impl EventBus for RedisBackend {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        let payload = serde_json::to_string(event).expect("events serialize");
        guarded("publish", self.pool.next().with_options(&request_options()).publish(EVENTS_CHANNEL, payload)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }
}

#[async_trait]
impl History for RedisBackend {
    async fn append(&self, room: &RoomName, message: NewMessage) -> StoreResult<Appended> {
        let client_id = message.client_id.clone().unwrap_or_default();
        let dedupe_key = if client_id.is_empty() { String::new() } else { keys::sent(room, &message.user, &client_id) };
        let keys = vec![
            keys::messages(room),
            dedupe_key,
            keys::ROOMS.to_owned(),
            keys::rate(&message.user),
            keys::counter(&rules::NewRooms::counter(message.sender)),
        ];
        let args: Vec<Value> = vec![
            (self.history_max_len as i64).into(),
            message.user.as_str().into(),
            message.body.as_str().into(),
            millis(message.sent_at),
            client_id.as_str().into(),
            room.as_str().into(),
            (self.dedupe_window.as_secs() as i64).into(),
            millis(UnixMillis::now()),
            self.user_rate.rate.into(),
            self.user_rate.burst.into(),
            (self.room_ttl.as_millis() as i64).into(),
            (if message.client_id_shown { "1" } else { "0" }).into(),
            (self.new_rooms.max as i64).into(),
            (self.new_rooms.window.as_millis() as i64).into(),
        ];
        let (id, stored): (String, i64) = self.run(&self.scripts.append, keys, args).await?;
        match stored {
            2 => return Ok(Appended::Throttled),
            3 => return Ok(Appended::NewRoomRefused),
            _ => {}
        }
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

    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>> {
        let mut wake_cursor = self.wake_cursor.lock().await;
        if wake_cursor.is_none() {
            // Start after whatever wake entries exist, so old pokes are ignored.
            let last: Vec<(String, HashMap<String, String>)> =
                guarded("xrevrange", self.fast.xrevrange_values(&self.wake_key, "+", "-", Some(1))).await?;
            *wake_cursor = Some(last.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
        }
        let mut stream_keys: Vec<String> = cursors.iter().map(|(room, _)| keys::messages(room)).collect();
        let mut ids: Vec<String> = cursors.iter().map(|(_, id)| id.to_string()).collect();
        stream_keys.push(self.wake_key.clone());
        ids.push(wake_cursor.clone().unwrap_or_default());

        let read =
            self.tail_client.xread::<Value, _, _>(Some(TAIL_BATCH), Some(wait.as_millis() as u64), stream_keys, ids);
        // A blocking read in flight when the connection dropped was seen to
        // never return; the cursors make a retry safe, so give up on it and
        // start over on a fresh connection.
        let reply = match tokio::time::timeout(wait + COMMAND_TIMEOUT, read).await {
            Ok(reply) => reply?,
            Err(_) => {
                tracing::warn!("XREAD BLOCK did not return; reconnecting the tail connection");
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, self.tail_client.force_reconnection()).await;
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
        if let Some(pokes) = reply.remove(&self.wake_key) {
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

    async fn wake_tail(&self) -> StoreResult<()> {
        self.run::<()>(&self.scripts.wake, vec![self.wake_key.clone()], vec![]).await
    }

    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool> {
        let active: Option<f64> = guarded("zscore", self.fast.zscore(keys::ROOMS, room.as_str())).await?;
        let since = UnixMillis::now() - self.room_ttl;
        Ok(active.is_some_and(|at| at as i64 > since.as_millis()))
    }

    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<()> {
        let keys = vec![keys::ROOMS.to_owned(), keys::user_rooms(user), keys::messages(room)];
        let args = vec![
            room.as_str().into(),
            millis(UnixMillis::now()),
            (self.room_ttl.as_millis() as i64).into(),
            (rules::USER_ROOMS_KEPT as i64).into(),
        ];
        self.run::<()>(&self.scripts.open_room, keys, args).await
    }

    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>> {
        let keys = vec![keys::user_rooms(user), keys::ROOMS.to_owned()];
        let args = vec![millis(UnixMillis::now()), (self.room_ttl.as_millis() as i64).into(), (limit as i64).into()];
        let names: Vec<String> = self.run(&self.scripts.user_rooms, keys, args).await?;
        Ok(names.iter().filter_map(|name| RoomName::parse(name)).collect())
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
        let all: HashMap<String, String> = guarded("hgetall", self.fast.hgetall(keys::user_read(user))).await?;
        // A field that does not parse (written by hand) counts as no marker.
        Ok(all.iter().filter_map(|(room, id)| Some((RoomName::parse(room)?, id.parse().ok()?))).collect())
    }
}

fn presence_member(instance: &str, user: &str) -> String {
    format!("{instance}|{user}")
}

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
        let deadline = UnixMillis::now() + ttl;
        let pairs = online.iter().chain(offline);
        let keys = pairs.clone().map(|(room, _)| keys::presence(room)).collect();
        let mut args: Vec<Value> = vec![millis(deadline), (online.len() as i64).into()];
        args.extend(pairs.map(|(_, user)| Value::from(presence_member(instance, user))));
        self.run::<()>(&self.scripts.presence_update, keys, args).await
    }

    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let keys = rooms.iter().map(keys::presence).collect();
        let members: Vec<Vec<String>> =
            self.run(&self.scripts.presence_online, keys, vec![millis(UnixMillis::now())]).await?;
        Ok(members
            .into_iter()
            .map(|members| {
                members
                    .into_iter()
                    .filter_map(|m| m.split_once('|').map(|(instance, user)| (instance.to_owned(), user.to_owned())))
                    .collect()
            })
            .collect())
    }
}

#[async_trait]
impl Health for RedisBackend {
    async fn ping(&self) -> StoreResult<()> {
        let _: String = guarded("ping", self.fast.ping(None)).await?;
        Ok(())
    }

    async fn close(&self) {
        // The hub's task is gone, but its XREAD BLOCK may still be waiting on
        // the tail connection, and QUIT would queue behind it for up to the
        // block time: answer it first.
        let _ = self.wake_tail().await;
        let quit = async {
            let _ = tokio::join!(self.subscriber.quit(), self.tail_client.quit(), self.pool.quit());
        };
        if tokio::time::timeout(COMMAND_TIMEOUT, quit).await.is_err() {
            tracing::warn!("Redis connections did not close in time");
        }
    }
}
