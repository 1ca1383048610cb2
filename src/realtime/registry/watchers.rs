//! Unread watchers: the sockets of other rooms that show one room's unread
//! count (docs/protocol.md §3.8).
//!
//! A socket that asks for counts watches each of its user's other rooms:
//! the registry then follows the room (the tail reads it) as if the socket
//! were in it, and every message delivered there is counted for each
//! watcher by the one rule ([`Unread::count`]): one comparison per message
//! and watcher, no store round trip. Only the socket's start reads the
//! store, for what came before the room's cursor; until that count is
//! added ([`Watchers::settle`]), messages delivered are kept aside (the
//! count may start after some of them) and nothing is sent, so the first
//! frame a socket sends is the whole count.

use std::{collections::HashMap, sync::Arc};

use super::outbox::{ConnId, OutFrame, Outbound, Outbox, Single};
use crate::{
    model::{Message, MessageId, UserId},
    protocol::UNREAD_CAP,
    realtime::unread::{self, Reader, Unread},
};

/// A socket in another room that shows this room's unread count.
struct Watcher {
    user: UserId,
    reader: Reader,
    /// What its user calls this room.
    label: Arc<str>,
    outbox: Outbox,
    count: Unread,
    /// The count from the store was added: changes are sent from now on.
    ready: bool,
    /// Until then, what each message delivered counts, by id: the count
    /// may start after some of them (a read marker the room's page just
    /// moved past what this instance had delivered), which only the
    /// socket's start knows. At most [`EARLY_KEPT`], the newest.
    early: Vec<(MessageId, Unread)>,
}

/// How many delivered messages a watcher keeps before its start is known:
/// more than a count shows.
const EARLY_KEPT: usize = 4 * UNREAD_CAP as usize;

impl Watcher {
    fn single(&self, id: ConnId) -> Single {
        let frame: Outbound = Arc::new(OutFrame::text(self.count.frame(&self.label)));
        (id, self.outbox.clone(), frame)
    }
}

/// One room's watchers, by socket.
#[derive(Default)]
pub(super) struct Watchers(HashMap<ConnId, Watcher>);

impl Watchers {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Socket `id` of `user` (`reader`), who calls this room `label`,
    /// counts it from now on.
    pub(super) fn add(&mut self, id: ConnId, user: UserId, reader: Reader, label: Arc<str>, outbox: Outbox) {
        let watcher =
            Watcher { user, reader, label, outbox, count: Unread::default(), ready: false, early: Vec::new() };
        self.0.insert(id, watcher);
    }

    pub(super) fn remove(&mut self, id: ConnId) {
        self.0.remove(&id);
    }

    /// Drops the watchers of `user` (`None`: all of them): they may no
    /// longer see the room. Returns each one's socket and user.
    pub(super) fn take(&mut self, user: Option<UserId>) -> Vec<(ConnId, UserId)> {
        let gone: Vec<(ConnId, UserId)> =
            self.0.iter().filter(|(_, w)| user.is_none_or(|u| w.user == u)).map(|(id, w)| (*id, w.user)).collect();
        for (id, _) in &gone {
            self.0.remove(id);
        }
        gone
    }

