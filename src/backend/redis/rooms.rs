//! Private rooms and the lists of direct conversations (docs/cluster.md,
//! "Private rooms").
//!
//! A private room's keys are the room's (its group's slot): `meta` (which
//! makes the name private), `members`, and `left` (the fence below). Every
//! decision about a room is one script there, so the name's kind and the
//! members are always decided atomically. A user's index of their private
//! rooms is in the user's slot; it bounds how many they may be in
//! (`MAX_PRIVATE_ROOMS_PER_USER`), so it must never hold fewer entries
//! than the user has memberships:
//!
//! - An add (or a creation) first reserves the entry in the index
//!   (`private_reserve`, which refuses past the bound), with a token from
//!   the user's counter, then writes the room with that token; when the
//!   room is not written, the reservation is given back.
//! - A removal writes the room first, then drops the entry only if it still
//!   holds the removed membership's token: an add reserved meanwhile has
//!   a newer token, and its entry stays.
//! - An add reserved before a removal of the same user that lands after
//!   it finds the removal's token in the room's fence and writes nothing.
//!
//! So an entry may outlive its membership (a crash between the two steps):
//! reads check every entry against its room, and drop the stale ones
//! (fencing the room first, so that an add still under way cannot land
//! without its entry).

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;

use super::{
    connection::{millis, Call},
    keys,
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{Added, Created, Member, Removed, RoomState, Rooms, StoreError, StoreResult},
    clock::UnixMillis,
    model::{Role, RoomName, User, UserId},
};

/// What `private_reserve` did.
enum Reserved {
    TooManyRooms,
    OverQuota(Duration),
    Granted(Grant),
}

/// A place in a user's index: the entry holds `token` now.
#[derive(Clone, Copy)]
struct Grant {
    token: i64,
    /// Whether the entry is new (else the room was listed already, and
    /// the entry only took the newer token).
    new: bool,
}

impl Grant {
    /// What to drop if the room is not written: only a new entry is the
    /// reservation's own.
    fn own_token(self) -> Option<i64> {
        self.new.then_some(self.token)
    }
}

/// An entry of a user's index, as read.
struct Entry {
    room: RoomName,
    token: i64,
}

/// How many times an add is tried when removals of the same user keep
/// overtaking it (each try reserves a newer token).
const ADD_TRIES: usize = 3;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// A member record: `<n>:<joined_at>:<token>:<name>`.
fn parse_member(id: &str, record: &str) -> StoreResult<(u64, User, UnixMillis)> {
    let bad = || corrupt(&format!("member record {record:?}"));
    let mut parts = record.splitn(4, ':');
    let mut next = || parts.next().ok_or_else(bad);
    let n: u64 = next()?.parse().map_err(|_| bad())?;
    let joined_at: i64 = next()?.parse().map_err(|_| bad())?;
    let _token = next()?;
    let name = next()?.to_owned();
    let id: UserId = id.parse().map_err(|_| bad())?;
    Ok((n, User { id, name }, UnixMillis::from_millis(joined_at)))
}

/// Every key of a room, as `room_create` and `room_remove` take them.
fn room_keys(room: &RoomName) -> Vec<String> {
    vec![
        keys::meta(room),
        keys::members(room),
        keys::left(room),
        keys::messages(room),
        keys::active(room),
        keys::presence(room),
    ]
}

fn role_of(owner: bool) -> Role {
    if owner {
        Role::Owner
    } else {
        Role::Member
    }
}

