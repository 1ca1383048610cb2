//! Checking a username and password: the one place a sign-in is decided,
//! for the form (`POST /login`) and the API (`POST /api/token`) alike.
//!
//! The attempt is counted before the password is verified (see
//! [`LoginThrottle`]); a name that cannot exist, or does not, is verified
//! against the dummy hash all the same, so every failure takes the time of
//! one Argon2 verification and says nothing about which part was wrong.

use std::{net::IpAddr, sync::Arc, time::Duration};

use metrics::Histogram;

use super::{
    journal::Journal,
    password::{Busy, Hasher, Password},
    strength::{self, Weak},
    throttle::LoginThrottle,
};
use crate::{
    backend::{StoreResult, UserStore},
    model::{valid_username, User},
};

/// What a sign-in attempt came to.
#[derive(Debug)]
pub enum Verdict {
    /// The password is right (and the attempt was forgiven).
    Verified(User),
    /// The password is right, but an operator disabled the account. Said
    /// only once the password is verified, so it tells a guesser nothing.
    Disabled,
    /// Wrong username or password; which one is never said.
    Refused,
    /// This name from this client, or this client, used up its attempts:
    /// nothing was verified. Try again after this long.
    Throttled(Duration),
    /// The attempt counted, but more passwords are waiting to be checked
    /// than can be in time: nothing was verified. Try again after this long.
    Busy(Duration),
}

/// What a password check reads: the accounts, the throttle, the instance's
/// password hashing, where the wait for a hashing thread is recorded, and
/// the security log a wrong password for an account is written to.
#[derive(Clone)]
pub struct PasswordCheck {
    users: Arc<dyn UserStore>,
    throttle: LoginThrottle,
    hasher: Hasher,
    hash_wait: Histogram,
    journal: Journal,
}

impl PasswordCheck {
    pub fn new(users: Arc<dyn UserStore>, throttle: LoginThrottle, hash_wait: Histogram, journal: Journal) -> Self {
        Self { users, throttle, hasher: Hasher::new(), hash_wait, journal }
    }

    /// Hashes a new password on this instance's hashing threads.
    pub async fn hash(&self, password: Password) -> String {
        self.hasher.hash(password, &self.hash_wait).await
    }

    /// Whether `password` is worth having for the account `username`
    /// (see [`strength`]), estimated on the hashing threads for the client
    /// at `addr`; `Err` when they are too busy to.
    pub async fn strength(&self, password: &Password, username: &str, addr: IpAddr) -> Result<Result<(), Weak>, Busy> {
        let (password, username) = (password.clone(), username.to_owned());
        let judge = move || strength::judge(password.expose(), &username);
        self.hasher.for_client(addr, judge, &self.hash_wait).await
    }

    /// Checks `password` for `username` (as typed: surrounding blanks do
    /// not count) from a client at `addr`.
    pub async fn check(&self, username: &str, password: Password, addr: IpAddr) -> StoreResult<Verdict> {
        let username = username.trim();
        // Counted before the (slow) check: concurrent guesses each count.
        let attempt = match self.throttle.attempt(username, addr).await? {
            Ok(attempt) => attempt,
            Err(retry_after) => return Ok(Verdict::Throttled(retry_after)),
        };
        // A name that cannot exist is not looked up, but it is verified against
        // the dummy hash all the same: every failure takes the same time.
        let stored = if valid_username(username) { self.users.find(username).await? } else { None };
        let stored_hash = stored.as_ref().map(|s| s.password_hash.clone());
        let verified = match self.hasher.verify(addr, password, stored_hash, &self.hash_wait).await {
            Ok(verified) => verified,
            Err(busy) => return Ok(Verdict::Busy(busy.retry_after)),
        };
        match stored {
            Some(stored) if verified => {
                self.throttle.succeeded(attempt).await?;
                Ok(if stored.disabled { Verdict::Disabled } else { Verdict::Verified(stored.user) })
            }
            Some(stored) => {
                self.journal.sign_in_failed(stored.user.id, &addr.to_canonical().to_string()).await;
                Ok(Verdict::Refused)
            }
            None => Ok(Verdict::Refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::{memory::MemoryBackend, SecurityLog},
        config::Config,
        model::UserId,
    };

    #[tokio::test]
    async fn the_right_password_is_verified_and_forgiven_and_anything_else_is_refused_until_throttled() {
        let memory = Arc::new(MemoryBackend::new(&Config::default().chat));
        let throttle = LoginThrottle::new(memory.clone(), 2, Duration::from_secs(60));
        let journal = Journal::new(memory.clone(), Duration::from_secs(60));
        let check = PasswordCheck::new(memory.clone(), throttle, Histogram::noop(), journal);
        let alice = User { id: UserId::new_v4(), name: "alice".into() };
        let hash = check.hash(Password::new("correct horse".into())).await;
        assert!(memory.create(&alice, &hash).await.unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let attempt = |name: &'static str, password: &'static str| {
            let check = check.clone();
            async move { check.check(name, Password::new(password.into()), ip).await.unwrap() }
        };

        assert!(matches!(attempt("alice", "wrong horse").await, Verdict::Refused));
        // The right one, with blanks around the name, is forgiven: it leaves
        // room for one more failure.
        assert!(matches!(attempt(" alice ", "correct horse").await, Verdict::Verified(user) if user == alice));
        assert!(matches!(attempt("alice", "wrong horse").await, Verdict::Refused));
        assert!(matches!(attempt("alice", "wrong horse").await, Verdict::Refused));
        assert!(matches!(attempt("alice", "correct horse").await, Verdict::Throttled(_)), "nothing verified");
        assert!(matches!(attempt("nobody", "correct horse").await, Verdict::Refused), "unknown: refused alike");
        assert!(matches!(attempt("no one", "correct horse").await, Verdict::Refused), "impossible: refused alike");
        // The wrong passwords for alice are in her log, one burst from one address.
        let log = memory.recent(alice.id, 50).await.unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(matches!(log[0].what, crate::model::SecurityEventKind::SignInFailed { count: 3, .. }), "{log:?}");
    }
}
