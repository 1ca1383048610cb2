//! The typed cookie session: who is signed in, since when, and until when.
//!
//! Handlers never touch tower-sessions' raw keys; [`Sessions`](super::Sessions)
//! asks an [`AuthSession`] for the [`Current`] user, or to start or end one.
//!
//! Expiry is computed here, in whole seconds (the Redis store expires keys
//! with `EXAT`, a number of seconds), so that the expiry a socket is told is
//! exactly when the store forgets the session:
//! `min(now + SESSION_TTL, signed_in_at + SESSION_MAX_LIFETIME)`.
//! Every authenticated request recomputes it, which slides the session; the
//! record is rewritten only when the expiry moves by at least a step (a
//! twentieth of the TTL, at least a second), so that a burst of requests or
//! a storm of reconnecting sockets costs one read each, not a read and a
//! write. The idle expiry is thus between 95 % and 100 % of the TTL.
//!
//! A session signed in with "keep me signed in" follows the long
//! lifetimes (`LONG_SESSION_TTL_SECS`, `LONG_SESSION_MAX_LIFETIME_SECS`):
//! which policy applies is recorded in the session itself. And a request
//! tells the session's descriptor it was used ([`Devices::touch`]) when the
//! last such word is older than [`ACTIVITY_GRANULARITY`]; the time of it is
//! kept in the session, so that the record and the descriptor are both
//! written at most once per granularity, and a request in between costs no
//! write at all.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tower_sessions::{
    session::{Error as SessionError, Expiry, Id, Record},
    Session,
};

use super::devices::ACTIVITY_GRANULARITY;
use crate::{
    backend::{Devices, StoreError, StoreResult},
    clock::UnixMillis,
    model::User,
};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "palaver_session";

/// The one key palaver keeps in a session record.
const SIGNED_IN: &str = "signed_in";

/// What a signed-in session records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedIn {
    user: User,
    /// The absolute lifetime counts from here.
    signed_in_at: UnixMillis,
    /// The expiry last written (the store's own), to slide only in steps.
    #[serde(default)]
    expires_at: Option<UnixMillis>,
    /// "Keep me signed in": the long lifetimes apply.
    #[serde(default)]
    long: bool,
    /// When the descriptor last heard the session was used.
    #[serde(default)]
    active_at: Option<UnixMillis>,
}

/// Whether a session last said to be active at `active_at` says so again
/// at `now` (never said yet: yes).
fn activity_due(active_at: Option<UnixMillis>, now: UnixMillis) -> bool {
    active_at.is_none_or(|at| now >= at + ACTIVITY_GRANULARITY)
}

/// A session's lifetimes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionPolicy {
    pub ttl: Duration,
    pub max_lifetime: Duration,
}

impl SessionPolicy {
    /// The expiry a session signed in at `signed_in_at` gets when touched at
    /// `now`, in whole seconds, or `None` once past its absolute lifetime.
    pub(crate) fn expiry(&self, signed_in_at: UnixMillis, now: UnixMillis) -> Option<UnixMillis> {
        let absolute = self.end_by(signed_in_at);
        let now = now.floor_secs();
        (now < absolute).then(|| (now + self.ttl).min(absolute))
    }

    /// How far an expiry must move before the session is rewritten.
    pub(crate) fn slide_step(&self) -> Duration {
        Duration::from_secs((self.ttl.as_secs() / 20).max(1))
    }

    /// Whether a session that expires at `written` is rewritten to expire at
    /// `next` (never written yet: yes).
    pub(crate) fn should_slide(&self, written: Option<UnixMillis>, next: UnixMillis) -> bool {
        written.is_none_or(|written| next >= written + self.slide_step())
    }

    /// The latest a session signed in at `signed_in_at` can live.
    pub(crate) fn end_by(&self, signed_in_at: UnixMillis) -> UnixMillis {
        signed_in_at.floor_secs() + self.max_lifetime
    }
}

/// The lifetimes of cookie sessions from the configuration: the usual
/// ones, and those of "keep me signed in".
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionPolicies {
    pub normal: SessionPolicy,
    pub long: SessionPolicy,
}

