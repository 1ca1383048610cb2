//! A password change (docs/protocol.md §7), for the account page's form and
//! `POST /api/password` alike: the new password is checked by §2's rules
//! and the strength estimate, the current one by the one password check
//! (so a guess counts against the login throttle), then the hash is
//! replaced, every other session of the user ends (their sockets close
//! with 4401 `session revoked`), and a cookie session moves to a new id.
//! A token session that asked stays as it is.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tower_sessions::session::Id;

use super::{
    devices::Device,
    journal::Journal,
    login::{PasswordCheck, Verdict},
    password::Password,
    session::AuthSession,
    strength::Weak,
    validate_new_password, Sessions,
};
use crate::{
    backend::{StoreResult, UserStore},
    model::{EndedBy, SecurityEventKind, User},
};

/// What a password change needs.
#[derive(Clone)]
pub struct PasswordChange {
    pub passwords: PasswordCheck,
    pub users: Arc<dyn UserStore>,
    pub sessions: Sessions,
    pub journal: Journal,
}

/// Who asks for a change: the user, the session they ask from (the cookie
/// session, to be moved to a new id, or a token session's store id), and
/// from where.
pub struct Asker<'a> {
    pub user: &'a User,
    pub session_id: Id,
    pub cookie: Option<&'a AuthSession>,
    pub addr: IpAddr,
    pub device: Device,
}

/// What came of it.
#[derive(Debug)]
pub enum Changed {
    /// Changed (a cookie session asking is under a new id now).
    Done,
    /// The current password is wrong.
    WrongPassword,
    /// Too many wrong guesses; try again after this long.
    Throttled(Duration),
    /// The password threads are too busy; try again after this long.
    Busy(Duration),
    /// The new password breaks §2's rules.
    Invalid(&'static str),
    /// The new password is easy to guess.
    Weak(Weak),
}

impl PasswordChange {
    pub async fn change(&self, asker: Asker<'_>, current: Password, new: Password) -> StoreResult<Changed> {
        let user = asker.user;
        if let Err(why) = validate_new_password(new.expose()) {
            return Ok(Changed::Invalid(why));
        }
        match self.passwords.strength(&new, &user.name, asker.addr).await {
            Ok(Ok(())) => {}
            Ok(Err(weak)) => return Ok(Changed::Weak(weak)),
            Err(busy) => return Ok(Changed::Busy(busy.retry_after)),
        }
        match self.passwords.check(&user.name, current, asker.addr).await? {
            Verdict::Verified(found) if found.id == user.id => {}
            Verdict::Verified(_) | Verdict::Refused | Verdict::Disabled => return Ok(Changed::WrongPassword),
            Verdict::Throttled(retry_after) => return Ok(Changed::Throttled(retry_after)),
            Verdict::Busy(retry_after) => return Ok(Changed::Busy(retry_after)),
        }
        let hash = self.passwords.hash(new).await;
        if !self.users.set_password(user, &hash).await? {
            // The name's record is another user's now: this one is gone.
            return Ok(Changed::WrongPassword);
        }
        tracing::info!(user = %user.name, "password changed");
        self.sessions.end_others(user.id, asker.session_id, EndedBy::PasswordChange).await?;
        if let Some(cookie) = asker.cookie {
            self.sessions.cycle(cookie).await?;
        }
        let Device { client, address } = asker.device;
        self.journal.record(user.id, SecurityEventKind::PasswordChanged { client, address }).await;
        Ok(Changed::Done)
    }
}
