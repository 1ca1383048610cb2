//! The accept loop: TCP, optional TLS, then hyper with upgrades.
//!
//! warp 0.4 serves only a `Filter`, and the session layer is a tower layer,
//! so palaver runs its own loop: every connection gets the tower stack
//! (client address → session layer → the route table) wrapped for hyper and
//! served with `serve_connection_with_upgrades` (WebSockets need upgrades).
//!
//! Every connection is bounded in time and counted (docs/protocol.md §1.1):
//! - a watchdog per connection closes it once no request has been in flight
//!   for `HTTP_IDLE_TIMEOUT_SECS` (silent, between keep-alive requests,
//!   HTTP/1 or HTTP/2, partial headers included); hyper bounds HTTP/1
//!   headers, HTTP/2 pings check the peer is there, a request must be
//!   answered in time (408), and the TLS handshake has its own limit;
//! - every connection holds a permit of the cap (`MAX_OPEN_CONNECTIONS`,
//!   kept below the open-file limit) inside its stream, so an upgraded
//!   WebSocket keeps its place until it closes. At the cap the longest-idle
//!   connection makes room; with none idle, the newcomer gets a place of
//!   the small reserve kept for `/healthz` and `/readyz` (anything else on
//!   it is answered 503), so that no client, however it fills the cap, can
//!   make the liveness check fail; with that full too, 503;
//! - one client address holds at most `MAX_CONNECTIONS_PER_ADDRESS` of them
//!   ([`addresses`]: what a trusted proxy in front means for the count);
//! - WebSockets never take the last HTTP places: their cap is kept a tenth
//!   below the connection cap ([`websocket_cap`]).
//!
//! Why a reserve rather than evicting slow requests: a request whose body
//! trickles in cannot be told, at this level, from one waiting for the
//! store or a password check (the body is hyper's, read by the handler), so
//! cutting "slow" requests would cut honest ones too; a reserve needs no
//! guess and holds whatever fills the cap (slow bodies, WebSockets,
//! requests waiting on a slow store). Idle connections are still evicted
//! first, as before.
//!
//! Shutdown stops accepting, lets in-flight requests finish, and closes
//! idle connections ([`Connections::shutdown`]).

