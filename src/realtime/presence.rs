//! Presence: who has at least one open socket in a room, on any instance.
//!
//! Each instance owns its entries in the shared store and refreshes them on a
//! heartbeat; entries carry a deadline, so an instance that dies without
//! cleaning up drops out within `PRESENCE_TTL_SECS` plus one heartbeat.
//! A room's list is the other instances' live entries plus this instance's
//! own registry (exact and immediate for local sockets).
//!
//! One task does all the writing, so writes for one user cannot reorder, and
//! coalesces bursts: a flush runs at most every [`FLUSH_DELAY`], writing what
//! changed, telling other instances, and pushing new lists to local sockets
//! only when they actually changed.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, Instant},
};

use super::registry::Registry;
use crate::{
    backend::{Event, EventBus, PresenceStore, StoreResult},
    model::RoomName,
    protocol::ServerFrame,
};

/// How long changes are gathered before they are written and pushed.
const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// How soon a failed flush is retried.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// The most often one room's list is pushed to its sockets: in a big room
/// under churn, every push is the whole list to every socket.
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(250);

/// The list last pushed to a room's sockets, and when.
struct Pushed {
    online: Vec<String>,
    at: Instant,
}

#[derive(Debug)]
pub enum Command {
    /// A user's first socket in a room opened here, or their last one closed.
    Touched(RoomName, String),
    /// Another instance changed the room's presence.
    Changed(RoomName),
    /// Events may have been missed: recompute every local room.
    Resync,
}

/// Where presence is read from: the shared store for other instances,
/// the registry for this one.
struct View {
    store: Arc<dyn PresenceStore>,
    registry: Arc<Registry>,
    /// Names this instance's entries in the store.
    instance: String,
}

/// The handle sockets and the event listener use.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<Command>,
    view: Arc<View>,
}

