//! Presence: who has at least one open socket in a room, on any instance,
//! sent to sockets as one full list and then as diffs.
//!
//! Each instance owns its entries in the shared store (with a deadline,
//! refreshed on a heartbeat, so an instance that dies drops out within
//! `PRESENCE_TTL_SECS`) and announces its changes as events carrying the
//! change itself: the other instances apply it without reading the store.
//! A heartbeat re-reads the store for every room followed here, which also
//! notices instances that died.
//!
//! What a room's sockets are told is kept per room ([`Book`], a pure type):
//! a socket that joins gets the list as last told to the others, then every
//! `presence_diff` after it, so applying the diffs to its first list always
//! gives the set. Diffs are coalesced to at most one per room per
//! [`PUSH_INTERVAL`], serialized once and shared by every socket of the
//! room: a join storm of n sockets costs n small diffs per second, not n
//! full lists to n sockets.
//!
//! One task does all the writing, so writes for one user cannot reorder.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    time::{sleep_until, Instant},
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::registry::Registry;
use crate::{
    backend::{Event, EventBus, PresenceStore, StoreResult},
    meters::Meters,
    model::RoomName,
    protocol::ServerFrame,
};

/// How long local changes are gathered before they are written.
const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// How soon a failed write is retried.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// The most often one room's sockets hear a change.
pub const PUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The pause between steps of a push to a big room's sockets: 10,000
/// sockets are told over ~160 ms, leaving the processor to work that cannot
/// wait.
const PUSH_STEP_GAP: Duration = Duration::from_millis(2);
/// Rooms with more people online than this are told counts only.
pub const MAX_NAMES: usize = 500;

type Name = Arc<str>;

/// One room as this instance sees it.
#[derive(Debug, Default)]
struct RoomBook {
    /// This instance's users in the room.
    local: BTreeSet<Name>,
    /// Other instances' users in the room, by instance.
    remote: HashMap<String, BTreeSet<Name>>,
    /// What the room's sockets have been told: the next diff is from here,
    /// and a socket that joins starts from here.
    told: BTreeSet<Name>,
    told_at: Option<Instant>,
}

impl RoomBook {
    fn online(&self) -> BTreeSet<Name> {
        let mut all = self.local.clone();
        for names in self.remote.values() {
            all.extend(names.iter().cloned());
        }
        all
    }
}

/// What a room's sockets are to be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A change: who came and who went since the last push.
    Diff { joined: Vec<String>, left: Vec<String>, count: usize },
    /// The whole list again (the room shrank back to a size with names).
    Full { online: Vec<String>, count: usize },
}

impl Push {
    /// The frame, for sockets that call the room `room`.
    pub fn frame(&self, room: &str) -> Utf8Bytes {
        match self {
            Push::Diff { joined, left, count } => {
                ServerFrame::PresenceDiff { room, joined, left, count: *count }.to_text()
            }
            Push::Full { online, count } => ServerFrame::Presence { room, online, count: *count }.to_text(),
        }
    }
}

fn names(set: &BTreeSet<Name>) -> Vec<String> {
    set.iter().take(MAX_NAMES).map(|n| n.to_string()).collect()
}

/// Presence for every room followed here: what is known and what was told.
#[derive(Debug, Default)]
pub struct Book {
    rooms: HashMap<RoomName, RoomBook>,
}

impl Book {
    pub fn is_followed(&self, room: &RoomName) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn followed(&self) -> Vec<RoomName> {
        self.rooms.keys().cloned().collect()
    }

    /// Starts following a room: others' entries (from the store) and this
    /// instance's users. Its sockets are told this as it stands.
    pub fn follow(&mut self, room: &RoomName, remote: Vec<(String, String)>, local: Vec<String>) {
        let book = self.rooms.entry(room.clone()).or_default();
        book.remote = group(remote);
        book.local = local.into_iter().map(Name::from).collect();
        book.told = book.online();
    }

    pub fn unfollow(&mut self, room: &RoomName) {
        self.rooms.remove(room);
    }

