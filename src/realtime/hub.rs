//! Fan-out without loss: each instance tails the streams of the rooms it has
//! sockets in and hands every stored message to those sockets, in stream
//! order, exactly once.
//!
//! Pub/sub would drop messages published while a subscriber reconnects (the
//! failure Socket.IO's Redis adapter is known for). A stream does not: the
//! tail reads on from the last id it delivered in each room (the room's
//! cursor in the registry), so after a dropped connection or a Redis restart
//! with persistence it resumes exactly where it stopped.
//!
//! Reading and handing out are two tasks joined by a short queue: the tail
//! goes back to the store while a big room's sockets are still being
//! reached (a step at a time, see `registry::FanOut`), and fan-outs are sent
//! in the order they were read, which keeps every socket's messages in
//! stream order.

use std::{sync::Arc, time::Duration};

use tokio::sync::{watch, Notify};

use super::registry::{FanOut, Registry};
use crate::{
    backend::{History, StoreResult},
    model::{MessageId, RoomName},
};

/// How long one `XREAD BLOCK` waits before the room set is read again.
const TAIL_WAIT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Fan-outs read but not yet sent; a full queue holds the tail back.
const FANOUT_QUEUE: usize = 64;

/// The room tail: what it reads from and where it delivers.
///
/// Rooms fall into [`History::tail_groups`] groups (one, except on a Redis
/// Cluster, where a blocking read can only wait on keys of one slot); each
/// group has a loop of its own that follows this instance's rooms of that
/// group with one blocking read. A group with no followed room waits here,
/// on `wakes`, and holds no connection.
#[derive(Clone)]
pub struct Hub {
    history: Arc<dyn History>,
    registry: Arc<Registry>,
    /// One per group: a room of the group was joined.
    wakes: Arc<[Notify]>,
}

impl Hub {
    pub fn new(history: Arc<dyn History>, registry: Arc<Registry>) -> Self {
        let wakes = (0..history.tail_groups()).map(|_| Notify::new()).collect();
        Self { history, registry, wakes }
    }

    /// The tail loops, one per group; ends when `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let loops: Vec<_> =
            (0..self.wakes.len()).map(|group| tokio::spawn(self.clone().run_group(group, shutdown.clone()))).collect();
        for task in loops {
            let _ = task.await;
        }
    }

    /// One group's tail and its sender. A room belongs to one group, so
    /// its fan-outs still leave in the order they were read.
    async fn run_group(self, group: usize, shutdown: watch::Receiver<bool>) {
        let (queue, mut fan_outs) = tokio::sync::mpsc::channel::<FanOut>(FANOUT_QUEUE);
        let registry = self.registry.clone();
        let sender = tokio::spawn(async move {
            while let Some(fan_out) = fan_outs.recv().await {
                registry.send(fan_out).await;
            }
        });
        self.tail(group, queue, shutdown).await;
        // The queue closed with the tail: what was read is still handed out.
        let _ = sender.await;
    }

    async fn tail(&self, group: usize, queue: tokio::sync::mpsc::Sender<FanOut>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let cursors = self.cursors(group);
            if cursors.is_empty() {
                // Nothing to follow: wait for a room here, not on the store.
                tokio::select! {
                    _ = self.wakes[group].notified() => continue,
                    _ = tokio::time::sleep(TAIL_WAIT) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let result = tokio::select! {
                result = self.history.tail(&cursors, TAIL_WAIT) => result,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(batches) => {
                    backoff = Duration::from_millis(100);
                    for (room, messages) in batches {
                        if queue.send(self.registry.deliver(&room, &messages)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, group, "tailing room history failed; retrying from the same ids");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The cursors of the followed rooms of one group.
    fn cursors(&self, group: usize) -> Vec<(RoomName, MessageId)> {
        let mut cursors = self.registry.cursors();
        if self.wakes.len() > 1 {
            cursors.retain(|(room, _)| self.history.tail_group(room) == group);
        }
        cursors
    }

    /// Where a socket joining `room` should start: the room's cursor when
    /// this instance already follows it, else the newest stored id (the
    /// tail then starts there).
    pub async fn start_for(&self, room: &RoomName) -> StoreResult<MessageId> {
        match self.registry.room_cursor(room) {
            Some(cursor) => Ok(cursor),
            None => self.history.last_id(room).await,
        }
    }

    /// Makes the room's group's tail look at the room set again (a new room
    /// joined): at once if it was idle, else through the store, where its
    /// blocking read waits.
    pub async fn follow_new_room(&self, room: &RoomName) {
        let group = self.history.tail_group(room);
        // `notify_one` keeps a permit when the loop is not waiting yet.
        self.wakes[group].notify_one();
        if let Err(err) = self.history.wake_tail(room).await {
            tracing::warn!(%err, %room, "could not wake the room tail; it picks the room up within seconds");
        }
    }

    /// [`Hub::follow_new_room`] for several rooms: one wake per group.
    pub async fn follow_new_rooms(&self, rooms: &[RoomName]) {
        let mut woken = Vec::new();
        for room in rooms {
            let group = self.history.tail_group(room);
            if !woken.contains(&group) {
                woken.push(group);
                self.follow_new_room(room).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::memory::MemoryBackend,
        config::Config,
        realtime::registry::tests::{join, Joined},
        state::testing::said,
    };

    async fn bodies(socket: &mut Joined, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = tokio::time::timeout(Duration::from_secs(5), socket.outbox.recv()).await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_str(frame.text.as_str()).unwrap();
            out.push(v["body"].as_str().unwrap().to_owned());
        }
        out
    }

    #[tokio::test]
    async fn it_delivers_what_is_stored_after_a_sockets_start_in_order_and_only_to_its_room() {
        let history = Arc::new(MemoryBackend::new(&Config::default().chat));
        let registry =
            Arc::new(Registry::new(crate::realtime::registry::Caps { instance: 10, per_user: 10, per_session: 10 }));
        let hub = Hub::new(history.clone(), registry.clone());
        let lobby = RoomName::lobby();
        history.append(&lobby, said("al", "before")).await.unwrap();

        let start = hub.start_for(&lobby).await.unwrap();
        let mut a = join(&registry, "al", "lobby", start, 16);
        let mut other = join(&registry, "bo", "other", MessageId::ZERO, 16);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(hub.clone().run(stopped));
        for body in ["one", "two", "three"] {
            history.append(&lobby, said("al", body)).await.unwrap();
        }
        assert_eq!(bodies(&mut a, 3).await, ["one", "two", "three"], "nothing from before its start");
        // A second socket of the same room starts at the room's cursor.
        let cursor = hub.start_for(&lobby).await.unwrap();
        let mut b = join(&registry, "cy", "lobby", cursor, 16);
        history.append(&lobby, said("al", "four")).await.unwrap();
        assert_eq!(bodies(&mut a, 1).await, ["four"]);
        assert_eq!(bodies(&mut b, 1).await, ["four"]);
        assert!(other.outbox.try_recv().is_err(), "rooms do not leak");
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
