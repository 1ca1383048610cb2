//! The connections to Redis, and how commands and scripts go over them.
//!
//! - A small pool for ordinary commands; request paths use it through
//!   `fail_fast` + a timeout, so that a Redis outage turns into a quick 503
//!   instead of requests queueing behind the reconnect loop.
//! - A second small pool for writes that wait for a replica, each with its
//!   `WAIT` (`REDIS_WAIT_REPLICAS`): the last step of an append, and the
//!   other writes an answer promises across a failover (`run_kept`). `WAIT`
//!   counts the writes of the connection it is sent on, and it blocks that
//!   connection (to that master) while replicas catch up, so it gets
//!   connections of its own that other requests never queue behind.
//! - One connection of its own for the health checks (`/healthz`,
//!   `/readyz`): their `PING` must say whether the store answers, not
//!   wait behind this instance's own queue of commands on the pool (which
//!   a burst of replays can make seconds long), and a readiness check that
//!   times out takes a healthy instance out of rotation.
//! - One client per room group for `XREAD BLOCK` (a blocking command must
//!   never sit on a pooled connection other commands wait behind), made
//!   when this instance first follows a room of that group: one on a single
//!   Redis, at most [`ROOM_GROUPS`] on a cluster.
//!
//! Every client (the event subscriber's too, built here) has a reconnect
//! policy that never gives up.

use std::time::Duration;

use fred::{
    clients::{Pipeline, SubscriberClient, WithOptions},
    prelude::*,
    types::{ClusterHash, CustomCommand},
};
use tokio::sync::{Mutex as AsyncMutex, OnceCell};

use super::{
    keys::{self, room_group, ROOM_GROUPS},
    scripts::{Script, SCRIPTS},
};
use crate::{
    backend::{ConnectError, StoreError, StoreResult},
    clock::UnixMillis,
    config::StoreConfig,
    meters::Meters,
    model::RoomName,
};

/// How long a request-path command may take before the store counts as down.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Pooled connections for ordinary commands.
const POOL_SIZE: usize = 4;
/// Pooled connections for writes that wait for a replica (and their `WAIT`).
const APPEND_POOL_SIZE: usize = 2;

/// One script call, to be sent alone or in a pipeline.
pub(super) struct Call<'a> {
    pub(super) script: &'a Script,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<Value>,
}

