//! Throttling of password guessing and account creation, in fixed windows
//! kept in the shared store so that every instance enforces one limit.
//!
//! An attempt is counted *before* the password is verified, atomically in
//! the store, and forgiven when it succeeds. Counting after verification
//! would let every attempt already queued for Argon2 pass the check at the
//! same count: a thousand concurrent guesses against a limit of ten.
//! Clients are counted per address, IPv6 per /64 (one host gets a whole /64
//! and can pick any address in it).
//!
//! A refused attempt must cost its sender, not the store or the log: the
//! client's count comes first, and an attempt refused on it touches no
//! per-name counter, so a flood of made-up names from one client adds no
//! key once the client is past its limit (only the increment of its own
//! counter); its refusals are logged summarised ([`RefusalLog`]).

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::{
    backend::{Counters, StoreResult},
    net::address_key,
    telemetry::RefusalLog,
};

/// How many times the per-pair limit one address may fail in all.
const ADDRESS_FACTOR: u64 = 5;

/// The time left in the longest window of `counts` whose value is past
/// `max`: when the attempt they counted may be made again.
fn passed(counts: &[(u64, Duration)], max: u64) -> Option<Duration> {
    counts.iter().filter(|(n, _)| *n > max).map(|(_, left)| (*left).max(Duration::from_secs(1))).max()
}

/// Failed logins, per (username, client) and per client.
#[derive(Clone)]
pub struct LoginThrottle {
    counters: Arc<dyn Counters>,
    max_failures: u64,
    window: Duration,
    refusals: RefusalLog,
}

/// A login attempt that was counted and may go on to the password check.
#[derive(Debug)]
pub struct Attempt {
    pair: String,
    address: String,
}

impl LoginThrottle {
    pub fn new(counters: Arc<dyn Counters>, max_failures: u32, window: Duration) -> Self {
        Self { counters, max_failures: u64::from(max_failures), window, refusals: RefusalLog::new("sign-in throttled") }
    }

    fn keys(username: &str, addr: IpAddr) -> Attempt {
        // Bound the key length whatever was typed; names are at most 32 characters.
        let name: String = username.trim().to_ascii_lowercase().chars().take(64).collect();
        let client = address_key(addr);
        Attempt { pair: format!("login:pair:{client}:{name}"), address: format!("login:addr:{client}") }
    }

    /// Counts an attempt. `Ok` to verify the password; `Err(retry_after)`
    /// when this pair or this client has used up its attempts.
    ///
    /// The client is counted first. Past its limit, the pair's counter is
    /// only read (for the answer's `Retry-After`, the longer of the two
    /// windows, as if it had been counted too): nothing is written for the
    /// name. Within it, the pair is counted.
    pub async fn attempt(&self, username: &str, addr: IpAddr) -> StoreResult<Result<Attempt, Duration>> {
        let attempt = Self::keys(username, addr);
        let counters = &*self.counters;
        let (client, pair) = tokio::try_join!(
            counters.incr(std::slice::from_ref(&attempt.address), self.window),
            counters.get(std::slice::from_ref(&attempt.pair)),
        )?;
        let refused = match passed(&client, self.max_failures * ADDRESS_FACTOR) {
            Some(left) => {
                // The pair's count as this attempt would have made it.
                let (failures, pair_left) = pair[0];
                Some(passed(&[(failures + 1, pair_left)], self.max_failures).map_or(left, |l| l.max(left)))
            }
            None => {
                let counted = counters.incr(std::slice::from_ref(&attempt.pair), self.window).await?;
                passed(&counted, self.max_failures)
            }
        };
        match refused {
            Some(retry_after) => {
                self.refusals.note(&address_key(addr));
                Ok(Err(retry_after))
            }
            None => Ok(Ok(attempt)),
        }
    }

    /// The password was right: the pair's failures are cleared, and the
    /// client's count takes this attempt back.
    pub async fn succeeded(&self, attempt: Attempt) -> StoreResult<()> {
        self.counters.reset(&attempt.pair).await?;
        self.counters.decr(&attempt.address).await
    }
}

