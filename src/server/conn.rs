//! Connection accounting for the accept loop: every connection holds a
//! permit of the open-connection cap, and every connection's requests are
//! counted so that its idleness can be measured and acted on.
//!
//! - [`Counted`] wraps a connection's stream together with its permit (and
//!   its client address's slot), so they go wherever the stream goes: into
//!   hyper, and after a 101 into the upgraded WebSocket, which keeps its
//!   place until it closes. Dropped with data its peer has not taken, it
//!   keeps them until the data is taken or it is reset (`linger`).
//! - [`Tracker`] knows every served connection (not upgraded sockets, whose
//!   connection task has ended) and when each was last busy; it picks the
//!   longest-idle one to evict when the cap is reached.
//! - [`Tracked`] wraps the per-connection service: it counts requests in
//!   flight, records when the count last dropped to zero, bounds how long a
//!   response may take (408), and marks a connection that upgrades. It also
//!   keeps a connection to its [`Scope`]: one in the reserve kept for the
//!   health checks serves nothing else, and an upgrade through a trusted
//!   proxy is counted against the client it is for.
//!
//! Idleness is "no request in flight since T", not "no bytes since T":
//! HTTP/2 keep-alive pings are bytes, and partial headers (slowloris) have
//! not reached the service yet, so they count as idle.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::{ready, Future},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Request, StatusCode, Version,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Notify, OwnedSemaphorePermit},
};
use tower::Service;
use warp::Reply;

use super::{
    addresses::{Addresses, Held, Slot},
    linger,
};
use crate::net::TrustedProxies;

type Response = warp::reply::Response;

/// A connection's stream, its place under the cap and its client address's
/// slot, released when the stream is dropped (after the connection, or
/// after the WebSocket it became, closes) and what it has queued is taken
/// by the peer or reset (see `linger`).
pub struct Counted {
    io: TcpStream,
    /// Taken on drop, to be held while the queue drains.
    place: Option<(OwnedSemaphorePermit, Held)>,
}

impl Counted {
    pub fn new(io: TcpStream, permit: OwnedSemaphorePermit, held: Held) -> Self {
        Self { io, place: Some((permit, held)) }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            linger::let_go(&self.io, place, linger::STALL);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// One connection as the tracker and its watchdog see it.
pub struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds after `epoch` when the connection last had no request in
    /// flight (its start, or the end of its last request).
    idle_since: AtomicU64,
    /// Answered 101: the connection is becoming a WebSocket and is never
    /// timed out or evicted.
    upgraded: AtomicBool,
    /// Chosen as an eviction victim (not chosen twice).
    evicting: AtomicBool,
    /// Told to close to make room for a new connection.
    pub evict: Notify,
}

impl ConnState {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Restarts the idle clock (a TLS connection is idle from the end of its
    /// handshake, which has its own limit).
    pub fn touch(&self) {
        self.idle_since.store(self.now(), Ordering::SeqCst);
    }

    /// How long no request has been in flight; zero while one is (or once
    /// the connection upgraded).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.upgraded.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.now().saturating_sub(self.idle_since.load(Ordering::SeqCst)))
    }

    /// When the connection will have been idle for `limit`, if nothing
    /// happens; `limit` from now while it is busy (then look again).
    pub fn idle_deadline(&self, limit: Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + limit.saturating_sub(self.idle_for())
    }

    fn evictable(&self) -> Option<u64> {
        let busy = self.in_flight.load(Ordering::SeqCst) > 0
            || self.upgraded.load(Ordering::SeqCst)
            || self.evicting.load(Ordering::SeqCst);
        (!busy).then(|| self.idle_since.load(Ordering::SeqCst))
    }
}

/// Every connection being served, for eviction.
pub struct Tracker {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self { epoch: Instant::now(), next_id: AtomicU64::new(0), conns: Mutex::new(HashMap::new()) }
    }
}

impl Tracker {
    /// Adds a connection, idle from now; it leaves when the entry drops.
    pub fn register(self: &Arc<Self>) -> Entry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        });
        state.touch();
        self.conns.lock().expect("tracker lock").insert(id, state.clone());
        Entry { tracker: self.clone(), id, state }
    }

    /// Tells the longest-idle connection (no request in flight, not
    /// upgrading, not already chosen) to close. False if there is none.
    ///
    /// A linear scan: it runs only when the cap is full, and a scan of the
    /// largest cap takes well under a millisecond.
    pub fn evict_longest_idle(&self) -> bool {
        let conns = self.conns.lock().expect("tracker lock");
        let victim =
            conns.values().filter_map(|c| c.evictable().map(|since| (since, c))).min_by_key(|(since, _)| *since);
        match victim {
            Some((_, conn)) => {
                conn.evicting.store(true, Ordering::SeqCst);
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A connection's place in the tracker.
pub struct Entry {
    tracker: Arc<Tracker>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.tracker.conns.lock().expect("tracker lock").remove(&self.id);
    }
}

/// One request in flight; its end restarts the connection's idle clock.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Stamp first: whoever sees the count at zero sees the new stamp.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a connection may be used for.
#[derive(Clone)]
pub enum Scope {
    /// Anything. A connection from a trusted proxy counts its upgrade
    /// against the client it is for.
    Full(Option<ProxiedUpgrades>),
    /// Only the health checks: a place in the reserve kept for them beyond
    /// the cap. Anything else is answered 503; every answer closes it.
    HealthChecks,
}

/// The paths a place in the reserve serves (`web::routes` answers them).
const HEALTH_CHECKS: [&str; 2] = ["/healthz", "/readyz"];

fn is_health_check<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) && HEALTH_CHECKS.contains(&req.uri().path())
}

