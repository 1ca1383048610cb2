//! A socket's deadline, as a pure state machine: given the time and what
//! the store said, it decides what the socket does next. The socket task
//! only carries out its decisions (and arms its one timer at
//! [`Deadline::wake_at`]).
//!
//! A socket lives until its session's expiry. `REAUTH_WARNING_SECS` before
//! it, the client is told (`reauthenticate`), once per deadline. A `reauth`
//! that finds the session live moves the deadline without a new warning
//! (the client just proved itself). At the deadline itself, the store is
//! asked once more, because activity elsewhere (another tab, any HTTP
//! request) may have slid the session: if it did, the deadline moves (and
//! the client is warned again if the new one is already close); if not, the
//! socket closes. A store that does not answer is not a yes: the socket does
//! not outlive the deadline it knows.
//!
//! A socket opened with an access token also ends when the token does: its
//! deadline is the earlier of the token's `exp` and the session's expiry.
//! A token cannot be slid, only replaced (a `reauth` with a new one).

use std::time::Duration;

use crate::{clock::UnixMillis, model::UserId};

/// What the store said about the socket's session when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The session lives, belongs to this socket's user, and expires then.
    Live(UnixMillis),
    /// Gone, expired, or someone else's.
    Gone,
    /// The store did not answer.
    Unavailable,
}

impl Lookup {
    /// Judges a store answer for a socket of `user` at `now`: the one place
    /// that decides "still this user's live session".
    pub fn judge<E>(found: Result<Option<(UserId, UnixMillis)>, E>, user: UserId, now: UnixMillis) -> Lookup {
        match found {
            Ok(Some((owner, expires_at))) if owner == user && expires_at > now => Lookup::Live(expires_at),
            Ok(_) => Lookup::Gone,
            Err(_) => Lookup::Unavailable,
        }
    }
}

/// What the socket does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to say; re-arm the timer at [`Deadline::wake_at`].
    Wait,
    /// Send `reauthenticate` with this deadline.
    Warn(UnixMillis),
    /// Ask the store (then call [`Deadline::at_deadline`]).
    Recheck,
    /// Send `reauthenticated` with this deadline.
    Reauthenticated(UnixMillis),
    /// The reauth could not be checked: tell the client to try again.
    RetryLater,
    /// Close with 4401 `session expired`.
    Expire,
    /// Close with 4401 `token expired`.
    TokenExpired,
    /// Close with 1013 `store unavailable`.
    StoreUnavailable,
}

#[derive(Debug, Clone)]
pub struct Deadline {
    /// When the session expires, as last read.
    session: UnixMillis,
    /// When the socket's access token expires (cookie sockets have none).
    token: Option<UnixMillis>,
    warning: Duration,
    /// Whether `reauthenticate` was sent for the current deadline.
    warned: bool,
}

impl Deadline {
    /// The deadline of a socket whose session expires at `session` and
    /// whose token (if any) at `token` (possibly already within the
    /// warning, or past).
    pub fn new(session: UnixMillis, token: Option<UnixMillis>, warning: Duration) -> Self {
        Self { session, token, warning, warned: false }
    }

    /// The current deadline: the earlier of the session's and the token's.
    pub fn at(&self) -> UnixMillis {
        self.token.map_or(self.session, |token| token.min(self.session))
    }

    /// When the timer should next fire: at the warning, then at the deadline.
    /// Every firing changes it or ends the socket.
    pub fn wake_at(&self) -> UnixMillis {
        if self.warned {
            self.at()
        } else {
            self.at() - self.warning
        }
    }

    fn token_expired(&self, now: UnixMillis) -> bool {
        self.token.is_some_and(|token| token <= now)
    }

    /// The timer fired.
    pub fn on_timer(&mut self, now: UnixMillis) -> Step {
        let at = self.at();
        if !self.warned && now < at {
            self.warned = true;
            return Step::Warn(at);
        }
        if now < at {
            // Woken early (a timer is never late by design, but may be early
            // by a millisecond of rounding): keep waiting.
            return Step::Wait;
        }
        if self.token_expired(now) {
            // No store can extend a token.
            return Step::TokenExpired;
        }
        Step::Recheck
    }

