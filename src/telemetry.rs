//! Logging, on standard error: `RUST_LOG` filters (default `info`);
//! `LOG_FORMAT` picks human-readable lines or one JSON object per line.
//! Text is coloured only on a terminal, and never when `NO_COLOR` is set
//! (<https://no-color.org>): a log file or collector gets plain text.
//!
//! Refusals a client can repeat at will (a throttled sign-in) are logged
//! through a [`RefusalLog`], which summarises them: a client flooding
//! costs a line a minute, not a line a request. A warning about the
//! instance itself (its connection cap, its upgrades) goes through a
//! [`OnceASecond`]: a line a second at most, with what it held back.

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    io::IsTerminal,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))).try_init()
        }
        // Fields at the top level, beside "message": what collectors index.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string.
fn colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A warning that repeats at most once a second, counting what it held
/// back. Shared by reference: asking is two atomic operations, no lock, so
/// it may sit on a path every request of a flood takes.
#[derive(Debug)]
pub(crate) struct OnceASecond {
    /// Where time is counted from.
    origin: Instant,
    /// Nanoseconds after `origin` from which the next line may go.
    next: AtomicU64,
    held_back: AtomicU64,
}

impl Default for OnceASecond {
    fn default() -> Self {
        Self { origin: Instant::now(), next: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }
}

impl OnceASecond {
    /// `Some(how many were held back since the last line)` if a line may
    /// be written at `now`. Of callers racing for the same second, one
    /// wins; the others are counted.
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        let at = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        let second = Duration::from_secs(1).as_nanos() as u64;
        if at >= next
            && self.next.compare_exchange(next, at.saturating_add(second), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// How long a client's repeated refusals are counted before the count is
/// logged.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// How many clients a [`RefusalLog`] counts one by one in a window; the
/// refusals of any more are counted together.
const REFUSAL_CLIENTS: usize = 1024;

/// Log lines for a refusal that clients repeat: a client's first refusal in
/// a window ([`REFUSAL_WINDOW`]) is logged at once, the rest are counted,
/// and the count is logged in one line when the window ends. Bounded: at
/// most [`REFUSAL_CLIENTS`] clients are counted apart at a time; beyond
/// them one count covers all the others, so a flood from many addresses
/// costs a bounded table and a line per window too.
///
/// The closing lines are written by a task that runs only while some
/// window is open (started by the refusal that opens the first).
#[derive(Clone)]
pub(crate) struct RefusalLog {
    /// The line's message: "sign-in throttled".
    what: &'static str,
    tally: Arc<Mutex<Tally>>,
}

impl RefusalLog {
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, tally: Arc::new(Mutex::new(Tally::new(REFUSAL_WINDOW, REFUSAL_CLIENTS))) }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one refusal of `client`: logged now if it is the client's
    /// first in its window, else counted. Call within the runtime.
    pub(crate) fn note(&self, client: &str) {
        let now = Instant::now();
        let (lines, start_closer) = {
            let mut tally = self.tally();
            let mut lines = tally.due(now);
            lines.extend(tally.note(client, now));
            let start_closer = !tally.closing && tally.next_due().is_some();
            tally.closing |= start_closer;
            (lines, start_closer)
        };
        for line in lines {
            self.write(line);
        }
        if start_closer {
            tokio::spawn(self.clone().close_windows());
        }
    }

    /// Logs each window's count as it ends; returns once none is open.
    async fn close_windows(self) {
        loop {
            let next = {
                let mut tally = self.tally();
                match tally.next_due() {
                    Some(at) => at,
                    None => {
                        tally.closing = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(next.into()).await;
            let lines = self.tally().due(Instant::now());
            for line in lines {
                self.write(line);
            }
        }
    }

    fn write(&self, line: Line) {
        let what = self.what;
        match line {
            Line::First { client } => tracing::warn!(ip = %client, "{what}"),
            Line::Repeated { client, count } => {
                tracing::warn!(ip = %client, refusals = count, "{what}: {count} more in {}s", REFUSAL_WINDOW.as_secs())
            }
            Line::Others { count } => tracing::warn!(
                refusals = count,
                "{what}: {count} more in {}s, from clients beyond the {REFUSAL_CLIENTS} counted one by one",
                REFUSAL_WINDOW.as_secs()
            ),
        }
    }
}

/// What a [`RefusalLog`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A client's first refusal in its window.
    First { client: String },
    /// A client's refusals after its first, at the end of its window.
    Repeated { client: String, count: u64 },
    /// The refusals of clients not counted apart, at the end of their window.
    Others { count: u64 },
}

/// The counts behind a [`RefusalLog`]: pure, the time passed in.
#[derive(Debug)]
struct Tally {
    window: Duration,
    capacity: usize,
    /// Clients with an open window: when it opened, and refusals since the first.
    clients: HashMap<String, (Instant, u64)>,
    /// The same clients in the order their windows opened, which is the
    /// order they end in.
    opened: VecDeque<(Instant, String)>,
    /// Refusals of clients beyond the capacity: when their window opened,
    /// and how many.
    others: Option<(Instant, u64)>,
    /// Whether a task is writing the closing lines.
    closing: bool,
}

impl Tally {
    fn new(window: Duration, capacity: usize) -> Self {
        Self { window, capacity, clients: HashMap::new(), opened: VecDeque::new(), others: None, closing: false }
    }

    /// Counts a refusal of `client` at `now`; the line to write now, if any.
    fn note(&mut self, client: &str, now: Instant) -> Option<Line> {
        if let Some((_, count)) = self.clients.get_mut(client) {
            *count += 1;
            return None;
        }
        if self.clients.len() < self.capacity {
            self.clients.insert(client.to_owned(), (now, 0));
            self.opened.push_back((now, client.to_owned()));
            return Some(Line::First { client: client.to_owned() });
        }
        self.others.get_or_insert((now, 0)).1 += 1;
        None
    }

    /// The windows ended by `now`, forgotten; the counts worth a line.
    fn due(&mut self, now: Instant) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some((opened, _)) = self.opened.front() {
            if *opened + self.window > now {
                break;
            }
            let (_, client) = self.opened.pop_front().expect("just looked");
            if let Some((_, count)) = self.clients.remove(&client) {
                if count > 0 {
                    lines.push(Line::Repeated { client, count });
                }
            }
        }
        if let Some((opened, count)) = self.others {
            if opened + self.window <= now {
                self.others = None;
                lines.push(Line::Others { count });
            }
        }
        lines
    }

    /// When the next window ends, if one is open.
    fn next_due(&self) -> Option<Instant> {
        let client = self.opened.front().map(|(opened, _)| *opened + self.window);
        let others = self.others.map(|(opened, _)| opened + self.window);
        client.into_iter().chain(others).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_let_through_once_a_second_with_the_count_held_back() {
        let log = OnceASecond::default();
        let start = Instant::now();
        assert_eq!(log.allow(start), Some(0));
        for ms in [1, 50, 999] {
            assert_eq!(log.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.allow(start + Duration::from_millis(1000)), Some(3));
        assert_eq!(log.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(log.allow(start + Duration::from_millis(2000)), Some(1));
    }

    #[test]
    fn a_clients_refusals_are_one_line_at_the_first_and_one_with_the_count_when_the_window_ends() {
        let mut tally = Tally::new(Duration::from_secs(60), 10);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(tally.note("10.0.0.1", at(0)), Some(Line::First { client: "10.0.0.1".into() }));
        for s in 1..50 {
            assert_eq!(tally.note("10.0.0.1", at(s)), None);
        }
        assert_eq!(tally.note("10.0.0.2", at(30)), Some(Line::First { client: "10.0.0.2".into() }));
        assert_eq!(tally.next_due(), Some(at(60)));
        assert_eq!(tally.due(at(59)), vec![]);
        assert_eq!(tally.due(at(60)), vec![Line::Repeated { client: "10.0.0.1".into(), count: 49 }]);
        // A client refused once in its window adds no closing line.
        assert_eq!(tally.due(at(90)), vec![]);
        assert_eq!(tally.next_due(), None);
        // The next window starts with a line again.
        assert_eq!(tally.note("10.0.0.1", at(91)), Some(Line::First { client: "10.0.0.1".into() }));
    }

    #[test]
    fn past_its_capacity_a_tally_counts_the_other_clients_together() {
        let mut tally = Tally::new(Duration::from_secs(60), 2);
        let start = Instant::now();
        assert!(tally.note("a", start).is_some());
        assert!(tally.note("b", start).is_some());
        for i in 0..1000 {
            assert_eq!(tally.note(&format!("other-{i}"), start + Duration::from_secs(1)), None);
        }
        assert_eq!(tally.clients.len(), 2, "bounded");
        assert_eq!(tally.next_due(), Some(start + Duration::from_secs(60)));
        assert_eq!(tally.due(start + Duration::from_secs(61)), vec![Line::Others { count: 1000 }]);
        assert!(tally.clients.is_empty() && tally.opened.is_empty() && tally.others.is_none());
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("1".into())));
    }
}