/// Registrations per client: each costs a password hash and a permanent key.
///
/// Like logins, attempts are counted before anything is checked and a
/// successful one is forgiven, so the budget (`REGISTER_MAX_PER_ADDRESS`)
/// is one of failures: an office of fifty behind one address can all sign
/// up. What bounds the accounts one address makes is, when anyone may sign
/// up, a separate and higher budget of successes
/// (`REGISTER_MAX_SUCCESSES_PER_ADDRESS`), reserved atomically before the
/// account is made; when sign-up takes an invite, each account costs a use
/// of a valid code instead.
#[derive(Clone)]
pub struct RegisterThrottle {
    counters: Arc<dyn Counters>,
    max: u64,
    max_successes: u64,
    window: Duration,
    refusals: RefusalLog,
}

/// A registration attempt that was counted.
#[derive(Debug)]
pub struct RegisterAttempt {
    address: String,
    successes: String,
}

impl RegisterThrottle {
    pub fn new(counters: Arc<dyn Counters>, max: u32, max_successes: u32, window: Duration) -> Self {
        Self {
            counters,
            max: u64::from(max),
            max_successes: u64::from(max_successes),
            window,
            refusals: RefusalLog::new("registration throttled"),
        }
    }

    /// Counts an attempt; `Err(retry_after)` past the limit.
    pub async fn attempt(&self, addr: IpAddr) -> StoreResult<Result<RegisterAttempt, Duration>> {
        let client = address_key(addr);
        let attempt = RegisterAttempt {
            address: format!("register:addr:{client}"),
            successes: format!("register:made:{client}"),
        };
        let counts = self.counters.incr(std::slice::from_ref(&attempt.address), self.window).await?;
        match passed(&counts, self.max) {
            Some(retry_after) => {
                self.refusals.note(&client);
                Ok(Err(retry_after))
            }
            None => Ok(Ok(attempt)),
        }
    }

    /// Reserves one of the client's successes before an account is made;
    /// `Err(retry_after)` when it made as many as it may this window.
    pub async fn reserve_success(&self, attempt: &RegisterAttempt) -> StoreResult<Result<(), Duration>> {
        let counts = self.counters.incr(std::slice::from_ref(&attempt.successes), self.window).await?;
        match passed(&counts, self.max_successes) {
            Some(retry_after) => {
                self.counters.decr(&attempt.successes).await?;
                Ok(Err(retry_after))
            }
            None => Ok(Ok(())),
        }
    }

    /// The account was not made after all: its reserved success goes back.
    pub async fn release_success(&self, attempt: &RegisterAttempt) -> StoreResult<()> {
        self.counters.decr(&attempt.successes).await
    }

    /// The account was made: the attempt is forgiven.
    pub async fn succeeded(&self, attempt: RegisterAttempt) -> StoreResult<()> {
        self.counters.decr(&attempt.address).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::memory::MemoryBackend, config::Config};

