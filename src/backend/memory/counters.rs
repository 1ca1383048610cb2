//! Fixed-window counters for throttling (sign-in attempts, sign-ups), in
//! the same map as the new-room quotas that history and rooms charge.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{lock, MemoryBackend};
use crate::backend::{Counters, StoreResult};

#[async_trait]
impl Counters for MemoryBackend {
    async fn get(&self, keys: &[String]) -> StoreResult<Vec<(u64, Duration)>> {
        let counters = lock(&self.counters);
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|k| match counters.get(k) {
                Some((n, until)) if *until > now => (*n, *until - now),
                _ => (0, Duration::ZERO),
            })
            .collect())
    }

    async fn incr(&self, keys: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>> {
        Ok(self.count(keys, window))
    }

    async fn decr(&self, key: &str) -> StoreResult<()> {
        if let Some((n, until)) = lock(&self.counters).get_mut(key) {
            if *until > Instant::now() {
                *n = n.saturating_sub(1);
            }
        }
        Ok(())
    }

    async fn reset(&self, key: &str) -> StoreResult<()> {
        lock(&self.counters).remove(key);
        Ok(())
    }
}
