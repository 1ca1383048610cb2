//! The Redis backend, shared by every instance (fred 10), on one Redis or on
//! a Redis Cluster (`REDIS_URL=redis-cluster://…`, docs/cluster.md).
//!
//! Layout: [`keys`] names every key; `scripts` holds the Lua scripts (one
//! `.lua` file each, declared in one list); `connection` the pools, the
//! tail clients and how commands and scripts are sent; `subscriber` the
//! events subscription; one file per store trait implements it; [`migrate`]
//! moves an earlier palaver's keys at start-up.
//!
//! On a cluster a script may only touch keys of one hash slot, so every key
//! is named with the hash tag (`{…}`) of what it belongs to; docs/cluster.md
//! lists them with the reasons. The same names are used on a single Redis,
//! so a deployment can move from one to the other with its data.

pub mod keys;
pub mod migrate;

mod bus;
mod connection;
mod counters;
mod devices;
mod health;
mod history;
mod invites;
mod presence;
mod rooms;
mod scripts;
mod security_log;
mod session_index;
mod sessions;
mod subscriber;
mod tokens;
mod users;

use std::time::Duration;

use fred::{clients::WithOptions, prelude::Pool};
use tower_sessions_redis_store::RedisStore;

use self::{connection::Connections, subscriber::Subscriber};
use crate::{
    backend::{rules, ConnectError, StoreResult},
    config::{ChatConfig, StoreConfig},
    meters::Meters,
};

pub struct RedisBackend {
    conn: Connections,
    /// The session records as tower-sessions-redis-store keeps them, on
    /// the ordinary pool (fail fast, timed out); deletions go their own
    /// way (`sessions`).
    records: RedisStore<WithOptions<Pool>>,
    subscriber: Subscriber,
    history_max_len: u64,
    dedupe_window: Duration,
    room_ttl: Duration,
    user_rate: rules::UserRate,
    new_rooms: rules::NewRooms,
    room_limits: rules::RoomLimits,
    mention_inbox_len: usize,
}

impl RedisBackend {
    /// The digest a script of the list runs by (`None`: not in the list).
    /// A script may be more than its file (`append_at_once`), so this, not
    /// the file, says what `SCRIPT EXISTS` must find.
    pub fn script_digest(name: &str) -> Option<String> {
        scripts::SCRIPTS.all().into_iter().find(|s| s.name == name).map(|s| s.sha.clone())
    }

    /// Connects every client; fails when Redis does not answer now.
    pub async fn connect(
        url: &str,
        store: &StoreConfig,
        chat: &ChatConfig,
        instance_id: &str,
        meters: Meters,
    ) -> Result<Self, ConnectError> {
        let unreachable = |source| ConnectError::Unreachable { url: url.to_owned(), source };
        let conn = Connections::open(url, store, instance_id, meters).await?;
        if !conn.cluster {
            match migrate::run(conn.pool(), rules::room_ttl(chat)).await.map_err(unreachable)? {
                Some(moved) if moved != migrate::Moved::default() => {
                    tracing::info!(?moved, "keys of an earlier palaver moved to today's names")
                }
                Some(_) => tracing::debug!("key layout {} recorded", migrate::SCHEMA),
                None => {}
            }
        }
        let client = conn.subscriber().map_err(|source| ConnectError::BadUrl { url: url.to_owned(), source })?;
        let subscriber = Subscriber::start(client, conn.cluster).await.map_err(unreachable)?;
        let cluster = conn.cluster;
        tracing::info!(
            cluster,
            wait_replicas = conn.wait_replicas(),
            "connected to Redis{}",
            if cluster { " Cluster" } else { "" }
        );
        Ok(RedisBackend {
            records: RedisStore::new(conn.fast.clone()),
            conn,
            subscriber,
            history_max_len: rules::history_cap(chat),
            dedupe_window: rules::dedupe_window(chat),
            room_ttl: rules::room_ttl(chat),
            user_rate: rules::UserRate::from_config(chat),
            new_rooms: rules::NewRooms::from_config(chat),
            room_limits: rules::RoomLimits::from_config(chat),
            mention_inbox_len: chat.mention_inbox_len.max(1),
        })
    }

    /// Loads every script into the script cache of every master. Calls do
    /// this by themselves when they find the cache empty.
    pub async fn load_scripts(&self) -> StoreResult<()> {
        self.conn.load_scripts().await
    }
}