mod addresses;
mod conn;
mod linger;

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use addresses::{Addresses, Held};
use conn::{ConnState, Counted, Entry, ProxiedUpgrades, Scope, Tracked, Tracker};
use hyper::{body::Incoming, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{watch, AcquireError, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::{config::TlsPaths, net::TrustedProxies, telemetry::OnceASecond};

/// Binds, without listening yet: the address is known (port 0 picks a
/// free one), and connections are refused until [`listen`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted instance can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Listens with a deep accept backlog: the default 128 drops SYNs under a
/// burst of reconnecting clients and stalls each of them for a second.
pub fn listen(socket: TcpSocket) -> io::Result<TcpListener> {
    socket.listen(4096)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS_CERT {path}: {source}")]
    Cert { path: String, source: rustls::pki_types::pem::Error },
    #[error("cannot read TLS_KEY {path}: {source}")]
    Key { path: String, source: rustls::pki_types::pem::Error },
    #[error("TLS_CERT and TLS_KEY do not make a usable identity: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads the certificate chain and key into a TLS acceptor (HTTP/2 and
/// HTTP/1.1 offered by ALPN; WebSockets use HTTP/1.1).
pub fn tls_acceptor(paths: &TlsPaths) -> Result<TlsAcceptor, TlsError> {
    let cert_path = paths.cert.display().to_string();
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: cert_path, source })?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|source| TlsError::Key { path: paths.key.display().to_string(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

type Response = warp::reply::Response;

/// Descriptors kept out of the connection cap: Redis connections, files,
/// the listener, and the connections held beside the cap (waiting for an
/// evicted one's place, being refused, or in the health checks' reserve).
pub const FD_RESERVE: u64 = 256;

/// Places beyond the cap kept for `/healthz` and `/readyz`: a load balancer
/// or orchestrator probes from a few places at once, and each probe's
/// connection lasts a request.
const HEALTH_RESERVE: usize = 16;

/// How long a place in the reserve may go without a request: a probe asks
/// at once, and an idle one makes room for the next (as at the cap).
const HEALTH_IDLE: Duration = Duration::from_secs(2);

/// The share of the connection cap WebSockets may not take: one place in
/// ten is kept for page loads, sign-ins and the other HTTP requests.
const HTTP_SHARE: usize = 10;

/// HTTP/2 keep-alive: a ping this often, and the connection is dropped if
/// its answer takes longer than this.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// After a connection is told to close (idle too long, evicted, shutdown),
/// how long it must stay without a request before it is dropped outright:
/// hyper closes idle HTTP/1 and HTTP/2 connections at once, but not one
/// stuck in the middle of its first request's headers.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How long a connection admitted by evicting another waits for the
/// victim's place before it is refused.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// Connections waiting at once for an evicted one's place (their sockets are
/// open meanwhile, beside the cap); beyond this they are refused.
const MAX_WAITING: usize = 128;

/// Refused connections drained at once (each holds its descriptor for up to
/// [`LINGER`] so that the client reads the 503 instead of a reset); beyond
/// this they are closed straight away.
const MAX_LINGERING: usize = 64;
const LINGER: Duration = Duration::from_secs(1);

/// The minimal answer when the cap and the reserve are full of busy
/// connections.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

/// The minimal answer to a client address with all its connections open.
const TOO_MANY_FROM_ADDRESS: &[u8] =
    b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

/// How long a connection may take at each stage, and how many may be open.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// No request in flight for this long: the connection is closed.
    pub idle: Duration,
    /// HTTP/1 request headers must arrive within this.
    pub header: Duration,
    /// A request, its body included, must be answered within this (408).
    pub request: Duration,
    pub tls_handshake: Duration,
    /// Open connections, HTTP and WebSocket together.
    pub max_open: usize,
    /// Open connections per client address (see [`addresses`]).
    pub max_per_address: usize,
    /// Each socket's send buffer (`SO_SNDBUF`); `None`: the kernel's own
    /// sizing (see [`linger`]).
    pub send_buffer: Option<usize>,
    /// Whose `X-Forwarded-For` names the client.
    pub proxies: TrustedProxies,
}

/// Raises the open-file soft limit to the hard limit, logs both, and
/// returns the connection cap: `wanted`, but always [`FD_RESERVE`]
/// descriptors below the soft limit.
pub fn connection_cap(wanted: usize) -> usize {
    let cap = match raise_open_file_limit() {
        Ok(soft) => {
            let budget = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            if budget == 0 {
                tracing::warn!(soft, "the open-file limit {soft} leaves no room for connections beyond the reserve");
            }
            wanted.min(budget).max(1)
        }
        Err(err) => {
            tracing::warn!(%err, "cannot read or raise the open-file limit");
            wanted
        }
    };
    tracing::info!(
        cap,
        max_open_connections = wanted,
        reserve = FD_RESERVE,
        "connection cap: {cap} open connections (HTTP and WebSocket)"
    );
    cap
}

/// Sets RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit
/// in force afterwards (`u64::MAX` when unlimited).
#[cfg(unix)]
fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is not u64 on every unix.
    #[allow(clippy::unnecessary_cast)]
    let as_u64 = |value: libc::rlim_t| if value == libc::RLIM_INFINITY { u64::MAX } else { value as u64 };
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let err = io::Error::last_os_error();
            tracing::warn!(%err, soft = as_u64(before), hard = as_u64(limit.rlim_max), "cannot raise the open-file limit");
        }
    }
    let (soft, hard) = (as_u64(limit.rlim_cur), as_u64(limit.rlim_max));
    tracing::info!(soft, hard, previous = as_u64(before), "open-file limit: {soft} (hard limit {hard})");
    Ok(soft)
}

/// The WebSocket cap: `MAX_CONNECTIONS`, but never more than the
/// connection cap less a tenth kept for HTTP (so it follows the open-file
/// limit too). Logged, like the connection cap.
pub fn websocket_cap(max_connections: usize, connection_cap: usize) -> usize {
    let for_http = (connection_cap / HTTP_SHARE).max(1);
    let cap = max_connections.min(connection_cap.saturating_sub(for_http)).max(1);
    tracing::info!(
        cap,
        max_connections,
        kept_for_http = for_http,
        "WebSocket cap: {cap} open WebSockets ({for_http} of the connection cap kept for HTTP)"
    );
    cap
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> io::Result<u64> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no RLIMIT_NOFILE here"))
}