impl SessionPolicies {
    pub(crate) fn of(&self, long: bool) -> SessionPolicy {
        if long {
            self.long
        } else {
            self.normal
        }
    }
}

/// The signed-in user of a request.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub user: User,
    pub session_id: Id,
    /// When the session now expires.
    pub expires_at: UnixMillis,
    /// The latest it can live (its absolute lifetime).
    pub end_by: UnixMillis,
}

/// A live session as a socket re-reads it from the store.
#[derive(Debug, Clone)]
pub(crate) struct LiveSession {
    pub user: User,
    pub expires_at: UnixMillis,
}

/// A request's session, typed.
#[derive(Clone)]
pub(crate) struct AuthSession {
    session: Session,
    /// The id the request's cookie named, whether or not the store holds
    /// it (tower-sessions forgets it once a read finds nothing).
    presented: Option<Id>,
    policies: SessionPolicies,
    /// Told when the session is used, at most once per granularity.
    devices: Arc<dyn Devices>,
}

pub(super) fn store_error(err: SessionError) -> StoreError {
    match err {
        SessionError::Store(err) => StoreError::Session(err),
        SessionError::SerdeJson(err) => StoreError::Corrupt(format!("session record: {err}")),
    }
}

fn expiry_at(at: UnixMillis) -> Expiry {
    Expiry::AtDateTime(at.to_datetime())
}

impl AuthSession {
    pub(crate) fn new(session: Session, policies: SessionPolicies, devices: Arc<dyn Devices>) -> Self {
        Self { presented: session.id(), session, policies, devices }
    }

    /// The id the cookie named, when [`AuthSession::current`] found no
    /// such session in the store: one ended (or expired) before this
    /// request.
    pub(super) fn presented_gone(&self) -> Option<Id> {
        self.session.id().is_none().then_some(self.presented).flatten()
    }

    /// Whether the request carried a session cookie at all (no store access).
    pub(crate) fn has_cookie(&self) -> bool {
        self.session.id().is_some()
    }

    /// The signed-in user, sliding the session's expiry; `None` when not
    /// signed in or past the absolute lifetime (then the session is ended).
    pub(crate) async fn current(&self) -> StoreResult<Option<Current>> {
        if !self.has_cookie() {
            return Ok(None);
        }
        let Some(signed) = self.session.get::<SignedIn>(SIGNED_IN).await.map_err(store_error)? else {
            return Ok(None);
        };
        let Some(session_id) = self.session.id() else { return Ok(None) };
        let policy = self.policies.of(signed.long);
        let now = UnixMillis::now();
        let Some(next) = policy.expiry(signed.signed_in_at, now) else {
            self.session.flush().await.map_err(store_error)?;
            return Ok(None);
        };
        let slide = policy.should_slide(signed.expires_at, next);
        let active = activity_due(signed.active_at, now);
        let expires_at = match signed.expires_at {
            Some(written) if !slide => written,
            _ => next,
        };
        if slide || active {
            // Marks the session modified: the session layer saves it (and
            // so slides it) after the handler answers.
            self.session.set_expiry(Some(expiry_at(expires_at)));
            let active_at = if active { Some(now) } else { signed.active_at };
            let written = SignedIn { expires_at: Some(expires_at), active_at, ..signed.clone() };
            self.session.insert(SIGNED_IN, written).await.map_err(store_error)?;
        }
        if active {
            if let Err(err) = self.devices.touch(signed.user.id, session_id, now, ACTIVITY_GRANULARITY).await {
                tracing::warn!(%err, "session activity not recorded");
            }
        }
        Ok(Some(Current { user: signed.user, session_id, expires_at, end_by: policy.end_by(signed.signed_in_at) }))
    }

