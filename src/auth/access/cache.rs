//! What [`super::RoomAccess`] remembers between questions, so that the
//! common upgrade costs the session read and nothing more: rooms' states
//! as the store last said them, and users by name.
//!
//! Room states are never stale past the event that changed them. Every
//! membership change is written to the store first and then announced
//! (applied here, published to the other instances), and every
//! announcement forgets the room here ([`States::forget`]); a subscriber
//! that was away (events may be lost) forgets everything
//! ([`States::clear`]). A read that was under way while a room was
//! forgotten may carry the state from before the change: it is not kept.
//! Each forgetting moves the cache's generation, and a read is kept only
//! if the generation has not moved since before it was made
//! ([`States::put`]).
//!
//! Names and ids of users never change (and users are never deleted), so
//! users found by name are kept as long as there is room.

use std::collections::HashMap;

use crate::{
    backend::RoomState,
    model::{folded_username, Role, RoomName, User, UserId},
};

/// Rooms whose state is kept. A room costs its name and, for a private
/// room, an entry per user asked about here; ten thousand rooms of a few
/// members each is a few megabytes. Past it, a room is dropped to make
/// place (a dropped room costs one store read when asked about again).
pub const CACHED_ROOMS: usize = 10_000;
/// (room, user) answers kept over all private rooms: bounds a few big
/// rooms as [`CACHED_ROOMS`] bounds many small ones.
pub const CACHED_PAIRS: usize = 100_000;
/// Users kept by name (a user is ~100 bytes).
pub const CACHED_USERS: usize = 10_000;

/// What is known of one room.
enum Known {
    /// Public: the same for everyone.
    Public,
    /// Private: each user asked about, with their role (`None`: not a member).
    Private(HashMap<UserId, Option<Role>>),
}

/// Rooms' states as the store said them, per room.
#[derive(Default)]
pub struct States {
    /// Moves at every forgetting: a read made before it is not kept.
    generation: u64,
    rooms: HashMap<RoomName, Known>,
    /// The (room, user) answers held by private rooms.
    pairs: usize,
}

impl States {
    /// Taken before a store read whose answer is to be kept.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The state of `room` for `user`, if known.
    pub fn get(&self, room: &RoomName, user: UserId) -> Option<RoomState> {
        match self.rooms.get(room)? {
            Known::Public => Some(RoomState::Public),
            Known::Private(members) => members.get(&user).map(|role| RoomState::Private(*role)),
        }
    }

    /// Keeps what the store said of `room` for `user`, unless the room (or
    /// anything) was forgotten since `generation` was taken. A missing
    /// room is not kept: it exists as soon as someone opens it, with no
    /// event to say so.
    pub fn put(&mut self, generation: u64, room: &RoomName, user: UserId, state: RoomState) {
        if generation != self.generation {
            return;
        }
        match state {
            RoomState::Missing => {}
            RoomState::Public => {
                self.remove(room);
                self.make_place();
                self.rooms.insert(room.clone(), Known::Public);
            }
            RoomState::Private(role) => {
                if !matches!(self.rooms.get(room), Some(Known::Private(_))) {
                    self.remove(room);
                    self.make_place();
                    self.rooms.insert(room.clone(), Known::Private(HashMap::new()));
                }
                while self.pairs >= CACHED_PAIRS {
                    self.drop_one();
                }
                if let Some(Known::Private(members)) = self.rooms.get_mut(room) {
                    if members.insert(user, role).is_none() {
                        self.pairs += 1;
                    }
                }
            }
        }
    }

    /// Forgets `room`: its membership changed (or may have).
    pub fn forget(&mut self, room: &RoomName) {
        self.generation += 1;
        self.remove(room);
    }

    /// Forgets everything: events may have been missed.
    pub fn clear(&mut self) {
        self.generation += 1;
        self.rooms.clear();
        self.pairs = 0;
    }

    fn remove(&mut self, room: &RoomName) {
        if let Some(Known::Private(members)) = self.rooms.remove(room) {
            self.pairs -= members.len();
        }
    }

