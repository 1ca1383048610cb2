//! How many upgrades may be in flight at once, and the answer to the rest.
//!
//! When an instance holding thousands of sockets restarts, all of their
//! clients reconnect at once. Upgrades that queue deeper than the instance
//! can answer in time (each waits for a store round trip) are answered
//! after their clients gave up; the clients retry, and the storm feeds
//! itself. So an upgrade first takes a place here, before any store work,
//! and holds it until it is answered with a 101 or a refusal ([`Pending`]
//! gives it back on every path). With every place taken it is answered at
//! once: 503 with a `Retry-After` drawn uniformly from 1 s to the
//! configured maximum, so that the clients turned away come back spread
//! over those seconds rather than together.
//!
//! Asking is one compare-and-swap on a counter; turning away adds a few
//! relaxed atomic operations. No lock: in a storm this is the path every
//! upgrade takes.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::{meters::Meters, telemetry::OnceASecond};

/// The places for upgrades in flight on this instance.
#[derive(Debug)]
pub struct Admission {
    /// Upgrades admitted and not yet answered.
    pending: AtomicUsize,
    max_pending: usize,
    /// The longest `Retry-After`, in whole seconds (at least 1).
    retry_after_max: u64,
    /// Where the times below are counted from.
    origin: Instant,
    /// When an upgrade was last turned away: nanoseconds after `origin`,
    /// plus one (0: never).
    last_shed: AtomicU64,
    /// The state of the `Retry-After` draws (splitmix64's counter).
    draws: AtomicU64,
    warning: OnceASecond,
    meters: Meters,
}

/// A place held by an upgrade in flight; dropping it gives the place back.
#[derive(Debug)]
pub struct Pending<'a> {
    pending: &'a AtomicUsize,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Every place was taken: come back after this many whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub retry_after: u64,
}

impl Admission {
    pub fn new(max_pending: usize, retry_after_max: Duration, meters: Meters) -> Self {
        Self::seeded(max_pending, retry_after_max, meters, uuid::Uuid::new_v4().as_u64_pair().0)
    }

    /// With the draws' starting point given: instances started together
    /// must not draw the same sequence, tests want a known one.
    fn seeded(max_pending: usize, retry_after_max: Duration, meters: Meters, seed: u64) -> Self {
        Self {
            pending: AtomicUsize::new(0),
            max_pending: max_pending.max(1),
            retry_after_max: retry_after_max.as_secs().max(1),
            origin: Instant::now(),
            last_shed: AtomicU64::new(0),
            draws: AtomicU64::new(seed),
            warning: OnceASecond::default(),
            meters,
        }
    }

    /// A place for an upgrade, or how long its client should wait.
    pub fn enter(&self) -> Result<Pending<'_>, Shed> {
        let admitted = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_pending).then_some(n + 1))
            .is_ok();
        if admitted {
            return Ok(Pending { pending: &self.pending });
        }
        Err(self.shed(Instant::now()))
    }

    /// Turns an upgrade away at `now`: counted, remembered for
    /// [`Admission::retry_after`], and warned about once a second.
    fn shed(&self, now: Instant) -> Shed {
        self.last_shed.store(self.since_origin(now).saturating_add(1), Ordering::Relaxed);
        self.meters.upgrade_shed();
        if let Some(held_back) = self.warning.allow(now) {
            tracing::warn!(
                max = self.max_pending,
                also_turned_away = held_back,
                "MAX_PENDING_UPGRADES upgrades in flight: answering more with 503 and Retry-After"
            );
        }
        Shed { retry_after: self.draw_retry_after() }
    }

    /// While this instance is turning upgrades away: a `Retry-After` (whole
    /// seconds) for a client that asks how it stands. "While" is until the
    /// longest `Retry-After` since the last upgrade turned away has passed:
    /// until then, clients it turned away are still coming back.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after_at(Instant::now())
    }

    fn retry_after_at(&self, now: Instant) -> Option<u64> {
        let last = self.last_shed.load(Ordering::Relaxed).checked_sub(1)?;
        let window = Duration::from_secs(self.retry_after_max).as_nanos() as u64;
        (self.since_origin(now) < last.saturating_add(window)).then(|| self.draw_retry_after())
    }

    /// Uniform in 1 ..= the maximum.
    fn draw_retry_after(&self) -> u64 {
        1 + splitmix64(self.draws.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)) % self.retry_after_max
    }

    fn since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// splitmix64's increment: consecutive states give independent-looking
/// outputs.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function (Steele, Lea and Flood, 2014): a fast,
/// well-mixed draw from a counter, good enough to spread clients out (not
/// for anything secret).
fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, retry_max: u64) -> Admission {
        Admission::seeded(max, Duration::from_secs(retry_max), Meters::disabled(), 7)
    }

    #[test]
    fn upgrades_beyond_the_places_are_turned_away_until_one_is_given_back() {
        let a = admission(2, 5);
        let first = a.enter().unwrap();
        let second = a.enter().unwrap();
        let shed = a.enter().unwrap_err();
        assert!((1..=5).contains(&shed.retry_after), "{shed:?}");
        drop(first);
        let third = a.enter().expect("a place was given back");
        assert!(a.enter().is_err());
        drop((second, third));
        assert_eq!(a.pending.load(Ordering::Relaxed), 0, "every place is back");
        let _all: Vec<_> = (0..2).map(|_| a.enter().unwrap()).collect();
    }

    #[test]
    fn retry_afters_cover_every_second_from_one_to_the_maximum_and_nothing_else() {
        let a = admission(1, 5);
        let _held = a.enter().unwrap();
        let mut seen = [0u32; 6];
        for _ in 0..5000 {
            let secs = a.enter().unwrap_err().retry_after;
            assert!((1..=5).contains(&secs), "{secs}");
            seen[secs as usize] += 1;
        }
        // Uniform: each of the five seconds about a thousand times.
        assert!(seen[1..].iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let one = admission(1, 1);
        let _held = one.enter().unwrap();
        assert_eq!(one.enter().unwrap_err().retry_after, 1);
    }

    #[test]
    fn a_probe_is_told_to_wait_until_the_longest_retry_after_since_the_last_turned_away_has_passed() {
        let a = admission(1, 3);
        let start = a.origin;
        assert_eq!(a.retry_after_at(start), None, "nothing turned away yet");
        let _held = a.enter().unwrap();
        assert_eq!(a.retry_after_at(start), None, "all places taken, nobody turned away");
        a.shed(start + Duration::from_secs(10));
        for after in [0, 1000, 2999] {
            let said = a.retry_after_at(start + Duration::from_secs(10) + Duration::from_millis(after));
            assert!(said.is_some_and(|s| (1..=3).contains(&s)), "{after} ms after: {said:?}");
        }
        assert_eq!(a.retry_after_at(start + Duration::from_secs(13)), None);
    }

    #[test]
    fn places_race_to_exactly_the_maximum() {
        let a = admission(8, 5);
        let admitted = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    let held: Vec<_> = (0..100).filter_map(|_| a.enter().ok()).collect();
                    admitted.fetch_add(held.len(), Ordering::Relaxed);
                    barrier.wait();
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 8);
        assert_eq!(a.pending.load(Ordering::Relaxed), 0);
    }
}
