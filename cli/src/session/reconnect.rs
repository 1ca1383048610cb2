//! When a socket ends: whether to come back, and how long to wait first.

use std::time::{Duration, Instant};

/// What a close (or a lost connection) means for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterClose {
    /// 4401: the session or its token is over. Do not reconnect.
    SignedOut(String),
    /// 4403 `access revoked`: the user is no longer a member of the room.
    /// Do not reconnect to it.
    Removed,
    /// The server went away or asked to be tried later: reconnect with
    /// backoff and `after=`.
    Reconnect(String),
    /// The server refused what this client sent (1008, 1009, ...): reconnecting
    /// would only repeat it. Report and stop.
    Fatal(String),
}

/// Reads a close frame's code and reason (a close frame without a code is
/// 1005; a connection that ends with no close frame is handled as lost
/// before this).
pub fn after_close(code: u16, reason: &str) -> AfterClose {
    let said = |code: u16| {
        if reason.is_empty() {
            format!("closed with {code}")
        } else {
            format!("closed with {code} ({reason})")
        }
    };
    match code {
        // The token (not the session) ended, or a reauth token was refused:
        // a refresh and a new socket settle it; a session that is over
        // refuses the refresh, and then the client is signed out.
        4401 if matches!(reason, "token expired" | "invalid token") => AfterClose::Reconnect(said(4401)),
        4401 => AfterClose::SignedOut(if reason.is_empty() { "4401".into() } else { reason.into() }),
        4403 => AfterClose::Removed,
        // Normal, going away, no status, abnormal, internal error, service
        // restart, try again later, bad gateway: the server or the path to
        // it will be back.
        c @ (1000 | 1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 1014) => AfterClose::Reconnect(said(c)),
        c => AfterClose::Fatal(said(c)),
    }
}

