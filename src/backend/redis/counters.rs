//! Fixed-window counters, one key each.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;

use super::{connection::Call, keys, scripts::SCRIPTS, RedisBackend};
use crate::backend::{Counters, StoreResult};

/// `(value, pttl)` from a counter script.
fn count(reply: Value) -> StoreResult<(u64, Duration)> {
    let (n, pttl): (i64, i64) = reply.convert()?;
    Ok((n.max(0) as u64, Duration::from_millis(pttl.max(0) as u64)))
}

/// Counters are independent keys (a login attempt counts one per address
/// and one per (name, address), in different slots): one script call per
/// key, atomic per key, all in one pipeline.
#[async_trait]
impl Counters for RedisBackend {
    async fn get(&self, names: &[String]) -> StoreResult<Vec<(u64, Duration)>> {
        let calls: Vec<Call> =
            names.iter().map(|k| Call::new(&SCRIPTS.counter_get, vec![keys::counter(k)], vec![])).collect();
        self.conn.run_all(&calls).await?.into_iter().map(count).collect()
    }

    async fn incr(&self, names: &[String], window: Duration) -> StoreResult<Vec<(u64, Duration)>> {
        let window: Value = (window.as_millis() as i64).into();
        let calls: Vec<Call> = names
            .iter()
            .map(|k| Call::new(&SCRIPTS.counter_incr, vec![keys::counter(k)], vec![window.clone()]))
            .collect();
        self.conn.run_all(&calls).await?.into_iter().map(count).collect()
    }

    async fn decr(&self, name: &str) -> StoreResult<()> {
        self.conn.run::<()>(&SCRIPTS.counter_decr, vec![keys::counter(name)], vec![]).await
    }

    async fn reset(&self, name: &str) -> StoreResult<()> {
        self.conn.timed("del", self.conn.fast.del(keys::counter(name))).await
    }
}
