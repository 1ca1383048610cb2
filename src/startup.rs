//! Wiring: `Application::build` connects the backend, binds, and assembles
//! the service stack; `run_until_stopped` serves until Ctrl-C or SIGTERM
//! and then shuts down in order.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, Request};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_sessions::{cookie::SameSite, Expiry, SessionManagerLayer};

use crate::{
    auth::{password, session::SessionPolicy, session::SESSION_COOKIE, throttle::LoginThrottle},
    backend::{Backend, BackendKind, ConnectError},
    chat::{hub, presence, presence::Presence},
    config::Config,
    realtime::{frames, lifecycle, registry::Registry},
    server::{self, AppService, TlsError},
    state::{self, AppState, SharedState},
    web::{self, assets::Assets, client::TrustedProxies, guard::OriginPolicy},
};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Backend(#[from] ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: SharedState,
    tls: Option<TlsAcceptor>,
    presence_commands: tokio::sync::mpsc::UnboundedReceiver<presence::Command>,
}

impl Application {
    /// Connects the backend and binds the listener (port 0 picks a free one).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        if config.reauth_warning >= config.session_ttl {
            return Err(StartError::Config(
                "REAUTH_WARNING_SECS must be shorter than SESSION_TTL_SECS, or sockets are warned all the time".into(),
            ));
        }
        let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let backend = Backend::connect(&config, &instance_id).await?;
        let listener =
            server::bind(config.listen_addr).map_err(|source| StartError::Bind { addr: config.listen_addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen_addr, source })?;
        let public_origin = config.resolve_origin(addr);
        let origins = OriginPolicy::new(
            &public_origin,
            &config.allowed_origins,
            addr,
            config.public_origin.is_some(),
            tls.is_some(),
        );
        password::warm_up().await;

        let (presence, presence_commands) = Presence::new();
        let state = Arc::new(AppState {
            instance_id,
            origins,
            sessions: SessionPolicy { ttl: config.session_ttl, max_lifetime: config.session_max_lifetime },
            throttle: LoginThrottle::new(backend.counters.clone(), config.login_max_failures, config.login_window),
            registry: Registry::new(config.max_connections),
            presence,
            assets: Assets::default(),
            ws_config: state::ws_config(),
            tls: tls.is_some(),
            public_origin,
            backend,
            config,
        });
        Ok(Self { listener, addr, state, tls, presence_commands })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The origin browsers use to reach this instance.
    pub fn public_origin(&self) -> &str {
        &self.state.public_origin
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.state.backend.kind
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then: stops accepting, closes every
    /// socket with 1001, lets in-flight requests finish, removes this
    /// instance's presence, and closes the store connections.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self { listener, addr, state, tls, presence_commands } = self;
        let config = &state.config;
        match state.backend.kind {
            BackendKind::Redis => tracing::info!(backend = "redis", "store: Redis, shared by every instance"),
            BackendKind::Memory => tracing::warn!(
                backend = "memory",
                "store: IN-PROCESS. Sessions, history and logouts are local to this one process and vanish when it stops."
            ),
        }
        tracing::info!(%addr, origin = %state.public_origin, tls = tls.is_some(), "palaver listening on {addr}");

        let (stop_tx, stop_rx) = watch::channel(false);
        let background: Vec<JoinHandle<()>> = vec![
            tokio::spawn(hub::run(state.clone(), stop_rx.clone())),
            tokio::spawn(lifecycle::run(state.clone(), stop_rx.clone())),
        ];
        let presence_task = tokio::spawn(presence::run(state.clone(), presence_commands, stop_rx.clone()));

        let session_layer = SessionManagerLayer::new(state.backend.sessions.clone())
            .with_name(SESSION_COOKIE)
            .with_http_only(true)
            .with_same_site(SameSite::Lax)
            .with_path("/")
            .with_secure(config.cookie_secure.unwrap_or(state.public_origin.starts_with("https://")))
            .with_expiry(Expiry::OnInactivity(time::Duration::seconds(config.session_ttl.as_secs() as i64)));
        let web = warp::service(web::routes(state.clone()));
        let app = AppService { state: state.clone(), web };
        let proxies = Arc::new(TrustedProxies(config.trusted_proxies.clone()));
        let make_service = move |peer: SocketAddr| {
            let proxies = proxies.clone();
            ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    let client = proxies.client(peer, req.headers());
                    req.extensions_mut().insert(client);
                    req
                })
                .layer(session_layer.clone())
                .service(app.clone())
        };

        let accepting = tokio::spawn(server::accept_loop(listener, tls, make_service, stop_rx));
        shutdown.await;

        // 1. Stop accepting.
        let _ = stop_tx.send(true);
        let graceful = accepting.await.map_err(std::io::Error::other)?;
        // 2. Close every socket with 1001 and wait for their tasks.
        let grace = config.shutdown_grace;
        let closed = state.registry.close_all(frames::SHUTTING_DOWN);
        tracing::info!(sockets = closed, "closing sockets");
        if tokio::time::timeout(grace, state.registry.wait_empty()).await.is_err() {
            tracing::warn!(left = state.registry.len(), "sockets still open after the grace period");
        }
        // 3. Let in-flight requests finish; idle connections are closed.
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period");
        }
        // 4. Background tasks end; presence writes its last word first.
        if tokio::time::timeout(Duration::from_secs(3), presence_task).await.is_err() {
            tracing::warn!("presence cleanup did not finish in time");
        }
        for task in background {
            task.abort();
        }
        state.backend.health.close().await;
        tracing::info!("palaver stopped");
        Ok(())
    }
}