    /// This instance's users in the room now.
    pub fn set_local(&mut self, room: &RoomName, local: Vec<String>) {
        if let Some(book) = self.rooms.get_mut(room) {
            book.local = local.into_iter().map(Name::from).collect();
        }
    }

    /// Another instance's change.
    pub fn apply_remote(&mut self, room: &RoomName, instance: &str, joined: &[String], left: &[String]) {
        let Some(book) = self.rooms.get_mut(room) else { return };
        let names = book.remote.entry(instance.to_owned()).or_default();
        for name in left {
            names.remove(name.as_str());
        }
        names.extend(joined.iter().map(|n| Name::from(n.as_str())));
        if names.is_empty() {
            book.remote.remove(instance);
        }
    }

    /// Others' entries as the store has them now (a resync).
    pub fn replace_remote(&mut self, room: &RoomName, remote: Vec<(String, String)>) {
        if let Some(book) = self.rooms.get_mut(room) {
            book.remote = group(remote);
        }
    }

    /// The first list for a socket joining the room: as last told (so that
    /// the diffs that follow apply to it), at most [`MAX_NAMES`] names, and
    /// the true count.
    pub fn snapshot(&self, room: &RoomName) -> Option<(Vec<String>, usize)> {
        self.rooms.get(room).map(|book| (names(&book.told), book.told.len()))
    }

    /// What each room's sockets are to be told now, for the rooms whose set
    /// changed and whose last push is at least [`PUSH_INTERVAL`] ago; and
    /// when the next held change may go.
    pub fn due(&mut self, now: Instant) -> (Vec<(RoomName, Push)>, Option<Instant>) {
        let mut pushes = Vec::new();
        let mut next: Option<Instant> = None;
        for (room, book) in &mut self.rooms {
            let online = book.online();
            if online == book.told {
                continue;
            }
            if let Some(at) = book.told_at.map(|t| t + PUSH_INTERVAL).filter(|t| *t > now) {
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let count = online.len();
            let push = if count > MAX_NAMES {
                Push::Diff { joined: Vec::new(), left: Vec::new(), count }
            } else if book.told.len() > MAX_NAMES {
                // Its sockets know only a count: the names, whole, again.
                Push::Full { online: names(&online), count }
            } else {
                Push::Diff {
                    joined: online.difference(&book.told).map(|n| n.to_string()).collect(),
                    left: book.told.difference(&online).map(|n| n.to_string()).collect(),
                    count,
                }
            };
            book.told = online;
            book.told_at = Some(now);
            pushes.push((room.clone(), push));
        }
        (pushes, next)
    }
}

fn group(entries: Vec<(String, String)>) -> HashMap<String, BTreeSet<Name>> {
    let mut by_instance: HashMap<String, BTreeSet<Name>> = HashMap::new();
    for (instance, name) in entries {
        by_instance.entry(instance).or_default().insert(Name::from(name));
    }
    by_instance
}

#[derive(Debug)]
pub enum Command {
    /// A user's first socket in a room opened here, or their last one closed.
    Touched(RoomName, String),
    /// Another instance's change.
    Remote { room: RoomName, instance: String, joined: Vec<String>, left: Vec<String> },
    /// Events may have been missed: re-read every followed room.
    Resync,
}

/// What presence reads and writes.
struct Shared {
    store: Arc<dyn PresenceStore>,
    registry: Arc<Registry>,
    /// Names this instance's entries in the store.
    instance: String,
    book: Mutex<Book>,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Others' entries for `rooms`, from the store.
    async fn remote(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        let entries = self.store.online(rooms).await?;
        Ok(entries.into_iter().map(|e| e.into_iter().filter(|(i, _)| *i != self.instance).collect()).collect())
    }
}

/// The handle sockets and the event listener use.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// The presence task, before it runs.
pub struct PresenceTask {
    shared: Arc<Shared>,
    bus: Arc<dyn EventBus>,
    ttl: Duration,
    commands: mpsc::UnboundedReceiver<Command>,
    meters: Meters,
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
        meters: Meters,
    ) -> (Presence, PresenceTask) {
        let (tx, commands) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { store, registry, instance, book: Mutex::default() });
        (Presence { tx, shared: shared.clone() }, PresenceTask { shared, bus, ttl, commands, meters })
    }

    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    fn send(&self, command: Command) {
        // The task only ends at shutdown, after the sockets.
        let _ = self.tx.send(command);
    }

    pub fn touched(&self, room: &RoomName, name: &str) {
        self.send(Command::Touched(room.clone(), name.to_owned()));
    }

    pub fn changed_elsewhere(&self, room: RoomName, instance: String, joined: Vec<String>, left: Vec<String>) {
        self.send(Command::Remote { room, instance, joined, left });
    }

    pub fn resync(&self) {
        self.send(Command::Resync);
    }

    /// The first list for a socket that just joined (it is registered
    /// already). A room followed here costs nothing; the first socket of a
    /// room here reads the store once. When the store does not answer, this
    /// instance's view.
    pub async fn snapshot(&self, room: &RoomName) -> (Vec<String>, usize) {
        if let Some(snapshot) = self.shared.book().snapshot(room) {
            return snapshot;
        }
        match self.shared.remote(std::slice::from_ref(room)).await {
            Ok(mut remote) => {
                let mut book = self.shared.book();
                if !book.is_followed(room) {
                    book.follow(room, remote.pop().unwrap_or_default(), self.shared.registry.local_names(room));
                }
                book.snapshot(room).expect("followed")
            }
            Err(err) => {
                tracing::warn!(%err, %room, "presence read failed; sending this instance's view");
                let local = self.shared.registry.local_names(room);
                let count = local.len();
                (local.into_iter().take(MAX_NAMES).collect(), count)
            }
        }
    }
}