/// The connections an accept loop started, for graceful shutdown.
pub struct Connections {
    shutdown: watch::Sender<bool>,
}

impl Connections {
    /// Tells every connection to finish: idle ones close at once, busy ones
    /// after their request. Resolves when all of them have ended (upgraded
    /// WebSockets are not connections any more; the registry closes those).
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        self.shutdown.closed().await;
    }
}

/// Places for connections, and the connections that hold them.
struct Places {
    permits: Arc<Semaphore>,
    tracker: Arc<Tracker>,
}

impl Places {
    fn new(count: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(count)), tracker: Arc::new(Tracker::default()) }
    }
}

/// Which places a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Under the cap: serves anything.
    Regular,
    /// In the reserve beyond the cap: serves the health checks only.
    HealthCheck,
}

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    regular: Places,
    reserve: Places,
    addresses: Arc<Addresses>,
    proxies: Arc<TrustedProxies>,
    /// Connections waiting for an evicted connection's place.
    waiting: AtomicUsize,
    /// Refused connections being drained.
    lingering: Arc<AtomicUsize>,
}

/// Accepts until `stop` turns true, serving each connection with the
/// service `make_service` builds for its peer, within `limits`. Returns the
/// handle that shuts down the connections still open.
///
/// At the cap, a new connection takes the place of the longest-idle one;
/// if none is idle, a place in the health checks' reserve (the same way),
/// and is refused with 503 only if that is full of busy ones too (the
/// WebSockets and requests in progress are never cut for it). A client
/// address with all its connections open is refused with 429.
pub async fn accept_loop<M, S>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    make_service: M,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) -> Connections
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let shared = Shared::new(tls, limits);
    let (shutdown, _) = watch::channel(false);
    let accept_errors = OnceASecond::default();
    let refusals = OnceASecond::default();
    let reserved = OnceASecond::default();
    let crowded = OnceASecond::default();
    while let Some((stream, peer)) = accept(&listener, &mut stop, &accept_errors).await {
        let _ = stream.set_nodelay(true);
        if let Some(bytes) = shared.limits.send_buffer {
            let _ = linger::cap_send_buffer(&stream, bytes);
        }
        let Some(held) = shared.held_for(peer) else {
            if let Some(suppressed) = crowded.allow(Instant::now()) {
                tracing::warn!(
                    ip = %peer.ip(),
                    max = shared.limits.max_per_address,
                    suppressed,
                    "a client address has all its connections open: refusing with 429"
                );
            }
            refuse(stream, &shared, TOO_MANY_FROM_ADDRESS);
            continue;
        };
        let conn = Accepted { stream, peer, held, service: make_service(peer), stopping: shutdown.subscribe() };
        let conn = match admit(&shared, Kind::Regular, conn) {
            Ok(()) => continue,
            Err(conn) => conn,
        };
        if let Some(suppressed) = reserved.allow(Instant::now()) {
            tracing::warn!(
                cap = shared.limits.max_open,
                suppressed,
                "connection cap reached and no idle connection can make room: only health checks are answered"
            );
        }
        if let Err(conn) = admit(&shared, Kind::HealthCheck, conn) {
            if let Some(suppressed) = refusals.allow(Instant::now()) {
                tracing::warn!(
                    cap = shared.limits.max_open,
                    reserve = HEALTH_RESERVE,
                    suppressed,
                    "connection cap and the health checks' reserve full of busy connections: refusing with 503"
                );
            }
            refuse(conn.stream, &shared, REFUSAL);
        }
    }
    Connections { shutdown }
}

/// An accepted connection on its way to a place.
struct Accepted<S> {
    stream: TcpStream,
    peer: SocketAddr,
    held: Held,
    service: S,
    stopping: watch::Receiver<bool>,
}