    fn counters() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::new(&Config::default().chat))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_pair_is_blocked_after_its_attempts_and_others_are_not() {
        let t = LoginThrottle::new(counters(), 3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(t.attempt("Alice", ip("10.0.0.1")).await.unwrap().is_ok());
        }
        let retry = t.attempt("alice", ip("10.0.0.1")).await.unwrap().expect_err("blocked, ignoring case");
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(60));
        assert!(t.attempt("bob", ip("10.0.0.1")).await.unwrap().is_ok());
        assert!(t.attempt("alice", ip("10.0.0.2")).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_client_is_blocked_after_five_times_the_limit_across_names() {
        let t = LoginThrottle::new(counters(), 2, Duration::from_secs(60));
        for i in 0..10 {
            let name = format!("user{}", i / 2);
            assert!(t.attempt(&name, ip("10.0.0.3")).await.unwrap().is_ok(), "attempt {i}");
        }
        assert!(t.attempt("someone-new", ip("10.0.0.3")).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn past_its_limit_a_client_is_refused_without_counting_the_names_it_tries() {
        let memory = counters();
        let t = LoginThrottle::new(memory.clone(), 2, Duration::from_secs(60));
        for i in 0..10 {
            assert!(t.attempt(&format!("user{i}"), ip("10.0.0.6")).await.unwrap().is_ok(), "attempt {i}");
        }
        let pairs: Vec<String> =
            (0..100).map(|i| LoginThrottle::keys(&format!("user{i}"), ip("10.0.0.6")).pair).collect();
        for i in 10..100 {
            assert!(t.attempt(&format!("user{i}"), ip("10.0.0.6")).await.unwrap().is_err(), "attempt {i}");
        }
        let counted = memory.get(&pairs).await.unwrap();
        assert!(counted[..10].iter().all(|(n, _)| *n == 1), "{counted:?}");
        assert!(counted[10..].iter().all(|(n, _)| *n == 0), "a refused name is not counted: {counted:?}");
        // A name past its own limit still tells the longer wait.
        let t = LoginThrottle::new(counters(), 2, Duration::from_secs(60));
        for _ in 0..2 {
            t.attempt("eve", ip("10.0.0.7")).await.unwrap().unwrap();
        }
        assert!(t.attempt("eve", ip("10.0.0.7")).await.unwrap().unwrap_err() > Duration::from_secs(58));
    }

    #[tokio::test]
    async fn success_forgives_the_attempt() {
        let t = LoginThrottle::new(counters(), 2, Duration::from_secs(60));
        t.attempt("carol", ip("10.0.0.4")).await.unwrap().unwrap();
        let right = t.attempt("carol", ip("10.0.0.4")).await.unwrap().unwrap();
        t.succeeded(right).await.unwrap();
        // The pair starts over; the client's count kept only the failure.
        assert!(t.attempt("carol", ip("10.0.0.4")).await.unwrap().is_ok());
        assert!(t.attempt("carol", ip("10.0.0.4")).await.unwrap().is_ok());
        assert!(t.attempt("carol", ip("10.0.0.4")).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn concurrent_attempts_each_count() {
        let t = LoginThrottle::new(counters(), 10, Duration::from_secs(60));
        let attempts = (0..100).map(|_| t.attempt("dave", ip("10.0.0.5")));
        let results = futures_util::future::join_all(attempts).await;
        assert_eq!(results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count(), 10);
    }

    #[tokio::test]
    async fn registrations_forgive_successes_but_count_them_on_their_own_budget() {
        let t = RegisterThrottle::new(counters(), 2, 3, Duration::from_secs(60));
        for i in 0..3 {
            let attempt = t.attempt(ip("10.0.0.6")).await.unwrap().expect("failures forgiven");
            t.reserve_success(&attempt).await.unwrap().unwrap_or_else(|_| panic!("success {i}"));
            t.succeeded(attempt).await.unwrap();
        }
        let attempt = t.attempt(ip("10.0.0.6")).await.unwrap().unwrap();
        assert!(t.reserve_success(&attempt).await.unwrap().is_err(), "the fourth success");
        // The attempt refused is not forgiven: with one more, two failures
        // are all there may be.
        assert!(t.attempt(ip("10.0.0.6")).await.unwrap().is_ok());
        assert!(t.attempt(ip("10.0.0.6")).await.unwrap().is_err());
        // A reservation given back makes room for one.
        let other = t.attempt(ip("10.0.0.7")).await.unwrap().unwrap();
        t.reserve_success(&other).await.unwrap().unwrap();
        t.release_success(&other).await.unwrap();
        for _ in 0..3 {
            t.reserve_success(&other).await.unwrap().unwrap();
        }
        assert!(t.reserve_success(&other).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_ipv6_client_is_one_client_across_its_slash_64() {
        let t = RegisterThrottle::new(counters(), 2, 100, Duration::from_secs(60));
        assert!(t.attempt(ip("2001:db8:1:2::1")).await.unwrap().is_ok());
        assert!(t.attempt(ip("2001:db8:1:2:ffff::9")).await.unwrap().is_ok());
        assert!(t.attempt(ip("2001:db8:1:2:abcd::")).await.unwrap().is_err(), "same /64");
        assert!(t.attempt(ip("2001:db8:1:3::1")).await.unwrap().is_ok(), "another /64");
    }
}
