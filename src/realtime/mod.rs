//! The authenticated WebSocket: the upgrade, one task per socket and its
//! deadline, the registry of open sockets, the fan-out hub that tails room
//! history, presence, limits, and the lifecycle (logout events,
//! revalidation).

pub mod deadline;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod presence;
pub mod registry;
pub mod socket;
#[cfg(test)]
mod testing;
pub mod unread;
pub mod upgrade;

use std::sync::Arc;

use crate::{
    auth::{access::RoomAccess, session::SessionPolicy, sessions::SessionsParts, tokens::TokenKeys, Sessions},
    backend::Backend,
    config::Config,
    meters::Meters,
};

/// The realtime side of an instance, wired: the registry, the session
/// lifecycle that closes its sockets, the handles sockets share, and the
/// background tasks before they run.
pub struct Realtime {
    pub registry: Arc<registry::Registry>,
    pub sessions: Sessions,
    pub socket: Arc<socket::SocketDeps>,
    pub hub: hub::Hub,
    pub lifecycle: lifecycle::Lifecycle,
    pub presence: presence::PresenceTask,
}

impl Realtime {
    /// `instance` names this instance's presence entries in the store;
    /// `keys` sign and verify access tokens.
    pub fn new(
        config: &Config,
        backend: &Backend,
        access: RoomAccess,
        instance: String,
        keys: Arc<TokenKeys>,
        meters: Meters,
    ) -> Self {
        let registry = Arc::new(registry::Registry::new(registry::Caps {
            instance: config.max_connections,
            per_user: config.max_sockets_per_user,
            per_session: config.max_sockets_per_session,
        }));
        let sessions = Sessions::new(SessionsParts {
            store: backend.sessions.clone(),
            index: backend.session_index.clone(),
            bus: backend.bus.clone(),
            local: registry.clone(),
            policy: SessionPolicy { ttl: config.session_ttl, max_lifetime: config.session_max_lifetime },
            tokens: backend.tokens.clone(),
            keys,
            refresh_grace: config.refresh_reuse_grace,
        });
        let (presence, presence_task) = presence::Presence::new(
            backend.presence.clone(),
            backend.bus.clone(),
            registry.clone(),
            instance,
            config.presence_ttl,
            meters.clone(),
        );
        let hub = hub::Hub::new(backend.history.clone(), registry.clone());
        let socket = Arc::new(socket::SocketDeps {
            sessions: sessions.clone(),
            access,
            history: backend.history.clone(),
            registry: registry.clone(),
            hub: hub.clone(),
            presence: presence.clone(),
            meters: meters.clone(),
            limits: socket::SocketLimits {
                message_rate: config.message_rate,
                message_burst: config.message_burst,
                announced: crate::protocol::Rate {
                    per_sec: config.message_rate.min(config.user_message_rate),
                    burst: config.message_burst.min(config.user_message_burst),
                },
                ping_interval: config.ws_ping_interval,
                idle_timeout: config.ws_idle_timeout,
                reauth_warning: config.reauth_warning,
            },
        });
        let lifecycle = lifecycle::Lifecycle {
            bus: backend.bus.clone(),
            sessions: sessions.clone(),
            registry: registry.clone(),
            presence,
            interval: config.revalidate_interval,
            meters,
        };
        Realtime { registry, sessions, socket, hub, lifecycle, presence: presence_task }
    }
}
