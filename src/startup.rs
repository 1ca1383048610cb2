//! Wiring: `Application::build` connects the backend, binds, and assembles
//! the service stack; `run_until_stopped` serves until Ctrl-C or SIGTERM
//! and then shuts down in order.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, Request};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_sessions::{cookie::SameSite, Expiry, SessionManagerLayer};

use crate::{
    auth::{
        password,
        session::SESSION_COOKIE,
        tokens::{KeyError, TokenKeys},
    },
    backend::{Backend, BackendKind, ConnectError},
    config::Config,
    meters::{self, Meters},
    net::{OriginPolicy, TrustedProxies},
    protocol,
    server::{self, TlsError},
    state::{self, Tasks},
    web,
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
    #[error(transparent)]
    Keys(#[from] KeyError),
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    public_origin: String,
    config: Config,
    state: web::Handles,
    tasks: Tasks,
    tls: Option<TlsAcceptor>,
    /// `METRICS_ADDR`'s listener and what it serves.
    metrics: Option<(TcpListener, Meters)>,
}

impl Application {
    /// Connects the backend and binds the listener (port 0 picks a free one).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let tls = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let meters = match config.metrics_addr {
            Some(_) => Meters::enabled(),
            None => Meters::disabled(),
        };
        let metrics = match config.metrics_addr {
            Some(addr) => {
                Some((meters::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?, meters.clone()))
            }
            None => None,
        };
        let backend = Backend::connect(&config, &instance_id, &meters).await?;
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
        let issuers: Vec<&str> = origins.origins().collect();
        let keys = TokenKeys::load(
            config.token_signing_key.as_deref(),
            &config.token_previous_keys,
            &*backend.tokens,
            &public_origin,
            &issuers,
            config.access_token_ttl,
        )
        .await?;
        let (state, tasks) =
            state::assemble(&config, backend, instance_id, origins, tls.is_some(), Arc::new(keys), meters);
        Ok(Self { listener, addr, public_origin, config, state, tasks, tls, metrics })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The origin browsers use to reach this instance.
    pub fn public_origin(&self) -> &str {
        &self.public_origin
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.state.backend_kind
    }

    /// Every (method, path pattern) this instance serves, from its route table.
    pub fn route_table(&self) -> Vec<(http::Method, &'static str)> {
        web::routes(&self.state).table()
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then: stops accepting, closes every
    /// socket with 1001, removes this instance's presence, lets in-flight
    /// requests finish, and closes the store connections.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let Self { listener, addr, public_origin, config, state, tasks, tls, metrics } = self;
        match state.backend_kind {
            BackendKind::Redis => tracing::info!(backend = "redis", "store: Redis, shared by every instance"),
            BackendKind::Memory => tracing::warn!(
                backend = "memory",
                "store: IN-PROCESS. Sessions, history and logouts are local to this one process and vanish when it stops."
            ),
        }
        tracing::info!(%addr, origin = %public_origin, tls = tls.is_some(), "palaver listening on {addr}");
        if config.cleartext_beyond_loopback() {
            tracing::warn!(%addr, "plain HTTP beyond loopback (ALLOW_INSECURE_HTTP): session cookies cross the network in clear text");
        }

        let Tasks { hub, lifecycle, presence, registry, session_store } = tasks;
        let readiness = state.readiness.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (stop_presence, presence_stopped) = watch::channel(false);
        let background = [
            tokio::spawn(hub.run(stop_rx.clone())),
            tokio::spawn(lifecycle.run(stop_rx.clone())),
            tokio::spawn(release_memory_after_departures(registry.clone())),
        ];
        let presence_task = tokio::spawn(presence.run(presence_stopped));
        if let Some((metrics_listener, meters)) = metrics {
            let at = metrics_listener.local_addr()?;
            tracing::info!(%at, "metrics at http://{at}/metrics");
            tokio::spawn(meters.serve(metrics_listener, stop_rx.clone()));
        }

        let session_layer = SessionManagerLayer::new(session_store)
            .with_name(SESSION_COOKIE)
            .with_http_only(true)
            .with_same_site(SameSite::Lax)
            .with_path("/")
            .with_secure(config.cookie_secure.unwrap_or(public_origin.starts_with("https://")))
            .with_expiry(Expiry::OnInactivity(time::Duration::seconds(config.session_ttl.as_secs() as i64)));
        let router = web::routes(&state);
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
                .service(router.clone())
        };

        let limits = server::ConnLimits {
            idle: config.http_idle_timeout,
            header: config.http_header_timeout,
            request: config.http_request_timeout,
            tls_handshake: config.tls_handshake_timeout,
            max_open: server::connection_cap(config.max_open_connections),
        };
        let accepting = tokio::spawn(server::accept_loop(listener, tls, make_service, limits, stop_rx));
        shutdown.await;

        // 0. Drain: `/readyz` answers 503 and upgrades are refused from now
        // on, while everything else goes on for SHUTDOWN_DRAIN_SECS, so a
        // load balancer polling `/readyz` stops sending upgrades here before
        // any socket is closed.
        readiness.start_draining();
        registry.refuse_new();
        if !config.shutdown_drain.is_zero() {
            tracing::info!(drain = ?config.shutdown_drain, "draining: /readyz says 503");
            tokio::time::sleep(config.shutdown_drain).await;
        }
        // 1. Stop accepting.
        let _ = stop_tx.send(true);
        let connections = accepting.await.map_err(std::io::Error::other)?;
        // 2. Close every socket with 1001 and wait for their tasks.
        let grace = config.shutdown_grace;
        let closed = registry.close_all(protocol::SHUTTING_DOWN);
        tracing::info!(sockets = closed, "closing sockets");
        if tokio::time::timeout(grace, registry.wait_empty()).await.is_err() {
            tracing::warn!(left = registry.len(), "sockets still open after the grace period");
        }
        // 3. Presence writes its last word: with the sockets gone, this
        // instance's users leave every room, on every instance, now.
        let _ = stop_presence.send(true);
        if tokio::time::timeout(Duration::from_secs(3), presence_task).await.is_err() {
            tracing::warn!("presence cleanup did not finish in time");
        }
        // 4. Let in-flight requests finish; idle connections are closed.
        if tokio::time::timeout(grace, connections.shutdown()).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period");
        }
        // 5. The other background tasks end (they saw the stop signal).
        for task in background {
            task.abort();
        }
        state.health.close().await;
        tracing::info!("palaver stopped");
        Ok(())
    }
}

/// Sockets that must have closed since the last trim before memory is
/// handed back to the system (each may have held a replay page).
const TRIM_AFTER_DEPARTURES: u64 = 100;

/// Hands freed memory back to the system after many sockets closed.
async fn release_memory_after_departures(registry: Arc<crate::realtime::registry::Registry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut trimmed_at = registry.departures();
    loop {
        tick.tick().await;
        let departed = registry.departures();
        if departed - trimmed_at >= TRIM_AFTER_DEPARTURES {
            trimmed_at = departed;
            tokio::task::spawn_blocking(crate::release_free_memory);
        }
    }
}