/// The presence task, before it runs.
pub struct PresenceTask {
    view: Arc<View>,
    bus: Arc<dyn EventBus>,
    ttl: Duration,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl Presence {
    /// The handle and its task. `ttl` is how long this instance's entries
    /// live without a heartbeat.
    pub fn new(
        store: Arc<dyn PresenceStore>,
        bus: Arc<dyn EventBus>,
        registry: Arc<Registry>,
        instance: String,
        ttl: Duration,
    ) -> (Presence, PresenceTask) {
        let (tx, commands) = mpsc::unbounded_channel();
        let view = Arc::new(View { store, registry, instance });
        (Presence { tx, view: view.clone() }, PresenceTask { view, bus, ttl, commands })
    }

    fn send(&self, command: Command) {
        // The task only ends at shutdown, after the sockets.
        let _ = self.tx.send(command);
    }

    pub fn touched(&self, room: &RoomName, name: &str) {
        self.send(Command::Touched(room.clone(), name.to_owned()));
    }

    pub fn changed_elsewhere(&self, room: RoomName) {
        self.send(Command::Changed(room));
    }

    pub fn resync(&self) {
        self.send(Command::Resync);
    }
}

impl View {
    /// The sorted names online in each room, from the store and the registry.
    async fn compute(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<String>>> {
        let entries = self.store.online(rooms).await?;
        Ok(rooms
            .iter()
            .zip(entries)
            .map(|(room, entries)| {
                let mut names: BTreeSet<String> = entries
                    .into_iter()
                    .filter(|(instance, _)| *instance != self.instance)
                    .map(|(_, user)| user)
                    .collect();
                names.extend(self.registry.local_names(room));
                names.into_iter().collect()
            })
            .collect())
    }
}

impl Presence {
    /// The list for one room right now, for a socket that just joined. Falls
    /// back to the local view when the store does not answer.
    pub async fn snapshot(&self, room: &RoomName) -> Vec<String> {
        match self.view.compute(std::slice::from_ref(room)).await {
            Ok(mut lists) => lists.pop().unwrap_or_default(),
            Err(err) => {
                tracing::warn!(%err, %room, "presence read failed; sending this instance's view");
                self.view.registry.local_names(room)
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    touched: HashSet<(RoomName, String)>,
    dirty: HashSet<RoomName>,
}

impl Pending {
    fn apply(&mut self, registry: &Registry, command: Command) {
        match command {
            Command::Touched(room, name) => {
                self.dirty.insert(room.clone());
                self.touched.insert((room, name));
            }
            Command::Changed(room) => {
                self.dirty.insert(room);
            }
            Command::Resync => self.dirty.extend(registry.rooms()),
        }
    }
}

impl PresenceTask {
    /// Runs until `shutdown` turns true, then flushes once more. Stop it
    /// after the sockets are closed: the registry is empty by then, so this
    /// instance's entries go and the other instances hear of it at once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Self { view, bus, ttl, mut commands } = self;
        let flusher = Flusher { view: &view, bus: &*bus, ttl };
        let mut heartbeat = tokio::time::interval(ttl / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Pending::default();
        let mut pushed: HashMap<RoomName, Pushed> = HashMap::new();
        let mut flush_at: Option<Instant> = None;

        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    pending.apply(&view.registry, command);
                    // Sooner than a room's held push, if one is scheduled.
                    let soon = Instant::now() + FLUSH_DELAY;
                    flush_at = Some(flush_at.map_or(soon, |at| at.min(soon)));
                }
                _ = async { sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                    flush_at = flusher.flush(&mut pending, &mut pushed).await;
                }
                _ = heartbeat.tick() => {
                    let pairs = view.registry.presence_pairs();
                    if let Err(err) = view.store.update(&view.instance, &pairs, &[], ttl).await {
                        tracing::warn!(%err, "presence heartbeat failed");
                    }
                    // Also notices instances that stopped refreshing their entries.
                    pending.dirty.extend(view.registry.rooms());
                    flush_at.get_or_insert_with(Instant::now);
                }
                _ = shutdown.changed() => break,
            }
        }
        // Final flush: the sockets are gone, so every touched entry is removed.
        while let Ok(command) = commands.try_recv() {
            pending.apply(&view.registry, command);
        }
        let _ = flusher.flush(&mut pending, &mut pushed).await;
    }
}

struct Flusher<'a> {
    view: &'a View,
    bus: &'a dyn EventBus,
    ttl: Duration,
}

impl Flusher<'_> {
    /// Writes touched entries, tells other instances, pushes changed lists.
    /// Returns when to flush again: soon after a failure, or when a room whose
    /// push was held back by [`MIN_PUSH_INTERVAL`] may be pushed.
    async fn flush(&self, pending: &mut Pending, pushed: &mut HashMap<RoomName, Pushed>) -> Option<Instant> {
        let View { store, registry, instance } = self.view;
        let mut failed = false;
        if !pending.touched.is_empty() {
            // What to write is decided now, from the registry: the last word on a
            // user who closed one tab and opened another is the current state.
            let (online, offline): (Vec<_>, Vec<_>) =
                pending.touched.iter().cloned().partition(|(room, name)| registry.is_online(room, name));
            match store.update(instance, &online, &offline, self.ttl).await {
                Ok(()) => {
                    let rooms: BTreeSet<&RoomName> = pending.touched.iter().map(|(room, _)| room).collect();
                    for room in rooms {
                        if let Err(err) = self.bus.publish(&Event::Presence { room: room.to_string() }).await {
                            tracing::warn!(%err, %room, "presence event not published");
                        }
                    }
                    pending.touched.clear();
                }
                Err(err) => {
                    tracing::warn!(%err, "presence update failed; will retry");
                    failed = true;
                }
            }
        }

        let now = Instant::now();
        let local: HashSet<RoomName> = registry.rooms().into_iter().collect();
        pushed.retain(|room, _| local.contains(room));
        pending.dirty.retain(|room| local.contains(room));
        let held_until = |pushed: &HashMap<RoomName, Pushed>, room: &RoomName| {
            pushed.get(room).map(|p| p.at + MIN_PUSH_INTERVAL).filter(|t| *t > now)
        };
        let rooms: Vec<RoomName> =
            pending.dirty.iter().filter(|room| held_until(pushed, room).is_none()).cloned().collect();
        if !rooms.is_empty() {
            match self.view.compute(&rooms).await {
                Ok(lists) => {
                    for (room, online) in rooms.into_iter().zip(lists) {
                        pending.dirty.remove(&room);
                        if pushed.get(&room).is_none_or(|p| p.online != online) {
                            let frame = ServerFrame::Presence { room: &room, online: &online }.to_text();
                            registry.broadcast(&room, frame);
                            pushed.insert(room, Pushed { online, at: now });
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "presence read failed; will retry");
                    failed = true;
                }
            }
        }
        if failed {
            return Some(Instant::now() + RETRY_DELAY);
        }
        pending.dirty.iter().filter_map(|room| held_until(pushed, room)).min()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::watch;

    use super::super::testing::{next_of, Client, Rig, DEADLINE};
    use crate::{
        backend::{Event, Notice},
        config::Config,
        model::RoomName,
    };

    /// Reads presence frames until one lists exactly `want`.
    async fn until(ws: &mut Client, want: serde_json::Value) {
        while next_of(ws, "presence").await["online"] != want {}
    }

    #[tokio::test]
    async fn a_join_is_stored_announced_and_pushed_to_the_rooms_sockets() {
        let mut rig = Rig::new(Config::default());
        let mut events = rig.backend.bus.subscribe();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(rig.presence_task().run(stopped));
        let alice = rig.sign_in("alice").await;
        let bob = rig.sign_in("bob").await;
        let (mut alices, _) = rig.open(&alice, "lobby", None).await;
        let (mut bobs, _) = rig.open(&bob, "lobby", None).await;
        until(&mut alices, json!(["alice", "bob"])).await;
        until(&mut bobs, json!(["alice", "bob"])).await;

        let lobby = RoomName::lobby();
        let mut stored = rig.backend.presence.online(std::slice::from_ref(&lobby)).await.unwrap().remove(0);
        stored.sort();
        assert_eq!(stored, [("this-instance".into(), "alice".into()), ("this-instance".into(), "bob".into())]);
        let announced = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Ok(Notice::Event(Event::Presence { room })) = events.recv().await {
                    return room;
                }
            }
        });
        assert_eq!(announced.await.unwrap(), "lobby");

