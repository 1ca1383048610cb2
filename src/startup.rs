//! Start and shutdown, in order. `Application::build` connects the
//! backend, binds, and has `state` assemble the instance;
//! `run_until_stopped` starts the background tasks and the accept loop,
//! serves until Ctrl-C or SIGTERM, and then shuts down step by step.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use crate::{
    auth::{
        password,
        tokens::{KeyError, KeyKeeper, TokenKeys},
    },
    backend::{Backend, BackendKind, ConnectError, Health},
    config::{Config, ServerConfig},
    meters::{self, Meters},
    net::{OriginPolicy, TrustedProxies},
    protocol,
    realtime::registry::Registry,
    server::{self, Connections, TlsError},
    state::{self, Assembly, Identity, Stack, Tasks},
    web::Readiness,
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
    /// Open connections served at once (`MAX_OPEN_CONNECTIONS`, kept below
    /// the open-file limit).
    connection_cap: usize,
    addr: SocketAddr,
    public_origin: String,
    config: Config,
    assembly: Assembly,
    tls: Option<TlsAcceptor>,
    /// `METRICS_ADDR`'s listener and what it serves.
    metrics: Option<(TcpListener, Meters)>,
    /// Keeps the shared token keys the store's.
    keeper: KeyKeeper,
}

impl Application {
    /// Connects the backend and binds the listener (port 0 picks a free one).
    pub async fn build(mut config: Config) -> Result<Self, StartError> {
        let tls = config.server.tls.as_ref().map(server::tls_acceptor).transpose()?;
        let instance_id = uuid::Uuid::new_v4().simple().to_string();
        let (meters, metrics) = bind_metrics(&config.server).await?;
        let backend = Backend::connect(&config, &instance_id, &meters).await?;
        let bind_error = |source| StartError::Bind { addr: config.server.listen_addr, source };
        // Bound to learn the address (the origin tokens name comes from
        // it), listening only once the instance can serve: one that cannot
        // read the shared keys exits with its port still shut, so that a
        // port that takes connections means an instance that answers them.
        let socket = server::bind(config.server.listen_addr).map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        let public_origin = config.server.resolve_origin(addr);
        let origins = OriginPolicy::new(
            &public_origin,
            &config.server.allowed_origins,
            addr,
            config.server.public_origin.is_some(),
            tls.is_some(),
        );
        password::warm_up().await;
        let issuers: Vec<&str> = origins.origins().collect();
        let keys = TokenKeys::load(
            config.tokens.signing_key.as_deref(),
            &config.tokens.previous_keys,
            &*backend.tokens,
            &public_origin,
            &issuers,
            config.tokens.access_ttl,
        )
        .await?;
        let listener = server::listen(socket).map_err(bind_error)?;
        let keys = Arc::new(keys);
        let keeper = KeyKeeper {
            keys: keys.clone(),
            store: backend.tokens.clone(),
            refresh_grace: config.tokens.refresh_reuse_grace,
        };
        let identity =
            Identity { instance_id, public_origin: public_origin.clone(), origins, tls: tls.is_some(), keys };
        let connection_cap = server::connection_cap(config.connections.max_open);
        config.sockets.max_connections = server::websocket_cap(config.sockets.max_connections, connection_cap);
        let assembly = state::assemble(&config, backend, identity, meters);
        Ok(Self { listener, connection_cap, addr, public_origin, config, assembly, tls, metrics, keeper })
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
        self.assembly.handles.backend_kind
    }

    /// Every (method, path pattern) this instance serves, from its route table.
    pub fn route_table(&self) -> Vec<(http::Method, &'static str)> {
        self.assembly.stack.route_table()
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then: stops accepting, closes every
    /// socket with 1001, removes this instance's presence, lets in-flight
    /// requests finish, and closes the store connections.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.announce();
        let Self { listener, connection_cap, config, assembly, tls, metrics, keeper, .. } = self;
        let Assembly { handles, tasks, stack } = assembly;
        let running = Running::start(tasks, keeper, metrics, handles.readiness.clone(), handles.health.clone())?;
        let accepting = running.accept(listener, tls, stack, &config, connection_cap);
        shutdown.await;
        running.shut_down(accepting, &config.server).await
    }

    /// Says what this instance is about to serve, and warns about what a
    /// production deployment would not want.
    fn announce(&self) {
        let addr = self.addr;
        match self.assembly.handles.backend_kind {
            BackendKind::Redis => tracing::info!(backend = "redis", "store: Redis, shared by every instance"),
            BackendKind::Memory => tracing::warn!(
                backend = "memory",
                "store: IN-PROCESS. Sessions, history and logouts are local to this one process and vanish when it stops."
            ),
        }
        tracing::info!(%addr, origin = %self.public_origin, tls = self.tls.is_some(), "palaver listening on {addr}");
        if self.config.server.cleartext_beyond_loopback() {
            tracing::warn!(%addr, "plain HTTP beyond loopback (ALLOW_INSECURE_HTTP): session cookies cross the network in clear text");
        }
    }
}

/// The metrics handles, and `METRICS_ADDR`'s listener when it is set.
async fn bind_metrics(config: &ServerConfig) -> Result<(Meters, Option<(TcpListener, Meters)>), StartError> {
    let Some(addr) = config.metrics_addr else { return Ok((Meters::disabled(), None)) };
    let meters = Meters::enabled();
    let listener = meters::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    Ok((meters.clone(), Some((listener, meters))))
}

