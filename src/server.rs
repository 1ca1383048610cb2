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
//!   connection makes room; with none idle, the newcomer gets 503.
//!
//! Shutdown stops accepting, lets in-flight requests finish, and closes
//! idle connections ([`Connections::shutdown`]).

mod conn;

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

use conn::{ConnState, Counted, Entry, Tracked, Tracker};
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

use crate::config::TlsPaths;

/// Binds with a deep accept backlog: the default 128 drops SYNs under a burst
/// of reconnecting clients and stalls each of them for a second.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted instance can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
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
/// the listener.
pub const FD_RESERVE: u64 = 256;

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

/// The minimal answer when the cap is full of busy connections.
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

/// How long a connection may take at each stage, and how many may be open.
#[derive(Debug, Clone, Copy)]
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

#[cfg(not(unix))]
fn raise_open_file_limit() -> io::Result<u64> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no RLIMIT_NOFILE here"))
}

/// A warning that repeats at most once a second, counting what it held back.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    /// Some(number suppressed since the last one) if it may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
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

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: ConnLimits,
    tracker: Arc<Tracker>,
    permits: Arc<Semaphore>,
    /// Connections waiting for an evicted connection's place.
    waiting: AtomicUsize,
    /// Refused connections being drained.
    lingering: Arc<AtomicUsize>,
}

/// Accepts until `stop` turns true, serving each connection with the
/// service `make_service` builds for its peer, within `limits`. Returns the
/// handle that shuts down the connections still open.
///
/// At the cap, a new connection takes the place of the longest-idle one,
/// and is refused with 503 only if none is idle (the WebSockets and
/// requests in progress are never cut for it).
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
    let mut accept_errors = Throttled::default();
    let mut refusals = Throttled::default();
    while let Some((stream, peer)) = accept(&listener, &mut stop, &mut accept_errors).await {
        let _ = stream.set_nodelay(true);
        let service = make_service(peer);
        let stopping = shutdown.subscribe();
        match place(&shared.permits) {
            Ok(permit) => {
                // Registered here, in accept order, so that idleness ties
                // are broken by age.
                let entry = shared.tracker.register();
                tokio::spawn(connection(shared.clone(), Counted::new(stream, permit), peer, entry, service, stopping));
            }
            Err(queued)
                if shared.waiting.load(Ordering::SeqCst) < MAX_WAITING && shared.tracker.evict_longest_idle() =>
            {
                tracing::debug!(%peer, "connection cap reached: evicting the longest-idle connection");
                shared.waiting.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(after_eviction(shared.clone(), stream, peer, queued, service, stopping));
            }
            Err(_) => {
                if let Some(suppressed) = refusals.allow(Instant::now()) {
                    tracing::warn!(
                        cap = limits.max_open,
                        suppressed,
                        "connection cap reached and no idle connection can make room: refusing with 503"
                    );
                }
                refuse(stream, &shared);
            }
        }
    }
    Connections { shutdown }
}

impl Shared {
    fn new(tls: Option<TlsAcceptor>, limits: ConnLimits) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_KEEP_ALIVE).keep_alive_timeout(H2_KEEP_ALIVE);
        Arc::new(Shared {
            builder,
            tls,
            limits,
            tracker: Arc::new(Tracker::default()),
            permits: Arc::new(Semaphore::new(limits.max_open)),
            waiting: AtomicUsize::new(0),
            lingering: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// The next connection, or `None` once `stop` turns true. A failed accept
/// (out of file descriptors and the like) is logged, at most once a
/// second, and retried after a short pause.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    errors: &mut Throttled,
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
    stream: TcpStream,
    peer: SocketAddr,
    queued: impl Future<Output = Result<OwnedSemaphorePermit, AcquireError>>,
    service: S,
    mut stopping: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let permit = tokio::select! {
        permit = tokio::time::timeout(EVICTION_WAIT, queued) => Some(permit),
        _ = stopping.changed() => None,
    };
    shared.waiting.fetch_sub(1, Ordering::SeqCst);
    match permit {
        None => {}
        Some(Ok(Ok(permit))) => {
            let entry = shared.tracker.register();
            connection(shared.clone(), Counted::new(stream, permit), peer, entry, service, stopping).await;
        }
        Some(_) => refuse(stream, &shared),
    }
}

/// Answers a connection there is no room for with a minimal 503 and closes
/// it. A TLS client could not read a plain answer, so it is just closed.
fn refuse(stream: TcpStream, shared: &Arc<Shared>) {
    if shared.tls.is_some() {
        return;
    }
    // A fresh socket's send buffer is empty: this does not block.
    let _ = stream.try_write(REFUSAL);
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

/// One connection: the TLS handshake if any, then HTTP until it ends.
async fn connection<S>(
    shared: Arc<Shared>,
    stream: Counted<TcpStream>,
    peer: SocketAddr,
    entry: Entry,
    service: S,
    mut stopping: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let state = entry.state.clone();
    let service = TowerToHyperService::new(Tracked::new(service, state.clone(), shared.limits.request));
    let result = match &shared.tls {
        None => serve(&shared, stream, service, &state, &mut stopping).await,
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
            serve(&shared, stream, service, &state, &mut stopping).await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, %peer, "connection ended with an error");
    }
    drop(entry);
}

/// Serves HTTP on `io` until the connection ends, or until it has had no
/// request in flight for the idle limit, is evicted, or shutdown begins:
/// then it is shut down gracefully, and dropped if it is still there and
/// still idle [`CLOSE_GRACE`] later.
async fn serve<I, S>(
    shared: &Shared,
    io: I,
    service: S,
    state: &ConnState,
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
    let idle_limit = shared.limits.idle;
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
    fn a_repeated_warning_is_let_through_once_a_second_with_the_count_held_back() {
        let mut log = Throttled::default();
        let start = Instant::now();
        assert_eq!(log.allow(start), Some(0));
        for ms in [1, 50, 999] {
            assert_eq!(log.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.allow(start + Duration::from_millis(1000)), Some(3));
        assert_eq!(log.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(log.allow(start + Duration::from_millis(2000)), Some(1));
    }
}
