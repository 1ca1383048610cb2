//! Who is a member of which private room, changed in one place, and every
//! change announced (docs/protocol.md §6): the store first, then this
//! instance's sockets (at once, without waiting for anything), then the
//! event bus, from which every other instance does the same. As
//! [`super::Sessions`] is for logouts.
//!
//! Every method asks [`RoomAccess`] first, so a user who may not see a
//! room learns nothing of it here either: its members, its kind, whether
//! it exists.

use std::{sync::Arc, time::Duration};

use super::access::{Access, RoomAccess, RoomRef, Visible};
use crate::{
    backend::{AccessChange, Added, Created, Event, EventBus, History, Removed, RoomOpened, Rooms, StoreResult},
    clock::UnixMillis,
    model::{folded_username, mentions, Message, MessageId, Role, RoomKind, RoomName, User, UserId},
};

/// A membership change, as this instance's sockets must learn of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub room: RoomName,
    /// Who was added or removed; `None` when the room was deleted.
    pub user: Option<UserId>,
    pub change: AccessChange,
    /// What the added user calls the room, when not its name (a direct
    /// room: `@other`).
    pub label: Option<String>,
    /// The first message the added user has not seen, from which their
    /// unread count starts (a direct conversation's first message).
    pub since: Option<MessageId>,
}

impl Change {
    /// A change with nothing to say beyond who and what.
    pub fn of(room: RoomName, user: Option<UserId>, change: AccessChange) -> Self {
        Self { room, user, change, label: None, since: None }
    }
}

impl Change {
    fn to_event(&self, instance: &str) -> Event {
        Event::Access {
            room: self.room.to_string(),
            instance: instance.to_owned(),
            user: self.user,
            change: self.change,
            label: self.label.clone(),
            since: self.since.map(|id| id.to_string()),
            at: Some(UnixMillis::now()),
        }
    }

    /// The change an event names, unless `me` made it (and applied it
    /// already); with when it was published.
    pub fn from_event(event: &Event, me: &str) -> Option<(Change, Option<UnixMillis>)> {
        match event {
            Event::Access { room, instance, user, change, label, since, at } if instance != me => {
                let room = RoomName::from_stored(room)?;
                let since = since.as_deref().and_then(|id| id.parse().ok());
                Some((Change { room, user: *user, change: *change, label: label.clone(), since }, *at))
            }
            _ => None,
        }
    }
}

/// Where this instance applies membership changes (the registry): closes
/// the sockets that may no longer see a room, tells the user's others.
pub trait AccessApplied: Send + Sync {
    /// Applies the change; returns how many sockets it closed.
    fn applied(&self, change: &Change) -> usize;
}

/// Why a membership request was refused. Each is one answer of the API
/// (docs/protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such room, or the caller may not see it, or it has no members
    /// (a public room): all the same to the caller.
    NotFound,
    NoSuchUser,
    /// A direct room's members never change.
    Direct,
    /// A member (not the owner) tried to remove someone else.
    Forbidden,
    /// The room has `MAX_ROOM_MEMBERS` members.
    RoomFull,
    /// The user is a member of `MAX_PRIVATE_ROOMS_PER_USER` private rooms.
    TooManyRooms,
    /// A conversation with oneself.
    Yourself,
    /// A room of that name exists (of any kind).
    NameTaken,
    /// The new-room quota: try again after this long.
    Quota(Duration),
}

/// A member as the API lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub role: Role,
}

/// The membership handle.
#[derive(Clone)]
pub struct Memberships {
    rooms: Arc<dyn Rooms>,
    /// Opening a public room (a "public" creation).
    history: Arc<dyn History>,
    access: RoomAccess,
    bus: Arc<dyn EventBus>,
    local: Arc<dyn AccessApplied>,
    /// Names this instance in its events: it does not apply them twice.
    instance: Arc<str>,
}

