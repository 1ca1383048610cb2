//! Login throttling: failed logins counted per (username, client address)
//! and per client address, in fixed windows kept in the shared store, so
//! every instance enforces the same limit.

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::backend::{Counters, StoreResult};

/// How many times the per-pair limit one address may fail in all.
const ADDRESS_FACTOR: u64 = 5;

#[derive(Clone)]
pub struct LoginThrottle {
    counters: Arc<dyn Counters>,
    max_failures: u64,
    window: Duration,
}

fn keys(username: &str, addr: IpAddr) -> [String; 2] {
    // Bound the key length whatever was typed; names are at most 32 characters.
    let name: String = username.trim().to_ascii_lowercase().chars().take(64).collect();
    [format!("login:pair:{addr}:{name}"), format!("login:addr:{addr}")]
}

impl LoginThrottle {
    pub fn new(counters: Arc<dyn Counters>, max_failures: u32, window: Duration) -> Self {
        Self { counters, max_failures: u64::from(max_failures), window }
    }

    /// `Some(retry_after)` when this pair or this address has used up its
    /// failures for the current window.
    pub async fn check(&self, username: &str, addr: IpAddr) -> StoreResult<Option<Duration>> {
        let counts = self.counters.get(&keys(username, addr)).await?;
        let (pair, pair_left) = counts[0];
        let (address, address_left) = counts[1];
        Ok(if pair >= self.max_failures {
            Some(pair_left.max(Duration::from_secs(1)))
        } else if address >= self.max_failures * ADDRESS_FACTOR {
            Some(address_left.max(Duration::from_secs(1)))
        } else {
            None
        })
    }

    pub async fn failed(&self, username: &str, addr: IpAddr) -> StoreResult<()> {
        self.counters.incr(&keys(username, addr), self.window).await
    }

    /// A successful login clears the pair's failures (not the address's).
    pub async fn succeeded(&self, username: &str, addr: IpAddr) -> StoreResult<()> {
        let [pair, _] = keys(username, addr);
        self.counters.reset(&pair).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::memory::MemoryBackend, config::Config};

    fn throttle(max: u32) -> LoginThrottle {
        LoginThrottle::new(Arc::new(MemoryBackend::new(&Config::default())), max, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_pair_is_blocked_after_its_failures_and_others_are_not() {
        let t = throttle(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check("Alice", ip).await.unwrap().is_none());
            t.failed("Alice", ip).await.unwrap();
        }
        let retry = t.check("alice", ip).await.unwrap().expect("blocked, ignoring case");
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(60));
        assert!(t.check("bob", ip).await.unwrap().is_none());
        assert!(t.check("alice", "10.0.0.2".parse().unwrap()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_address_is_blocked_after_five_times_the_limit_across_names() {
        let t = throttle(2);
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        for i in 0..10 {
            let name = format!("user{}", i / 2);
            assert!(t.check(&name, ip).await.unwrap().is_none(), "attempt {i}");
            t.failed(&name, ip).await.unwrap();
        }
        assert!(t.check("someone-new", ip).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn success_clears_the_pair() {
        let t = throttle(2);
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        t.failed("carol", ip).await.unwrap();
        t.succeeded("carol", ip).await.unwrap();
        t.failed("carol", ip).await.unwrap();
        assert!(t.check("carol", ip).await.unwrap().is_none());
    }
}
