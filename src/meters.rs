//! What an operator sees of an instance: Prometheus metrics, served on
//! `METRICS_ADDR` (never on the public listener) and off by default.
//!
//! Each [`Application`](crate::Application) owns its recorder instead of
//! installing a global one: several instances in one process (the tests)
//! then keep separate counts, and a module records only into the handle it
//! was given. When metrics are off every handle is a no-op.
//!
//! Durations are seconds and histograms have fixed buckets, so they can be
//! summed over instances (`histogram_quantile` over `sum by (le)`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::{net::TcpListener, sync::watch};

/// Bucket bounds, in seconds: from a fraction of a millisecond (a store
/// command, a fan-out on one machine) to seconds (a failover, a hash queue
/// under a login burst).
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too); bounds the memory they hold.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Every metric: name, kind, unit and help line.
const DESCRIPTIONS: &[(&str, Kind, Option<Unit>, &str)] = &[
    ("palaver_sockets_open", Kind::Gauge, None, "WebSockets open on this instance"),
    ("palaver_upgrades_total", Kind::Counter, None, "WebSocket upgrade requests by outcome"),
    ("palaver_upgrade_seconds", Kind::Histogram, Some(Unit::Seconds), "Time to answer an upgrade request"),
    (
        "palaver_upgrades_shed_total",
        Kind::Counter,
        None,
        "WebSocket upgrades answered 503 with Retry-After at once: MAX_PENDING_UPGRADES were in flight",
    ),
    ("palaver_socket_closes_total", Kind::Counter, None, "Sockets closed by the server, by close reason"),
    (
        "palaver_logout_close_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a logout or revocation event's publication to this instance closing its sockets",
    ),
    (
        "palaver_access_close_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a membership event's publication (a member removed, a room deleted) to this instance closing its sockets",
    ),
    (
        "palaver_fanout_lag_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a message's id (its store time) to its frame being written to a socket",
    ),
    ("palaver_presence_pushes_total", Kind::Counter, None, "Presence diffs pushed to a room's sockets"),
    ("palaver_store_errors_total", Kind::Counter, None, "Redis commands that failed or timed out, by command"),
    ("palaver_store_command_seconds", Kind::Histogram, Some(Unit::Seconds), "Redis command latency by command"),
    ("palaver_logins_total", Kind::Counter, None, "Password sign-ins by form or API, by outcome"),
    ("palaver_token_checks_total", Kind::Counter, None, "Access tokens presented (upgrade, API), by outcome"),
    (
        "palaver_password_hash_wait_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time a password hash or check waited for a free hashing slot",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The metric handles of one instance; cheap to clone.
#[derive(Clone, Default)]
pub struct Meters {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    recorder: PrometheusRecorder,
    /// Registered once: these are touched per socket or per frame.
    sockets_open: Gauge,
    fanout_lag: Histogram,
    presence_pushes: Counter,
    upgrades_shed: Counter,
    hash_wait: Histogram,
}

impl std::fmt::Debug for Meters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meters").field("enabled", &self.inner.is_some()).finish()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|&(k, v)| Label::new(k, v)).collect::<Vec<_>>())
}

impl Meters {
    /// Handles that record nothing (`METRICS_ADDR` unset).
    pub(crate) fn disabled() -> Self {
        Self::default()
    }

    /// A recorder of this instance's own.
    pub(crate) fn enabled() -> Self {
        let recorder =
            PrometheusBuilder::new().set_buckets(BUCKETS).expect("the bucket list is not empty").build_recorder();
        for &(name, kind, unit, help) in DESCRIPTIONS {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, unit, help),
                Kind::Gauge => recorder.describe_gauge(name, unit, help),
                Kind::Histogram => recorder.describe_histogram(name, unit, help),
            }
        }
        let inner = Inner {
            sockets_open: recorder.register_gauge(&key("palaver_sockets_open", &[]), &METADATA),
            fanout_lag: recorder.register_histogram(&key("palaver_fanout_lag_seconds", &[]), &METADATA),
            presence_pushes: recorder.register_counter(&key("palaver_presence_pushes_total", &[]), &METADATA),
            upgrades_shed: recorder.register_counter(&key("palaver_upgrades_shed_total", &[]), &METADATA),
            hash_wait: recorder.register_histogram(&key("palaver_password_hash_wait_seconds", &[]), &METADATA),
            recorder,
        };
        Self { inner: Some(Arc::new(inner)) }
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        match &self.inner {
            Some(inner) => inner.recorder.register_counter(&key(name, labels), &METADATA),
            None => Counter::noop(),
        }
    }

    fn histogram(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Histogram {
        match &self.inner {
            Some(inner) => inner.recorder.register_histogram(&key(name, labels), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// The Prometheus text exposition of every metric, `None` when off.
    #[cfg(test)]
    pub(crate) fn render(&self) -> Option<String> {
        self.inner.as_ref().map(|inner| inner.recorder.handle().render())
    }

    /// A socket is open until the guard drops.
    pub(crate) fn socket_opened(&self) -> OpenSocket {
        let gauge = self.inner.as_ref().map_or_else(Gauge::noop, |inner| inner.sockets_open.clone());
        gauge.increment(1.0);
        OpenSocket(gauge)
    }

    /// An upgrade was answered: `outcome` names its status class.
    pub(crate) fn upgrade(&self, outcome: &'static str, took: Duration) {
        self.counter("palaver_upgrades_total", &[("outcome", outcome)]).increment(1);
        self.histogram("palaver_upgrade_seconds", &[]).record(took);
    }

    /// An upgrade was turned away at once, every place being taken (it is
    /// counted in `palaver_upgrades_total` too, as `unavailable`).
    pub(crate) fn upgrade_shed(&self) {
        if let Some(inner) = &self.inner {
            inner.upgrades_shed.increment(1);
        }
    }

    /// The server closed a socket with `reason` (the close frame's text).
    pub(crate) fn socket_closed(&self, reason: &'static str) {
        self.counter("palaver_socket_closes_total", &[("reason", reason)]).increment(1);
    }

    /// A logout event published `since` ago closed sockets here.
    pub(crate) fn logout_applied(&self, since: Duration) {
        self.histogram("palaver_logout_close_seconds", &[]).record(since);
    }

    /// A membership event published `since` ago closed sockets here.
    pub(crate) fn access_applied(&self, since: Duration) {
        self.histogram("palaver_access_close_seconds", &[]).record(since);
    }

    /// A stored message reached a socket `lag` after its id's time.
    pub(crate) fn fanout_lag(&self, lag: Duration) {
        if let Some(inner) = &self.inner {
            inner.fanout_lag.record(lag);
        }
    }

    /// One presence diff went out to a room's sockets.
    pub(crate) fn presence_pushed(&self) {
        if let Some(inner) = &self.inner {
            inner.presence_pushes.increment(1);
        }
    }

    /// A store command finished after `took`; `ok` is false on an error or
    /// a timeout.
    pub(crate) fn store_command(&self, command: &'static str, took: Duration, ok: bool) {
        self.histogram("palaver_store_command_seconds", &[("command", command)]).record(took);
        if !ok {
            self.counter("palaver_store_errors_total", &[("command", command)]).increment(1);
        }
    }

    /// A store operation failed without a command of its own failing (a
    /// `WAIT` that counted too few replicas).
    pub(crate) fn store_error(&self, command: &'static str) {
        self.counter("palaver_store_errors_total", &[("command", command)]).increment(1);
    }

    /// A password sign-in (`via` `form` or `api`) ended with `outcome`.
    pub(crate) fn login(&self, via: &'static str, outcome: &'static str) {
        self.counter("palaver_logins_total", &[("via", via), ("outcome", outcome)]).increment(1);
    }

    /// An access token was presented: `valid`, `invalid` or `unavailable`.
    pub(crate) fn token_check(&self, outcome: &'static str) {
        self.counter("palaver_token_checks_total", &[("outcome", outcome)]).increment(1);
    }

    /// Where the password module records how long work waited for a slot.
    pub(crate) fn hash_wait(&self) -> Histogram {
        self.inner.as_ref().map_or_else(Histogram::noop, |inner| inner.hash_wait.clone())
    }

    /// Serves `GET /metrics` on `listener` until `stop` turns true, and
    /// folds histogram samples meanwhile. A listener of its own: nothing
    /// here is reachable from the public address, and it shares none of
    /// its limits, sessions or origin checks.
    pub(crate) async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let Some(inner) = self.inner.clone() else { return };
        let handle = inner.recorder.handle();
        let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let handle = handle.clone();
                            async move { Ok::<_, std::convert::Infallible>(exposition(&req, || handle.render())) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(io, service)
                            .await;
                    });
                }
                _ = upkeep.tick() => handle.run_upkeep(),
                _ = stop.changed() => return,
            }
        }
    }
}

