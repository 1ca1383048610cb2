//! Refresh tokens: opaque, random, stored only as a hash, rotated on every
//! use. The decision a presented token gets is a pure function of the
//! session's refresh state and the time ([`decide`]); the store only
//! carries it out, with a compare-and-set so that two concurrent refreshes
//! cannot both rotate.
//!
//! A token is `<sid>.<secret>`: the session's public name, then 32 random
//! bytes (base64url). Its successor is not random but derived from it
//! (HMAC of the secret under a server key), which is what lets a spent token
//! presented again within `REFRESH_REUSE_GRACE_SECS` (two tabs, a retry
//! after a lost response) get the *same* successor without the store ever
//! holding a token in the clear. Presented again after the grace, a spent
//! token means two parties hold it: the session ends.

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::{digest, hmac, rand::SecureRandom};

use crate::{clock::UnixMillis, model::RefreshState};

/// How many spent tokens a session remembers, to recognise reuse.
const SPENT_KEPT: usize = 8;

/// A refresh token's secret half, and what the store keeps of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A new refresh state, whose current token is `first`.
pub fn first_state(first: &Secret, now: UnixMillis) -> RefreshState {
    RefreshState { current: first.hash(), spent: Vec::new(), rotated_at: now }
}

/// The state after the current token is spent for `next`.
pub fn rotated(state: &RefreshState, next: &Secret, now: UnixMillis) -> RefreshState {
    let mut spent = vec![state.current.clone()];
    spent.extend(state.spent.iter().take(SPENT_KEPT - 1).cloned());
    RefreshState { current: next.hash(), spent, rotated_at: now }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// A new random secret.
    pub fn random() -> Secret {
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system has randomness");
        Secret(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret that follows this one.
    pub fn successor(&self, key: &hmac::Key) -> Secret {
        Secret(URL_SAFE_NO_PAD.encode(hmac::sign(key, self.0.as_bytes())))
    }

    /// What the store keeps: a SHA-256, base64url.
    pub fn hash(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, self.0.as_bytes()))
    }

    /// The token a client holds.
    pub fn token(&self, sid: &str) -> String {
        format!("{sid}.{}", self.0)
    }
}

/// Splits a presented token into the session's name and the secret.
pub fn parse(token: &str) -> Option<(&str, Secret)> {
    let (sid, secret) = token.split_once('.')?;
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(sid) && ok(secret)).then(|| (sid, Secret(secret.to_owned())))
}

/// What a presented refresh token gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The current token: spend it for its successor.
    Rotate,
    /// The token just spent, again within the grace: the same successor.
    Replay,
    /// A spent token after the grace: someone else holds it. End the session.
    Reuse,
    /// Not a token of this session: refused, the session untouched.
    Unknown,
}

pub fn decide(state: &RefreshState, presented: &Secret, now: UnixMillis, grace: Duration) -> Decision {
    let hash = presented.hash();
    if hash == state.current {
        Decision::Rotate
    } else if state.spent.first() == Some(&hash) && now < state.rotated_at + grace {
        Decision::Replay
    } else if state.spent.contains(&hash) {
        Decision::Reuse
    } else {
        Decision::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"test key")
    }

    #[test]
    fn tokens_round_trip_and_only_hashes_are_kept() {
        let secret = Secret::random();
        let token = secret.token("sid_1-a");
        let (sid, parsed) = parse(&token).unwrap();
        assert_eq!((sid, &parsed), ("sid_1-a", &secret));
        let state = first_state(&secret, UnixMillis::from_secs(1));
        assert!(!state.current.contains(&secret.0) && state.current != secret.0);
        assert!(format!("{secret:?}").contains("redacted"));
        for bad in ["", "nodot", ".x", "x.", "a.b.c", "a b.c", &format!("{}.x", "s".repeat(65))] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_current_token_rotates_and_the_successor_is_derived() {
        let (t0, now) = (Secret::random(), UnixMillis::from_secs(100));
        let state = first_state(&t0, now);
        assert_eq!(decide(&state, &t0, now, GRACE), Decision::Rotate);
        let t1 = t0.successor(&key());
        assert_eq!(t1, t0.successor(&key()), "the same successor every time");
        assert_ne!(t1, t0);
        let state = rotated(&state, &t1, now);
        assert_eq!(decide(&state, &t1, now, GRACE), Decision::Rotate);
    }

    #[test]
    fn a_spent_token_within_the_grace_replays_and_after_it_is_reuse() {
        let t0 = Secret::random();
        let t1 = t0.successor(&key());
        let at = UnixMillis::from_secs(100);
        let state = rotated(&first_state(&t0, at), &t1, at);
        assert_eq!(decide(&state, &t0, at + Duration::from_secs(9), GRACE), Decision::Replay);
        assert_eq!(decide(&state, &t0, at + GRACE, GRACE), Decision::Reuse);
        // Older spent tokens are reuse even within the grace.
        let t2 = t1.successor(&key());
        let state = rotated(&state, &t2, at);
        assert_eq!(decide(&state, &t0, at, GRACE), Decision::Reuse);
        assert_eq!(decide(&state, &t1, at, GRACE), Decision::Replay);
        assert_eq!(decide(&state, &Secret::random(), at, GRACE), Decision::Unknown);
    }

    #[test]
    fn a_session_remembers_a_bounded_number_of_spent_tokens() {
        let mut secret = Secret::random();
        let at = UnixMillis::from_secs(1);
        let mut state = first_state(&secret, at);
        for _ in 0..20 {
            let next = secret.successor(&key());
            state = rotated(&state, &next, at);
            secret = next;
        }
        assert_eq!(state.spent.len(), SPENT_KEPT);
    }
}
