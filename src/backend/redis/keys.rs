//! Every key palaver writes (docs/cluster.md has the table and the reasons),
//! and the room groups whose hash tags the room keys carry.

use std::sync::OnceLock;

use tower_sessions::session::Id;

use crate::{
    backend::rules,
    model::{folded_username, RoomName, UserId},
};

/// How many groups rooms are spread over. A room's keys carry its group's
/// hash tag, so one `XREAD BLOCK` can follow every room of a group (a
/// multi-key command needs one slot): an instance tails with at most this
/// many blocking connections, however many rooms it follows. More groups
/// spread rooms over more slots (and so more evenly over the masters); fewer
/// need fewer tail connections. Changing it renames every room's keys.
pub const ROOM_GROUPS: usize = 16;

/// The hash tag of room group `group`: a short name whose slot lies near
/// the middle of the group's sixteenth of the slot space, so that the
/// groups spread evenly over masters that own contiguous slot ranges (as
/// `redis-cli --cluster create` assigns them).
pub fn group_tag(group: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        (0..ROOM_GROUPS)
            .map(|g| {
                let span = 16384 / ROOM_GROUPS;
                let middle = (g * span + span / 2) as i64;
                (0..)
                    .map(|n| format!("rooms-{g}-{n}"))
                    .find(|tag| (i64::from(fred::util::redis_keyslot(tag.as_bytes())) - middle).abs() < 64)
                    .expect("some tag lands near every slot")
            })
            .collect()
    });
    &tags[group]
}

/// The group a room's keys live in (stable: a function of the name only).
pub fn room_group(room: &RoomName) -> usize {
    usize::from(fred::util::redis_keyslot(room.as_str().as_bytes())) % ROOM_GROUPS
}