    /// The store's answer at the deadline.
    pub fn at_deadline(&mut self, now: UnixMillis, found: Lookup) -> Step {
        match found {
            Lookup::Live(expires_at) => {
                let earlier = self.at();
                self.move_session(expires_at, now);
                if self.token_expired(now) {
                    Step::TokenExpired
                } else if self.warned && self.at() > earlier {
                    Step::Warn(self.at())
                } else {
                    Step::Wait
                }
            }
            Lookup::Gone => Step::Expire,
            Lookup::Unavailable => Step::StoreUnavailable,
        }
    }

    /// The store's answer to a `reauth` from the client (after a refresh
    /// over HTTP). A token socket's `reauth` carries a new token, verified
    /// by the caller: `token` is its expiry.
    pub fn on_reauth(&mut self, now: UnixMillis, token: Option<UnixMillis>, found: Lookup) -> Step {
        match found {
            Lookup::Live(expires_at) => {
                if token.is_some() {
                    self.token = token;
                }
                self.move_session(expires_at, now);
                if self.token_expired(now) {
                    return Step::TokenExpired;
                }
                Step::Reauthenticated(self.at())
            }
            Lookup::Gone => Step::Expire,
            Lookup::Unavailable => Step::RetryLater,
        }
    }

    /// Moves the session's expiry. A deadline already within the warning
    /// period counts as warned: after a reauth the client has just proved
    /// itself, and after a recheck the caller warns it explicitly.
    fn move_session(&mut self, expires_at: UnixMillis, now: UnixMillis) {
        self.session = expires_at;
        self.warned = now.until(self.at()) <= self.warning;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARNING: Duration = Duration::from_secs(60);

    fn at(s: i64) -> UnixMillis {
        UnixMillis::from_secs(s)
    }

    #[test]
    fn it_warns_once_then_rechecks_at_the_deadline() {
        let mut d = Deadline::new(at(1000), None, WARNING);
        assert_eq!(d.wake_at(), at(940));
        assert_eq!(d.on_timer(at(940)), Step::Warn(at(1000)));
        assert_eq!(d.wake_at(), at(1000), "the next wake is the deadline itself");
        assert_eq!(d.on_timer(at(999)), Step::Wait, "no second warning");
        assert_eq!(d.on_timer(at(1000)), Step::Recheck);
        assert_eq!(d.at_deadline(at(1000), Lookup::Gone), Step::Expire);
    }

    #[test]
    fn a_reauth_moves_the_deadline_without_a_new_warning() {
        let mut d = Deadline::new(at(1000), None, WARNING);
        d.on_timer(at(940));
        assert_eq!(d.on_reauth(at(950), None, Lookup::Live(at(2000))), Step::Reauthenticated(at(2000)));
        assert_eq!(d.at(), at(2000));
        assert_eq!(d.wake_at(), at(1940), "warned again before the new deadline");
        // A reauth that finds the session already close still counts as proof.
        assert_eq!(d.on_reauth(at(1950), None, Lookup::Live(at(1990))), Step::Reauthenticated(at(1990)));
        assert_eq!(d.wake_at(), at(1990));
        assert_eq!(d.on_reauth(at(1960), None, Lookup::Gone), Step::Expire);
        assert_eq!(d.on_reauth(at(1960), None, Lookup::Unavailable), Step::RetryLater);
    }

    #[test]
    fn a_deadline_found_slid_elsewhere_moves_and_warns_when_already_close() {
        let mut d = Deadline::new(at(1000), None, WARNING);
        d.on_timer(at(940));
        assert_eq!(d.on_timer(at(1000)), Step::Recheck);
        // Slid far (another tab's activity): quiet until the new warning.
        assert_eq!(d.at_deadline(at(1000), Lookup::Live(at(2000))), Step::Wait);
        assert_eq!(d.wake_at(), at(1940));
        assert_eq!(d.on_timer(at(1940)), Step::Warn(at(2000)));
        // Slid a little: the client hears of the new deadline at once.
        assert_eq!(d.on_timer(at(2000)), Step::Recheck);
        assert_eq!(d.at_deadline(at(2000), Lookup::Live(at(2030))), Step::Warn(at(2030)));
        assert_eq!(d.wake_at(), at(2030));
    }

    #[test]
    fn the_store_down_at_the_deadline_ends_the_socket() {
        let mut d = Deadline::new(at(1000), None, WARNING);
        d.on_timer(at(940));
        assert_eq!(d.on_timer(at(1000)), Step::Recheck);
        assert_eq!(d.at_deadline(at(1000), Lookup::Unavailable), Step::StoreUnavailable);
    }

    #[test]
    fn an_expiry_in_the_past_at_upgrade_is_rechecked_at_once() {
        let mut d = Deadline::new(at(1000), None, WARNING);
        assert!(d.wake_at() <= at(1001), "the timer fires at once");
        assert_eq!(d.on_timer(at(1001)), Step::Recheck, "no warning for a deadline already gone");
        assert_eq!(d.at_deadline(at(1001), Lookup::Gone), Step::Expire);
        // Within the warning at upgrade: warned first.
        let mut d = Deadline::new(at(1000), None, WARNING);
        assert_eq!(d.on_timer(at(990)), Step::Warn(at(1000)));
    }

    #[test]
    fn a_token_socket_ends_with_its_token_unless_a_new_one_comes() {
        // The token (300 s) ends before the session (1000 s).
        let mut d = Deadline::new(at(1000), Some(at(300)), WARNING);
        assert_eq!(d.at(), at(300));
        assert_eq!(d.on_timer(at(240)), Step::Warn(at(300)));
        assert_eq!(d.on_timer(at(300)), Step::TokenExpired, "no store can extend a token");

        // A reauth with a new token moves the deadline to its expiry...
        let mut d = Deadline::new(at(1000), Some(at(300)), WARNING);
        d.on_timer(at(240));
        assert_eq!(d.on_reauth(at(250), Some(at(550)), Lookup::Live(at(1000))), Step::Reauthenticated(at(550)));
        assert_eq!(d.wake_at(), at(490));
        // ...but never past the session's expiry.
        assert_eq!(d.on_reauth(at(260), Some(at(2000)), Lookup::Live(at(1100))), Step::Reauthenticated(at(1100)));
        // At a deadline that is the session's, the store is asked as for a cookie.
        assert_eq!(d.on_timer(at(1100)), Step::Recheck);
        assert_eq!(d.at_deadline(at(1100), Lookup::Live(at(1500))), Step::Wait);
        assert_eq!(d.at(), at(1500));
        assert_eq!(d.at_deadline(at(1500), Lookup::Gone), Step::Expire);
        // The session slid past the token while the token lapsed meanwhile.
        let mut d = Deadline::new(at(400), Some(at(450)), WARNING);
        d.on_timer(at(340));
        assert_eq!(d.on_timer(at(400)), Step::Recheck);
        assert_eq!(d.at_deadline(at(460), Lookup::Live(at(900))), Step::TokenExpired);
    }

    #[test]
    fn only_this_users_live_session_counts() {
        let (me, other) = (UserId::new_v4(), UserId::new_v4());
        let now = at(100);
        let ok: Result<_, ()> = Ok(Some((me, at(200))));
        assert_eq!(Lookup::judge(ok, me, now), Lookup::Live(at(200)));
        assert_eq!(Lookup::judge(Ok::<_, ()>(Some((other, at(200)))), me, now), Lookup::Gone);
        assert_eq!(Lookup::judge(Ok::<_, ()>(Some((me, at(100)))), me, now), Lookup::Gone, "expired");
        assert_eq!(Lookup::judge(Ok::<_, ()>(None), me, now), Lookup::Gone);
        assert_eq!(Lookup::judge(Err::<Option<(UserId, UnixMillis)>, _>(()), me, now), Lookup::Unavailable);
    }
}