impl PresenceTask {
    /// Runs until `shutdown` turns true, then flushes once more. Stop it
    /// after the sockets are closed: the registry is empty by then, so this
    /// instance's entries go and the other instances hear of it at once.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut heartbeat = tokio::time::interval(self.ttl / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let mut commands = self.commands;
        let task = Flusher { shared: &self.shared, bus: &*self.bus, ttl: self.ttl, meters: &self.meters };
        let mut touched: HashSet<(RoomName, String)> = HashSet::new();
        let mut write_at: Option<Instant> = None;
        let mut push_at: Option<Instant> = None;

        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    match command {
                        Command::Touched(room, name) => {
                            touched.insert((room, name));
                            write_at.get_or_insert_with(|| Instant::now() + FLUSH_DELAY);
                        }
                        Command::Remote { room, instance, joined, left } => {
                            task.shared.book().apply_remote(&room, &instance, &joined, &left);
                            push_at = Some(Instant::now());
                        }
                        Command::Resync => {
                            task.resync().await;
                            push_at = Some(Instant::now());
                        }
                    }
                }
                _ = async { sleep_until(write_at.expect("guarded")).await }, if write_at.is_some() => {
                    write_at = task.write(&mut touched).await.then(|| Instant::now() + RETRY_DELAY);
                    push_at = Some(Instant::now());
                }
                _ = async { sleep_until(push_at.expect("guarded")).await }, if push_at.is_some() => {
                    push_at = task.push().await;
                }
                _ = heartbeat.tick() => {
                    task.heartbeat().await;
                    push_at = Some(Instant::now());
                }
                _ = shutdown.changed() => break,
            }
        }
        // Final word: the sockets are gone, so every entry here is removed.
        while let Ok(command) = commands.try_recv() {
            if let Command::Touched(room, name) = command {
                touched.insert((room, name));
            }
        }
        for (room, book) in &self.shared.book().rooms {
            touched.extend(book.local.iter().map(|name| (room.clone(), name.to_string())));
        }
        let _ = task.write(&mut touched).await;
    }
}

struct Flusher<'a> {
    shared: &'a Shared,
    bus: &'a dyn EventBus,
    ttl: Duration,
    meters: &'a Meters,
}