/// What the membership handle is made of.
pub struct MembershipsParts {
    pub rooms: Arc<dyn Rooms>,
    pub history: Arc<dyn History>,
    pub access: RoomAccess,
    pub bus: Arc<dyn EventBus>,
    pub local: Arc<dyn AccessApplied>,
    pub instance: String,
}

impl Memberships {
    pub fn new(parts: MembershipsParts) -> Self {
        let MembershipsParts { rooms, history, access, bus, local, instance } = parts;
        Self { rooms, history, access, bus, local, instance: instance.into() }
    }

    /// `owner` makes room `room` of `kind`: a private room with them its
    /// owner, or (public) opens it, as its page does.
    pub async fn create(&self, owner: &User, room: &RoomName, kind: RoomKind) -> StoreResult<Result<(), Refused>> {
        match kind {
            RoomKind::Private => Ok(match self.rooms.create_private(room, owner).await? {
                Created::Created => {
                    tracing::info!(user = %owner.name, %room, "private room created");
                    self.announce(Change::of(room.clone(), Some(owner.id), AccessChange::Added)).await;
                    Ok(())
                }
                Created::NameTaken => Err(Refused::NameTaken),
                Created::QuotaRefused { retry_after } => Err(Refused::Quota(retry_after)),
                Created::TooManyRooms => Err(Refused::TooManyRooms),
            }),
            RoomKind::Public | RoomKind::Direct => Ok(match self.history.open_room(room, owner.id).await? {
                RoomOpened::Open => Ok(()),
                RoomOpened::NewRoomRefused { retry_after } => Err(Refused::Quota(retry_after)),
                RoomOpened::Private => Err(Refused::NameTaken),
            }),
        }
    }

    /// The room `wanted` names, if `caller` may see it and it has members.
    async fn with_members(&self, caller: UserId, wanted: &RoomRef) -> StoreResult<Result<Visible, Refused>> {
        Ok(match self.access.check(caller, wanted).await? {
            Access::Visible(visible) if visible.kind() != RoomKind::Public => Ok(visible),
            Access::Visible(_) | Access::Hidden => Err(Refused::NotFound),
        })
    }

    /// The members of a private room (longest-standing first) or a direct
    /// one (the two), for one of them.
    pub async fn members(&self, caller: &User, wanted: &RoomRef) -> StoreResult<Result<Vec<Listed>, Refused>> {
        let visible = match self.with_members(caller.id, wanted).await? {
            Ok(visible) => visible,
            Err(refused) => return Ok(Err(refused)),
        };
        if let Some(other) = visible.other() {
            let member = |user: &User| Listed { name: user.name.clone(), role: Role::Member };
            return Ok(Ok(vec![member(caller), member(other)]));
        }
        // Gone since the check: as if it never was.
        let members = self.rooms.members(visible.room()).await?.ok_or(Refused::NotFound);
        Ok(members.map(|members| members.into_iter().map(|m| Listed { name: m.user.name, role: m.role }).collect()))
    }

    /// `caller`, a member, adds `username`. Adding a member is no change.
    pub async fn add(&self, caller: &User, wanted: &RoomRef, username: &str) -> StoreResult<Result<(), Refused>> {
        let room = match self.changeable(caller.id, wanted).await? {
            Ok(room) => room,
            Err(refused) => return Ok(Err(refused)),
        };
        let Some(user) = self.access.find_user(username).await? else { return Ok(Err(Refused::NoSuchUser)) };
        Ok(match self.rooms.add_member(&room, caller.id, &user).await? {
            Added::Added => {
                tracing::info!(by = %caller.name, user = %user.name, %room, "member added");
                // They count from here on, not the room's whole history.
                let marked = async { self.history.mark_read(user.id, &room, self.history.last_id(&room).await?).await };
                if let Err(err) = marked.await {
                    tracing::warn!(%err, %room, "no read marker for the member added: they count the room from its start");
                }
                self.announce(Change::of(room, Some(user.id), AccessChange::Added)).await;
                Ok(())
            }
            Added::AlreadyMember => Ok(()),
            Added::NotFound => Err(Refused::NotFound),
            Added::RoomFull => Err(Refused::RoomFull),
            Added::TooManyRooms => Err(Refused::TooManyRooms),
        })
    }

