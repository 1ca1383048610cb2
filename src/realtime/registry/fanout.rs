//! Fan-out: frames to a room's sockets on this instance, a step at a time.
//!
//! A [`FanOut`] is made under the registry's lock (who is in the room at
//! one instant: a socket that registers later starts after these frames)
//! and sent outside it with `try_send` only. A socket whose queue is full
//! is not reading: it is reported back to be closed, never waited for.
//!
//! Frames are made once per label (what the room's users call it: one
//! label in most rooms, two in a direct room), so a frame never carries
//! the name another user gives the room.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc::error::TrySendError;

use super::outbox::{ConnId, Outbound, Outbox, Single};
use crate::model::RoomName;

/// How many sockets one step of a fan-out reaches before the runtime gets
/// to run them, and anything more urgent: a close for a logout waits behind
/// at most one step of bulk work, never behind a whole room's. Smaller
/// steps cost messages latency (each step waits its turn behind everything
/// else runnable): at 128, a 2,000-socket room's p99 was 25-50 ms worse
/// than unstepped, at 512 within noise of it (BENCHMARKS.md, fan-out).
pub const FANOUT_STEP: usize = 512;
/// The step of a paced fan-out (presence), which can take its time.
pub const PACED_STEP: usize = 128;

/// The frames of one label, and the sockets that get them.
type Group = (Vec<Outbound>, Vec<(ConnId, Outbox)>);

/// Frames for a room's sockets as they stood when it was made. Send it with
/// [`super::Registry::send`]; fan-outs of one room must be sent one after
/// the other, in the order they were made.
#[must_use = "a fan-out does nothing until it is sent"]
pub struct FanOut {
    room: RoomName,
    /// Per label: its frames, and the sockets that get them.
    groups: Vec<Group>,
    /// Frames for one socket each (unread counts), sent after the members'.
    singles: Vec<Single>,
    /// A pause between steps, for work that can wait (see [`FanOut::paced`]).
    gap: Option<Duration>,
}

impl FanOut {
    /// Nothing to send.
    pub(super) fn empty(room: &RoomName) -> Self {
        Self { room: room.clone(), groups: Vec::new(), singles: Vec::new(), gap: None }
    }