/// An instance while it serves: its tasks, and the signals that stop them.
struct Running {
    /// Turns true when the accept loop and the background tasks must stop.
    stop: watch::Sender<bool>,
    /// Presence has a signal of its own: it stops after the sockets.
    stop_presence: watch::Sender<bool>,
    presence: JoinHandle<()>,
    /// Stopped last; they saw `stop` already.
    background: [JoinHandle<()>; 4],
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
    health: Arc<dyn Health>,
}

impl Running {
    /// Starts the fan-out hub, the session lifecycle, presence, the memory
    /// trimmer, the token keys' keeper and, when configured, the metrics
    /// listener.
    fn start(
        tasks: Tasks,
        keeper: KeyKeeper,
        metrics: Option<(TcpListener, Meters)>,
        readiness: Arc<Readiness>,
        health: Arc<dyn Health>,
    ) -> std::io::Result<Self> {
        let Tasks { hub, lifecycle, presence, registry } = tasks;
        let (stop, stopped) = watch::channel(false);
        let (stop_presence, presence_stopped) = watch::channel(false);
        let background = [
            tokio::spawn(hub.run(stopped.clone())),
            tokio::spawn(lifecycle.run(stopped.clone())),
            tokio::spawn(release_memory_after_departures(registry.clone())),
            tokio::spawn(keeper.run(stopped.clone())),
        ];
        let presence = tokio::spawn(presence.run(presence_stopped));
        if let Some((listener, meters)) = metrics {
            let at = listener.local_addr()?;
            tracing::info!(%at, "metrics at http://{at}/metrics");
            // It ends by itself once `stop` turns true.
            tokio::spawn(meters.serve(listener, stopped));
        }
        Ok(Self { stop, stop_presence, presence, background, registry, readiness, health })
    }

    /// Starts the accept loop: each connection is served with `stack`,
    /// within the configured limits and `cap` connections, until `stop`.
    fn accept(
        &self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        stack: Stack,
        config: &Config,
        cap: usize,
    ) -> JoinHandle<Connections> {
        let connections = &config.connections;
        let limits = server::ConnLimits {
            idle: connections.http_idle_timeout,
            header: connections.http_header_timeout,
            request: connections.http_request_timeout,
            tls_handshake: connections.tls_handshake_timeout,
            max_open: cap,
            max_per_address: connections.max_per_address,
            send_buffer: connections.send_buffer,
            proxies: TrustedProxies(config.server.trusted_proxies.clone()),
        };
        let make_service = move |peer: SocketAddr| stack.for_peer(peer);
        tokio::spawn(server::accept_loop(listener, tls, make_service, limits, self.stop.subscribe()))
    }

    /// The shutdown, step by step.
    async fn shut_down(mut self, accepting: JoinHandle<Connections>, config: &ServerConfig) -> std::io::Result<()> {
        self.drain(config.shutdown_drain).await;
        let connections = self.stop_accepting(accepting).await?;
        self.close_sockets(config.shutdown_grace).await;
        self.remove_presence().await;
        finish_requests(connections, config.shutdown_grace).await;
        for task in &self.background {
            task.abort();
        }
        self.health.close().await;
        tracing::info!("palaver stopped");
        Ok(())
    }

    /// `/readyz` answers 503 and upgrades are refused from now on, while
    /// everything else goes on for `SHUTDOWN_DRAIN_SECS`, so a load
    /// balancer polling `/readyz` stops sending upgrades here before any
    /// socket is closed.
    async fn drain(&self, drain: Duration) {
        self.readiness.start_draining();
        self.registry.refuse_new();
        if !drain.is_zero() {
            tracing::info!(?drain, "draining: /readyz says 503");
            tokio::time::sleep(drain).await;
        }
    }

    /// No new connections; the open ones go on.
    async fn stop_accepting(&self, accepting: JoinHandle<Connections>) -> std::io::Result<Connections> {
        let _ = self.stop.send(true);
        accepting.await.map_err(std::io::Error::other)
    }

    /// Every socket is closed with 1001; waits up to `grace` for their tasks.
    async fn close_sockets(&self, grace: Duration) {
        let closed = self.registry.close_all(protocol::SHUTTING_DOWN);
        tracing::info!(sockets = closed, "closing sockets");
        if tokio::time::timeout(grace, self.registry.wait_empty()).await.is_err() {
            tracing::warn!(left = self.registry.len(), "sockets still open after the grace period");
        }
    }

    /// Presence writes its last word: with the sockets gone, this
    /// instance's users leave every room, on every instance, now.
    async fn remove_presence(&mut self) {
        let _ = self.stop_presence.send(true);
        if tokio::time::timeout(Duration::from_secs(3), &mut self.presence).await.is_err() {
            tracing::warn!("presence cleanup did not finish in time");
        }
    }
}

/// In-flight requests finish (up to `grace`); idle connections are closed.
async fn finish_requests(connections: Connections, grace: Duration) {
    if tokio::time::timeout(grace, connections.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open after the grace period");
    }
}

/// Sockets that must have closed since the last trim before memory is
/// handed back to the system (each may have held a replay page).
const TRIM_AFTER_DEPARTURES: u64 = 100;

/// Hands freed memory back to the system after many sockets closed.
async fn release_memory_after_departures(registry: Arc<Registry>) {
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
