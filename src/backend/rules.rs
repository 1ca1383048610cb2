//! The rules both backends follow, stated once. The Redis backend passes
//! them to its scripts; the in-process one applies them directly; the
//! contract suite (`tests/it/contract.rs`) holds both to them.

use std::time::Duration;

use super::ListedSession;
use crate::{clock::UnixMillis, config::ChatConfig, model::UserId};

/// How long a `(room, user, client_id)` triple is remembered, so that a
/// resend after a lost ack is acknowledged with the first id instead of
/// being stored twice (`SEND_DEDUPE_SECS`, whole seconds).
pub fn dedupe_window(config: &ChatConfig) -> Duration {
    Duration::from_secs(config.send_dedupe_window.as_secs().max(1))
}

/// How many messages a room keeps at least (Redis trims approximately, in
/// whole nodes, so it may keep somewhat more; never fewer).
pub fn history_cap(config: &ChatConfig) -> u64 {
    config.history_max_len.max(1)
}

/// How long a room lives after its last message or visit (`ROOM_TTL_SECS`).
pub fn room_ttl(config: &ChatConfig) -> Duration {
    config.room_ttl
}

/// How many rooms a user's list keeps (the most recently opened).
pub const USER_ROOMS_KEPT: usize = 100;

/// The per-user message rate: a token bucket of `burst` tokens refilled at
/// `rate` per second, kept in the store as (tokens, when counted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserRate {
    pub rate: f64,
    pub burst: f64,
}

impl UserRate {
    pub fn from_config(config: &ChatConfig) -> Self {
        Self { rate: config.user_message_rate, burst: f64::from(config.user_message_burst) }
    }

    /// Takes a token from a bucket last counted as `state` (`None`: full).
    /// `Some(new state)` when there was one, `None` when the sender must wait.
    /// The Redis append script computes exactly this.
    pub fn take(&self, state: Option<(f64, UnixMillis)>, now: UnixMillis) -> Option<(f64, UnixMillis)> {
        let (tokens, at) = state.unwrap_or((self.burst, now));
        let elapsed = at.until(now).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        (tokens >= 1.0).then_some((tokens - 1.0, now))
    }

    /// How long an idle bucket must be kept before it is full again.
    pub fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate) + Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_rate_allows_a_burst_then_the_rate() {
        let rate = UserRate { rate: 10.0, burst: 3.0 };
        let t0 = UnixMillis::from_secs(100);
        let mut state = None;
        for _ in 0..3 {
            state = Some(rate.take(state, t0).expect("within the burst"));
        }
        assert_eq!(rate.take(state, t0), None);
        assert!(rate.take(state, t0 + Duration::from_millis(100)).is_some(), "one token per 100 ms");
        let full = rate.take(state, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(full.0, 2.0, "never above the burst");
    }
}

/// The quota on new rooms: how many one user may bring into existence (by
/// opening one, or by a first message into one) per window. Both paths
/// count on the same counter, in the backend: `History::open_room` and
/// `History::append` charge it when, and only when, they would make a room.
/// Every attempt counts, refused ones too.
#[derive(Debug, Clone, Copy)]
pub struct NewRooms {
    pub max: u64,
    pub window: Duration,
}

impl NewRooms {
    pub fn from_config(config: &ChatConfig) -> Self {
        Self { max: u64::from(config.rooms_per_user_per_hour), window: Duration::from_secs(3600) }
    }

    /// The counter (see [`Counters`](super::Counters)) of `user`'s new rooms.
    /// It carries the user's hash tag: the Redis append charges it in one
    /// script with the user's rate bucket (docs/cluster.md).
    pub fn counter(user: UserId) -> String {
        format!("quota:new-rooms:{{{user}}}")
    }

    /// Whether a new room counted as `n` in a window with `left` to run is
    /// within the quota: `Err(retry_after)` past it, at least a second.
    pub fn allows(&self, (n, left): (u64, Duration)) -> Result<(), Duration> {
        if n <= self.max {
            Ok(())
        } else {
            Err(left.max(Duration::from_secs(1)))
        }
    }
}

/// The bounds on private rooms and direct conversations.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Members one private room may have (`MAX_ROOM_MEMBERS`).
    pub max_members: u64,
    /// Private rooms one user may be a member of (`MAX_PRIVATE_ROOMS_PER_USER`).
    pub max_private_rooms: u64,
    /// New direct conversations one user may start per window
    /// (`DIRECT_PER_USER_PER_HOUR`): a first message into a direct room
    /// that has none charges its sender, on a counter of the user's own.
    pub new_direct: NewRooms,
}

impl RoomLimits {
    pub fn from_config(config: &ChatConfig) -> Self {
        Self {
            max_members: u64::from(config.max_room_members),
            max_private_rooms: u64::from(config.max_private_rooms_per_user),
            new_direct: NewRooms { max: u64::from(config.direct_per_user_per_hour), window: Duration::from_secs(3600) },
        }
    }

    /// The counter of `user`'s new direct conversations. Like
    /// [`NewRooms::counter`] it carries the user's hash tag: the Redis
    /// append charges it in one script with the user's rate bucket.
    pub fn direct_counter(user: UserId) -> String {
        format!("quota:new-direct:{{{user}}}")
    }
}

/// How many entries a user's security log keeps (the newest).
pub const SECURITY_EVENTS_KEPT: usize = 50;

/// How long an expired invite is remembered, so that whoever follows it
/// late is told it expired rather than that it never existed.
pub const INVITE_REMEMBERED_AFTER_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The order [`Devices::list`](super::Devices::list) gives sessions in:
/// newest first, those without a descriptor last (begun before sessions
/// described themselves, so older than any with one), ties by id.
pub fn newest_first(sessions: &mut [ListedSession]) {
    sessions.sort_by(|a, b| {
        let began = |s: &ListedSession| s.descriptor.as_ref().map(|d| d.created_at);
        began(b).cmp(&began(a)).then_with(|| a.id.0.cmp(&b.id.0))
    });
}
