//! Invite codes (docs/protocol.md §7): with `REGISTRATION=invite`, signing
//! up takes one. A code is 16 random bytes (base64url, 22 characters),
//! given once (`/register?invite=CODE`) and stored only as its SHA-256;
//! each sign-up spends one of its uses atomically, so of N concurrent
//! sign-ups with a code of k uses exactly k get in. Made by an operator
//! (`palaver admin invite`) or, unless `INVITES_BY_USERS=false`, by a
//! signed-in user on /account, a few a day.

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::rand::SecureRandom;

use crate::{
    backend::{Counters, Invites, Spend, StoreResult},
    clock::UnixMillis,
    model::{Invite, UserId},
};

/// How long an invite a user makes lasts.
pub const USER_INVITE_DAYS: u32 = 7;

/// The longest code looked up; anything longer is no code of ours.
const MAX_CODE_CHARS: usize = 64;

/// The link that carries `code` to the sign-up form.
pub fn link(origin: &str, code: &str) -> String {
    format!("{origin}/register?invite={code}")
}

/// The invite codes' handle.
#[derive(Clone)]
pub struct InviteCodes {
    store: Arc<dyn Invites>,
    counters: Arc<dyn Counters>,
    /// Invites one user may make per day (`INVITES_PER_USER_PER_DAY`).
    per_user_per_day: u64,
}

/// The store key of a code.
fn hash(code: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, code.as_bytes()))
}

/// Whether `code` could be one of ours at all (spares the store a lookup).
fn plausible(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_CODE_CHARS
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl InviteCodes {
    pub fn new(store: Arc<dyn Invites>, counters: Arc<dyn Counters>, per_user_per_day: u32) -> Self {
        Self { store, counters, per_user_per_day: u64::from(per_user_per_day) }
    }

    /// Makes a code good for `uses` sign-ups within `days`; `by`: the user
    /// who made it (`None`: an operator).
    pub async fn make(&self, uses: u32, days: u32, by: Option<UserId>) -> StoreResult<String> {
        let now = UnixMillis::now();
        let invite = Invite {
            uses,
            uses_left: uses,
            created_at: now,
            expires_at: now + Duration::from_secs(u64::from(days) * 24 * 3600),
            by,
        };
        loop {
            let mut bytes = [0u8; 16];
            ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system has randomness");
            let code = URL_SAFE_NO_PAD.encode(bytes);
            // A collision of 128 random bits does not happen; if it did,
            // another code is drawn.
            if self.store.create(&hash(&code), &invite).await? {
                return Ok(code);
            }
        }
    }

    /// Makes a one-use code for `user`, within their quota of the day:
    /// `Err(retry_after)` past it.
    pub async fn make_for(&self, user: UserId) -> StoreResult<Result<String, Duration>> {
        let counter = format!("invites:user:{user}");
        let day = Duration::from_secs(24 * 3600);
        let counted = self.counters.incr(&[counter], day).await?;
        let (n, left) = counted.first().copied().unwrap_or((u64::MAX, day));
        if n > self.per_user_per_day {
            return Ok(Err(left.max(Duration::from_secs(1))));
        }
        Ok(Ok(self.make(1, USER_INVITE_DAYS, Some(user)).await?))
    }

    /// Spends one use of `code`.
    pub async fn spend(&self, code: &str) -> StoreResult<Spend> {
        if !plausible(code) {
            return Ok(Spend::Unknown);
        }
        self.store.spend(&hash(code), UnixMillis::now()).await
    }

    /// Gives back the use a sign-up took and could not use (the name was
    /// taken meanwhile).
    pub async fn give_back(&self, code: &str) {
        if let Err(err) = self.store.give_back(&hash(code)).await {
            tracing::warn!(%err, "an invite's use not given back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::memory::MemoryBackend, config::Config};

    #[tokio::test]
    async fn a_code_admits_as_many_as_its_uses_and_a_user_makes_a_few_a_day() {
        let memory = Arc::new(MemoryBackend::new(&Config::default().chat));
        let codes = InviteCodes::new(memory.clone(), memory, 2);
        let code = codes.make(2, 1, None).await.unwrap();
        assert_eq!(code.len(), 22);
        assert!(matches!(codes.spend(&code).await.unwrap(), Spend::Spent(_)));
        assert!(matches!(codes.spend(&code).await.unwrap(), Spend::Spent(_)));
        assert_eq!(codes.spend(&code).await.unwrap(), Spend::UsedUp);
        for nonsense in ["", "no such code", &"a".repeat(65), "AAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(codes.spend(nonsense).await.unwrap(), Spend::Unknown, "{nonsense:?}");
        }
        let user = UserId::new_v4();
        assert!(codes.make_for(user).await.unwrap().is_ok());
        assert!(codes.make_for(user).await.unwrap().is_ok());
        assert!(codes.make_for(user).await.unwrap().is_err(), "two a day");
        assert!(codes.make_for(UserId::new_v4()).await.unwrap().is_ok(), "per user");
    }
}