/// Serves `conn` on a place of `kind`: a free one, or the place of the
/// longest-idle connection holding one (once it has closed). Gives the
/// connection back if neither is to be had.
fn admit<S>(shared: &Arc<Shared>, kind: Kind, conn: Accepted<S>) -> Result<(), Accepted<S>>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let places = shared.places(kind);
    match place(&places.permits) {
        Ok(permit) => {
            // Registered here, in accept order, so that idleness ties are
            // broken by age.
            let entry = places.tracker.register();
            tokio::spawn(connection(shared.clone(), kind, conn, permit, entry));
            Ok(())
        }
        Err(queued) if shared.waiting.load(Ordering::SeqCst) < MAX_WAITING && places.tracker.evict_longest_idle() => {
            tracing::debug!(peer = %conn.peer, ?kind, "no free place: evicting the longest-idle connection");
            shared.waiting.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(after_eviction(shared.clone(), kind, conn, queued));
            Ok(())
        }
        Err(_) => Err(conn),
    }
}

impl Shared {
    fn new(tls: Option<TlsAcceptor>, limits: ConnLimits) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_KEEP_ALIVE).keep_alive_timeout(H2_KEEP_ALIVE);
        Arc::new(Shared {
            builder,
            tls,
            regular: Places::new(limits.max_open),
            reserve: Places::new(HEALTH_RESERVE),
            addresses: Addresses::new(limits.max_per_address),
            proxies: Arc::new(limits.proxies.clone()),
            limits,
            waiting: AtomicUsize::new(0),
            lingering: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn places(&self, kind: Kind) -> &Places {
        match kind {
            Kind::Regular => &self.regular,
            Kind::HealthCheck => &self.reserve,
        }
    }

    /// Where a connection from `peer` keeps its client address's slot:
    /// taken now, or later for one from a trusted proxy (see
    /// [`addresses`]). `None`: the address has all its connections open.
    fn held_for(&self, peer: SocketAddr) -> Option<Held> {
        if self.proxies.trusts(peer.ip()) {
            return Some(Held::default());
        }
        self.addresses.take(peer.ip()).map(|slot| Held::new(Some(slot)))
    }

    /// What a connection of `kind` from `peer` may be used for.
    fn scope(&self, kind: Kind, peer: SocketAddr, held: &Held) -> Scope {
        match kind {
            Kind::HealthCheck => Scope::HealthChecks,
            Kind::Regular if self.proxies.trusts(peer.ip()) => Scope::Full(Some(ProxiedUpgrades {
                peer,
                proxies: self.proxies.clone(),
                addresses: self.addresses.clone(),
                held: held.clone(),
            })),
            Kind::Regular => Scope::Full(None),
        }
    }

    /// How long a connection of `kind` may go without a request.
    fn idle_limit(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Regular => self.limits.idle,
            Kind::HealthCheck => self.limits.idle.min(HEALTH_IDLE),
        }
    }
}

/// The next connection, or `None` once `stop` turns true. A failed accept
/// (out of file descriptors and the like) is logged, at most once a
/// second, and retried after a short pause.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    errors: &OnceASecond,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(err) => {
                    if let Some(suppressed) = errors.allow(Instant::now()) {
                        tracing::warn!(%err, suppressed, "accept failed ({suppressed} more since the last report)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

/// A place under the cap: a free one, or else a place in the queue for
/// the next one freed.
fn place(
    permits: &Arc<Semaphore>,
) -> Result<OwnedSemaphorePermit, Pin<Box<impl Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Ok(permit);
    }
    // Queue for a place now, in accept order: a place freed before the
    // waiting task runs must go to it, not to the next connection accepted.
    let mut queued = Box::pin(permits.clone().acquire_owned());
    match queued.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(permit)) => Ok(permit),
        _ => Err(queued),
    }
}

/// Serves a connection admitted by evicting the longest-idle one, once the
/// evicted connection's place is free; refuses it if that takes longer
/// than [`EVICTION_WAIT`], and drops it if shutdown begins meanwhile.
async fn after_eviction<S>(
    shared: Arc<Shared>,
    kind: Kind,
    mut conn: Accepted<S>,
    queued: impl Future<Output = Result<OwnedSemaphorePermit, AcquireError>>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permit = tokio::select! {
        permit = tokio::time::timeout(EVICTION_WAIT, queued) => Some(permit),
        _ = conn.stopping.changed() => None,
    };
    shared.waiting.fetch_sub(1, Ordering::SeqCst);
    match permit {
        None => {}
        Some(Ok(Ok(permit))) => {
            let entry = shared.places(kind).tracker.register();
            connection(shared.clone(), kind, conn, permit, entry).await;
        }
        Some(_) => refuse(conn.stream, &shared, REFUSAL),
    }
}

