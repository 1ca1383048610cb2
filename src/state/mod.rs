//! Assembly: every handle the routes and tasks use, built once from the
//! configuration and the backend, and the stack each connection is served
//! with. Nothing here does any work; it only decides who gets which handle
//! (each gets what it uses, and no more). `startup` orders start and
//! shutdown around what this builds.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use hyper::{body::Incoming, Request};
use tower::{Service, ServiceBuilder};
use tower_sessions::{cookie::SameSite, Expiry, SessionManagerLayer};

use crate::{
    auth::{
        access::RoomAccess,
        invites::InviteCodes,
        journal::Journal,
        login::PasswordCheck,
        memberships::{Memberships, MembershipsParts},
        password_change::PasswordChange,
        session::{SessionPolicies, SessionPolicy, SESSION_COOKIE},
        sessions::SessionsParts,
        throttle::{LoginThrottle, RegisterThrottle},
        tokens::TokenKeys,
        Sessions, SessionsEnded,
    },
    backend::{Backend, SharedSessionStore},
    config::{Config, Registration},
    meters::Meters,
    net::{OriginPolicy, TrustedProxies},
    protocol::Rate,
    realtime::{
        admission::Admission,
        hub::Hub,
        lifecycle::Lifecycle,
        presence::{Presence, PresenceTask},
        reads::ReadBudget,
        registry::{Caps, Registry},
        socket::{SocketDeps, SocketLimits},
        upgrade::Upgrader,
    },
    web::{
        self,
        account::Accounts,
        account_api::AccountApi,
        account_page::{AccountPages, InviteLinks},
        api::Api,
        assets::Assets,
        caller::Callers,
        history::RoomHistory,
        pages::RoomPages,
        rooms::RoomsApi,
        router::Router,
        signup::Signup,
        Handles,
    },
};

/// An instance, assembled.
pub struct Assembly {
    /// What the routes were wired from (and what `/readyz`, the health of
    /// the store and shutdown read).
    pub handles: Handles,
    pub tasks: Tasks,
    pub stack: Stack,
}

/// The background work of an instance, before it starts.
pub struct Tasks {
    pub hub: Hub,
    pub lifecycle: Lifecycle,
    pub presence: PresenceTask,
    /// Closed at shutdown, before the tasks stop.
    pub registry: Arc<Registry>,
}

/// Where an instance is reached and who it is, as the bound listener and
/// the configuration decided.
pub struct Identity {
    /// Names this instance's presence entries in the store.
    pub instance_id: String,
    /// The origin browsers use: a cookie is `Secure` when it is https.
    pub public_origin: String,
    pub origins: OriginPolicy,
    pub tls: bool,
    /// Sign and verify access tokens.
    pub keys: Arc<TokenKeys>,
}

/// Builds every handle once; `meters` is where they record what the
/// metrics show.
pub fn assemble(config: &Config, backend: Backend, identity: Identity, meters: Meters) -> Assembly {
    let Identity { instance_id, public_origin, origins, tls, keys } = identity;
    let access = RoomAccess::new(backend.history.clone(), backend.rooms.clone(), backend.users.clone());
    let realtime = realtime(config, &backend, &access, instance_id, keys, &meters);
    let site = Site { public_origin: public_origin.clone(), origins: Arc::new(origins), tls };
    let handles = handles(config, &backend, &realtime, access, site, meters);
    let stack = Stack::new(config, &public_origin, backend.sessions, web::routes(&handles));
    let Realtime { registry, hub, lifecycle, presence_task, .. } = realtime;
    Assembly { handles, tasks: Tasks { hub, lifecycle, presence: presence_task, registry }, stack }
}

/// The realtime side, wired: the registry, the session lifecycle that
/// closes its sockets, what sockets share, and the tasks before they run.
pub(crate) struct Realtime {
    pub registry: Arc<Registry>,
    pub sessions: Sessions,
    /// Membership changes, applied to this registry first.
    pub memberships: Memberships,
    pub socket: Arc<SocketDeps>,
    pub hub: Hub,
    pub lifecycle: Lifecycle,
    pub presence_task: PresenceTask,
}