impl RedisBackend {
    fn state_call(room: &RoomName, user: UserId) -> Call<'static> {
        Call::new(
            &SCRIPTS.room_state,
            vec![keys::meta(room), keys::members(room), keys::active(room)],
            vec![user.to_string().into()],
        )
    }

    /// `room_state`'s answer: the state, and when the user joined.
    fn parse_state(reply: Value) -> StoreResult<(RoomState, UnixMillis)> {
        let (code, joined): (i64, i64) = reply.convert()?;
        let state = match code {
            0 => RoomState::Missing,
            1 => RoomState::Public,
            2 => RoomState::Private(None),
            3 => RoomState::Private(Some(Role::Member)),
            4 => RoomState::Private(Some(Role::Owner)),
            _ => return Err(corrupt(&format!("room state {code}"))),
        };
        Ok((state, UnixMillis::from_millis(joined)))
    }

    /// What `room` is for `user`, and when they joined it if they are a
    /// member. One script in the room's slot.
    pub(super) async fn room_state(&self, room: &RoomName, user: UserId) -> StoreResult<(RoomState, UnixMillis)> {
        let call = Self::state_call(room, user);
        Self::parse_state(self.conn.run(call.script, call.keys, call.args).await?)
    }

    /// Makes room for `room` in `user`'s index (charging the new-room
    /// quota when `charge`), with a token above `above`.
    async fn reserve(&self, user: UserId, room: &RoomName, charge: bool, above: i64) -> StoreResult<Reserved> {
        let keys = vec![keys::user_private(user), keys::user_private_seq(user), keys::new_rooms(user)];
        let args: Vec<Value> = vec![
            room.as_str().into(),
            (self.room_limits.max_private_rooms as i64).into(),
            (if charge { "1" } else { "0" }).into(),
            (self.new_rooms.max as i64).into(),
            (self.new_rooms.window.as_millis() as i64).into(),
            above.into(),
        ];
        let (code, token, left): (i64, i64, i64) = self.conn.run(&SCRIPTS.private_reserve, keys, args).await?;
        Ok(match code {
            0 => Reserved::TooManyRooms,
            1 => Reserved::OverQuota(Duration::from_millis(left.max(0) as u64).max(Duration::from_secs(1))),
            2 => Reserved::Granted(Grant { token, new: true }),
            3 => Reserved::Granted(Grant { token, new: false }),
            _ => return Err(corrupt(&format!("reservation {code}"))),
        })
    }

    /// The call that drops `room` from `user`'s index if the entry still
    /// holds `token` (`None`: keep it), and gives back a new-room charge.
    fn release_call(user: UserId, room: &RoomName, token: Option<i64>, uncharge: bool) -> Call<'static> {
        Call::new(
            &SCRIPTS.private_release,
            vec![keys::user_private(user), keys::new_rooms(user)],
            vec![room.as_str().into(), token.unwrap_or(0).into(), (if uncharge { "1" } else { "0" }).into()],
        )
    }

    async fn release(&self, user: UserId, room: &RoomName, token: Option<i64>, uncharge: bool) -> StoreResult<()> {
        let call = Self::release_call(user, room, token, uncharge);
        self.conn.run::<()>(call.script, call.keys, call.args).await
    }

    /// `user`'s index, each entry checked against its room (one pipeline):
    /// the memberships it holds, with when each began, and the entries that
    /// are stale, which are dropped (the rooms fenced first, in a second
    /// pipeline, then the index, in a third). Returns the memberships, and
    /// how many entries were dropped.
    async fn checked_index(&self, user: UserId) -> StoreResult<(Vec<(UnixMillis, RoomName, Role)>, usize)> {
        let listed: Vec<(String, f64)> = self
            .conn
            .timed("zrange", self.conn.fast.zrange(keys::user_private(user), 0, -1, None, false, None, true))
            .await?;
        let entries: Vec<Entry> = listed
            .into_iter()
            .filter_map(|(room, token)| Some(Entry { room: RoomName::parse(&room)?, token: token as i64 }))
            .collect();
        let calls: Vec<Call> = entries.iter().map(|e| Self::state_call(&e.room, user)).collect();
        let mut members = Vec::new();
        let mut stale = Vec::new();
        for (entry, reply) in entries.into_iter().zip(self.conn.run_all(&calls).await?) {
            match Self::parse_state(reply)? {
                (RoomState::Private(Some(role)), joined_at) => members.push((joined_at, entry.room, role)),
                _ => stale.push(entry),
            }
        }
        if stale.is_empty() {
            return Ok((members, 0));
        }
        let fences: Vec<Call> = stale
            .iter()
            .map(|e| {
                Call::new(
                    &SCRIPTS.room_fence,
                    vec![keys::meta(&e.room), keys::members(&e.room), keys::left(&e.room)],
                    vec![user.to_string().into(), e.token.into()],
                )
            })
            .collect();
        let fenced = self.conn.run_all(&fences).await?;
        let mut releases = Vec::new();
        for (entry, fenced) in stale.iter().zip(fenced) {
            // 0: the user became a member since: the entry is theirs.
            if fenced.convert::<i64>()? == 1 {
                releases.push(Self::release_call(user, &entry.room, Some(entry.token), false));
            }
        }
        self.conn.run_all(&releases).await?;
        tracing::debug!(%user, dropped = releases.len(), "stale entries of the private-room index dropped");
        Ok((members, releases.len()))
    }

    /// Whether `user` is a member of private room `room`.
    async fn is_member(&self, room: &RoomName, user: UserId) -> StoreResult<bool> {
        Ok(matches!(self.room_state(room, user).await?.0, RoomState::Private(Some(_))))
    }
}

