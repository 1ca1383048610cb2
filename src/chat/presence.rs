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
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, Instant},
};

use crate::{
    backend::{Event, StoreResult},
    chat::RoomName,
    realtime::frames::ServerFrame,
    state::SharedState,
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

/// The handle sockets and the event listener use.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<Command>,
}

impl Presence {
    pub fn new() -> (Presence, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Presence { tx }, rx)
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

/// The sorted names online in each room, from the store and the registry.
async fn compute(state: &SharedState, rooms: &[RoomName]) -> StoreResult<Vec<Vec<String>>> {
    let entries = state.backend.presence.online(rooms).await?;
    Ok(rooms
        .iter()
        .zip(entries)
        .map(|(room, entries)| {
            let mut names: BTreeSet<String> = entries
                .into_iter()
                .filter(|(instance, _)| *instance != state.instance_id)
                .map(|(_, user)| user)
                .collect();
            names.extend(state.registry.local_names(room));
            names.into_iter().collect()
        })
        .collect())
}

/// The list for one room right now, for a socket that just joined. Falls
/// back to the local view when the store does not answer.
pub async fn snapshot(state: &SharedState, room: &RoomName) -> Vec<String> {
    match compute(state, std::slice::from_ref(room)).await {
        Ok(mut lists) => lists.pop().unwrap_or_default(),
        Err(err) => {
            tracing::warn!(%err, %room, "presence read failed; sending this instance's view");
            state.registry.local_names(room)
        }
    }
}

#[derive(Default)]
struct Pending {
    touched: HashSet<(RoomName, String)>,
    dirty: HashSet<RoomName>,
}

impl Pending {
    fn apply(&mut self, state: &SharedState, command: Command) {
        match command {
            Command::Touched(room, name) => {
                self.dirty.insert(room.clone());
                self.touched.insert((room, name));
            }
            Command::Changed(room) => {
                self.dirty.insert(room);
            }
            Command::Resync => self.dirty.extend(state.registry.rooms()),
        }
    }
}

/// The presence task; runs until `shutdown` turns true, then flushes once
/// more (by then the registry is empty, so this instance's entries go).
pub async fn run(
    state: SharedState,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ttl = state.config.presence_ttl;
    let mut heartbeat = tokio::time::interval(ttl / 3);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    let mut pushed: HashMap<RoomName, Pushed> = HashMap::new();
    let mut flush_at: Option<Instant> = None;

    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                pending.apply(&state, command);
                // Sooner than a room's held push, if one is scheduled.
                let soon = Instant::now() + FLUSH_DELAY;
                flush_at = Some(flush_at.map_or(soon, |at| at.min(soon)));
            }
            _ = async { sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {
                flush_at = flush(&state, &mut pending, &mut pushed).await;
            }
            _ = heartbeat.tick() => {
                let pairs = state.registry.presence_pairs();
                if let Err(err) = state.backend.presence.update(&state.instance_id, &pairs, &[], ttl).await {
                    tracing::warn!(%err, "presence heartbeat failed");
                }
                // Also notices instances that stopped refreshing their entries.
                pending.dirty.extend(state.registry.rooms());
                flush_at.get_or_insert_with(Instant::now);
            }
            _ = shutdown.changed() => break,
        }
    }
    // Final flush: the sockets are gone, so every touched entry is removed.
    while let Ok(command) = commands.try_recv() {
        pending.apply(&state, command);
    }
    let _ = flush(&state, &mut pending, &mut pushed).await;
}

/// Writes touched entries, tells other instances, pushes changed lists.
/// Returns when to flush again: soon after a failure, or when a room whose
/// push was held back by [`MIN_PUSH_INTERVAL`] may be pushed.
async fn flush(state: &SharedState, pending: &mut Pending, pushed: &mut HashMap<RoomName, Pushed>) -> Option<Instant> {
    let mut failed = false;
    if !pending.touched.is_empty() {
        // What to write is decided now, from the registry: the last word on a
        // user who closed one tab and opened another is the current state.
        let (online, offline): (Vec<_>, Vec<_>) =
            pending.touched.iter().cloned().partition(|(room, name)| state.registry.is_online(room, name));
        match state.backend.presence.update(&state.instance_id, &online, &offline, state.config.presence_ttl).await {
            Ok(()) => {
                let rooms: BTreeSet<&RoomName> = pending.touched.iter().map(|(room, _)| room).collect();
                for room in rooms {
                    if let Err(err) = state.backend.bus.publish(&Event::Presence { room: room.to_string() }).await {
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
    let local: HashSet<RoomName> = state.registry.rooms().into_iter().collect();
    pushed.retain(|room, _| local.contains(room));
    pending.dirty.retain(|room| local.contains(room));
    let held_until = |pushed: &HashMap<RoomName, Pushed>, room: &RoomName| {
        pushed.get(room).map(|p| p.at + MIN_PUSH_INTERVAL).filter(|t| *t > now)
    };
    let rooms: Vec<RoomName> =
        pending.dirty.iter().filter(|room| held_until(pushed, room).is_none()).cloned().collect();
    if !rooms.is_empty() {
        match compute(state, &rooms).await {
            Ok(lists) => {
                for (room, online) in rooms.into_iter().zip(lists) {
                    pending.dirty.remove(&room);
                    if pushed.get(&room).is_none_or(|p| p.online != online) {
                        let frame = ServerFrame::Presence { room: &room, online: &online }.to_text();
                        state.registry.broadcast(&room, frame);
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