/// `instance` names this instance's presence entries in the store; `keys`
/// sign and verify access tokens.
pub(crate) fn realtime(
    config: &Config,
    backend: &Backend,
    access: &RoomAccess,
    instance: String,
    keys: Arc<TokenKeys>,
    meters: &Meters,
) -> Realtime {
    let registry = Arc::new(Registry::new(Caps {
        instance: config.sockets.max_connections,
        per_user: config.sockets.max_per_user,
        per_session: config.sockets.max_per_session,
    }));
    let sessions = Sessions::new(SessionsParts {
        store: backend.sessions.clone(),
        index: backend.session_index.clone(),
        bus: backend.bus.clone(),
        local: registry.clone(),
        policies: session_policies(config),
        tokens: backend.tokens.clone(),
        keys,
        refresh_grace: config.tokens.refresh_reuse_grace,
        devices: backend.devices.clone(),
        journal: journal(config, backend),
        users: backend.users.clone(),
    });
    let memberships = Memberships::new(MembershipsParts {
        rooms: backend.rooms.clone(),
        history: backend.history.clone(),
        access: access.clone(),
        bus: backend.bus.clone(),
        local: registry.clone(),
        instance: instance.clone(),
    });
    let (presence, presence_task) = Presence::new(
        backend.presence.clone(),
        backend.bus.clone(),
        registry.clone(),
        instance,
        config.chat.presence_ttl,
        meters.clone(),
    );
    let hub = Hub::new(backend.history.clone(), registry.clone());
    let socket = Arc::new(SocketDeps {
        sessions: sessions.clone(),
        access: access.clone(),
        history: backend.history.clone(),
        reads: ReadBudget::new(config.sockets.replay_read_budget),
        rooms: backend.rooms.clone(),
        memberships: memberships.clone(),
        registry: registry.clone(),
        hub: hub.clone(),
        presence: presence.clone(),
        meters: meters.clone(),
        limits: SocketLimits {
            message_rate: config.sockets.message_rate,
            message_burst: config.sockets.message_burst,
            announced: Rate {
                per_sec: config.sockets.message_rate.min(config.chat.user_message_rate),
                burst: config.sockets.message_burst.min(config.chat.user_message_burst),
            },
            ping_interval: config.sockets.ping_interval,
            idle_timeout: config.sockets.idle_timeout,
            reauth_warning: config.sessions.reauth_warning,
        },
    });
    let lifecycle = Lifecycle {
        bus: backend.bus.clone(),
        sessions: sessions.clone(),
        registry: registry.clone(),
        access: access.clone(),
        presence,
        interval: config.sessions.revalidate_interval,
        meters: meters.clone(),
    };
    Realtime { registry, sessions, memberships, socket, hub, lifecycle, presence_task }
}

/// What an operator's command ends sessions with (`palaver admin`): the
/// session lifecycle on the shared store, with no sockets of its own to
/// close (every instance hears of the ending on the bus) and a signing key
/// of its own it never uses (it issues no token).
pub(crate) fn operator_sessions(config: &Config, backend: &Backend) -> Sessions {
    struct NoSockets;
    impl SessionsEnded for NoSockets {
        fn ended(&self, _: &crate::auth::Ended) -> usize {
            0
        }
    }
    let mut refresh_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut refresh_key).expect("randomness");
    let keys = TokenKeys::new(
        &crate::auth::tokens::generate_signing_key(),
        &[],
        "palaver-admin",
        &[],
        config.tokens.access_ttl,
        &refresh_key,
    )
    .expect("a fresh key is valid");
    Sessions::new(SessionsParts {
        store: backend.sessions.clone(),
        index: backend.session_index.clone(),
        bus: backend.bus.clone(),
        local: Arc::new(NoSockets),
        policies: session_policies(config),
        tokens: backend.tokens.clone(),
        keys: Arc::new(keys),
        refresh_grace: config.tokens.refresh_reuse_grace,
        devices: backend.devices.clone(),
        journal: journal(config, backend),
        users: backend.users.clone(),
    })
}

/// Invite codes, a user's counted per day.
pub(crate) fn invite_codes(config: &Config, backend: &Backend) -> InviteCodes {
    InviteCodes::new(backend.invites.clone(), backend.counters.clone(), config.signup.invites_per_user_per_day)
}

/// The security log, failed sign-ins counted in bursts of the login window.
fn journal(config: &Config, backend: &Backend) -> Journal {
    Journal::new(backend.security_log.clone(), config.throttle.login_window)
}

/// The lifetimes of sessions.
fn session_policies(config: &Config) -> SessionPolicies {
    let normal = SessionPolicy { ttl: config.sessions.ttl, max_lifetime: config.sessions.max_lifetime };
    let long = SessionPolicy { ttl: config.sessions.long_ttl, max_lifetime: config.sessions.long_max_lifetime };
    SessionPolicies { normal, long }
}

/// How browsers reach this instance.
struct Site {
    /// Where links given out point (invites).
    public_origin: String,
    origins: Arc<OriginPolicy>,
    tls: bool,
}