    /// `caller` removes `username`: themselves (leaving), or anyone as the
    /// owner. The last member leaving deletes the room.
    pub async fn remove(&self, caller: &User, wanted: &RoomRef, username: &str) -> StoreResult<Result<(), Refused>> {
        let room = match self.changeable(caller.id, wanted).await? {
            Ok(room) => room,
            Err(refused) => return Ok(Err(refused)),
        };
        let user = if folded_username(username) == folded_username(&caller.name) {
            caller.clone()
        } else {
            match self.access.find_user(username).await? {
                Some(user) => user,
                None => return Ok(Err(Refused::NoSuchUser)),
            }
        };
        Ok(match self.rooms.remove_member(&room, caller.id, user.id).await? {
            Removed::Removed { deleted, new_owner } => {
                tracing::info!(by = %caller.name, user = %user.name, %room, deleted, ?new_owner, "member removed");
                let change = match deleted {
                    true => Change::of(room, None, AccessChange::Deleted),
                    false => Change::of(room, Some(user.id), AccessChange::Removed),
                };
                self.announce(change).await;
                Ok(())
            }
            Removed::NotFound => Err(Refused::NotFound),
            Removed::Forbidden => Err(Refused::Forbidden),
        })
    }

    /// The private room `wanted` names, if `caller` is a member of it.
    async fn changeable(&self, caller: UserId, wanted: &RoomRef) -> StoreResult<Result<RoomName, Refused>> {
        Ok(self.with_members(caller, wanted).await?.and_then(|visible| match visible.kind() {
            RoomKind::Direct => Err(Refused::Direct),
            _ => Ok(visible.into_room()),
        }))
    }

    /// The direct conversation of `caller` and `username`: what `caller`
    /// calls it (`@name`, as the name is registered). Nothing is written:
    /// the conversation exists from its first message on.
    pub async fn direct(&self, caller: &User, username: &str) -> StoreResult<Result<String, Refused>> {
        Ok(match self.access.find_user(username).await? {
            None => Err(Refused::NoSuchUser),
            Some(user) if user.id == caller.id => Err(Refused::Yourself),
            Some(user) => Ok(format!("@{}", user.name)),
        })
    }

    /// This instance forgets what it knew of the room and applies the
    /// change to its sockets now, then tells every other instance. The
    /// store holds the change already, so if the event is lost the other
    /// instances' sweeps still find it.
    /// `from` stored the first message (`since`) of their direct
    /// conversation with `to` that one of their sockets sent: `to`'s sockets
    /// on every instance hear of it (`room_added`, under `@from`) and count
    /// it from that message on.
    pub async fn direct_started(&self, room: &RoomName, from: &User, to: UserId, since: MessageId) {
        let change = Change {
            label: Some(format!("@{}", from.name)),
            since: Some(since),
            ..Change::of(room.clone(), Some(to), AccessChange::Added)
        };
        self.announce(change).await;
    }