    /// Counts messages delivered in the room (each with the names it
    /// mentions found once); the frames of the counts that changed and may
    /// be sent.
    pub(super) fn count_delivered(&mut self, fresh: &[&Message]) -> Vec<Single> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let mentioned: Vec<Vec<String>> = fresh.iter().map(|message| unread::mentioned(message)).collect();
        let mut out = Vec::new();
        for (id, watcher) in self.0.iter_mut() {
            if !watcher.ready {
                for (message, names) in fresh.iter().zip(&mentioned) {
                    let mut one = Unread::default();
                    one.count(&watcher.reader, message, names);
                    if !one.is_zero() {
                        watcher.early.push((message.id, one));
                    }
                }
                let over = watcher.early.len().saturating_sub(EARLY_KEPT);
                watcher.early.drain(..over);
                continue;
            }
            let before = watcher.count;
            for (message, names) in fresh.iter().zip(&mentioned) {
                watcher.count.count(&watcher.reader, message, names);
            }
            if watcher.count != before {
                out.push(watcher.single(*id));
            }
        }
        out
    }

    /// Adds what the store counted to what was delivered since, after
    /// `from` (where the count starts); from now on changes are sent. The
    /// whole count, if `id` watches here.
    pub(super) fn settle(&mut self, id: ConnId, from: MessageId, stored: Unread) -> Option<Unread> {
        let watcher = self.0.get_mut(&id)?;
        let early = std::mem::take(&mut watcher.early);
        watcher.count = early.into_iter().filter(|(at, _)| *at > from).fold(stored, |count, (_, one)| count.plus(one));
        watcher.ready = true;
        Some(watcher.count)
    }

    /// `user` read the room to its newest message: their counts start
    /// again from zero; the frames of those that were sent before.
    pub(super) fn clear(&mut self, user: UserId) -> Vec<Single> {
        let mut out = Vec::new();
        for (id, watcher) in self.0.iter_mut().filter(|(_, w)| w.user == user) {
            if !watcher.count.is_zero() {
                watcher.count = Unread::default();
                if watcher.ready {
                    out.push(watcher.single(*id));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};
    use tower_sessions::session::Id;

    use super::*;
    use crate::{
        model::{MessageId, RoomKind, RoomName},
        realtime::registry::{
            tests::{message, CAPS},
            Registration, Registry,
        },
    };

    fn said(id: u64, user: &str, body: &str) -> Message {
        Message { user: user.into(), body: body.into(), ..message(id) }
    }

    fn unread_frames(outbox: &mut mpsc::Receiver<Outbound>) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| outbox.try_recv().ok())
            .map(|f| serde_json::from_str::<serde_json::Value>(f.text.as_str()).unwrap())
            .filter(|v| v["type"] == "unread")
            .collect()
    }

    #[tokio::test]
    async fn a_watcher_counts_others_messages_and_mentions_of_it_from_its_cursor_and_a_read_clears_them() {
        let reg = Registry::new(CAPS);
        let (al, dev) = (UserId::new_v4(), RoomName::parse("dev").unwrap());
        let (tx, mut outbox) = mpsc::channel(64);
        let (close, _closed) = oneshot::channel();
        let joined = reg
            .register(Registration {
                session: Id(1),
                user: al,
                name: "Ali".into(),
                room: RoomName::lobby(),
                label: "lobby".into(),
                kind: RoomKind::Public,
                outbox: tx.clone(),
                close,
                room_start: MessageId::ZERO,
                epoch: reg.epoch(),
            })
            .unwrap();
        let start = MessageId { ms: 5, seq: 0 };
        let (cursors, new_rooms) = reg.watch(joined.id, &tx, &[(dev.clone(), "dev".into(), start)]);
        assert_eq!(cursors, [(dev.clone(), MessageId { ms: 5, seq: 0 })]);
        assert_eq!(new_rooms, std::slice::from_ref(&dev), "the tail must start following dev");
        assert!(!reg.follows(&dev), "dev has no sockets of its own here");
        // Before the store's count is in, deliveries count but send nothing.
        reg.send(reg.deliver(&dev, &[said(6, "bo", "hi @ali"), said(7, "Ali", "mine")])).await;
        assert!(unread_frames(&mut outbox).is_empty());
        assert_eq!(
            reg.settle_unread(joined.id, &dev, start, Unread { unread: 2, mentions: 0 }),
            Some(Unread { unread: 3, mentions: 1 })
        );
        reg.send(reg.deliver(&dev, &[said(8, "bo", "`@ali` in code"), said(9, "cy", "@ALI!")])).await;
        let frames = unread_frames(&mut outbox);
        assert_eq!(frames, [serde_json::json!({"type": "unread", "room": "dev", "unread": 5, "mentions": 2})]);
        // Read short of the newest: the count stands; up to it: zero.
        reg.send(reg.read(al, &dev, MessageId { ms: 8, seq: 0 })).await;
        assert!(unread_frames(&mut outbox).is_empty());
        reg.send(reg.read(UserId::new_v4(), &dev, MessageId { ms: 9, seq: 0 })).await;
        assert!(unread_frames(&mut outbox).is_empty(), "someone else's read is theirs");
        reg.send(reg.read(al, &dev, MessageId { ms: 9, seq: 0 })).await;
        assert_eq!(unread_frames(&mut outbox)[0]["unread"], 0);
        // Leaving drops the watch, and the room with it.
        reg.remove(joined.id);
        assert_eq!(reg.room_cursor(&dev), None);
    }

    #[tokio::test]
    async fn messages_delivered_before_the_start_is_known_count_only_after_it() {
        let reg = Registry::new(CAPS);
        let dev = RoomName::parse("dev").unwrap();
        let (tx, _outbox) = mpsc::channel(64);
        let (close, _closed) = oneshot::channel();
        let registration = Registration {
            session: Id(1),
            user: UserId::new_v4(),
            name: "Ali".into(),
            room: RoomName::lobby(),
            label: "lobby".into(),
            kind: RoomKind::Public,
            outbox: tx.clone(),
            close,
            room_start: MessageId::ZERO,
            epoch: reg.epoch(),
        };
        let joined = reg.register(registration).unwrap();
        reg.watch(joined.id, &tx, &[(dev.clone(), "dev".into(), MessageId { ms: 5, seq: 0 })]);
        reg.send(reg.deliver(&dev, &[said(6, "bo", "hi @ali"), said(7, "bo", "more")])).await;
        // The page had marked the room read to 6 before the tail got there.
        let from = MessageId { ms: 6, seq: 0 };
        assert_eq!(
            reg.settle_unread(joined.id, &dev, from, Unread::default()),
            Some(Unread { unread: 1, mentions: 0 })
        );
    }
}
