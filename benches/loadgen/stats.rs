//! Clocks and percentiles: what every scenario reports its numbers with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The value at fraction `p` of sorted samples.
pub(crate) fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "mean {:.1?}, p50 {:.1?}, max {:.1?} over {}",
        mean,
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples.len()
    )
}

/// p50, p99 and max of latencies in µs, as milliseconds.
pub(crate) fn latency_line(sorted: &[(u64, u64)]) -> String {
    let at = |p: f64| pct(sorted, p).1 as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50),
        at(0.99),
        sorted.last().map_or(0, |d| d.1) as f64 / 1000.0
    )
}