/// Exponential backoff: 0.5 s, doubling, at most 10 s, each wait drawn
/// between half and all of its step ("equal jitter"), so clients dropped
/// together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(10);
    /// A connection that lasted this long was a good one: the next wait
    /// starts again from [`Backoff::FIRST`]. One that ends sooner (a server
    /// that greets and then closes with 1013) keeps climbing.
    pub const STABLE: Duration = Duration::from_secs(10);

    pub fn new() -> Backoff {
        Backoff { step: Self::FIRST }
    }

    /// The next wait; `jitter` is uniform in [0, 1).
    pub fn next_wait(&mut self, jitter: f64) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(Self::MAX);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// A connection ended after `lived`.
    pub fn connection_ended(&mut self, lived: Duration) {
        if lived >= Self::STABLE {
            self.step = Self::FIRST;
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The longest `Retry-After` honoured: an hour, the most a palaver server
/// can be configured to say.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

/// The wait after an upgrade the server turned away as busy (503 with
/// `Retry-After`): what it asked, plus up to a second of this client's own
/// jitter (clients told the same second do not all come back at its
/// start); and never less than the backoff's own `backoff` would be.
pub fn busy_wait(retry_after: Duration, backoff: Duration, jitter: f64) -> Duration {
    let asked = retry_after.min(RETRY_AFTER_MAX) + Duration::from_secs(1).mul_f64(jitter.clamp(0.0, 1.0));
    asked.max(backoff)
}

/// What the user is told about the connection: once when it is lost (or
/// cannot be made), once when the server says it is busy, once when it is
/// back, never at every attempt between.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the connection was lost, while it is.
    since: Option<Instant>,
    /// Attempts that failed since.
    attempts: u32,
    /// Whether "the server is busy" was said in this outage.
    told_busy: bool,
}

impl Outage {
    /// A connection ended, or an attempt to make one failed: the line to
    /// print, the first time only.
    pub fn failed(&mut self, why: &str, now: Instant) -> Option<String> {
        if !self.begin(now) {
            return None;
        }
        Some(format!("connection lost ({why}), reconnecting…"))
    }

    /// The server turned an attempt away as busy, and the next is `wait`
    /// away: the line to print, the first time in an outage only.
    pub fn busy(&mut self, wait: Duration, now: Instant) -> Option<String> {
        self.begin(now);
        if std::mem::replace(&mut self.told_busy, true) {
            return None;
        }
        Some(format!("the server is busy; retrying in {} s", wait.as_secs_f64().ceil()))
    }

    /// Counts a failure; true when it starts the outage.
    fn begin(&mut self, now: Instant) -> bool {
        if self.since.is_some() {
            self.attempts += 1;
            return false;
        }
        self.since = Some(now);
        self.attempts = 0;
        true
    }

    /// The server greeted a new socket: how long it was away, if it was.
    pub fn greeted(&mut self, now: Instant) -> Option<String> {
        self.told_busy = false;
        let since = self.since.take()?;
        let tries = match self.attempts {
            0 => String::new(),
            1 => ", 1 attempt failed".to_owned(),
            n => format!(", {n} attempts failed"),
        };
        Some(format!("reconnected after {:.1} s{tries}; what was missed follows", (now - since).as_secs_f64()))
    }
}

/// A number uniform in [0, 1), from the operating system's randomness (by
/// way of a v4 uuid: no generator of our own to seed).
pub fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn waits_double_from_half_a_second_up_to_ten() {
        let mut b = Backoff::new();
        let full: Vec<_> = (0..8).map(|_| b.next_wait(1.0)).collect();
        assert_eq!(full, [MS(500), MS(1000), MS(2000), MS(4000), MS(8000), MS(10_000), MS(10_000), MS(10_000)]);
    }

    #[test]
    fn jitter_draws_between_half_and_all_of_the_step() {
        assert_eq!(Backoff::new().next_wait(0.0), MS(250));
        assert_eq!(Backoff::new().next_wait(0.5), MS(375));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
        let draws: Vec<_> = (0..20).map(|_| jitter()).collect();
        assert!(draws.iter().any(|&j| j != draws[0]), "random");
    }

    #[test]
    fn only_a_connection_that_lasted_starts_the_backoff_over() {
        let mut b = Backoff::new();
        for _ in 0..4 {
            b.next_wait(1.0);
        }
        b.connection_ended(Duration::from_secs(1));
        assert_eq!(b.next_wait(1.0), MS(8000), "a greet-and-close keeps climbing");
        b.connection_ended(Backoff::STABLE);
        assert_eq!(b.next_wait(1.0), MS(500));
    }

    #[test]
    fn an_outage_is_told_once_when_it_starts_and_once_when_it_ends() {
        let t = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.greeted(t), None, "the first hello ends no outage");
        assert_eq!(
            o.failed("closed with 1012", t).as_deref(),
            Some("connection lost (closed with 1012), reconnecting…")
        );
        assert_eq!(o.failed("connection refused", t + MS(500)), None);
        assert_eq!(o.failed("connection refused", t + MS(1500)), None);
        assert_eq!(
            o.greeted(t + MS(2500)).as_deref(),
            Some("reconnected after 2.5 s, 2 attempts failed; what was missed follows")
        );
        assert_eq!(o.greeted(t + MS(3000)), None);
        assert!(o.failed("closed with 1001", t + MS(4000)).is_some(), "the next outage is told again");
        assert_eq!(o.greeted(t + MS(4200)).as_deref(), Some("reconnected after 0.2 s; what was missed follows"));
    }

    #[test]
    fn a_busy_server_is_waited_for_at_least_as_long_as_it_asked_plus_up_to_a_second() {
        let secs = Duration::from_secs;
        assert_eq!(busy_wait(secs(3), MS(500), 0.0), secs(3));
        assert_eq!(busy_wait(secs(3), MS(500), 0.5), MS(3500));
        assert_eq!(busy_wait(secs(3), MS(500), 1.0), secs(4));
        assert_eq!(busy_wait(secs(1), secs(8), 0.5), secs(8), "never sooner than the backoff");
        assert_eq!(busy_wait(secs(86_400), MS(500), 0.0), RETRY_AFTER_MAX, "at most an hour");
        for _ in 0..100 {
            let wait = busy_wait(secs(5), MS(250), jitter());
            assert!((secs(5)..secs(6)).contains(&wait), "{wait:?}");
        }
    }

    #[test]
    fn a_busy_server_is_told_once_an_outage() {
        let t = Instant::now();
        let mut o = Outage::default();
        let said = o.busy(MS(3400), t);
        assert_eq!(said.as_deref(), Some("the server is busy; retrying in 4 s"));
        assert_eq!(o.busy(MS(2000), t + MS(3400)), None);
        assert_eq!(o.failed("connection refused", t + MS(6000)), None, "the outage was told already");
        assert_eq!(
            o.greeted(t + MS(7000)).as_deref(),
            Some("reconnected after 7.0 s, 2 attempts failed; what was missed follows")
        );
        // A new outage: lost first, then busy, each said once.
        assert!(o.failed("closed with 1012", t + MS(8000)).is_some());
        assert_eq!(o.busy(MS(1000), t + MS(8100)).as_deref(), Some("the server is busy; retrying in 1 s"));
        assert_eq!(o.busy(MS(1000), t + MS(9100)), None);
    }

    #[test]
    fn close_codes_decide_whether_to_come_back() {
        for reason in ["token expired", "invalid token"] {
            assert!(matches!(after_close(4401, reason), AfterClose::Reconnect(_)), "{reason}");
        }
        for reason in ["logged out", "session expired", "session revoked"] {
            assert_eq!(after_close(4401, reason), AfterClose::SignedOut(reason.into()));
        }
        assert_eq!(
            after_close(1001, "server shutting down"),
            AfterClose::Reconnect("closed with 1001 (server shutting down)".into())
        );
        assert!(matches!(after_close(1013, "slow consumer"), AfterClose::Reconnect(_)));
        assert!(matches!(after_close(1013, "store unavailable"), AfterClose::Reconnect(_)));
        assert!(matches!(after_close(1006, ""), AfterClose::Reconnect(_)));
        assert_eq!(
            after_close(1008, "policy violation"),
            AfterClose::Fatal("closed with 1008 (policy violation)".into())
        );
        assert!(matches!(after_close(1009, "message too big"), AfterClose::Fatal(_)));
        assert!(matches!(after_close(4000, ""), AfterClose::Fatal(_)));
        assert_eq!(after_close(4403, "access revoked"), AfterClose::Removed);
        assert_eq!(after_close(4403, ""), AfterClose::Removed, "the code decides, whatever the reason");
    }
}