#[async_trait]
impl Rooms for RedisBackend {
    async fn state(&self, room: &RoomName, user: UserId) -> StoreResult<RoomState> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("the state of direct room {room} is its key")));
        }
        if room.is_lobby() {
            return Ok(RoomState::Public);
        }
        Ok(self.room_state(room, user).await?.0)
    }

    /// One script call per pair, in one pipeline (each to its room's slot).
    async fn states(&self, pairs: &[(RoomName, UserId)]) -> StoreResult<Vec<RoomState>> {
        if let Some((room, _)) = pairs.iter().find(|(room, _)| room.is_direct()) {
            return Err(StoreError::Usage(format!("the state of direct room {room} is its key")));
        }
        let asked: Vec<&(RoomName, UserId)> = pairs.iter().filter(|(room, _)| !room.is_lobby()).collect();
        let calls: Vec<Call> = asked.iter().map(|(room, user)| Self::state_call(room, *user)).collect();
        let mut replies = self.conn.run_all(&calls).await?.into_iter();
        pairs
            .iter()
            .map(|(room, _)| {
                if room.is_lobby() {
                    return Ok(RoomState::Public);
                }
                Ok(Self::parse_state(replies.next().ok_or_else(|| corrupt("a state per pair"))?)?.0)
            })
            .collect()
    }

    /// The name first (a taken one costs nothing), then the owner's slot
    /// (`private_reserve`: their bound and quota), then the room's
    /// (`room_create`, which decides the name); a name taken meanwhile
    /// gives the reservation and the charge back.
    async fn create_private(&self, room: &RoomName, owner: &User) -> StoreResult<Created> {
        if room.is_direct() {
            return Err(StoreError::Usage(format!("direct room {room} cannot be made private")));
        }
        if room.is_lobby() || !matches!(self.room_state(room, owner.id).await?.0, RoomState::Missing) {
            return Ok(Created::NameTaken);
        }
        let mut pruned = false;
        let grant = loop {
            match self.reserve(owner.id, room, true, 0).await? {
                Reserved::Granted(grant) => break grant,
                Reserved::TooManyRooms if !pruned && self.checked_index(owner.id).await?.1 > 0 => pruned = true,
                Reserved::TooManyRooms => return Ok(Created::TooManyRooms),
                Reserved::OverQuota(retry_after) => return Ok(Created::QuotaRefused { retry_after }),
            }
        };
        let keys = room_keys(room);
        let args = vec![
            owner.id.to_string().into(),
            owner.name.as_str().into(),
            millis(UnixMillis::now()),
            grant.token.into(),
        ];
        if self.conn.run::<i64>(&SCRIPTS.room_create, keys, args).await? == 1 {
            return Ok(Created::Created);
        }
        self.release(owner.id, room, grant.own_token(), true).await?;
        Ok(Created::NameTaken)
    }

    async fn members(&self, room: &RoomName) -> StoreResult<Option<Vec<Member>>> {
        let reply: Value =
            self.conn.run(&SCRIPTS.room_members, vec![keys::meta(room), keys::members(room)], vec![]).await?;
        if reply.is_null() {
            return Ok(None);
        }
        let (owner, records): (String, Vec<(String, String)>) = reply.convert()?;
        let mut members =
            records.iter().map(|(id, record)| parse_member(id, record)).collect::<StoreResult<Vec<_>>>()?;
        members.sort_by_key(|(n, _, _)| *n);
        Ok(Some(
            members
                .into_iter()
                .map(|(_, user, joined_at)| Member { role: role_of(user.id.to_string() == owner), user, joined_at })
                .collect(),
        ))
    }

    /// The user's slot (`private_reserve`), then the room's (`room_add`);
    /// a reservation the room did not take is given back.
    async fn add_member(&self, room: &RoomName, by: UserId, user: &User) -> StoreResult<Added> {
        if room.is_direct() {
            return Ok(Added::NotFound);
        }
        let (mut above, mut pruned) = (0, false);
        for _ in 0..ADD_TRIES {
            let grant = match self.reserve(user.id, room, false, above).await? {
                Reserved::Granted(grant) => grant,
                Reserved::TooManyRooms => {
                    // Who may not add here learns nothing of the user added.
                    if !self.is_member(room, by).await? {
                        return Ok(Added::NotFound);
                    }
                    if !pruned && self.checked_index(user.id).await?.1 > 0 {
                        pruned = true;
                        continue;
                    }
                    return Ok(Added::TooManyRooms);
                }
                Reserved::OverQuota(_) => return Err(corrupt("an add charged the new-room quota")),
            };
            let args: Vec<Value> = vec![
                by.to_string().into(),
                user.id.to_string().into(),
                user.name.as_str().into(),
                millis(UnixMillis::now()),
                grant.token.into(),
                (self.room_limits.max_members as i64).into(),
            ];
            let keys = vec![keys::meta(room), keys::members(room), keys::left(room)];
            let (code, fence): (i64, i64) = self.conn.run(&SCRIPTS.room_add, keys, args).await?;
            let added = match code {
                1 => return Ok(Added::Added),
                2 => return Ok(Added::AlreadyMember),
                3 => Some(Added::NotFound),
                4 => Some(Added::RoomFull),
                5 => None,
                _ => return Err(corrupt(&format!("room_add {code}"))),
            };
            self.release(user.id, room, grant.own_token(), false).await?;
            match added {
                Some(refused) => return Ok(refused),
                None => above = fence,
            }
        }
        Err(StoreError::Usage(format!("adding {} to {room} kept being overtaken by removals", user.id)))
    }

    /// The room's slot (`room_remove`), then the user's index.
    async fn remove_member(&self, room: &RoomName, by: UserId, user: UserId) -> StoreResult<Removed> {
        if room.is_direct() {
            return Ok(Removed::NotFound);
        }
        let keys = room_keys(room);
        let args = vec![by.to_string().into(), user.to_string().into()];
        // Waits for a replica: a removal a failover undid would make the
        // user a member again, free to open the room and read it.
        let (code, token, heir, deleted): (i64, String, String, i64) =
            self.conn.run_kept(Call::new(&SCRIPTS.room_remove, keys, args)).await?;
        match code {
            1 => {}
            2 => return Ok(Removed::NotFound),
            3 => return Ok(Removed::Forbidden),
            _ => return Err(corrupt(&format!("room_remove {code}"))),
        }
        let token: i64 = token.parse().map_err(|_| corrupt(&format!("member token {token:?}")))?;
        // The removal is done: an entry left behind is found stale when
        // the index is next read.
        if let Err(err) = self.release(user, room, Some(token), false).await {
            tracing::warn!(%err, %user, %room, "private-room index entry not dropped after a removal");
        }
        let new_owner =
            if heir.is_empty() { None } else { Some(heir.parse().map_err(|_| corrupt(&format!("owner {heir:?}")))?) };
        Ok(Removed::Removed { new_owner, deleted: deleted == 1 })
    }

    async fn private_rooms(&self, user: UserId) -> StoreResult<Vec<(RoomName, Role)>> {
        let (mut members, _) = self.checked_index(user).await?;
        members.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(members.into_iter().map(|(_, room, role)| (room, role)).collect())
    }

    /// One script per side, in each user's slot, in one pipeline.
    async fn note_direct(&self, room: &RoomName, a: &User, b: &User, at: UnixMillis) -> StoreResult<()> {
        if *room != RoomName::direct(a.id, b.id) {
            return Err(StoreError::Usage(format!("{room} is not the direct room of {} and {}", a.id, b.id)));
        }
        let note = |me: &User, other: &User| {
            Call::new(
                &SCRIPTS.direct_note,
                vec![keys::user_direct(me.id), keys::user_direct_names(me.id)],
                vec![room.as_str().into(), other.name.as_str().into(), millis(at)],
            )
        };
        self.conn.run_all(&[note(a, b), note(b, a)]).await?;
        Ok(())
    }

    async fn direct_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<(RoomName, String)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = vec![keys::user_direct(user), keys::user_direct_names(user)];
        let flat: Vec<String> = self.conn.run(&SCRIPTS.direct_list, keys, vec![(limit as i64).into()]).await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| Some((RoomName::from_stored(&pair[0]).filter(RoomName::is_direct)?, pair[1].clone())))
            .collect())
    }
}
