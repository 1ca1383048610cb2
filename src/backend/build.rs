//! Which backend an instance runs on, connected and put behind the trait
//! handles of [`Backend`]. Apart from the traits (in `backend`), so that
//! the implementations, which depend on those, are not depended on by them.

use std::sync::Arc;

use super::{
    memory, redis, Backend, BackendKind, ConnectError, Counters, Devices, EventBus, Health, History, Invites,
    PresenceStore, Rooms, SecurityLog, SessionIndex, SharedSessionStore, TokenStore, UserStore, DEFAULT_REDIS_URL,
};
use crate::{
    config::{BackendChoice, ChatConfig, Config},
    meters::Meters,
};

impl Backend {
    /// Picks and connects the backend `PALAVER_BACKEND` and `REDIS_URL` ask for.
    /// `meters` receives the Redis commands' latency and errors.
    pub async fn connect(config: &Config, instance_id: &str, meters: &Meters) -> Result<Backend, ConnectError> {
        let (store, chat) = (&config.store, &config.chat);
        match (store.backend, &store.redis_url) {
            (BackendChoice::Memory, _) => Ok(Self::memory(chat)),
            (BackendChoice::Redis, url) | (BackendChoice::Auto, url @ Some(_)) => {
                let url = url.as_deref().unwrap_or(DEFAULT_REDIS_URL);
                Ok(Self::redis(redis::RedisBackend::connect(url, store, chat, instance_id, meters.clone()).await?))
            }
            (BackendChoice::Auto, None) => {
                match redis::RedisBackend::connect(DEFAULT_REDIS_URL, store, chat, instance_id, meters.clone()).await {
                    Ok(backend) => Ok(Self::redis(backend)),
                    Err(err) => {
                        tracing::warn!(
                            "no Redis at {DEFAULT_REDIS_URL} ({err}); running on the IN-PROCESS backend: \
                             sessions, history and logouts are local to this one process and are lost when \
                             it stops. Start redis-server or set REDIS_URL to share them between instances."
                        );
                        Ok(Self::memory(chat))
                    }
                }
            }
        }
    }

    pub fn memory(config: &ChatConfig) -> Backend {
        let backend = Arc::new(memory::MemoryBackend::new(config));
        Self::assemble(BackendKind::Memory, backend.clone(), SharedSessionStore(backend))
    }

    fn redis(backend: redis::RedisBackend) -> Backend {
        let backend = Arc::new(backend);
        Self::assemble(BackendKind::Redis, backend.clone(), SharedSessionStore(backend))
    }

    /// One implementation behind every trait handle.
    fn assemble<B>(kind: BackendKind, backend: Arc<B>, sessions: SharedSessionStore) -> Backend
    where
        B: UserStore
            + SessionIndex
            + Devices
            + SecurityLog
            + Invites
            + Counters
            + TokenStore
            + EventBus
            + History
            + PresenceStore
            + Rooms
            + Health
            + 'static,
    {
        Backend {
            kind,
            users: backend.clone(),
            sessions,
            session_index: backend.clone(),
            devices: backend.clone(),
            security_log: backend.clone(),
            invites: backend.clone(),
            counters: backend.clone(),
            tokens: backend.clone(),
            bus: backend.clone(),
            history: backend.clone(),
            presence: backend.clone(),
            rooms: backend.clone(),
            health: backend,
        }
    }
}