/// What the route table is wired from.
fn handles(
    config: &Config,
    backend: &Backend,
    realtime: &Realtime,
    access: RoomAccess,
    site: Site,
    meters: Meters,
) -> Handles {
    let Site { public_origin, origins, tls } = site;
    let sessions = &realtime.sessions;
    // One throttle for the form and the API: a guess counts the same wherever it is made.
    let passwords = PasswordCheck::new(
        backend.users.clone(),
        LoginThrottle::new(backend.counters.clone(), config.throttle.login_max_failures, config.throttle.login_window),
        meters.hash_wait(),
        journal(config, backend),
    );
    let accounts = Accounts {
        users: backend.users.clone(),
        sessions: sessions.clone(),
        passwords: passwords.clone(),
        registrations: RegisterThrottle::new(
            backend.counters.clone(),
            config.throttle.register_max_per_address,
            config.throttle.register_max_successes_per_address,
            config.throttle.register_window,
        ),
        meters: meters.clone(),
    };
    let callers = Callers { sessions: sessions.clone(), origins: origins.clone(), meters: meters.clone() };
    let change = PasswordChange {
        passwords: passwords.clone(),
        users: backend.users.clone(),
        sessions: sessions.clone(),
        journal: journal(config, backend),
    };
    Handles {
        upgrader: Arc::new(Upgrader {
            origins: origins.clone(),
            sessions: sessions.clone(),
            access: access.clone(),
            registry: realtime.registry.clone(),
            socket: realtime.socket.clone(),
            meters: meters.clone(),
            admission: Arc::new(Admission::new(
                config.sockets.max_pending_upgrades,
                config.sockets.upgrade_retry_after_max,
                meters.clone(),
            )),
        }),
        api: Api { sessions: sessions.clone(), passwords: passwords.clone(), meters: meters.clone() },
        accounts: accounts.clone(),
        signup: Signup { accounts, registration: config.signup.registration, invites: invite_codes(config, backend) },
        rooms: RoomPages { sessions: sessions.clone(), access: access.clone(), history: backend.history.clone() },
        room_history: RoomHistory {
            sessions: sessions.clone(),
            callers: callers.clone(),
            access: access.clone(),
            history: backend.history.clone(),
            max_page: config.chat.history_page_max,
        },
        rooms_api: RoomsApi {
            callers: callers.clone(),
            memberships: realtime.memberships.clone(),
            access,
            history: backend.history.clone(),
            reads: realtime.socket.reads.clone(),
        },
        account_api: AccountApi {
            callers,
            sessions: sessions.clone(),
            change: change.clone(),
            journal: journal(config, backend),
        },
        account_pages: AccountPages {
            sessions: sessions.clone(),
            change,
            journal: journal(config, backend),
            invites: (config.signup.registration == Registration::Invite && config.signup.invites_by_users)
                .then(|| InviteLinks { codes: invite_codes(config, backend), origin: public_origin }),
        },
        health: backend.health.clone(),
        backend_kind: backend.kind,
        assets: Arc::new(Assets::default()),
        readiness: Arc::default(),
        origins,
        tls,
        sessions: sessions.clone(),
    }
}

/// What every connection is served with: the client's address (read
/// through trusted proxies), the session layer, the route table.
#[derive(Clone)]
pub struct Stack {
    proxies: Arc<TrustedProxies>,
    session_layer: SessionManagerLayer<SharedSessionStore>,
    router: Router,
}

impl Stack {
    /// The session cookie: HTTP-only, `SameSite=Lax`, `Secure` when the
    /// public origin is https (unless `COOKIE_SECURE` says otherwise), and
    /// expiring after `SESSION_TTL_SECS` without activity.
    fn new(config: &Config, public_origin: &str, store: SharedSessionStore, router: Router) -> Self {
        let session_layer = SessionManagerLayer::new(store)
            .with_name(SESSION_COOKIE)
            .with_http_only(true)
            .with_same_site(SameSite::Lax)
            .with_path("/")
            .with_secure(config.server.cookie_secure.unwrap_or(public_origin.starts_with("https://")))
            .with_expiry(Expiry::OnInactivity(time::Duration::seconds(config.sessions.ttl.as_secs() as i64)));
        Self { proxies: Arc::new(TrustedProxies(config.server.trusted_proxies.clone())), session_layer, router }
    }

    /// Every (method, path pattern) served, from the route table.
    pub fn route_table(&self) -> Vec<(http::Method, &'static str)> {
        self.router.table()
    }

    /// The service for one connection from `peer`.
    pub fn for_peer(
        &self,
        peer: SocketAddr,
    ) -> impl Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible, Future: Send + 'static>
           + Clone
           + Send
           + 'static {
        let proxies = self.proxies.clone();
        ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                let client = proxies.client(peer, req.headers());
                req.extensions_mut().insert(client);
                req
            })
            .layer(self.session_layer.clone())
            .service(self.router.clone())
    }
}

#[cfg(test)]
pub(crate) mod testing;