/// `GET /metrics` answers the exposition; anything else 404 or 405.
fn exposition(req: &Request<Incoming>, render: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (StatusCode::OK, render()),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    if status == StatusCode::OK {
        res.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
    }
    res
}

/// Counts one open socket while it lives.
pub(crate) struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Binds the metrics listener (port 0 works).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The status class an outcome label names.
pub(crate) fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        101 => "accepted",
        200..=399 => "success",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        422 => "malformed",
        429 => "throttled",
        503 => "unavailable",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels_and_help() {
        let meters = Meters::enabled();
        meters.login("form", "success");
        meters.login("form", "success");
        meters.upgrade("accepted", Duration::from_millis(3));
        let open = meters.socket_opened();
        let text = meters.render().unwrap();
        assert!(text.contains("palaver_logins_total{via=\"form\",outcome=\"success\"} 2"), "{text}");
        assert!(text.contains("palaver_upgrades_total{outcome=\"accepted\"} 1"), "{text}");
        assert!(text.contains("palaver_upgrade_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("palaver_sockets_open 1"), "{text}");
        assert!(text.contains("# HELP palaver_logins_total"), "{text}");
        drop(open);
        assert!(meters.render().unwrap().contains("palaver_sockets_open 0"));
    }

    #[test]
    fn disabled_meters_record_nothing_and_render_nothing() {
        let meters = Meters::disabled();
        meters.login("form", "success");
        drop(meters.socket_opened());
        assert_eq!(meters.render(), None);
    }
}
