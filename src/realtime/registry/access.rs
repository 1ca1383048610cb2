//! Membership changes, applied to this instance's sockets
//! (docs/protocol.md §6): a user removed from a room (or the room deleted)
//! loses every socket in it, closed with 4403 `access revoked`, and every
//! count of it; their other sockets hear `room_removed`. A user added
//! hears `room_added` on each of their sockets.
//!
//! All of it under the registry's lock, at the cost of that user's sockets
//! (or, for a deleted room, of the room's), never a scan of every socket:
//! once the lock is released, no fan-out made afterwards includes a removed
//! socket, its task writes nothing more of the room (see [`super::Revoked`]), and
//! a socket about to register finds the removal in the log.

use std::{collections::HashSet, sync::Arc};

use tokio::{sync::mpsc::error::TrySendError, time::Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{ConnId, Inner, OutFrame, Registry, Watch};
use crate::{
    auth::memberships::{AccessApplied, Change},
    backend::AccessChange,
    model::{RoomKind, RoomName, UserId},
    protocol::{self as frames, ServerFrame},
};

impl Registry {
    /// Applies a membership change; returns how many sockets it closed.
    pub fn apply(&self, change: &Change) -> usize {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match (change.change, change.user) {
            (AccessChange::Added, Some(user)) => {
                Self::added(inner, user, change);
                0
            }
            (AccessChange::Mentioned, Some(user)) => {
                Self::mentioned(inner, user, change);
                0
            }
            (AccessChange::Added | AccessChange::Mentioned, None) => 0,
            (AccessChange::Removed, user) => Self::revoke(inner, &change.room, user),
            (AccessChange::Deleted, _) => Self::revoke(inner, &change.room, None),
        }
    }

    /// `user` (`None`: everyone) may no longer see `room`.
    fn revoke(inner: &mut Inner, room: &RoomName, user: Option<UserId>) -> usize {
        inner.revocations.record(room, user, Instant::now());
        let in_room: Vec<ConnId> = match user {
            Some(user) => inner
                .by_user
                .get(&user)
                .into_iter()
                .flatten()
                .copied()
                .filter(|id| inner.conns.get(id).is_some_and(|c| c.in_room && c.room == *room))
                .collect(),
            None => inner.rooms.get(room).map(|r| r.members.ids().collect()).unwrap_or_default(),
        };
        let mut users: HashSet<UserId> = user.into_iter().collect();
        for id in &in_room {
            let Some(conn) = inner.conns.get_mut(id) else { continue };
            conn.revoked.set();
            conn.in_room = false;
            users.insert(conn.user);
            if let Some(r) = inner.rooms.get_mut(room) {
                r.members.remove(&conn.label, *id);
                r.online.leave(&conn.name);
            }
        }
        let watching = match inner.rooms.get_mut(room) {
            Some(r) => r.watchers.take(user),
            None => Vec::new(),
        };
        for (id, watcher) in &watching {
            users.insert(*watcher);
            if let Some(conn) = inner.conns.get_mut(id) {
                conn.watching.retain(|w| w != room);
            }
        }
        inner.drop_if_unused(room);
        let closed = Registry::close_ids(inner, &in_room, frames::ACCESS_REVOKED);
        // A direct room is never revoked: its label is the room's name.
        let removed = ServerFrame::RoomRemoved { room: room.as_str() }.to_text();
        for user in users {
            Self::tell(inner, user, &in_room, removed.clone());
        }
        closed
    }

    /// `user` may now see the room: each of their sockets (but those in
    /// it) hears `room_added`, and those that count the user's other rooms
    /// start counting this one once they have written it.
    fn added(inner: &mut Inner, user: UserId, change: &Change) {
        let label: Arc<str> = change.label.as_deref().unwrap_or(change.room.as_str()).into();
        let visibility = if change.room.is_direct() { RoomKind::Direct } else { RoomKind::Private };
        let text = ServerFrame::RoomAdded { room: &label, visibility }.to_text();
        let plain = Arc::new(OutFrame::text(text.clone()));
        let ids: Vec<ConnId> = inner.by_user.get(&user).into_iter().flatten().copied().collect();
        let mut slow = Vec::new();
        for id in ids {
            let Some(conn) = inner.conns.get(&id).filter(|c| c.room != change.room) else { continue };
            let frame = match conn.counts_others && !conn.watching.contains(&change.room) {
                true => Arc::new(OutFrame {
                    id: None,
                    text: text.clone(),
                    watch: Some(Box::new(Watch {
                        room: change.room.clone(),
                        label: label.clone(),
                        since: change.since,
                    })),
                }),
                false => plain.clone(),
            };
            if let Err(TrySendError::Full(_)) = conn.outbox.try_send(frame) {
                slow.push(id);
            }
        }
        Registry::close_ids(inner, &slow, frames::SLOW_CONSUMER);
    }

    /// A public room mentions `user`: each of their sockets that counts
    /// other rooms but not this one (and is not in it) hears `room_added`
    /// (public) and starts counting it from the mention on. Sockets that
    /// count it already count the mention as it is delivered.
    fn mentioned(inner: &mut Inner, user: UserId, change: &Change) {
        let label: Arc<str> = change.room.as_str().into();
        let text = ServerFrame::RoomAdded { room: &label, visibility: RoomKind::Public }.to_text();
        let ids: Vec<ConnId> = inner.by_user.get(&user).into_iter().flatten().copied().collect();
        let mut slow = Vec::new();
        for id in ids {
            let Some(conn) = inner.conns.get(&id) else { continue };
            if conn.room == change.room || !conn.counts_others || conn.watching.contains(&change.room) {
                continue;
            }
            let frame = Arc::new(OutFrame {
                id: None,
                text: text.clone(),
                watch: Some(Box::new(Watch { room: change.room.clone(), label: label.clone(), since: change.since })),
            });
            if let Err(TrySendError::Full(_)) = conn.outbox.try_send(frame) {
                slow.push(id);
            }
        }
        Registry::close_ids(inner, &slow, frames::SLOW_CONSUMER);
    }

    /// Queues `frame` on every socket of `user` but `except`. A socket whose
    /// queue is full is closed: it is not reading.
    fn tell(inner: &mut Inner, user: UserId, except: &[ConnId], frame: Utf8Bytes) {
        let frame = Arc::new(OutFrame::text(frame));
        let ids: Vec<ConnId> = inner.by_user.get(&user).into_iter().flatten().copied().collect();
        let mut slow = Vec::new();
        for id in ids.into_iter().filter(|id| !except.contains(id)) {
            let Some(conn) = inner.conns.get(&id) else { continue };
            if let Err(TrySendError::Full(_)) = conn.outbox.try_send(frame.clone()) {
                slow.push(id);
            }
        }
        Registry::close_ids(inner, &slow, frames::SLOW_CONSUMER);
    }
}

impl AccessApplied for Registry {
    fn applied(&self, change: &Change) -> usize {
        self.apply(change)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;
    use tower_sessions::session::Id;

    use super::*;
    use crate::{
        model::MessageId,
        realtime::registry::{
            tests::{join_as, message, register_at, Joined, Place, CAPS},
            Outbound,
        },
    };

    fn team() -> RoomName {
        RoomName::parse("team").unwrap()
    }

    fn private(reg: &Registry) -> Place<'static> {
        Place { room: team(), label: "team", kind: RoomKind::Private, epoch: reg.epoch() }
    }

    fn frames(outbox: &mut mpsc::Receiver<Outbound>) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| outbox.try_recv().ok()).map(|f| serde_json::from_str(f.text.as_str()).unwrap()).collect()
    }

    fn removed(user: UserId) -> Change {
        Change::of(team(), Some(user), AccessChange::Removed)
    }

    #[tokio::test]
    async fn a_removal_closes_exactly_that_users_sockets_in_that_room_and_tells_their_others() {
        let reg = Registry::new(CAPS);
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let join = |session, user, name, place| register_at(&reg, Id(session), user, name, place, MessageId::ZERO, 8);
        let mut al_team = join(1, al, "al", private(&reg)).unwrap();
        let mut al_phone = join(2, al, "al", private(&reg)).unwrap();
        let mut al_lobby = join_as(&reg, Id(1), al, "al", "lobby", 8);
        let mut bo_team = join(3, bo, "bo", private(&reg)).unwrap();
        // Al's lobby socket counts the team room's unread messages.
        let (tx, _) = mpsc::channel(1);
        reg.watch(al_lobby.id, &tx, &[(team(), "team".into(), MessageId::ZERO)]);

        assert_eq!(reg.apply(&removed(al)), 2);
        for socket in [&mut al_team, &mut al_phone] {
            assert_eq!(socket.close.try_recv().unwrap(), frames::ACCESS_REVOKED);
        }
        assert!(al_lobby.close.try_recv().is_err() && bo_team.close.try_recv().is_err(), "nothing else closes");
        assert_eq!(frames(&mut al_lobby.outbox), [serde_json::json!({"type": "room_removed", "room": "team"})]);
        assert!(frames(&mut bo_team.outbox).is_empty());
        // From now on the room's frames reach bo only, and al's flag is up.
        reg.send(reg.deliver(&team(), &[message(1)])).await;
        assert!(frames(&mut al_team.outbox).is_empty() && frames(&mut al_lobby.outbox).is_empty());
        assert_eq!(frames(&mut bo_team.outbox).len(), 1);
        assert!(reg.lock().conns[&al_team.id].revoked.is_set());
        assert_eq!(reg.local_names(&team()), ["bo"], "al is not present in it");
        let mut pairs = reg.access_pairs();
        pairs.sort_by_key(|(room, ..)| room.clone());
        assert_eq!(pairs, [(RoomName::lobby(), al, RoomKind::Public), (team(), bo, RoomKind::Private)], "al's are out");
        for s in [&al_team, &al_phone, &al_lobby, &bo_team] {
            reg.remove(s.id);
        }
        assert!(reg.len() == 0 && reg.cursors().is_empty());
    }

    #[tokio::test]
    async fn a_deleted_room_closes_every_socket_in_it_and_an_added_member_hears_of_the_room() {
        let reg = Registry::new(CAPS);
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let join = |session, user, name, place| register_at(&reg, Id(session), user, name, place, MessageId::ZERO, 8);
        let mut sockets: Vec<Joined> =
            [(1, al, "al"), (2, bo, "bo")].map(|(s, u, n)| join(s, u, n, private(&reg)).unwrap()).into();
        let mut elsewhere = join_as(&reg, Id(3), bo, "bo", "lobby", 8);
        let deleted = Change::of(team(), None, AccessChange::Deleted);
        assert_eq!(reg.apply(&deleted), 2);
        for socket in &mut sockets {
            assert_eq!(socket.close.try_recv().unwrap(), frames::ACCESS_REVOKED);
        }
        assert_eq!(frames(&mut elsewhere.outbox), [serde_json::json!({"type": "room_removed", "room": "team"})]);
        let added = Change::of(team(), Some(bo), AccessChange::Added);
        assert_eq!(reg.apply(&added), 0);
        assert_eq!(
            frames(&mut elsewhere.outbox),
            [serde_json::json!({"type": "room_added", "room": "team", "visibility": "private"})]
        );
    }

    #[test]
    fn a_socket_checked_before_a_removal_and_registered_after_it_is_refused() {
        let reg = Registry::new(CAPS);
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let checked = private(&reg);
        reg.apply(&removed(al));
        let late = register_at(&reg, Id(1), al, "al", checked, MessageId::ZERO, 8);
        assert_eq!(late.err(), Some(frames::ACCESS_REVOKED));
        let checked_again = private(&reg);
        assert!(register_at(&reg, Id(1), al, "al", checked_again, MessageId::ZERO, 8).is_ok(), "checked after it");
        assert!(register_at(&reg, Id(2), bo, "bo", private(&reg), MessageId::ZERO, 8).is_ok(), "someone else");
        assert_eq!(reg.len(), 2);
    }

    #[tokio::test]
    async fn each_side_of_a_direct_room_gets_frames_under_its_own_label() {
        let reg = Registry::new(CAPS);
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let room = RoomName::direct(al, bo);
        let place = |label| Place { room: room.clone(), label, kind: RoomKind::Direct, epoch: reg.epoch() };
        let mut to_bo = register_at(&reg, Id(1), al, "al", place("@bo"), MessageId::ZERO, 8).unwrap();
        let mut to_al = register_at(&reg, Id(2), bo, "bo", place("@al"), MessageId::ZERO, 8).unwrap();
        reg.send(reg.deliver(&room, &[message(1)])).await;
        reg.send(reg.broadcast(&room, |label| ServerFrame::RoomRemoved { room: label }.to_text())).await;
        let rooms = |outbox| frames(outbox).into_iter().map(|f| f["room"].clone()).collect::<Vec<_>>();
        assert_eq!(rooms(&mut to_bo.outbox), ["@bo", "@bo"]);
        assert_eq!(rooms(&mut to_al.outbox), ["@al", "@al"]);
        assert!(reg.access_pairs().is_empty(), "a direct room's members never change: nothing to sweep");
    }

    #[test]
    fn a_direct_conversation_started_is_added_under_the_senders_name_and_counted_where_others_are() {
        let reg = Registry::new(CAPS);
        let (al, bo) = (UserId::new_v4(), UserId::new_v4());
        let room = RoomName::direct(al, bo);
        let mut counting = join_as(&reg, Id(1), bo, "bo", "lobby", 8);
        let mut plain = join_as(&reg, Id(2), bo, "bo", "lobby", 8);
        let (tx, _) = mpsc::channel(1);
        reg.watch(counting.id, &tx, &[]);
        let first = MessageId { ms: 5, seq: 0 };
        let started = Change {
            label: Some("@al".into()),
            since: Some(first),
            ..Change::of(room.clone(), Some(bo), AccessChange::Added)
        };
        reg.apply(&started);
        let added = serde_json::json!({"type": "room_added", "room": "@al", "visibility": "direct"});
        let out = counting.outbox.try_recv().unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(out.text.as_str()).unwrap(), added);
        let watch = out.watch.as_ref().expect("the counting socket is asked to count it");
        assert_eq!((&watch.room, &*watch.label, watch.since), (&room, "@al", Some(first)));
        let out = plain.outbox.try_recv().unwrap();
        assert!(out.watch.is_none(), "a socket that counts nothing only hears of it");
        assert_eq!(serde_json::from_str::<serde_json::Value>(out.text.as_str()).unwrap(), added);
    }
}
