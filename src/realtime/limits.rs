//! Per-socket abuse limits: a token bucket for frames that cost the store
//! something, and a sliding count of invalid frames.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Refills `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        Self { rate, burst: f64::from(burst), tokens: f64::from(burst), last: now }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts events in a sliding window; `hit` says when there were too many.
#[derive(Debug)]
pub struct Strikes {
    window: Duration,
    max: usize,
    hits: VecDeque<Instant>,
}

impl Strikes {
    pub fn new(max: usize, window: Duration) -> Self {
        Self { window, max, hits: VecDeque::new() }
    }

    /// Records one event; `true` once more than `max` fell within the window.
    pub fn hit(&mut self, now: Instant) -> bool {
        while self.hits.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            self.hits.pop_front();
        }
        self.hits.push_back(now);
        self.hits.len() > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, t0);
        assert!((0..20).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.take(t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| bucket.take(later)).count(), 20, "never above the burst");
    }

    #[test]
    fn strikes_trip_past_the_max_within_the_window() {
        let t0 = Instant::now();
        let mut strikes = Strikes::new(20, Duration::from_secs(60));
        assert!((0..20).all(|i| !strikes.hit(t0 + Duration::from_secs(i))));
        assert!(strikes.hit(t0 + Duration::from_secs(30)), "the 21st within a minute");
        let mut strikes = Strikes::new(2, Duration::from_secs(60));
        assert!(!strikes.hit(t0));
        assert!(!strikes.hit(t0 + Duration::from_secs(1)));
        assert!(!strikes.hit(t0 + Duration::from_secs(61)), "the first one aged out");
    }
}
