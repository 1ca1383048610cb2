//! A user's security log (docs/protocol.md §7), written where things
//! happen: sign-ins with their client and address, failed sign-ins (one
//! entry per burst, with a count), sessions ended and by what, password
//! changes, refresh tokens used twice.
//!
//! Writing is best effort: a sign-in or a logout does not fail because its
//! entry could not be written (the failure is logged). Reading is not.

use std::{sync::Arc, time::Duration};

use crate::{
    backend::{rules::SECURITY_EVENTS_KEPT, SecurityLog, StoreResult},
    clock::UnixMillis,
    model::{SecurityEvent, SecurityEventKind, UserId},
};

/// How long a user's log is kept after its last entry: as long as the
/// longest a session can live by default ("keep me signed in", 90 days),
/// so the log of an account in use never ages out.
pub const KEPT_FOR: Duration = Duration::from_secs(90 * 24 * 3600);

/// The security log's handle.
#[derive(Clone)]
pub struct Journal {
    log: Arc<dyn SecurityLog>,
    /// Failed sign-ins from one address within this of the burst's first
    /// are one entry (the login throttle's window).
    burst: Duration,
}

impl Journal {
    pub fn new(log: Arc<dyn SecurityLog>, burst: Duration) -> Self {
        Self { log, burst }
    }

    /// Adds an entry for `user`, dated now.
    pub async fn record(&self, user: UserId, what: SecurityEventKind) {
        let event = SecurityEvent { at: UnixMillis::now(), what };
        if let Err(err) = self.log.record(user, &event, KEPT_FOR).await {
            tracing::warn!(%err, %user, "security event not recorded");
        }
    }

    /// A wrong password for `user` from `address`.
    pub async fn sign_in_failed(&self, user: UserId, address: &str) {
        if let Err(err) = self.log.sign_in_failed(user, address, UnixMillis::now(), self.burst, KEPT_FOR).await {
            tracing::warn!(%err, %user, "failed sign-in not recorded");
        }
    }

    /// The newest entries, newest first: the last 50.
    pub async fn recent(&self, user: UserId) -> StoreResult<Vec<SecurityEvent>> {
        self.log.recent(user, SECURITY_EVENTS_KEPT).await
    }
}
