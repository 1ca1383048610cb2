//! Private rooms and their members, and each user's list of direct
//! conversations.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{lock, MemoryBackend, PrivateRoom};
use crate::{
    backend::{rules, Added, Created, Member, Removed, RoomState, Rooms, StoreError, StoreResult},
    clock::UnixMillis,
    model::{Role, RoomName, User, UserId},
};

impl MemoryBackend {
    /// Counts a private room against `user`'s new-room quota only if it is
    /// within it: a refusal counts nothing.
    fn charge_if_within(&self, user: UserId) -> Result<(), Duration> {
        let mut counters = lock(&self.counters);
        let now = Instant::now();
        counters.retain(|_, (_, until)| *until > now);
        let (n, until) = counters.entry(rules::NewRooms::counter(user)).or_insert((0, now + self.new_rooms.window));
        if *n >= self.new_rooms.max {
            return Err((*until - now).max(Duration::from_secs(1)));
        }
        *n += 1;
        Ok(())
    }
}

/// A direct room's key must be the pair's.
fn check_direct(room: &RoomName, a: UserId, b: UserId) -> StoreResult<()> {
    if *room == RoomName::direct(a, b) {
        Ok(())
    } else {
        Err(StoreError::Usage(format!("{room} is not the direct room of {a} and {b}")))
    }
}

/// Every call decides under the rooms' lock: one atomic step, as on Redis.
#[async_trait]
impl Rooms for MemoryBackend {
    async fn state(&self, room: &RoomName, user: UserId) -> StoreResult<RoomState> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("the state of direct room {room} is its key")));
        }
        if room.is_lobby() {
            return Ok(RoomState::Public);
        }
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(match rooms.private.get(room) {
            Some(p) => RoomState::Private(p.is_member(user).then(|| p.role(user))),
            None if rooms.logs.contains_key(room) => RoomState::Public,
            None => RoomState::Missing,
        })
    }

    async fn states(&self, pairs: &[(RoomName, UserId)]) -> StoreResult<Vec<RoomState>> {
        let mut out = Vec::with_capacity(pairs.len());
        for (room, user) in pairs {
            out.push(self.state(room, *user).await?);
        }
        Ok(out)
    }

    async fn create_private(&self, room: &RoomName, owner: &User) -> StoreResult<Created> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("direct room {room} cannot be made private")));
        }
        let now = UnixMillis::now();
        let mut rooms = self.live_rooms(now);
        if room.is_lobby() || rooms.exists(room) {
            return Ok(Created::NameTaken);
        }
        if rooms.private_count(owner.id) >= self.room_limits.max_private_rooms {
            return Ok(Created::TooManyRooms);
        }
        if let Err(retry_after) = self.charge_if_within(owner.id) {
            return Ok(Created::QuotaRefused { retry_after });
        }
        let members = vec![(owner.clone(), now)];
        rooms.private.insert(room.clone(), PrivateRoom { owner: owner.id, members });
        rooms.memberships.entry(owner.id).or_default().insert(room.clone());
        Ok(Created::Created)
    }

    async fn members(&self, room: &RoomName) -> StoreResult<Option<Vec<Member>>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms.private.get(room).map(|p| {
            p.members
                .iter()
                .map(|(user, joined_at)| Member { user: user.clone(), role: p.role(user.id), joined_at: *joined_at })
                .collect()
        }))
    }

    async fn add_member(&self, room: &RoomName, by: UserId, user: &User) -> StoreResult<Added> {
        let now = UnixMillis::now();
        let mut rooms = self.live_rooms(now);
        let count = rooms.private_count(user.id);
        let Some(p) = rooms.private.get_mut(room).filter(|p| p.is_member(by)) else {
            return Ok(Added::NotFound);
        };
        if p.is_member(user.id) {
            return Ok(Added::AlreadyMember);
        }
        if count >= self.room_limits.max_private_rooms {
            return Ok(Added::TooManyRooms);
        }
        if p.members.len() as u64 >= self.room_limits.max_members {
            return Ok(Added::RoomFull);
        }
        p.members.push((user.clone(), now));
        rooms.memberships.entry(user.id).or_default().insert(room.clone());
        Ok(Added::Added)
    }

    async fn remove_member(&self, room: &RoomName, by: UserId, user: UserId) -> StoreResult<Removed> {
        let mut rooms = self.live_rooms(UnixMillis::now());
        let Some(p) = rooms.private.get_mut(room).filter(|p| p.is_member(by) && p.is_member(user)) else {
            return Ok(Removed::NotFound);
        };
        if by != user && p.owner != by {
            return Ok(Removed::Forbidden);
        }
        p.members.retain(|(m, _)| m.id != user);
        let new_owner = match p.members.first() {
            Some((next, _)) if p.owner == user => {
                p.owner = next.id;
                Some(next.id)
            }
            _ => None,
        };
        let deleted = p.members.is_empty();
        if let Some(mine) = rooms.memberships.get_mut(&user) {
            mine.remove(room);
        }
        if deleted {
            rooms.private.remove(room);
            rooms.logs.remove(room);
            lock(&self.presence).remove(room);
        }
        Ok(Removed::Removed { new_owner, deleted })
    }

    async fn private_rooms(&self, user: UserId) -> StoreResult<Vec<(RoomName, Role)>> {
        let rooms = self.live_rooms(UnixMillis::now());
        let mut mine: Vec<(UnixMillis, RoomName, Role)> = rooms
            .memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|room| {
                let p = rooms.private.get(room)?;
                let (_, joined_at) = p.members.iter().find(|(m, _)| m.id == user)?;
                Some((*joined_at, room.clone(), p.role(user)))
            })
            .collect();
        mine.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(mine.into_iter().map(|(_, room, role)| (room, role)).collect())
    }

    async fn note_direct(&self, room: &RoomName, a: &User, b: &User, at: UnixMillis) -> StoreResult<()> {
        check_direct(room, a.id, b.id)?;
        let mut direct = lock(&self.direct);
        for (me, other) in [(a, b), (b, a)] {
            let entry = direct.entry(me.id).or_default().entry(room.clone()).or_insert((other.name.clone(), at));
            entry.1 = entry.1.max(at);
        }
        Ok(())
    }

    async fn direct_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<(RoomName, String)>> {
        let direct = lock(&self.direct);
        let mut mine: Vec<(&RoomName, &(String, UnixMillis))> = direct.get(&user).into_iter().flatten().collect();
        // Most recent first; at one time, as Redis's ZREVRANGE orders them.
        mine.sort_by(|(ra, (_, a)), (rb, (_, b))| (b, rb).cmp(&(a, ra)));
        Ok(mine.into_iter().take(limit).map(|(room, (name, _))| (room.clone(), name.clone())).collect())
    }
}
