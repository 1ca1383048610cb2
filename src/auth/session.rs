//! The typed session: who is signed in, since when, and until when.
//!
//! Handlers never touch tower-sessions' raw keys; they ask an [`AuthSession`]
//! for the [`Current`] user, or to `sign_in` / `sign_out`.
//!
//! Expiry is computed here, in whole seconds (the Redis store expires keys
//! with `EXAT`, a number of seconds), so that the expiry a socket is told is
//! exactly when the store forgets the session:
//! `min(now + SESSION_TTL, signed_in_at + SESSION_MAX_LIFETIME)`.
//! Every authenticated request recomputes it, which slides the session.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tower_sessions::{
    session::{Error as SessionError, Expiry, Id},
    Session, SessionStore,
};

use crate::backend::{StoreError, StoreResult, User};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "palaver_session";

/// The one key palaver keeps in a session record.
const SIGNED_IN: &str = "signed_in";

/// What a signed-in session records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedIn {
    user: User,
    /// Unix seconds of the sign-in; the absolute lifetime counts from here.
    signed_in_at: i64,
}

/// The session lifetimes from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub ttl: Duration,
    pub max_lifetime: Duration,
}

impl SessionPolicy {
    /// The expiry (unix seconds) a session signed in at `signed_in_at` gets
    /// when touched at `now`, or `None` once past its absolute lifetime.
    pub fn expiry(&self, signed_in_at: i64, now: i64) -> Option<i64> {
        let absolute = signed_in_at + self.max_lifetime.as_secs() as i64;
        (now < absolute).then(|| (now + self.ttl.as_secs() as i64).min(absolute))
    }

    /// The latest a session signed in at `signed_in_at` can live (unix ms).
    pub fn end_by(&self, signed_in_at: i64) -> i64 {
        (signed_in_at + self.max_lifetime.as_secs() as i64) * 1000
    }
}

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub struct Current {
    pub user: User,
    pub session_id: Id,
    /// Unix ms at which the session now expires.
    pub expires_at: i64,
}

/// A request's session, typed.
#[derive(Clone)]
pub struct AuthSession {
    session: Session,
    policy: SessionPolicy,
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn at(unix_secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs).expect("session times are in range")
}

fn store_error(err: SessionError) -> StoreError {
    match err {
        SessionError::Store(err) => StoreError::Session(err),
        SessionError::SerdeJson(err) => StoreError::Corrupt(format!("session record: {err}")),
    }
}

impl AuthSession {
    pub fn new(session: Session, policy: SessionPolicy) -> Self {
        Self { session, policy }
    }

    /// Whether the request carried a session cookie at all (no store access).
    pub fn has_cookie(&self) -> bool {
        self.session.id().is_some()
    }

    /// The signed-in user, sliding the session's expiry; `None` when not
    /// signed in or past the absolute lifetime (then the session is ended).
    pub async fn current(&self) -> StoreResult<Option<Current>> {
        if !self.has_cookie() {
            return Ok(None);
        }
        let Some(signed) = self.session.get::<SignedIn>(SIGNED_IN).await.map_err(store_error)? else {
            return Ok(None);
        };
        let Some(session_id) = self.session.id() else { return Ok(None) };
        match self.policy.expiry(signed.signed_in_at, unix_now()) {
            Some(expiry) => {
                // Marks the session modified: the session layer saves it (and
                // so slides it) after the handler answers.
                self.session.set_expiry(Some(Expiry::AtDateTime(at(expiry))));
                Ok(Some(Current { user: signed.user, session_id, expires_at: expiry * 1000 }))
            }
            None => {
                self.session.flush().await.map_err(store_error)?;
                Ok(None)
            }
        }
    }

    /// Signs `user` in under a new session id: whatever id the browser held
    /// before is deleted from the store (session fixation).
    pub async fn sign_in(&self, user: User) -> StoreResult<Current> {
        self.session.clear().await;
        self.session.cycle_id().await.map_err(store_error)?;
        let signed_in_at = unix_now();
        let expiry = self.policy.expiry(signed_in_at, signed_in_at).expect("a new session is within its lifetime");
        self.session.set_expiry(Some(Expiry::AtDateTime(at(expiry))));
        self.session.insert(SIGNED_IN, SignedIn { user: user.clone(), signed_in_at }).await.map_err(store_error)?;
        // Save now rather than in the layer, to learn the new id.
        self.session.save().await.map_err(store_error)?;
        let session_id = self.session.id().ok_or_else(|| StoreError::Corrupt("saved session has no id".into()))?;
        Ok(Current { user, session_id, expires_at: expiry * 1000 })
    }

    /// Deletes the session from the store; the layer clears the cookie.
    pub async fn sign_out(&self) -> StoreResult<()> {
        self.session.flush().await.map_err(store_error)
    }

    pub fn policy(&self) -> SessionPolicy {
        self.policy
    }
}

/// A live session as a socket re-reads it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub user: User,
    /// Unix ms.
    pub expires_at: i64,
}

/// Reads a session straight from the store (no cookie, no sliding): what a
/// socket does before moving its deadline.
pub async fn lookup(store: &dyn SessionStore, id: &Id) -> StoreResult<Option<LiveSession>> {
    let Some(record) = store.load(id).await? else { return Ok(None) };
    if record.expiry_date <= OffsetDateTime::now_utc() {
        return Ok(None);
    }
    let Some(value) = record.data.get(SIGNED_IN) else { return Ok(None) };
    let signed: SignedIn =
        serde_json::from_value(value.clone()).map_err(|e| StoreError::Corrupt(format!("session record: {e}")))?;
    Ok(Some(LiveSession { user: signed.user, expires_at: record.expiry_date.unix_timestamp() * 1000 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_slides_but_never_past_the_absolute_lifetime() {
        let policy = SessionPolicy { ttl: Duration::from_secs(100), max_lifetime: Duration::from_secs(1000) };
        assert_eq!(policy.expiry(0, 0), Some(100));
        assert_eq!(policy.expiry(0, 500), Some(600));
        assert_eq!(policy.expiry(0, 950), Some(1000));
        assert_eq!(policy.expiry(0, 1000), None);
        assert_eq!(policy.end_by(5), 1_005_000);
    }
}