    fn make_place(&mut self) {
        while self.rooms.len() >= CACHED_ROOMS {
            self.drop_one();
        }
    }

    /// Drops some room (whichever the map yields first: no order is kept,
    /// so a hit costs no bookkeeping).
    fn drop_one(&mut self) {
        if let Some(room) = self.rooms.keys().next().cloned() {
            self.remove(&room);
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.rooms.len(), self.pairs)
    }
}

/// Users by name, ignoring case.
#[derive(Default)]
pub struct Users(HashMap<String, User>);

impl Users {
    pub fn get(&self, name: &str) -> Option<User> {
        self.0.get(&folded_username(name)).cloned()
    }

    /// Keeps a user found by name. Unknown names are not kept: the name may
    /// be registered at any moment.
    pub fn put(&mut self, user: &User) {
        if self.0.len() >= CACHED_USERS {
            if let Some(name) = self.0.keys().next().cloned() {
                self.0.remove(&name);
            }
        }
        self.0.insert(folded_username(&user.name), user.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn a_read_made_before_a_forgetting_is_not_kept() {
        let mut states = States::default();
        let (team, al) = (room("team"), UserId::new_v4());
        let before = states.generation();
        // The removal is announced while the read is under way.
        states.forget(&team);
        states.put(before, &team, al, RoomState::Private(Some(Role::Member)));
        assert_eq!(states.get(&team, al), None, "the member read from before the removal is not kept");
        let now = states.generation();
        states.put(now, &team, al, RoomState::Private(None));
        assert_eq!(states.get(&team, al), Some(RoomState::Private(None)));
        // Another room's event also makes older reads unkeepable: the
        // generation is the cache's, not the room's (simpler, and safe).
        let other = states.generation();
        states.forget(&room("elsewhere"));
        states.put(other, &room("dev"), al, RoomState::Public);
        assert_eq!(states.get(&room("dev"), al), None);
    }

    #[test]
    fn public_rooms_are_known_for_everyone_and_private_ones_per_user() {
        let mut states = States::default();
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let g = states.generation();
        states.put(g, &room("dev"), al, RoomState::Public);
        assert_eq!(states.get(&room("dev"), bo), Some(RoomState::Public));
        states.put(g, &room("team"), al, RoomState::Private(Some(Role::Owner)));
        assert_eq!(states.get(&room("team"), al), Some(RoomState::Private(Some(Role::Owner))));
        assert_eq!(states.get(&room("team"), bo), None, "asked about al only");
        states.put(g, &room("gone"), al, RoomState::Missing);
        assert_eq!(states.get(&room("gone"), al), None, "a missing room is not kept");
        states.clear();
        assert_eq!(states.get(&room("dev"), al), None);
        assert_eq!(states.len(), (0, 0));
    }

    #[test]
    fn the_cache_is_bounded_in_rooms_and_in_pairs() {
        let mut states = States::default();
        let g = states.generation();
        for i in 0..CACHED_ROOMS + 10 {
            states.put(g, &room(&format!("r{i}")), UserId::new_v4(), RoomState::Public);
        }
        assert_eq!(states.len().0, CACHED_ROOMS);
        let mut states = States::default();
        for _ in 0..CACHED_PAIRS + 10 {
            states.put(g, &room("big"), UserId::new_v4(), RoomState::Private(None));
            states.put(g, &room("other"), UserId::new_v4(), RoomState::Private(None));
        }
        assert!(states.len().1 <= CACHED_PAIRS, "{:?}", states.len());
        let mut users = Users::default();
        for i in 0..CACHED_USERS + 10 {
            users.put(&User { id: UserId::new_v4(), name: format!("user{i}") });
        }
        assert_eq!(users.0.len(), CACHED_USERS);
        users.put(&User { id: UserId::new_v4(), name: "Bob".into() });
        assert_eq!(users.get("bOB").map(|u| u.name), Some("Bob".into()), "ignoring case");
    }
}