    /// Records `user` under a new session id: whatever session the browser
    /// held before is deleted from the store (session fixation). Saved at
    /// once, to learn the new id. `long`: "keep me signed in".
    pub(super) async fn start(&self, user: User, long: bool) -> StoreResult<Current> {
        self.session.clear().await;
        if self.session.id().is_some() {
            self.session.cycle_id().await.map_err(store_error)?;
        }
        let policy = self.policies.of(long);
        let signed_in_at = UnixMillis::now();
        let expires_at = policy.expiry(signed_in_at, signed_in_at).expect("a new session is within its lifetime");
        self.session.set_expiry(Some(expiry_at(expires_at)));
        let signed = SignedIn {
            user: user.clone(),
            signed_in_at,
            expires_at: Some(expires_at),
            long,
            active_at: Some(signed_in_at),
        };
        self.session.insert(SIGNED_IN, signed).await.map_err(store_error)?;
        self.session.save().await.map_err(store_error)?;
        let session_id = self.session.id().ok_or_else(|| StoreError::Corrupt("saved session has no id".into()))?;
        Ok(Current { user, session_id, expires_at, end_by: policy.end_by(signed_in_at) })
    }

    /// Moves the signed-in session to a new id, all else kept (its
    /// lifetimes count from its sign-in still): the old id is deleted from
    /// the store, and the browser gets the new one. The old id, and the
    /// session as it is now; `None` when not signed in.
    pub(super) async fn cycle(&self) -> StoreResult<Option<(Id, Current)>> {
        let Some(current) = self.current().await? else { return Ok(None) };
        self.session.set_expiry(Some(expiry_at(current.expires_at)));
        self.session.cycle_id().await.map_err(store_error)?;
        self.session.save().await.map_err(store_error)?;
        let session_id = self.session.id().ok_or_else(|| StoreError::Corrupt("saved session has no id".into()))?;
        Ok(Some((current.session_id, Current { session_id, ..current })))
    }

    /// Deletes the session from the store; the layer clears the cookie.
    pub(super) async fn end(&self) -> StoreResult<()> {
        self.session.flush().await.map_err(store_error)
    }
}

/// Reads a stored record as a live session (no cookie, no sliding).
pub(super) fn live(record: &Record, now: UnixMillis) -> StoreResult<Option<LiveSession>> {
    let expires_at = UnixMillis::from_datetime(record.expiry_date);
    if expires_at <= now {
        return Ok(None);
    }
    let Some(value) = record.data.get(SIGNED_IN) else { return Ok(None) };
    let signed: SignedIn =
        serde_json::from_value(value.clone()).map_err(|e| StoreError::Corrupt(format!("session record: {e}")))?;
    Ok(Some(LiveSession { user: signed.user, expires_at }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_slides_in_whole_seconds_but_never_past_the_absolute_lifetime() {
        let policy = SessionPolicy { ttl: Duration::from_secs(100), max_lifetime: Duration::from_secs(1000) };
        let at = |s: i64| UnixMillis::from_secs(s);
        assert_eq!(policy.expiry(at(0), at(0)), Some(at(100)));
        assert_eq!(policy.expiry(at(0), UnixMillis::from_millis(500_999)), Some(at(600)));
        assert_eq!(policy.expiry(at(0), at(950)), Some(at(1000)));
        assert_eq!(policy.expiry(at(0), at(1000)), None);
        assert_eq!(policy.end_by(UnixMillis::from_millis(5_500)), at(1005));
    }

    #[test]
    fn activity_is_told_at_most_once_per_granularity() {
        let at = UnixMillis::from_secs(1000);
        assert!(activity_due(None, at), "never told");
        assert!(!activity_due(Some(at), at + ACTIVITY_GRANULARITY - Duration::from_millis(1)));
        assert!(activity_due(Some(at), at + ACTIVITY_GRANULARITY));
    }

    #[test]
    fn a_session_is_rewritten_only_when_its_expiry_moves_a_step() {
        let policy = SessionPolicy { ttl: Duration::from_secs(1800), max_lifetime: Duration::from_secs(43200) };
        assert_eq!(policy.slide_step(), Duration::from_secs(90));
        let written = UnixMillis::from_secs(10_000);
        assert!(policy.should_slide(None, written), "never written");
        assert!(!policy.should_slide(Some(written), written + Duration::from_secs(89)));
        assert!(policy.should_slide(Some(written), written + Duration::from_secs(90)));
        let short = SessionPolicy { ttl: Duration::from_secs(6), max_lifetime: Duration::from_secs(60) };
        assert_eq!(short.slide_step(), Duration::from_secs(1), "at least a second");
    }
}