/// Answers a connection there is no room for with a minimal `answer` and
/// closes it. A TLS client could not read a plain answer, so it is just
/// closed.
fn refuse(stream: TcpStream, shared: &Arc<Shared>, answer: &'static [u8]) {
    if shared.tls.is_some() {
        return;
    }
    // A fresh socket's send buffer is empty: this does not block.
    let _ = stream.try_write(answer);
    if shared.lingering.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING {
        shared.lingering.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    // Closing a socket with unread input resets it, and a reset can destroy
    // the 503 before the client reads it: close our side, read what the
    // client sends for a moment, then close.
    let lingering = shared.lingering.clone();
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(LINGER, async { while let Ok(1..) = stream.read(&mut sink).await {} }).await;
        lingering.fetch_sub(1, Ordering::SeqCst);
    });
}

/// One connection on a place of `kind`: the TLS handshake if any, then
/// HTTP until it ends.
async fn connection<S>(shared: Arc<Shared>, kind: Kind, conn: Accepted<S>, permit: OwnedSemaphorePermit, entry: Entry)
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let Accepted { stream, peer, held, service, mut stopping } = conn;
    let state = entry.state.clone();
    let scope = shared.scope(kind, peer, &held);
    let service = TowerToHyperService::new(Tracked::new(service, state.clone(), shared.limits.request, scope));
    let stream = Counted::new(stream, permit, held);
    let idle = shared.idle_limit(kind);
    let result = match &shared.tls {
        None => serve(&shared, stream, service, &state, idle, &mut stopping).await,
        Some(tls) => {
            let handshake = tokio::time::timeout(shared.limits.tls_handshake, tls.accept(stream));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%err, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = state.evict.notified() => return,
                _ = stopping.changed() => return,
            };
            state.touch();
            serve(&shared, stream, service, &state, idle, &mut stopping).await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, %peer, "connection ended with an error");
    }
    drop(entry);
}

/// Serves HTTP on `io` until the connection ends, or until it has had no
/// request in flight for `idle_limit`, is evicted, or shutdown begins:
/// then it is shut down gracefully, and dropped if it is still there and
/// still idle [`CLOSE_GRACE`] later.
async fn serve<I, S>(
    shared: &Shared,
    io: I,
    service: S,
    state: &ConnState,
    idle_limit: Duration,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = shared.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Set once the connection has been told to close.
    let mut closing: Option<tokio::time::Instant> = None;
    if *stopping.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
    }
    loop {
        let wake = match closing {
            None => state.idle_deadline(idle_limit),
            Some(at) => at,
        };
        let close = tokio::select! {
            result = conn.as_mut() => return result,
            _ = tokio::time::sleep_until(wake) => match closing {
                None => state.idle_for() >= idle_limit,
                Some(_) if state.idle_for() >= CLOSE_GRACE => return Ok(()),
                Some(_) => {
                    // A request came in meanwhile: hyper closes after it.
                    closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    false
                }
            },
            _ = state.evict.notified(), if closing.is_none() => true,
            _ = stopping.changed(), if closing.is_none() => true,
        };
        if close {
            conn.as_mut().graceful_shutdown();
            closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websockets_leave_a_tenth_of_the_connection_cap_to_http_and_follow_it_down() {
        assert_eq!(websocket_cap(50_000, 60_000), 50_000, "the default is untouched");
        assert_eq!(websocket_cap(50_000, 500), 450);
        assert_eq!(websocket_cap(50_000, 344), 310, "an open-file limit of 600");
        assert_eq!(websocket_cap(100, 50), 45);
        assert_eq!(websocket_cap(10, 5), 4, "at least one place for HTTP");
        assert_eq!(websocket_cap(10, 1), 1, "and at least one WebSocket");
    }
}
