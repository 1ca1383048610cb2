//! Who may see which room: the one place that answers, for every surface
//! that reveals a room.
//!
//! Today every valid room name is a public room, and every signed-in user
//! may see every public room; the lobby always exists
//! ([`RoomName::is_lobby`]). Rooms of other kinds, and who may see them,
//! are a change to [`RoomAccess`] and [`RoomKind`], not to the surfaces.
//!
//! The surfaces, and how each is covered:
//! - `GET /chat/{room}` (the room page): [`RoomAccess::check`] before the
//!   room is opened or read; [`Access::Hidden`] is the 404 of a name that
//!   is not a room.
//! - `GET /chat/{room}/history`: [`RoomAccess::check`] before anything is
//!   read; hidden is 404.
//! - `GET /ws?room=` (the upgrade): [`RoomAccess::check`] before the 101;
//!   hidden is 404. The socket is opened with the [`Visible`] it got, and
//!   only this type makes one, so no socket is in a room nobody asked
//!   about. Everything the socket then sees of its room follows from that
//!   one decision, through the registry, which knows each socket's room:
//!   the replay after `after`, live `message` fan-out, `presence` and
//!   `presence_diff`, and the `read` markers it moves (its own room's
//!   only). None of them asks again; a decision that must change while a
//!   socket is open (a member removed) closes the socket, and its
//!   reconnect asks again.
//! - The sidebar of the room page, and the unread counts and mention
//!   badges a socket follows: [`RoomAccess::listed`], the one list of a
//!   user's rooms. A socket counts only the rooms on it (and the read
//!   markers of those).

use std::sync::Arc;

use crate::{
    backend::{History, StoreResult},
    model::{RoomKind, RoomName, UserId},
};

/// How many of a user's rooms are listed (the sidebar, and the rooms whose
/// unread counts a socket follows): the most recently opened, and the
/// lobby.
pub const LISTED_ROOMS: usize = 30;

/// A room a user may see, and its kind: only [`RoomAccess`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    room: RoomName,
    kind: RoomKind,
}

impl Visible {
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    pub fn into_room(self) -> RoomName {
        self.room
    }
}

/// What a user may do with a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing: every surface answers as it does for a room that does not
    /// exist, so that the answer says nothing about it.
    Hidden,
    /// See it: read it and write to it.
    Visible(Visible),
}

impl Access {
    /// The room, if it may be seen.
    pub fn visible(self) -> Option<Visible> {
        match self {
            Access::Visible(visible) => Some(visible),
            Access::Hidden => None,
        }
    }
}

/// The answer to "may this user see this room, now?", for every surface;
/// see the module's doc for the list.
#[derive(Clone)]
pub struct RoomAccess {
    /// Where the rooms a user opened are kept, for [`RoomAccess::listed`].
    history: Arc<dyn History>,
}

impl RoomAccess {
    pub fn new(history: Arc<dyn History>) -> Self {
        Self { history }
    }

    fn public(room: RoomName) -> Visible {
        Visible { room, kind: RoomKind::Public }
    }

    /// Whether `user` may see `room` now. Every room is public today, so
    /// the answer does not depend on who asks; it is async and may fail
    /// because an answer that does will read the store.
    pub async fn check(&self, _user: UserId, room: &RoomName) -> StoreResult<Access> {
        Ok(Access::Visible(Self::public(room.clone())))
    }

    /// The rooms listed for `user`: the [`LISTED_ROOMS`] they opened most
    /// recently (newest first), then the lobby if it is not among them.
    pub async fn listed(&self, user: UserId) -> StoreResult<Vec<Visible>> {
        let mut rooms = self.history.user_rooms(user, LISTED_ROOMS).await?;
        if !rooms.iter().any(RoomName::is_lobby) {
            rooms.push(RoomName::lobby());
        }
        Ok(rooms.into_iter().map(Self::public).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::memory::MemoryBackend, config::Config};

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[tokio::test]
    async fn every_valid_room_is_public_to_everyone() {
        let access = RoomAccess::new(Arc::new(MemoryBackend::new(&Config::default().chat)));
        for name in ["lobby", "never-opened"] {
            let answer = access.check(UserId::new_v4(), &room(name)).await.unwrap();
            assert_eq!(answer.visible().map(|v| (v.kind(), v.into_room())), Some((RoomKind::Public, room(name))));
        }
    }

    #[tokio::test]
    async fn a_users_list_is_the_rooms_they_opened_and_the_lobby_once() {
        let memory = Arc::new(MemoryBackend::new(&Config::default().chat));
        let access = RoomAccess::new(memory.clone());
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        memory.open_room(&room("dev"), al).await.unwrap();
        // Bo opened the lobby, then dev (in the same millisecond, the names
        // decide: the same order).
        memory.open_room(&room("lobby"), bo).await.unwrap();
        memory.open_room(&room("dev"), bo).await.unwrap();
        let names = |list: Vec<Visible>| list.into_iter().map(|v| v.into_room().to_string()).collect::<Vec<_>>();
        assert_eq!(names(access.listed(al).await.unwrap()), ["dev", "lobby"], "the lobby last");
        assert_eq!(names(access.listed(bo).await.unwrap()), ["dev", "lobby"], "the lobby once, where it was opened");
        assert_eq!(names(access.listed(UserId::new_v4()).await.unwrap()), ["lobby"]);
    }
}
