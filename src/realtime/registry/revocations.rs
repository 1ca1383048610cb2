//! The revocation log: which removals this instance applied, in order, so
//! that a socket whose access was checked just before one is not
//! registered just after it.
//!
//! An upgrade takes the registry's epoch ([`Revocations::epoch`]) before
//! it asks whether the user may see the room; between that answer and the
//! socket's registration, a removal may be applied (the socket was in
//! nobody's list yet, so the removal closed nothing). Registration, under
//! the registry's lock, asks the log whether a removal of that (room,
//! user) was applied since the epoch ([`Revocations::since`]). A removal
//! applied before the epoch was taken had forgotten the room in the
//! access cache already, so the check saw it; one applied after the
//! socket registered closes it. No order of the three leaves a socket
//! open.
//!
//! The log is bounded: what an upgrade needs of it is the span from its
//! epoch to its registration (a few store round trips), so records older
//! than [`KEPT_FOR`] go, and at most [`KEPT`] are kept. A socket whose
//! epoch is older than what was let go cannot be judged, and is not
//! registered either (it reconnects and is checked again).

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use crate::model::{RoomName, UserId};

/// How long a removal is remembered: far beyond an upgrade's check and
/// registration, each bounded by the store's timeouts (seconds).
pub const KEPT_FOR: Duration = Duration::from_secs(60);
/// The most removals remembered at once.
pub const KEPT: usize = 10_000;

/// A point in the order of removals applied here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

/// What the log says of a socket about to register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// No removal of it since its epoch.
    Clear,
    /// Its user was removed from its room (or the room deleted) since.
    Revoked,
    /// Its epoch is older than the log: nothing can be said.
    Forgotten,
}

/// One applied removal.
struct Record {
    epoch: Epoch,
    room: RoomName,
    /// `None`: the room was deleted (every user).
    user: Option<UserId>,
    at: Instant,
}

#[derive(Default)]
pub struct Revocations {
    /// The epoch of the last removal recorded.
    last: u64,
    /// Every removal after `floor`, oldest first.
    log: VecDeque<Record>,
    /// The newest removal let go (nothing at or before it is known).
    floor: u64,
}

impl Revocations {
    /// Now, in the order of removals: taken before an access check.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.last)
    }

    /// Records that `user` (`None`: everyone) may no longer see `room`.
    pub fn record(&mut self, room: &RoomName, user: Option<UserId>, now: Instant) {
        self.last += 1;
        self.log.push_back(Record { epoch: Epoch(self.last), room: room.clone(), user, at: now });
        while let Some(oldest) = self.log.front() {
            if self.log.len() <= KEPT && now.duration_since(oldest.at) <= KEPT_FOR {
                break;
            }
            self.floor = oldest.epoch.0;
            self.log.pop_front();
        }
    }

    /// Whether `user` was removed from `room` after `epoch`.
    pub fn since(&self, epoch: Epoch, room: &RoomName, user: UserId) -> Since {
        if epoch.0 < self.floor {
            return Since::Forgotten;
        }
        let later = self.log.iter().rev().take_while(|r| r.epoch > epoch);
        match later.into_iter().any(|r| r.room == *room && r.user.is_none_or(|u| u == user)) {
            true => Since::Revoked,
            false => Since::Clear,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn a_removal_after_the_epoch_is_found_and_one_before_it_is_not() {
        let mut log = Revocations::default();
        let (al, bo, now) = (UserId::new_v4(), UserId::new_v4(), Instant::now());
        log.record(&room("team"), Some(al), now);
        let epoch = log.epoch();
        assert_eq!(log.since(epoch, &room("team"), al), Since::Clear, "before the epoch: the check saw it");
        log.record(&room("team"), Some(bo), now);
        log.record(&room("other"), Some(al), now);
        assert_eq!(log.since(epoch, &room("team"), al), Since::Clear, "someone else, somewhere else");
        assert_eq!(log.since(epoch, &room("team"), bo), Since::Revoked);
        log.record(&room("gone"), None, now);
        assert_eq!(log.since(epoch, &room("gone"), al), Since::Revoked, "a deleted room is everyone's");
    }

    #[test]
    fn the_log_is_bounded_in_time_and_count_and_an_epoch_older_than_it_is_not_judged() {
        let mut log = Revocations::default();
        let (al, t0) = (UserId::new_v4(), Instant::now());
        let old = log.epoch();
        log.record(&room("a"), Some(al), t0);
        let kept = log.epoch();
        log.record(&room("b"), Some(al), t0 + KEPT_FOR + Duration::from_secs(1));
        assert_eq!(log.log.len(), 1, "the first one is too old");
        assert_eq!(log.since(old, &room("x"), al), Since::Forgotten);
        assert_eq!(log.since(kept, &room("x"), al), Since::Clear);
        for _ in 0..KEPT + 5 {
            log.record(&room("c"), Some(al), t0 + KEPT_FOR);
        }
        assert_eq!(log.log.len(), KEPT);
        assert_eq!(log.since(kept, &room("x"), al), Since::Forgotten);
    }
}
