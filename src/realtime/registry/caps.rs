//! The caps on open sockets (per instance, per user, per session), counted
//! from the moment an upgrade is accepted until its socket's task ends.
//!
//! A place is reserved before the 101 (so a refusal can still be a 503 or
//! a 429) and held by a [`Slot`] that the socket's task owns: the place is
//! given back when the slot drops, however the task ends. The counts have
//! a mutex of their own, apart from the socket index: reserving needs
//! nothing else, and a slot drops wherever its task ends.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tower_sessions::session::Id;

use crate::model::UserId;

/// The caps on open sockets: per instance, per user, per session.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub instance: usize,
    pub per_user: usize,
    pub per_session: usize,
}

/// Which cap a new socket would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The instance is at `MAX_CONNECTIONS`, or shutting down.
    Instance,
    /// This user has `MAX_SOCKETS_PER_USER` open here.
    User,
    /// This session has `MAX_SOCKETS_PER_SESSION` open here.
    Session,
}

/// Sockets open or being opened, counted against the caps.
#[derive(Default)]
struct Reserved {
    total: usize,
    by_user: HashMap<UserId, usize>,
    by_session: HashMap<Id, usize>,
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// The caps and the places taken under them.
pub(super) struct Places {
    caps: Caps,
    reserved: Arc<Mutex<Reserved>>,
}

impl Places {
    pub(super) fn new(caps: Caps) -> Self {
        Self { caps, reserved: Arc::default() }
    }

    /// A place for a new socket of `user` in `session`, unless a cap is
    /// reached.
    pub(super) fn reserve(&self, user: UserId, session: Id) -> Result<Slot, Full> {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        if reserved.total >= self.caps.instance {
            return Err(Full::Instance);
        }
        if reserved.by_user.get(&user).copied().unwrap_or(0) >= self.caps.per_user {
            return Err(Full::User);
        }
        if reserved.by_session.get(&session).copied().unwrap_or(0) >= self.caps.per_session {
            return Err(Full::Session);
        }
        reserved.total += 1;
        *reserved.by_user.entry(user).or_default() += 1;
        *reserved.by_session.entry(session).or_default() += 1;
        Ok(Slot { reserved: self.reserved.clone(), user, session })
    }
}

/// A reserved place under the caps; released on drop.
pub struct Slot {
    reserved: Arc<Mutex<Reserved>>,
    user: UserId,
    session: Id,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        reserved.total -= 1;
        release(&mut reserved.by_user, &self.user);
        release(&mut reserved.by_session, &self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_count_reserved_slots_per_instance_user_and_session() {
        let places = Places::new(Caps { instance: 4, per_user: 3, per_session: 2 });
        let (alice, bob) = (UserId::new_v4(), UserId::new_v4());
        let (tab, phone) = (Id(1), Id(2));
        let a1 = places.reserve(alice, tab).unwrap();
        let _a2 = places.reserve(alice, tab).unwrap();
        assert_eq!(places.reserve(alice, tab).unwrap_err(), Full::Session);
        let _a3 = places.reserve(alice, phone).unwrap();
        assert_eq!(places.reserve(alice, Id(3)).unwrap_err(), Full::User);
        let _b1 = places.reserve(bob, Id(4)).unwrap();
        assert_eq!(places.reserve(bob, Id(4)).unwrap_err(), Full::Instance);
        drop(a1);
        assert!(places.reserve(alice, tab).is_ok(), "a closed socket frees its places");
    }
}