    /// For every label's sockets, the frames `frames` makes for the label.
    pub(super) fn new<'a>(
        room: &RoomName,
        groups: impl Iterator<Item = &'a (Arc<str>, HashMap<ConnId, Outbox>)>,
        frames: impl Fn(&str) -> Vec<Outbound>,
    ) -> Self {
        let groups = groups
            .map(|(label, members)| (frames(label), members.iter().map(|(id, outbox)| (*id, outbox.clone())).collect()))
            .collect();
        Self { groups, ..Self::empty(room) }
    }

    /// With frames for one socket each, sent after the members'.
    pub(super) fn with_singles(self, singles: Vec<Single>) -> Self {
        Self { singles, ..self }
    }

    /// Pauses `gap` between steps: a big room's sockets are reached over a
    /// few hundred milliseconds instead of in one burst that takes every
    /// core, so the work that cannot wait (a handshake, a logout on another
    /// instance on the same machine) still gets the processor.
    pub fn paced(self, gap: Duration) -> Self {
        Self { gap: Some(gap), ..self }
    }

    pub(super) fn room(&self) -> &RoomName {
        &self.room
    }

    /// Queues the frames on every socket, [`FANOUT_STEP`] sockets at a
    /// time ([`PACED_STEP`] when paced). Returns the sockets whose queue
    /// was full.
    pub(super) async fn reach(self) -> Vec<ConnId> {
        let mut slow = Vec::new();
        let step_size = if self.gap.is_some() { PACED_STEP } else { FANOUT_STEP };
        let mut reached = false;
        for (frames, members) in &self.groups {
            for members in members.chunks(step_size) {
                match (reached, self.gap) {
                    (false, _) => {}
                    (true, None) => tokio::task::yield_now().await,
                    (true, Some(gap)) => tokio::time::sleep(gap).await,
                }
                reached = true;
                for (id, outbox) in members {
                    for frame in frames {
                        match outbox.try_send(frame.clone()) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => {
                                slow.push(*id);
                                break;
                            }
                            // It is closing; its task removes it.
                            Err(TrySendError::Closed(_)) => break,
                        }
                    }
                }
            }
        }
        for (step, singles) in self.singles.chunks(FANOUT_STEP).enumerate() {
            if step > 0 || reached {
                tokio::task::yield_now().await;
            }
            for (id, outbox, frame) in singles {
                if let Err(TrySendError::Full(_)) = outbox.try_send(frame.clone()) {
                    slow.push(*id);
                }
            }
        }
        slow
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use tower_sessions::session::Id;

    use super::*;
    use crate::{
        model::{MessageId, UserId},
        protocol as frames,
        realtime::registry::{
            tests::{join, join_as, message, CAPS},
            Caps, Registry,
        },
    };

    #[tokio::test]
    async fn delivery_is_per_room_ordered_and_never_repeats() {
        let reg = Registry::new(CAPS);
        let mut lobby = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 8);
        let mut other = join_as(&reg, Id(2), UserId::new_v4(), "bo", "other", 8);
        let room = RoomName::lobby();
        reg.send(reg.deliver(&room, &[message(1), message(2)])).await;
        reg.send(reg.deliver(&room, &[message(2), message(3)])).await;
        let ids: Vec<u64> = std::iter::from_fn(|| lobby.outbox.try_recv().ok()?.id.map(|id| id.ms)).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(other.outbox.try_recv().is_err());
        assert_eq!(reg.room_cursor(&room), Some(MessageId { ms: 3, seq: 0 }));
    }

    /// A close asked for while a fan-out is under way reaches its socket
    /// after at most a step or two of the fan-out, not after all of it.
    #[tokio::test]
    async fn a_close_is_not_queued_behind_a_whole_rooms_fan_out() {
        const MEMBERS: usize = 2560;
        let reg = Arc::new(Registry::new(Caps { instance: MEMBERS + 1, per_user: 1, per_session: 1 }));
        let reached = Arc::new(AtomicU64::new(0));
        for i in 0..MEMBERS {
            let mut member = join(&reg, &format!("m{i}"), "big", MessageId::ZERO, 4);
            let reached = reached.clone();
            tokio::spawn(async move {
                if member.outbox.recv().await.is_some() {
                    reached.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let victim = join(&reg, "victim", "big", MessageId::ZERO, 4);
        let victim_session = reg.lock().conns[&victim.id].session;
        let seen_by_victim = {
            let reached = reached.clone();
            tokio::spawn(async move {
                victim.close.await.unwrap();
                reached.load(Ordering::Relaxed)
            })
        };
        let fan_out = reg.broadcast(&RoomName::parse("big").unwrap(), |_| "presence".into());
        let sending = tokio::spawn({
            let reg = reg.clone();
            async move { reg.send(fan_out).await }
        });
        // The logout arrives once the fan-out has begun.
        while reached.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reg.close_session(&victim_session, frames::LOGGED_OUT), 1);
        let seen = seen_by_victim.await.unwrap() as usize;
        sending.await.unwrap();
        assert!(seen <= 3 * FANOUT_STEP, "the close ran after {seen} of {MEMBERS} sockets got the bulk frame");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while (reached.load(Ordering::Relaxed) as usize) < MEMBERS {
            assert!(tokio::time::Instant::now() < deadline, "the fan-out reached every socket");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_socket_that_does_not_read_is_closed() {
        let reg = Registry::new(CAPS);
        let mut s = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        reg.send(reg.deliver(&RoomName::lobby(), &[message(1), message(2)])).await;
        assert_eq!(s.close.try_recv().unwrap(), frames::SLOW_CONSUMER);
    }
}
