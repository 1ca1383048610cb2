//! Assembly: every handle the routes and tasks use, built once from the
//! configuration and the backend. Nothing here does any work; it only
//! decides who gets which handle.

use std::sync::Arc;

use crate::{
    auth::access::RoomAccess,
    auth::login::PasswordCheck,
    auth::throttle::{LoginThrottle, NewRoomQuota, RegisterThrottle},
    auth::tokens::TokenKeys,
    backend::{rules::NewRooms, Backend, SharedSessionStore},
    config::Config,
    meters::Meters,
    net::OriginPolicy,
    realtime::{
        hub::Hub, lifecycle::Lifecycle, presence::PresenceTask, registry::Registry, upgrade::Upgrader, Realtime,
    },
    web::{account::Accounts, api::Api, assets::Assets, history::RoomHistory, pages::RoomPages, Handles},
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
/// entries; `origins` and `tls` come from the bound listener; `meters` is
/// where they record what the metrics show.
pub fn assemble(
    config: &Config,
    backend: Backend,
    instance_id: String,
    origins: OriginPolicy,
    tls: bool,
    keys: Arc<TokenKeys>,
    meters: Meters,
) -> (Handles, Tasks) {
    let access = RoomAccess::new(backend.history.clone());
    let Realtime { registry, sessions, socket, hub, lifecycle, presence } =
        Realtime::new(config, &backend, access.clone(), instance_id, keys, meters.clone());
    let origins = Arc::new(origins);
    // One throttle for the form and the API: a guess counts the same wherever it is made.
    let passwords = PasswordCheck::new(
        backend.users.clone(),
        LoginThrottle::new(backend.counters.clone(), config.login_max_failures, config.login_window),
        meters.hash_wait(),
    );
    let state = Handles {
        upgrader: Arc::new(Upgrader {
            origins: origins.clone(),
            sessions: sessions.clone(),
            access: access.clone(),
            registry: registry.clone(),
            socket,
            meters: meters.clone(),
        }),
        api: Api { sessions: sessions.clone(), passwords: passwords.clone(), meters: meters.clone() },
        accounts: Accounts {
            users: backend.users.clone(),
            sessions: sessions.clone(),
            passwords,
            registrations: RegisterThrottle::new(
                backend.counters.clone(),
                config.register_max_per_address,
                config.register_window,
            ),
            meters,
        },
        rooms: RoomPages {
            sessions: sessions.clone(),
            access: access.clone(),
            history: backend.history.clone(),
            new_rooms: NewRoomQuota::new(backend.counters.clone(), NewRooms::from_config(config)),
        },
        room_history: RoomHistory {
            sessions: sessions.clone(),
            access,
            history: backend.history.clone(),
            max_page: config.history_page_max,
        },
        health: backend.health.clone(),
        backend_kind: backend.kind,
        assets: Arc::new(Assets::default()),
        readiness: Arc::default(),
        origins,
        tls,
        sessions: sessions.clone(),
    };
    let tasks = Tasks { hub, lifecycle, presence, registry, session_store: backend.sessions };
    (state, tasks)
}
