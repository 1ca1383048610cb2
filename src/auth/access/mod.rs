//! Who may see which room: the one place that answers, for every surface
//! that reveals a room (docs/protocol.md §6).
//!
//! The rule: anyone signed in may see a public room (any valid name that
//! is not a private room's; opening one creates it, and the lobby always
//! exists); only its members may see a private room; only its two users
//! may see a direct room. Anything else is [`Access::Hidden`], which every
//! surface answers exactly as it answers a room that does not exist, so
//! that the answer says nothing.
//!
//! The surfaces, and how each is covered:
//! - `GET /chat/{room}` (the room page) and `GET /chat/{room}/history`:
//!   [`RoomAccess::check`] before anything is opened or read; hidden is
//!   the 404 of a name that is not a room.
//! - `GET /ws?room=` (the upgrade): [`RoomAccess::check`] before the 101;
//!   hidden is 403. The socket is opened with the [`Visible`] it got, and
//!   only this type makes one, so no socket is in a room nobody asked
//!   about. Everything the socket then sees of its room follows from that
//!   one decision, through the registry, which knows each socket's room
//!   and label: the replay after `after`, live `message` fan-out,
//!   `presence` and `presence_diff`, and the `read` markers it moves (its
//!   own room's only). None of them asks again: a decision that changes
//!   while a socket is open (a member removed, a room deleted) reaches the
//!   registry as a membership change, which closes the socket with 4403
//!   and keeps every further frame of the room from it; its reconnect
//!   asks again.
//! - The sidebar of the room page, `GET /api/rooms`, and the unread counts
//!   and mention badges a socket follows: [`RoomAccess::listed`], the one
//!   list of a user's rooms. A socket counts only the rooms on it, so a
//!   mention in a private room reaches only its members.
//! - The member routes (`/api/rooms/{name}/members`): [`RoomAccess::check`]
//!   first, through [`super::memberships`].
//!
//! Answers come from the store through a cache ([`cache`]) that every
//! membership change empties for its room, so the common upgrade costs no
//! more than its session read.

mod cache;

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use self::cache::{States, Users};
use crate::{
    backend::{History, Mentioned, RoomState, Rooms, StoreResult, UserStore},
    model::{valid_username, Role, RoomKind, RoomName, User, UserId},
};

/// How many public rooms a user's list holds (the sidebar, and the rooms
/// whose unread counts a socket follows): the most recently opened, and
/// the lobby. Private rooms are listed all (at most
/// `MAX_PRIVATE_ROOMS_PER_USER`).
pub const LISTED_ROOMS: usize = 30;
/// How many direct conversations a user's list holds: the most recent.
pub const LISTED_DIRECT: usize = 50;

/// How a client names a room: a room name, or `@username` for the direct
/// conversation with that user (docs/protocol.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRef {
    Named(RoomName),
    /// The other user's name, as given (any case).
    Direct(String),
}

impl RoomRef {
    /// `lobby`, `@bob`, or `%40bob` (the `@` percent-encoded, as a path or
    /// a twice-encoded query may carry it). `None` when it is neither a
    /// room name nor `@` and a valid username.
    pub fn parse(text: &str) -> Option<RoomRef> {
        let direct = text.strip_prefix('@').or_else(|| {
            let (head, rest) = text.split_at_checked(3)?;
            head.eq_ignore_ascii_case("%40").then_some(rest)
        });
        match direct {
            Some(name) => valid_username(name).then(|| RoomRef::Direct(name.to_owned())),
            None => RoomName::parse(text).map(RoomRef::Named),
        }
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomRef::Named(room) => write!(f, "{room}"),
            RoomRef::Direct(name) => write!(f, "@{name}"),
        }
    }
}

/// A room a user may see: only [`RoomAccess`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    room: RoomName,
    kind: RoomKind,
    role: Option<Role>,
    /// What this user calls it.
    label: Arc<str>,
    /// The other user of a direct room.
    other: Option<User>,
}

impl Visible {
    fn public(room: RoomName) -> Self {
        let label = room.as_str().into();
        Self { room, kind: RoomKind::Public, role: None, label, other: None }
    }

    fn private(room: RoomName, role: Role) -> Self {
        let label = room.as_str().into();
        Self { room, kind: RoomKind::Private, role: Some(role), label, other: None }
    }

    fn direct(me: UserId, other: User) -> Self {
        let label = format!("@{}", other.name).into();
        Self { room: RoomName::direct(me, other.id), kind: RoomKind::Direct, role: None, label, other: Some(other) }
    }