impl<'a> Call<'a> {
    pub(super) fn new(script: &'a Script, keys: Vec<String>, args: Vec<Value>) -> Self {
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
pub(super) fn millis(at: UnixMillis) -> Value {
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
async fn guarded<T>(
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
pub(super) struct Tail {
    client: OnceCell<Client>,
    pub(super) wake_cursor: AsyncMutex<Option<String>>,
    pub(super) wake_key: String,
}

impl Tail {
    /// Whether its connection was made.
    pub(super) fn is_open(&self) -> bool {
        self.client.get().is_some()
    }
}

pub(super) struct Connections {
    /// Whether `REDIS_URL` names a cluster.
    pub(super) cluster: bool,
    pool: Pool,
    /// The pool with `fail_fast` and a timeout: every request-path command.
    pub(super) fast: WithOptions<Pool>,
    /// Writes that wait for a replica, each with its `WAIT`.
    appends: Pool,
    /// The health checks' `PING`, with the request options.
    pub(super) health: WithOptions<Client>,
    /// Makes tail clients and the subscriber (same server, same policies).
    builder: Builder,
    /// One per tail group: one on a single Redis, [`ROOM_GROUPS`] on a cluster.
    pub(super) tails: Vec<Tail>,
    durability: Option<Durability>,
    meters: Meters,
}

impl Connections {
    /// Connects both pools; fails when Redis does not answer now.
    pub(super) async fn open(
        url: &str,
        store: &StoreConfig,
        instance_id: &str,
        meters: Meters,
    ) -> Result<Self, ConnectError> {
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
        let health = builder.build().map_err(bad_url)?;
        pool.init().await.map_err(unreachable)?;
        appends.init().await.map_err(unreachable)?;
        health.init().await.map_err(unreachable)?;

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
        let replicas = store.wait_replicas.unwrap_or(if cluster { 1 } else { 0 });
        let durability = (replicas > 0)
            .then(|| Durability { replicas: i64::from(replicas), timeout_ms: store.wait_timeout.as_millis() as i64 });
        Ok(Connections {
            cluster,
            fast: pool.with_options(&request_options()),
            pool,
            appends,
            health: health.with_options(&request_options()),
            builder,
            tails,
            durability,
            meters,
        })
    }

    /// The pool without request options (start-up work).
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A new client for the event subscription.
    pub(super) fn subscriber(&self) -> Result<SubscriberClient, fred::error::Error> {
        self.builder.build_subscriber_client()
    }

    /// How many replicas an acknowledged append waits for.
    pub(super) fn wait_replicas(&self) -> i64 {
        self.durability.map_or(0, |d| d.replicas)
    }

    /// A pipeline on the ordinary pool, with the request options.
    pub(super) fn pipeline(&self) -> WithOptions<Pipeline<Client>> {
        self.pool.next().pipeline().with_options(&request_options())
    }

    /// A client of the ordinary pool, with the request options.
    pub(super) fn client(&self) -> WithOptions<Client> {
        self.pool.next().with_options(&request_options())
    }

    /// One script call on the ordinary pool; `EVAL` when the script cache
    /// lacks it.
    pub(super) async fn run<R: FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> StoreResult<R> {
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
    pub(super) async fn timed<T>(
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
    pub(super) async fn load_scripts(&self) -> StoreResult<()> {
        for script in SCRIPTS.all() {
            let client = self.client();
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
    /// scripts and sends again when the script cache was empty. Timed in
    /// the metrics under `label` when it is given, else under the script's
    /// name (`pipeline` for several).
    async fn pipelined(
        &self,
        client: &Client,
        calls: &[Call<'_>],
        wait: Option<Durability>,
        label: Option<&'static str>,
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
            let label = match (label, calls) {
                (Some(label), _) => label,
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
    pub(super) async fn run_all(&self, calls: &[Call<'_>]) -> StoreResult<Vec<Value>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.pipelined(self.pool.next(), calls, None, None).await
    }

    /// Whether writes wait for replicas (`REDIS_WAIT_REPLICAS` above zero).
    fn durable(&self) -> bool {
        self.durability.is_some()
    }

    /// One script call whose writes must reach the replicas before it is
    /// answered (`REDIS_WAIT_REPLICAS`): the call and its `WAIT` go out
    /// together on one connection of the append pool. A `WAIT` that counts
    /// fewer replicas than asked is an error: the write may be lost in a
    /// failover, so the caller must not say it is stored.
    pub(super) async fn run_durably(&self, call: Call<'_>) -> StoreResult<Value> {
        Ok(self.waited(std::slice::from_ref(&call), "append_wait").await?.pop().expect("the call's reply"))
    }

    /// [`Self::run_durably`] for several calls in one round trip, with one
    /// `WAIT` after the last (it counts the writes of all of them: every
    /// call must be on the last one's slot). Each call's reply, in order.
    pub(super) async fn run_all_durably(&self, calls: &[Call<'_>]) -> StoreResult<Vec<Value>> {
        self.waited(calls, "append_wait").await
    }

    /// Calls and their `WAIT`, timed under `label`.
    async fn waited(&self, calls: &[Call<'_>], label: &'static str) -> StoreResult<Vec<Value>> {
        let mut replies = self.pipelined(self.appends.next(), calls, self.durability, Some(label)).await?;
        if let Some(wanted) = self.durability {
            let acked: i64 = replies.pop().expect("WAIT's reply").convert()?;
            if acked < wanted.replicas {
                self.meters.store_error("wait");
                return Err(StoreError::Unreplicated { wanted: wanted.replicas, acked });
            }
        }
        Ok(replies)
    }

    /// One script call whose writes a promise depends on across a
    /// failover (an acknowledged sign-in, a deletion that ends a session or
    /// a membership): [`Self::run_durably`] where writes wait for replicas,
    /// else an ordinary call. On a cluster it is answered only once a
    /// replica holds it, so that the replica promoted in a crash has it too;
    /// otherwise [`StoreError::Unreplicated`], and the caller must not say
    /// it is done.
    /// Timed under the script's name, `WAIT` included.
    pub(super) async fn run_kept<R: FromValue>(&self, call: Call<'_>) -> StoreResult<R> {
        if self.durable() {
            let label = call.script.name;
            let reply = self.waited(std::slice::from_ref(&call), label).await?.pop().expect("the call's reply");
            Ok(reply.convert()?)
        } else {
            self.run(call.script, call.keys, call.args).await
        }
    }

    /// The tail group of `room` on this deployment.
    pub(super) fn group_of(&self, room: &RoomName) -> usize {
        if self.cluster {
            room_group(room)
        } else {
            0
        }
    }

    /// The blocking client of a tail group, connected on first use.
    pub(super) async fn tail_client(&self, tail: &Tail) -> StoreResult<Client> {
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

    /// Closes the tail connections, the health checks' and both pools.
    pub(super) async fn quit(&self) {
        let tails =
            futures_util::future::join_all(self.tails.iter().filter_map(|tail| tail.client.get()).map(|c| c.quit()));
        let _ = tokio::join!(tails, self.appends.quit(), self.pool.quit(), self.health.quit());
    }
}