        // Bob leaves: alice hears it, and the store forgets him.
        drop(bobs);
        until(&mut alices, json!(["alice"])).await;
        let stored = rig.backend.presence.online(std::slice::from_ref(&lobby)).await.unwrap().remove(0);
        assert_eq!(stored, [("this-instance".to_string(), "alice".to_string())]);

        // At shutdown, after its sockets closed, the instance leaves for good.
        drop(alices);
        tokio::time::timeout(DEADLINE, rig.registry.wait_empty()).await.unwrap();
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(rig.backend.presence.online(&[lobby]).await.unwrap()[0].is_empty());
    }

    #[tokio::test]
    async fn other_instances_entries_are_merged_in_and_expire() {
        let mut rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.presence_task().run(stopped));
        let alice = rig.sign_in("alice").await;
        let (mut ws, _) = rig.open(&alice, "lobby", None).await;
        until(&mut ws, json!(["alice"])).await;

        let lobby = RoomName::lobby();
        let carol = [(lobby.clone(), "carol".to_string())];
        rig.backend.presence.update("elsewhere", &carol, &[], Duration::from_millis(400)).await.unwrap();
        rig.presence.changed_elsewhere(lobby.clone());
        until(&mut ws, json!(["alice", "carol"])).await;
        // The other instance died: its entries lapse, and the next look at
        // the room (an event, a resync or the heartbeat) drops them.
        tokio::time::sleep(Duration::from_millis(450)).await;
        rig.presence.resync();
        until(&mut ws, json!(["alice"])).await;
        assert_eq!(rig.presence.snapshot(&lobby).await, ["alice"]);
    }
}