impl Flusher<'_> {
    /// Writes the touched entries, updates the book and tells the other
    /// instances what changed here. Returns whether the write failed (the
    /// entries stay touched, to be retried).
    async fn write(&self, touched: &mut HashSet<(RoomName, String)>) -> bool {
        if touched.is_empty() {
            return false;
        }
        let registry = &self.shared.registry;
        // Decided now, from the registry: the last word on a user who closed
        // one tab and opened another is the current state.
        let (online, offline): (Vec<_>, Vec<_>) =
            touched.iter().cloned().partition(|(room, name)| registry.is_online(room, name));
        if let Err(err) = self.shared.store.update(&self.shared.instance, &online, &offline, self.ttl).await {
            tracing::warn!(%err, "presence update failed; will retry");
            return true;
        }
        let mut changes: HashMap<RoomName, (Vec<String>, Vec<String>)> = HashMap::new();
        for (room, name) in online {
            changes.entry(room).or_default().0.push(name);
        }
        for (room, name) in offline {
            changes.entry(room).or_default().1.push(name);
        }
        touched.clear();
        // Rooms with sockets here that are not followed yet (their first
        // socket could not read the store): follow them now.
        let unfollowed: Vec<RoomName> = {
            let book = self.shared.book();
            changes.keys().filter(|room| registry.follows(room) && !book.is_followed(room)).cloned().collect()
        };
        let remote = match unfollowed.is_empty() {
            true => Vec::new(),
            false => self.shared.remote(&unfollowed).await.unwrap_or_else(|err| {
                tracing::warn!(%err, "presence read failed; the heartbeat retries");
                Vec::new()
            }),
        };
        {
            let mut book = self.shared.book();
            for (room, entries) in unfollowed.iter().zip(remote) {
                book.follow(room, entries, Vec::new());
            }
            for room in changes.keys() {
                if registry.follows(room) {
                    book.set_local(room, registry.local_names(room));
                } else {
                    book.unfollow(room);
                }
            }
        }
        for (room, (joined, left)) in changes {
            let event =
                Event::Presence { room: room.to_string(), instance: self.shared.instance.clone(), joined, left };
            if let Err(err) = self.bus.publish(&event).await {
                tracing::warn!(%err, %room, "presence event not published; the heartbeat will tell");
            }
        }
        false
    }

    /// Sends what is due to each room's sockets; when to look again.
    async fn push(&self) -> Option<Instant> {
        let (pushes, next) = self.shared.book().due(Instant::now());
        let registry = &self.shared.registry;
        for (room, push) in pushes {
            self.meters.presence_pushed();
            registry.send(registry.broadcast(&room, |label| push.frame(label)).paced(PUSH_STEP_GAP)).await;
        }
        next
    }

    /// Re-reads others' entries for every followed room.
    async fn resync(&self) {
        let rooms = self.shared.book().followed();
        if rooms.is_empty() {
            return;
        }
        match self.shared.remote(&rooms).await {
            Ok(remote) => {
                let mut book = self.shared.book();
                for (room, entries) in rooms.iter().zip(remote) {
                    book.replace_remote(room, entries);
                }
            }
            Err(err) => tracing::warn!(%err, "presence resync failed; the next heartbeat retries"),
        }
    }

    /// Refreshes this instance's entries and re-reads others'.
    async fn heartbeat(&self) {
        let pairs = self.shared.registry.presence_pairs();
        if let Err(err) = self.shared.store.update(&self.shared.instance, &pairs, &[], self.ttl).await {
            tracing::warn!(%err, "presence heartbeat failed");
        }
        self.resync().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lobby() -> RoomName {
        RoomName::lobby()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_change_is_pushed_as_a_diff_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.follow(&lobby(), vec![("b".into(), "bob".into())], strings(&["al"]));
        assert_eq!(book.snapshot(&lobby()), Some((strings(&["al", "bob"]), 2)));
        assert_eq!(book.due(t0).0, [], "nothing changed");

        book.set_local(&lobby(), strings(&["al", "cy"]));
        let (pushes, _) = book.due(t0);
        assert_eq!(pushes, [(lobby(), Push::Diff { joined: strings(&["cy"]), left: vec![], count: 3 })]);
        // The next change waits for the interval, and carries everything since.
        book.apply_remote(&lobby(), "b", &[], &strings(&["bob"]));
        book.apply_remote(&lobby(), "c", &strings(&["dee"]), &[]);
        let (pushes, next) = book.due(t0 + Duration::from_millis(500));
        assert_eq!(pushes, []);
        assert_eq!(next, Some(t0 + PUSH_INTERVAL));
        let (pushes, _) = book.due(t0 + PUSH_INTERVAL);
        assert_eq!(pushes, [(lobby(), Push::Diff { joined: strings(&["dee"]), left: strings(&["bob"]), count: 3 })]);
    }

    #[test]
    fn who_leaves_and_comes_back_within_the_interval_is_in_neither_list() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.follow(&lobby(), vec![], strings(&["al", "bo"]));
        book.set_local(&lobby(), strings(&["al"]));
        book.set_local(&lobby(), strings(&["al", "bo"]));
        book.set_local(&lobby(), strings(&["al", "bo", "cy"]));
        let (pushes, _) = book.due(t0);
        assert_eq!(pushes, [(lobby(), Push::Diff { joined: strings(&["cy"]), left: vec![], count: 3 })]);
    }

    #[test]
    fn a_user_on_two_instances_stays_until_they_leave_both() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.follow(&lobby(), vec![("b".into(), "al".into())], strings(&["al"]));
        book.set_local(&lobby(), vec![]);
        assert_eq!(book.due(t0).0, [], "still online on b");
        book.apply_remote(&lobby(), "b", &[], &strings(&["al"]));
        assert_eq!(book.due(t0).0, [(lobby(), Push::Diff { joined: vec![], left: strings(&["al"]), count: 0 })]);
    }

    #[test]
    fn big_rooms_get_counts_and_a_full_list_when_they_shrink_back() {
        let t0 = Instant::now();
        let mut book = Book::default();
        let many: Vec<String> = (0..MAX_NAMES + 1).map(|i| format!("u{i:04}")).collect();
        book.follow(&lobby(), vec![], vec![]);
        book.set_local(&lobby(), many.clone());
        let (pushes, _) = book.due(t0);
        assert_eq!(pushes, [(lobby(), Push::Diff { joined: vec![], left: vec![], count: MAX_NAMES + 1 })]);
        let (first, count) = book.snapshot(&lobby()).unwrap();
        assert_eq!((first.len(), count), (MAX_NAMES, MAX_NAMES + 1), "a newcomer gets 500 names and the count");
        book.set_local(&lobby(), many[1..].to_vec());
        let (pushes, _) = book.due(t0 + PUSH_INTERVAL);
        assert_eq!(pushes, [(lobby(), Push::Full { online: many[1..].to_vec(), count: MAX_NAMES })]);
    }

    #[test]
    fn a_resync_replaces_what_other_instances_said() {
        let t0 = Instant::now();
        let mut book = Book::default();
        book.follow(&lobby(), vec![("dead".into(), "zed".into())], strings(&["al"]));
        book.replace_remote(&lobby(), vec![]);
        assert_eq!(book.due(t0).0, [(lobby(), Push::Diff { joined: vec![], left: strings(&["zed"]), count: 1 })]);
    }

    #[test]
    fn frames_follow_the_protocol() {
        let diff = Push::Diff { joined: strings(&["carol"]), left: strings(&["bob"]), count: 2 };
        assert_eq!(
            diff.frame("lobby").as_str(),
            r#"{"type":"presence_diff","room":"lobby","joined":["carol"],"left":["bob"],"count":2}"#
        );
        let full = Push::Full { online: strings(&["al"]), count: 1 };
        assert_eq!(full.frame("lobby").as_str(), r#"{"type":"presence","room":"lobby","online":["al"],"count":1}"#);
    }
}