    /// After `sender`'s `message` was stored in the public room `room`: each user it
    /// mentions (at most [`MAX_MENTIONS`](crate::model::MAX_MENTIONS)
    /// names), who exists and is not its sender, gets a note in their
    /// mention inbox, and their sockets on every instance that do not count
    /// the room yet start counting it from the mention on. Only public
    /// rooms: a private room's members and a direct room's two users count
    /// it already, and nobody else may see it. Best effort: a failure costs
    /// the note, not the message.
    pub async fn mentioned(&self, room: &RoomName, sender: &User, message: &Message) {
        let names = mentions(&message.body);
        let found = futures_util::future::join_all(names.iter().map(|name| self.access.find_user(name))).await;
        let users: Vec<User> = found
            .into_iter()
            .filter_map(|found| {
                found.inspect_err(|err| tracing::warn!(%err, "a mention not noted: store unavailable")).ok()?
            })
            .filter(|user| user.id != sender.id)
            .collect();
        let noted = users.iter().map(|user| async {
            if let Err(err) = self.history.note_mention(user.id, room, message.id).await {
                tracing::warn!(%err, %room, "a mention not noted: store unavailable");
                return;
            }
            let change = Change { since: Some(message.id), ..Change::of(room.clone(), Some(user.id), AccessChange::Mentioned) };
            self.local.applied(&change);
            if let Err(err) = self.bus.publish(&change.to_event(&self.instance)).await {
                tracing::warn!(%err, %room, "mention event not published: other instances count it at their next connect");
            }
        });
        futures_util::future::join_all(noted).await;
    }