    /// The room as the store knows it (a direct room's key).
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// The user's role, in a private room.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// What this user calls the room: its name, or `@other` for a direct
    /// room. Frames and pages carry this, never a direct room's key.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The other user of a direct room.
    pub fn other(&self) -> Option<&User> {
        self.other.as_ref()
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
    inner: Arc<Inner>,
}

struct Inner {
    /// The public rooms a user opened, for [`RoomAccess::listed`].
    history: Arc<dyn History>,
    /// Rooms' kinds and members, and the lists of private and direct rooms.
    rooms: Arc<dyn Rooms>,
    /// Users by name, for `@name`.
    users: Arc<dyn UserStore>,
    states: Mutex<States>,
    names: Mutex<Users>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RoomAccess {
    pub fn new(history: Arc<dyn History>, rooms: Arc<dyn Rooms>, users: Arc<dyn UserStore>) -> Self {
        let inner = Inner { history, rooms, users, states: Mutex::default(), names: Mutex::default() };
        Self { inner: Arc::new(inner) }
    }

    /// Whether `user` may see the room `wanted` names, now. One store read
    /// at most (none when the answer is cached).
    pub async fn check(&self, user: UserId, wanted: &RoomRef) -> StoreResult<Access> {
        match wanted {
            RoomRef::Named(room) => {
                let state = self.states(user, std::slice::from_ref(room)).await?.pop();
                Ok(Self::judge(room.clone(), state.unwrap_or(RoomState::Missing)))
            }
            RoomRef::Direct(name) => Ok(match self.find_user(name).await? {
                // Oneself, or nobody: no conversation.
                Some(other) if other.id != user => Access::Visible(Visible::direct(user, other)),
                _ => Access::Hidden,
            }),
        }
    }

    /// What the rule says of a room in `state`.
    fn judge(room: RoomName, state: RoomState) -> Access {
        match state {
            RoomState::Missing | RoomState::Public => Access::Visible(Visible::public(room)),
            RoomState::Private(Some(role)) => Access::Visible(Visible::private(room, role)),
            RoomState::Private(None) => Access::Hidden,
        }
    }

    /// The states of `rooms` (public or private) for `user`: from the
    /// cache, and the rest in one store read, kept for next time.
    async fn states(&self, user: UserId, rooms: &[RoomName]) -> StoreResult<Vec<RoomState>> {
        let (generation, mut states, missed) = {
            let cache = lock(&self.inner.states);
            let states: Vec<Option<RoomState>> = rooms
                .iter()
                .map(|room| if room.is_lobby() { Some(RoomState::Public) } else { cache.get(room, user) })
                .collect();
            let missed: Vec<(RoomName, UserId)> =
                rooms.iter().zip(&states).filter(|(_, s)| s.is_none()).map(|(r, _)| (r.clone(), user)).collect();
            (cache.generation(), states, missed)
        };
        if !missed.is_empty() {
            let read = self.inner.rooms.states(&missed).await?;
            let mut cache = lock(&self.inner.states);
            let mut read = missed.iter().zip(read);
            for state in states.iter_mut().filter(|s| s.is_none()) {
                let ((room, user), found) = read.next().expect("one answer per pair");
                cache.put(generation, room, *user, found);
                *state = Some(found);
            }
        }
        Ok(states.into_iter().map(|s| s.expect("every state found")).collect())
    }

    /// The rooms listed for `user`, and their mention inbox (newest
    /// first). The rooms, in three parts: the [`LISTED_ROOMS`] public rooms
    /// they opened most recently (newest first; a name that has since
    /// become a private room's is left out, or listed with the private
    /// rooms if they are a member), then the lobby if it is not among
    /// them, then the public rooms of the inbox not among those (mentions
    /// in rooms never opened, or not lately: most recently mentioned first,
    /// at most [`LISTED_ROOMS`], only rooms still in use and still public);
    /// every private room they are a member of, in the order they joined;
    /// the [`LISTED_DIRECT`] direct conversations with a message, most
    /// recent first.
    pub async fn listed(&self, user: UserId) -> StoreResult<(Vec<Visible>, Vec<Mentioned>)> {
        let inner = &self.inner;
        let (opened, private, direct, inbox) = tokio::try_join!(
            inner.history.user_rooms(user, LISTED_ROOMS),
            inner.rooms.private_rooms(user),
            inner.rooms.direct_rooms(user, LISTED_DIRECT),
            inner.history.mentions(user),
        )?;
        let mut mentioned: Vec<RoomName> = Vec::new();
        for note in &inbox {
            let fresh = !note.room.is_direct() && !opened.contains(&note.room) && !mentioned.contains(&note.room);
            if fresh && mentioned.len() < LISTED_ROOMS {
                mentioned.push(note.room.clone());
            }
        }
        let states = self.states(user, &opened).await?;
        let mut listed: Vec<Visible> = opened
            .into_iter()
            .zip(states)
            .filter(|(_, state)| matches!(state, RoomState::Public | RoomState::Missing))
            .map(|(room, _)| Visible::public(room))
            .collect();
        if !listed.iter().any(|v| v.room.is_lobby()) {
            listed.push(Visible::public(RoomName::lobby()));
        }
        let states = self.states(user, &mentioned).await?;
        listed.extend(
            mentioned
                .into_iter()
                .zip(states)
                .filter(|(room, state)| *state == RoomState::Public && !room.is_lobby())
                .map(|(room, _)| Visible::public(room)),
        );
        listed.extend(private.into_iter().map(|(room, role)| Visible::private(room, role)));
        listed.extend(direct.into_iter().filter_map(|(room, name)| {
            let other = room.other_member(user)?;
            Some(Visible::direct(user, User { id: other, name }))
        }));
        Ok((listed, inbox))
    }

    /// The user of that name (ignoring case), if any.
    pub async fn find_user(&self, name: &str) -> StoreResult<Option<User>> {
        if let Some(user) = lock(&self.inner.names).get(name) {
            return Ok(Some(user));
        }
        let found = self.inner.users.find(name).await?.map(|stored| stored.user);
        if let Some(user) = &found {
            lock(&self.inner.names).put(user);
        }
        Ok(found)
    }

    /// Forgets what was known of `room`: its membership changed. Called for
    /// every change, here or announced by another instance, before the
    /// change is applied to this instance's sockets.
    pub fn forget(&self, room: &RoomName) {
        lock(&self.inner.states).forget(room);
    }

    /// Forgets every room: changes may have been missed.
    pub fn forget_all(&self) {
        lock(&self.inner.states).clear();
    }

    /// The states of `pairs` read from the store (never the cache), which
    /// is refreshed with them: what the revalidation sweep checks sockets
    /// against. One round trip per store node.
    pub async fn revalidate(&self, pairs: &[(RoomName, UserId)]) -> StoreResult<Vec<RoomState>> {
        let generation = lock(&self.inner.states).generation();
        let states = self.inner.rooms.states(pairs).await?;
        let mut cache = lock(&self.inner.states);
        for ((room, user), state) in pairs.iter().zip(&states) {
            match cache.get(room, *user) {
                // An event was lost: what the cache says is wrong.
                Some(cached) if cached != *state => cache.forget(room),
                Some(_) => {}
                None => cache.put(generation, room, *user, *state),
            }
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::{memory::MemoryBackend, Created},
        config::Config,
    };

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn named(name: &str) -> RoomRef {
        RoomRef::Named(room(name))
    }

    struct World {
        memory: Arc<MemoryBackend>,
        access: RoomAccess,
    }

    impl World {
        fn new() -> World {
            let memory = Arc::new(MemoryBackend::new(&Config::default().chat));
            let access = RoomAccess::new(memory.clone(), memory.clone(), memory.clone());
            World { memory, access }
        }

        async fn user(&self, name: &str) -> User {
            let user = User { id: UserId::new_v4(), name: name.into() };
            assert!(self.memory.create(&user, "hash").await.unwrap());
            user
        }

        async fn sees(&self, user: &User, wanted: &RoomRef) -> Option<(RoomKind, Option<Role>, String)> {
            let answer = self.access.check(user.id, wanted).await.unwrap().visible()?;
            Some((answer.kind(), answer.role(), answer.label().to_string()))
        }
    }

    #[test]
    fn a_room_is_named_by_its_name_or_by_at_and_a_username() {
        assert_eq!(RoomRef::parse("lobby"), Some(named("lobby")));
        assert_eq!(RoomRef::parse("@Bob.x"), Some(RoomRef::Direct("Bob.x".into())));
        assert_eq!(RoomRef::parse("%40bob"), Some(RoomRef::Direct("bob".into())));
        assert_eq!(RoomRef::parse("%40Bob"), RoomRef::parse("@Bob"));
        for bad in ["", "Lobby", "@", "@al", "@a b", "%40", "%4", "%2540bob", "@@bob", "a@b"] {
            assert_eq!(RoomRef::parse(bad), None, "{bad}");
        }
        assert_eq!(RoomRef::parse("@bob").unwrap().to_string(), "@bob");
    }

    #[tokio::test]
    async fn public_rooms_are_everyones_and_private_rooms_their_members_only() {
        let w = World::new();
        let (al, bo) = (w.user("al1").await, w.user("bo1").await);
        for name in ["lobby", "never-opened"] {
            assert_eq!(w.sees(&al, &named(name)).await, Some((RoomKind::Public, None, name.into())));
        }
        assert_eq!(w.memory.create_private(&room("team"), &al).await.unwrap(), Created::Created);
        w.access.forget(&room("team"));
        assert_eq!(w.sees(&al, &named("team")).await, Some((RoomKind::Private, Some(Role::Owner), "team".into())));
        assert_eq!(w.sees(&bo, &named("team")).await, None, "not a member");
    }

    #[tokio::test]
    async fn a_direct_room_is_seen_by_its_two_users_under_each_others_name() {
        let w = World::new();
        let (al, bo) = (w.user("Alice").await, w.user("bob").await);
        let to_bob = w.access.check(al.id, &RoomRef::Direct("BOB".into())).await.unwrap().visible().unwrap();
        let to_al = w.access.check(bo.id, &RoomRef::Direct("alice".into())).await.unwrap().visible().unwrap();
        assert_eq!(to_bob.room(), to_al.room(), "one conversation");
        assert_eq!((to_bob.label().as_ref(), to_al.label().as_ref()), ("@bob", "@Alice"), "the stored names");
        assert_eq!(to_bob.other(), Some(&bo));
        assert_eq!(w.sees(&al, &RoomRef::Direct("alice".into())).await, None, "oneself");
        assert_eq!(w.sees(&al, &RoomRef::Direct("nobody".into())).await, None, "nobody");
    }

    #[tokio::test]
    async fn a_cached_answer_lasts_until_the_room_is_forgotten() {
        let w = World::new();
        let (al, bo) = (w.user("al1").await, w.user("bo1").await);
        w.memory.create_private(&room("team"), &al).await.unwrap();
        w.memory.add_member(&room("team"), al.id, &bo).await.unwrap();
        assert!(w.sees(&bo, &named("team")).await.is_some());
        // Removed in the store; until the change is announced, the cache
        // answers (the event is what keeps it true).
        w.memory.remove_member(&room("team"), al.id, bo.id).await.unwrap();
        assert!(w.sees(&bo, &named("team")).await.is_some(), "cached");
        w.access.forget(&room("team"));
        assert_eq!(w.sees(&bo, &named("team")).await, None);
        // The sweep reads the store, and refreshes the cache.
        w.memory.add_member(&room("team"), al.id, &bo).await.unwrap();
        assert_eq!(
            w.access.revalidate(&[(room("team"), bo.id)]).await.unwrap(),
            [RoomState::Private(Some(Role::Member))]
        );
        assert!(w.sees(&bo, &named("team")).await.is_some());
    }

    #[tokio::test]
    async fn a_users_list_is_public_private_then_direct_rooms() {
        let w = World::new();
        let (al, bo, cy) = (w.user("al1").await, w.user("bo1").await, w.user("cy1").await);
        w.memory.open_room(&room("dev"), al.id).await.unwrap();
        w.memory.open_room(&room("lobby"), bo.id).await.unwrap();
        w.memory.open_room(&room("dev"), bo.id).await.unwrap();
        w.memory.create_private(&room("team"), &al).await.unwrap();
        let direct = RoomName::direct(al.id, cy.id);
        w.memory.note_direct(&direct, &al, &cy, crate::clock::UnixMillis::now()).await.unwrap();
        let labels = |list: Vec<Visible>| list.into_iter().map(|v| (v.kind, v.label.to_string())).collect::<Vec<_>>();
        assert_eq!(
            labels(w.access.listed(al.id).await.unwrap().0),
            [
                (RoomKind::Public, "dev".into()),
                (RoomKind::Public, "lobby".into()),
                (RoomKind::Private, "team".into()),
                (RoomKind::Direct, "@cy1".into())
            ]
        );
        assert_eq!(
            labels(w.access.listed(bo.id).await.unwrap().0),
            [(RoomKind::Public, "dev".into()), (RoomKind::Public, "lobby".into())],
            "the lobby once, where it was opened"
        );
        assert_eq!(
            labels(w.access.listed(cy.id).await.unwrap().0),
            [(RoomKind::Public, "lobby".into()), (RoomKind::Direct, "@al1".into())]
        );
    }
}
