//! Assembly: every handle the routes and tasks use, built once from the
//! configuration and the backend. Nothing here does any work; it only
//! decides who gets which handle.

use std::sync::Arc;

use crate::{
    auth::{session::SessionPolicy, throttle::LoginThrottle, Sessions},
    backend::{Backend, SharedSessionStore},
    config::Config,
    net::OriginPolicy,
    realtime::{
        hub::Hub,
        lifecycle::Lifecycle,
        presence::{Presence, PresenceTask},
        registry::Registry,
        socket::{SocketDeps, SocketLimits},
        upgrade::Upgrader,
    },
    web::{account::Accounts, assets::Assets, pages::RoomPages, Handles},
};

/// The background work of an instance, before it starts.
pub struct Tasks {
    pub hub: Hub,
    pub lifecycle: Lifecycle,
    pub presence: PresenceTask,
    /// Closed at shutdown, before the tasks stop.
    pub registry: Arc<Registry>,
    /// What the session layer reads cookies from.
    pub session_store: SharedSessionStore,
}

/// Builds every handle. `instance_id` names this instance's presence
/// entries; `origins` and `tls` come from the bound listener.
pub fn assemble(
    config: &Config,
    backend: Backend,
    instance_id: String,
    origins: OriginPolicy,
    tls: bool,
) -> (Handles, Tasks) {
    let registry = Arc::new(Registry::new(config.max_connections));
    let sessions = Sessions::new(
        backend.sessions.clone(),
        backend.session_index.clone(),
        backend.bus.clone(),
        registry.clone(),
        SessionPolicy { ttl: config.session_ttl, max_lifetime: config.session_max_lifetime },
    );
    let (presence, presence_task) = Presence::new(
        backend.presence.clone(),
        backend.bus.clone(),
        registry.clone(),
        instance_id,
        config.presence_ttl,
    );
    let hub = Hub::new(backend.history.clone(), registry.clone());
    let socket = Arc::new(SocketDeps {
        sessions: sessions.clone(),
        history: backend.history.clone(),
        registry: registry.clone(),
        hub: hub.clone(),
        presence: presence.clone(),
        limits: SocketLimits {
            message_rate: config.message_rate,
            message_burst: config.message_burst,
            ping_interval: config.ws_ping_interval,
            idle_timeout: config.ws_idle_timeout,
            reauth_warning: config.reauth_warning,
        },
    });
    let origins = Arc::new(origins);
    let state = Handles {
        upgrader: Arc::new(Upgrader {
            origins: origins.clone(),
            sessions: sessions.clone(),
            registry: registry.clone(),
            socket,
        }),
        accounts: Accounts {
            users: backend.users.clone(),
            sessions: sessions.clone(),
            throttle: LoginThrottle::new(backend.counters.clone(), config.login_max_failures, config.login_window),
        },
        rooms: RoomPages { sessions: sessions.clone(), history: backend.history.clone() },
        health: backend.health.clone(),
        backend_kind: backend.kind,
        assets: Arc::new(Assets::default()),
        origins,
        tls,
        sessions: sessions.clone(),
    };
    let tasks = Tasks {
        hub,
        lifecycle: Lifecycle {
            bus: backend.bus.clone(),
            sessions,
            registry: registry.clone(),
            presence,
            interval: config.revalidate_interval,
        },
        presence: presence_task,
        registry,
        session_store: backend.sessions,
    };
    (state, tasks)
}