#[cfg(test)]
mod task_tests {
    use tokio::sync::watch;

    use crate::state::testing::{next_of, Client, Rig, DEADLINE};
    use crate::{
        backend::{Event, Notice},
        config::Config,
        model::RoomName,
    };

    /// Follows presence frames until the view (first list plus diffs) is `want`.
    async fn until(ws: &mut Client, view: &mut std::collections::BTreeSet<String>, want: &[&str]) {
        let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        while *view != want {
            let frame = next_of(ws, "presence_diff").await;
            for name in frame["joined"].as_array().unwrap() {
                view.insert(name.as_str().unwrap().to_owned());
            }
            for name in frame["left"].as_array().unwrap() {
                view.remove(name.as_str().unwrap());
            }
            assert_eq!(frame["count"].as_u64().unwrap() as usize, view.len(), "{frame}");
        }
    }

    async fn first_list(ws: &mut Client) -> std::collections::BTreeSet<String> {
        let frame = next_of(ws, "presence").await;
        assert_eq!(frame["count"].as_u64().unwrap() as usize, frame["online"].as_array().unwrap().len());
        frame["online"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn joins_and_leaves_are_stored_announced_and_pushed_as_diffs() {
        let mut rig = Rig::new(Config::default());
        let mut events = rig.backend.bus.subscribe();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(rig.presence_task().run(stopped));
        let alice = rig.sign_in("alice").await;
        let bob = rig.sign_in("bob").await;
        let (mut alices, _) = rig.open(&alice, "lobby", None).await;
        let mut view = first_list(&mut alices).await;
        assert_eq!(view, ["alice".to_string()].into());
        let (mut bobs, _) = rig.open(&bob, "lobby", None).await;
        until(&mut alices, &mut view, &["alice", "bob"]).await;
        let mut bobs_view = first_list(&mut bobs).await;
        until(&mut bobs, &mut bobs_view, &["alice", "bob"]).await;

        let lobby = RoomName::lobby();
        let mut stored = rig.backend.presence.online(std::slice::from_ref(&lobby)).await.unwrap().remove(0);
        stored.sort();
        assert_eq!(stored, [("this-instance".into(), "alice".into()), ("this-instance".into(), "bob".into())]);
        let announced = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Ok(Notice::Event(Event::Presence { room, instance, joined, .. })) = events.recv().await {
                    return (room, instance, joined);
                }
            }
        });
        let (room, instance, joined) = announced.await.unwrap();
        assert_eq!((room.as_str(), instance.as_str()), ("lobby", "this-instance"));
        assert!(joined.contains(&"alice".to_string()), "the change itself is announced: {joined:?}");

        drop(bobs);
        until(&mut alices, &mut view, &["alice"]).await;
        // At shutdown, after its sockets closed, the instance leaves for good.
        drop(alices);
        tokio::time::timeout(DEADLINE, rig.registry.wait_empty()).await.unwrap();
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(rig.backend.presence.online(&[lobby]).await.unwrap()[0].is_empty());
    }

    #[tokio::test]
    async fn other_instances_changes_apply_without_a_store_read_and_a_resync_corrects_them() {
        let mut rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.presence_task().run(stopped));
        let alice = rig.sign_in("alice").await;
        let (mut ws, _) = rig.open(&alice, "lobby", None).await;
        let mut view = first_list(&mut ws).await;
        let lobby = RoomName::lobby();
        // Announced by another instance; the store does not have it at all.
        rig.presence.changed_elsewhere(lobby.clone(), "elsewhere".into(), vec!["carol".into()], vec![]);
        until(&mut ws, &mut view, &["alice", "carol"]).await;
        // A resync reads the store, where "elsewhere" has no entries (it died).
        rig.presence.resync();
        until(&mut ws, &mut view, &["alice"]).await;
        assert_eq!(rig.presence.snapshot(&lobby).await, (vec!["alice".to_string()], 1));
    }
}