/// Counts a WebSocket that comes through a trusted proxy against the
/// client `X-Forwarded-For` names (see `addresses`).
#[derive(Clone)]
pub struct ProxiedUpgrades {
    pub peer: SocketAddr,
    pub proxies: Arc<TrustedProxies>,
    pub addresses: Arc<Addresses>,
    /// Where the slot goes once the upgrade is answered 101.
    pub held: Held,
}

impl ProxiedUpgrades {
    /// A slot for the client an upgrade is for (`None` when the proxy names
    /// none), or `Err` when that client has its connections open already.
    fn take<B>(&self, req: &Request<B>) -> Result<Option<Slot>, ()> {
        let client = self.proxies.client(self.peer, req.headers()).0;
        if self.proxies.trusts(client) {
            return Ok(None);
        }
        self.addresses.take(client).map(Some).ok_or(())
    }
}

/// The per-connection service, counted, bounded in time, and kept to its
/// scope.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
    request_timeout: Duration,
    scope: Scope,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, state: Arc<ConnState>, request_timeout: Duration, scope: Scope) -> Self {
        Self { inner, state, request_timeout, scope }
    }
}

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        let (slot, upgrades) = match &self.scope {
            Scope::HealthChecks if !is_health_check(&req) => return Box::pin(ready(Ok(kept_for_health_checks(http1)))),
            Scope::Full(Some(upgrades)) if req.headers().contains_key(header::UPGRADE) => match upgrades.take(&req) {
                Ok(slot) => (slot, Some(upgrades.held.clone())),
                Err(()) => return Box::pin(ready(Ok(too_many_from_address()))),
            },
            _ => (None, None),
        };
        let close_after = matches!(self.scope, Scope::HealthChecks) && http1;
        let in_flight = InFlight::start(self.state.clone());
        let timeout = self.request_timeout;
        // The limit covers producing the response (reading the request body
        // included), never what an upgraded connection does afterwards.
        let response = tokio::time::timeout(timeout, self.inner.call(req));
        Box::pin(async move {
            let mut res = match response.await {
                Ok(Ok(res)) => res,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::debug!(?timeout, "request timed out");
                    request_timeout(http1)
                }
            };
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                in_flight.0.upgraded.store(true, Ordering::SeqCst);
                if let (Some(slot), Some(held)) = (slot, upgrades) {
                    held.put(slot);
                }
            }
            if close_after {
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok(res)
        })
    }
}

/// 503 for anything but a health check on a place kept for them; the
/// connection ends with it.
fn kept_for_health_checks(http1: bool) -> Response {
    let body = "palaver is at its connection cap; try again in a moment.\n";
    let mut res = warp::reply::with_status(body, StatusCode::SERVICE_UNAVAILABLE).into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if http1 {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// 429 for an upgrade whose client has its connections open already.
fn too_many_from_address() -> Response {
    let body = "too many connections from this address\n";
    let mut res = warp::reply::with_status(body, StatusCode::TOO_MANY_REQUESTS).into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// 408, and on HTTP/1 the connection ends with it (the rest of the body
/// would otherwise be read as the next request).
fn request_timeout(http1: bool) -> Response {
    let mut res = warp::reply::with_status("request timed out\n", StatusCode::REQUEST_TIMEOUT).into_response();
    if http1 {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_is_evicted_never_a_busy_or_upgraded_one() {
        let tracker = Arc::new(Tracker::default());
        let upgraded = tracker.register();
        upgraded.state.upgraded.store(true, Ordering::SeqCst);
        let busy = tracker.register();
        let _request = InFlight::start(busy.state.clone());
        let oldest = tracker.register();
        let newer = tracker.register();
        newer.state.touch();

        assert!(tracker.evict_longest_idle());
        assert!(oldest.state.evicting.load(Ordering::SeqCst));
        assert!(tracker.evict_longest_idle());
        assert!(newer.state.evicting.load(Ordering::SeqCst));
        // Only the upgraded and the busy one are left: nothing to evict.
        assert!(!tracker.evict_longest_idle());
        assert!(!upgraded.state.evicting.load(Ordering::SeqCst) && !busy.state.evicting.load(Ordering::SeqCst));
    }

    #[test]
    fn a_request_in_flight_is_not_idle_and_its_end_restarts_the_clock() {
        let tracker = Arc::new(Tracker::default());
        let entry = tracker.register();
        let request = InFlight::start(entry.state.clone());
        assert_eq!(entry.state.idle_for(), Duration::ZERO);
        drop(request);
        assert!(entry.state.idle_for() < Duration::from_secs(1));
        drop(entry);
        assert!(tracker.conns.lock().unwrap().is_empty());
    }
}
