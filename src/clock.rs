//! Wall-clock time, in one unit, from one clock.
//!
//! Every time palaver stores, compares with the store, or sends to a client
//! is a [`UnixMillis`]: session expiries, message times, presence deadlines,
//! the index of sessions. [`UnixMillis::now`] is the only place the system
//! clock is read. (Timers that only measure how long something takes use
//! tokio's monotonic `Instant`, which never appears in data.)

use std::{
    fmt,
    ops::{Add, Sub},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A point in time: milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(i64);

impl UnixMillis {
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// The current time. The one reading of the system clock in palaver.
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(since.as_millis() as i64)
    }

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds, rounded down.
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time rounded down to a whole second (what Redis `EXAT` keeps).
    pub const fn floor_secs(self) -> Self {
        Self::from_secs(self.as_secs())
    }

    /// How long from `self` until `later`; zero if `later` is not after it.
    pub fn until(self, later: UnixMillis) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }

    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn from_datetime(at: OffsetDateTime) -> Self {
        Self((at.unix_timestamp_nanos() / 1_000_000) as i64)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for UnixMillis {
    type Output = UnixMillis;
    fn add(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_add(millis(d)))
    }
}

impl Sub<Duration> for UnixMillis {
    type Output = UnixMillis;
    fn sub(self, d: Duration) -> UnixMillis {
        UnixMillis(self.0.saturating_sub(millis(d)))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_rounds_down() {
        let t = UnixMillis::from_millis(10_999);
        assert_eq!(t.as_secs(), 10);
        assert_eq!(t.floor_secs(), UnixMillis::from_secs(10));
        assert_eq!(t + Duration::from_secs(1), UnixMillis::from_millis(11_999));
        assert_eq!(t - Duration::from_millis(999), UnixMillis::from_secs(10));
        assert_eq!(t.until(UnixMillis::from_secs(12)), Duration::from_millis(1001));
        assert_eq!(UnixMillis::from_secs(12).until(t), Duration::ZERO);
        assert_eq!(UnixMillis::from_millis(i64::MAX) + Duration::from_secs(1), UnixMillis::from_millis(i64::MAX));
        assert_eq!(UnixMillis::from_millis(-1).as_secs(), -1);
    }

    #[test]
    fn it_round_trips_through_datetimes_and_json() {
        let t = UnixMillis::from_millis(1_700_000_000_123);
        assert_eq!(UnixMillis::from_datetime(t.to_datetime()), t);
        assert_eq!(serde_json::to_string(&t).unwrap(), "1700000000123");
        assert_eq!(serde_json::from_str::<UnixMillis>("5").unwrap(), UnixMillis::from_millis(5));
    }
}