    async fn announce(&self, change: Change) {
        self.access.forget(&change.room);
        self.local.applied(&change);
        if let Err(err) = self.bus.publish(&change.to_event(&self.instance)).await {
            tracing::warn!(%err, room = %change.room, "membership event not published; other instances will find it in their sweep");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{
        backend::{memory::MemoryBackend, EventBus, Notice, UserStore},
        config::Config,
    };

    /// Records what was applied here, and what the bus had been told by then.
    #[derive(Default)]
    struct Applied {
        changes: Mutex<Vec<Change>>,
    }

    impl AccessApplied for Applied {
        fn applied(&self, change: &Change) -> usize {
            self.changes.lock().unwrap().push(change.clone());
            0
        }
    }

    struct World {
        memory: Arc<MemoryBackend>,
        access: RoomAccess,
        applied: Arc<Applied>,
        memberships: Memberships,
    }

    impl World {
        fn new() -> World {
            let mut config = Config::default().chat;
            config.max_room_members = 2;
            let memory = Arc::new(MemoryBackend::new(&config));
            let access = RoomAccess::new(memory.clone(), memory.clone(), memory.clone());
            let applied = Arc::new(Applied::default());
            let memberships = Memberships::new(MembershipsParts {
                rooms: memory.clone(),
                history: memory.clone(),
                access: access.clone(),
                bus: memory.clone(),
                local: applied.clone(),
                instance: "here".into(),
            });
            World { memory, access, applied, memberships }
        }

        async fn user(&self, name: &str) -> User {
            let user = User { id: UserId::new_v4(), name: name.into() };
            assert!(self.memory.create(&user, "hash").await.unwrap());
            user
        }

        fn applied(&self) -> Vec<Change> {
            std::mem::take(&mut *self.applied.changes.lock().unwrap())
        }
    }

    fn team() -> RoomName {
        RoomName::parse("team").unwrap()
    }

    fn named(room: &RoomName) -> RoomRef {
        RoomRef::Named(room.clone())
    }

    fn change(user: Option<&User>, change: AccessChange) -> Change {
        Change::of(team(), user.map(|u| u.id), change)
    }

    #[tokio::test]
    async fn each_change_is_applied_here_and_published_for_the_others() {
        let w = World::new();
        let mut events = w.memory.subscribe();
        let (al, bo) = (w.user("alice").await, w.user("bob").await);
        w.memberships.create(&al, &team(), RoomKind::Private).await.unwrap().unwrap();
        w.memberships.add(&al, &named(&team()), "BOB").await.unwrap().unwrap();
        w.memberships.remove(&al, &named(&team()), "bob").await.unwrap().unwrap();
        w.memberships.remove(&al, &named(&team()), "alice").await.unwrap().unwrap();
        let expected = [
            change(Some(&al), AccessChange::Added),
            change(Some(&bo), AccessChange::Added),
            change(Some(&bo), AccessChange::Removed),
            change(None, AccessChange::Deleted),
        ];
        assert_eq!(w.applied(), expected);
        for want in expected {
            let Ok(Notice::Event(event)) = events.recv().await else { panic!("an event") };
            assert_eq!(Change::from_event(&event, "here"), None, "this instance's own");
            let (heard, at) = Change::from_event(&event, "elsewhere").expect("a membership change");
            assert_eq!(heard, want);
            assert!(at.is_some(), "when it was published");
        }
    }

    #[tokio::test]
    async fn a_room_that_cannot_be_seen_refuses_alike_and_changes_nothing() {
        let w = World::new();
        let (al, bo) = (w.user("alice").await, w.user("bob").await);
        w.memberships.create(&al, &team(), RoomKind::Private).await.unwrap().unwrap();
        w.applied();
        let unknown = RoomRef::Named(RoomName::parse("nowhere").unwrap());
        let lobby = RoomRef::Named(RoomName::lobby());
        for room in [&named(&team()), &unknown, &lobby] {
            assert_eq!(w.memberships.members(&bo, room).await.unwrap(), Err(Refused::NotFound), "{room}");
            assert_eq!(w.memberships.add(&bo, room, "carol").await.unwrap(), Err(Refused::NotFound), "{room}");
            assert_eq!(w.memberships.remove(&bo, room, "alice").await.unwrap(), Err(Refused::NotFound), "{room}");
        }
        assert_eq!(w.memberships.add(&al, &named(&team()), "nobody").await.unwrap(), Err(Refused::NoSuchUser));
        assert_eq!(w.applied(), []);
        // The direct room: its two see each other; nobody changes it.
        let direct = RoomRef::Direct("bob".into());
        let names = |list: Vec<Listed>| list.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(w.memberships.members(&al, &direct).await.unwrap().unwrap()), ["alice", "bob"]);
        assert_eq!(w.memberships.add(&al, &direct, "carol").await.unwrap(), Err(Refused::Direct));
        assert_eq!(w.memberships.remove(&al, &direct, "bob").await.unwrap(), Err(Refused::Direct));
        assert_eq!(w.memberships.direct(&al, "Bob").await.unwrap(), Ok("@bob".into()));
        assert_eq!(w.memberships.direct(&al, "ALICE").await.unwrap(), Err(Refused::Yourself));
        assert_eq!(w.memberships.direct(&al, "nobody").await.unwrap(), Err(Refused::NoSuchUser));
    }

    #[tokio::test]
    async fn the_rules_of_membership_come_back_as_refusals() {
        let w = World::new();
        let (al, bo) = (w.user("alice").await, w.user("bob").await);
        w.user("carol").await;
        let room = named(&team());
        w.memberships.create(&al, &team(), RoomKind::Private).await.unwrap().unwrap();
        assert_eq!(w.memberships.create(&bo, &team(), RoomKind::Private).await.unwrap(), Err(Refused::NameTaken));
        assert_eq!(w.memberships.create(&bo, &team(), RoomKind::Public).await.unwrap(), Err(Refused::NameTaken));
        w.memberships.add(&al, &room, "bob").await.unwrap().unwrap();
        assert_eq!(w.memberships.add(&bo, &room, "alice").await.unwrap(), Ok(()), "already a member");
        assert_eq!(w.memberships.add(&bo, &room, "carol").await.unwrap(), Err(Refused::RoomFull));
        assert_eq!(w.memberships.remove(&bo, &room, "alice").await.unwrap(), Err(Refused::Forbidden));
        // The owner leaves: bob owns it.
        w.memberships.remove(&al, &room, "alice").await.unwrap().unwrap();
        let members = w.memberships.members(&bo, &room).await.unwrap().unwrap();
        assert_eq!(members, [Listed { name: "bob".into(), role: Role::Owner }]);
        assert!(w.access.check(al.id, &room).await.unwrap().visible().is_none(), "alice left");
    }
}
