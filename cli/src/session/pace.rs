//! The pace of `send`s: the `hello`'s `rate` (docs/protocol.md §3.2, the
//! lower of the socket's and the user's limits) kept as a token bucket on
//! this side, so a pipe of many lines is sent as fast as the server takes
//! them and never refused for going faster. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// The `rate` of a `hello`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

impl Rate {
    /// The share of the server's rate this side keeps to. The server counts
    /// a send when it arrives, on its own clock: sends paced at exactly its
    /// rate can land a hair ahead of their token (a late one shortens the
    /// gap to the next), and one refusal costs a second's wait.
    pub const MARGIN: f64 = 0.9;

    /// This rate with [`Rate::MARGIN`] taken off; the burst is the server's.
    pub fn with_margin(self) -> Rate {
        Rate { per_sec: self.per_sec * Self::MARGIN, ..self }
    }
}

#[derive(Debug, Clone)]
pub struct Pace {
    per_sec: f64,
    burst: f64,
    /// Sends that may go at once, as of `at`.
    tokens: f64,
    at: Instant,
}

impl Pace {
    /// A full bucket, as the server's is for a new socket. A rate that
    /// makes no sense (zero, negative) is read as one send a second.
    pub fn new(rate: Rate, now: Instant) -> Pace {
        let per_sec = if rate.per_sec.is_finite() && rate.per_sec > 0.0 { rate.per_sec } else { 1.0 };
        let burst = f64::from(rate.burst.max(1));
        Pace { per_sec, burst, tokens: burst, at: now }
    }

    fn tokens(&self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec;
        (self.tokens + earned).min(self.burst)
    }

    /// When the next send may go (`now` when it may go now).
    pub fn ready_at(&self, now: Instant) -> Instant {
        let missing = 1.0 - self.tokens(now);
        if missing <= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(missing / self.per_sec)
        }
    }

    /// A send went at `now`.
    pub fn take(&mut self, now: Instant) {
        self.tokens = self.tokens(now) - 1.0;
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_margin_slows_the_rate_and_keeps_the_burst() {
        let rate = Rate { per_sec: 20.0, burst: 5 }.with_margin();
        assert_eq!(rate, Rate { per_sec: 18.0, burst: 5 });
    }

    #[test]
    fn a_burst_goes_at_once_then_one_send_per_step() {
        let t = Instant::now();
        let mut p = Pace::new(Rate { per_sec: 10.0, burst: 3 }, t);
        for _ in 0..3 {
            assert_eq!(p.ready_at(t), t);
            p.take(t);
        }
        assert_eq!(p.ready_at(t), t + MS(100));
        assert_eq!(p.ready_at(t + MS(40)), t + MS(100));
        p.take(t + MS(100));
        assert_eq!(p.ready_at(t + MS(100)), t + MS(200));
    }

    #[test]
    fn the_bucket_refills_up_to_the_burst_and_no_further() {
        let t = Instant::now();
        let mut p = Pace::new(Rate { per_sec: 2.0, burst: 2 }, t);
        p.take(t);
        p.take(t);
        let later = t + Duration::from_secs(60);
        p.take(later);
        p.take(later);
        assert_eq!(p.ready_at(later), later + MS(500), "two saved up, not 120");
    }

    #[test]
    fn a_rate_that_makes_no_sense_is_one_a_second() {
        let t = Instant::now();
        let mut p = Pace::new(Rate { per_sec: 0.0, burst: 0 }, t);
        p.take(t);
        assert_eq!(p.ready_at(t), t + Duration::from_secs(1));
    }
}