/// A user by name: `SET NX` makes names unique. Used alone.
pub fn user(name: &str) -> String {
    format!("palaver:user:{}", folded_username(name))
}
/// Per-user keys carry the user id's tag, so that a script may combine
/// any of them (the rate bucket and the new-room quota do).
pub fn user_sessions(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:sessions")
}
pub fn user_rooms(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:rooms")
}
pub fn rate(user: UserId) -> String {
    format!("palaver:rate:{{{user}}}")
}
/// The user's new-room quota: a [`counter`] whose name carries their tag
/// ([`rules::NewRooms::counter`]).
pub fn new_rooms(user: UserId) -> String {
    counter(&rules::NewRooms::counter(user))
}
/// The user's quota of new direct conversations, charged like
/// [`new_rooms`] ([`rules::RoomLimits::direct_counter`]).
pub fn new_direct(user: UserId) -> String {
    counter(&rules::RoomLimits::direct_counter(user))
}
/// The private rooms the user is a member of: room -> the token of the
/// add that put it there. Its size is what
/// `MAX_PRIVATE_ROOMS_PER_USER` bounds: reserved before the room is
/// written, released after (docs/cluster.md, "Private rooms").
pub fn user_private(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:private")
}
/// Where the tokens of [`user_private`] come from: one counter per user,
/// so that they only ever grow.
pub fn user_private_seq(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:private-seq")
}
/// The user's direct conversations: room -> their last message (ms).
pub fn user_direct(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:direct")
}
/// The other member's name, per direct room of [`user_direct`].
pub fn user_direct_names(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:direct-names")
}
/// What each session of the user says of itself: session id -> descriptor
/// (JSON). Beside the session index, which a listing reads with it and
/// which a new descriptor is checked against, in one script each.
pub fn user_devices(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:devices")
}
/// The user's security log: a list of entries (JSON), newest first.
pub fn user_events(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:events")
}
/// An invite, by its code's hash. Used alone.
pub fn invite(code_hash: &str) -> String {
    format!("palaver:invite:{code_hash}")
}
/// Must match tower-sessions-redis-store, which keys a session by its id.
pub fn session(id: &Id) -> String {
    id.to_string()
}
/// A key in the session's slot (its bare id is its hash tag) that never
/// holds anything: `session_delete` writes and deletes it at once, for a
/// replicated change when the session is gone already.
pub fn session_gone(id: &Id) -> String {
    format!("palaver:{{{id}}}:gone")
}
/// A throttle counter. Counters are used one key at a time, except the
/// new-room quota ([`new_rooms`]).
pub fn counter(key: &str) -> String {
    format!("palaver:throttle:{key}")
}
/// A room's keys carry its group's tag: the append scripts combine
/// them, and one `XREAD` follows every room of a group.
fn room(room: &RoomName, what: &str) -> String {
    format!("palaver:room:{{{}}}:{room}:{what}", group_tag(room_group(room)))
}
pub fn messages(name: &RoomName) -> String {
    room(name, "messages")
}
pub fn active(name: &RoomName) -> String {
    room(name, "active")
}
pub fn sent(name: &RoomName, user: UserId, client_id: &str) -> String {
    room(name, &format!("sent:{user}:{client_id}"))
}
pub fn presence(name: &RoomName) -> String {
    room(name, "presence")
}
/// A private room: `kind`, `owner`, `created_at`, and `joins` (members
/// ever added, which orders them). Its existence makes the name private.
pub fn meta(name: &RoomName) -> String {
    room(name, "meta")
}
/// A private room's members: user id -> `<n>:<joined_at>:<token>:<name>`.
pub fn members(name: &RoomName) -> String {
    room(name, "members")
}
/// A private room's fence: user id -> the newest token of that user's
/// memberships removed (an add reserved before it is too late).
pub fn left(name: &RoomName) -> String {
    room(name, "left")
}
/// Pokes one instance's tail of one group: in the group's slot, so the
/// same `XREAD` waits on it.
pub fn wake(group: usize, instance: &str) -> String {
    format!("palaver:wake:{{{}}}:{instance}", group_tag(group))
}
pub fn secret(name: &str) -> String {
    format!("palaver:{name}")
}
/// The values retired from a [`secret`]: tagged by the secret's whole key,
/// so that it lands in the secret's slot (a key without a tag hashes as a
/// whole) and one script reads both.
pub fn secret_retired(name: &str) -> String {
    format!("{{{}}}:retired", secret(name))
}
pub fn sid(sid: &str) -> String {
    format!("palaver:sid:{sid}")
}
pub fn ticket(hash: &str) -> String {
    format!("palaver:ticket:{hash}")
}
/// Read markers live with the user's other keys: `mark_read` trims them
/// against the user's rooms in one script.
pub fn user_read(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:read")
}
/// The user's mention inbox: a list of `<room> <message id>`, newest first.
pub fn user_mentions(user: UserId) -> String {
    format!("palaver:user:{{{user}}}:mentions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_groups_spread_evenly_over_the_slot_space() {
        let span = 16384 / ROOM_GROUPS;
        for group in 0..ROOM_GROUPS {
            let slot = usize::from(fred::util::redis_keyslot(group_tag(group).as_bytes()));
            assert_eq!(slot / span, group, "{} is in slot {slot}", group_tag(group));
        }
    }

    #[test]
    fn a_sessions_gone_key_is_in_the_sessions_slot() {
        for _ in 0..100 {
            let id = Id::default();
            let (session, gone) = (session(&id), session_gone(&id));
            assert_eq!(fred::util::redis_keyslot(session.as_bytes()), fred::util::redis_keyslot(gone.as_bytes()));
        }
    }

    #[test]
    fn a_shared_secrets_retired_values_are_in_its_slot() {
        for name in ["token-signing-key", "refresh-key"] {
            let (secret, retired) = (secret(name), secret_retired(name));
            assert_eq!(fred::util::redis_keyslot(secret.as_bytes()), fred::util::redis_keyslot(retired.as_bytes()));
        }
    }

    #[test]
    fn every_key_of_a_room_is_in_its_groups_slot_and_every_key_of_a_user_in_the_users() {
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        let user = UserId::new_v4();
        let direct = RoomName::direct(user, UserId::new_v4());
        let rooms = ["lobby", "a", "rust-users", "0"].map(|name| RoomName::parse(name).unwrap());
        for room in rooms.into_iter().chain([direct]) {
            let group = slot(&wake(room_group(&room), "i1"));
            for key in [
                messages(&room),
                active(&room),
                presence(&room),
                meta(&room),
                members(&room),
                left(&room),
                sent(&room, user, "c{1}"),
                wake(room_group(&room), "other"),
            ] {
                assert_eq!(slot(&key), group, "{key}");
            }
        }
        let own = slot(&rate(user));
        for key in [
            user_sessions(user),
            user_rooms(user),
            new_rooms(user),
            new_direct(user),
            user_read(user),
            user_mentions(user),
            user_private(user),
            user_private_seq(user),
            user_direct(user),
            user_direct_names(user),
            user_devices(user),
            user_events(user),
        ] {
            assert_eq!(slot(&key), own, "{key}");
        }
    }
}
