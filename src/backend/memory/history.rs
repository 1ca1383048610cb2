//! Room history: appending (with the sender's rate, the dedupe window and
//! the new-room quota), reading back, the tail that waits for appends, the
//! rooms a user opened and their read markers.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::{lock, MemoryBackend, MentionInbox, ReadMarkers, RoomLog};
use crate::{
    backend::{rules, History, Mentioned, RoomOpened, StoreResult},
    clock::UnixMillis,
    model::{Appended, Message, MessageId, NewMessage, RoomName, UserId},
};

impl MemoryBackend {
    /// The sender's rate bucket as last counted (buckets full again are dropped).
    fn bucket(&self, user: UserId, now: UnixMillis) -> Option<(f64, UnixMillis)> {
        let mut buckets = lock(&self.buckets);
        let refill = self.user_rate.refill_time();
        buckets.retain(|_, (_, at)| *at + refill > now);
        buckets.get(&user).copied()
    }

    /// Counts a new room against `user`'s quota (for a direct room, their
    /// quota of new conversations); `Err(retry_after)` when over it.
    fn charge_new_room(&self, room: &RoomName, user: UserId) -> Result<(), Duration> {
        let (counter, quota) = if room.is_direct() {
            (rules::RoomLimits::direct_counter(user), self.room_limits.new_direct)
        } else {
            (rules::NewRooms::counter(user), self.new_rooms)
        };
        let counted = self.count(&[counter], quota.window);
        quota.allows(counted[0])
    }

    fn new_messages(&self, cursors: &[(RoomName, MessageId)]) -> Vec<(RoomName, Vec<Message>)> {
        let rooms = self.live_rooms(UnixMillis::now());
        cursors
            .iter()
            .filter_map(|(room, cursor)| {
                let log = rooms.logs.get(room)?;
                let fresh: Vec<Message> = log.after(*cursor).cloned().collect();
                (!fresh.is_empty()).then(|| (room.clone(), fresh))
            })
            .collect()
    }
}

#[async_trait]
impl History for MemoryBackend {
    async fn append(&self, room: &RoomName, message: NewMessage) -> StoreResult<Appended> {
        let now = Instant::now();
        let dedupe_key = message.client_id.clone().map(|cid| (room.clone(), message.sender, cid));
        let mut sent = lock(&self.sent);
        let clock = UnixMillis::now();
        if !self.live_rooms(clock).writable(room, message.sender) {
            return Ok(Appended::NotVisible);
        }
        sent.retain(|_, (_, at)| now.duration_since(*at) < self.dedupe_window);
        if let Some((id, _)) = dedupe_key.as_ref().and_then(|k| sent.get(k)) {
            return Ok(Appended::Duplicate(*id));
        }
        let Some(bucket) = self.user_rate.take(self.bucket(message.sender, clock), clock) else {
            return Ok(Appended::Throttled);
        };
        let exists = room.is_lobby() || self.live_rooms(clock).exists(room);
        if !exists && self.charge_new_room(room, message.sender).is_err() {
            return Ok(Appended::NewRoomRefused);
        }
        lock(&self.buckets).insert(message.sender, bucket);
        let stored = {
            let mut rooms = self.live_rooms(clock);
            // Looked at again where it is stored: the room may have become
            // private, or the sender left it, meanwhile.
            if !rooms.writable(room, message.sender) {
                return Ok(Appended::NotVisible);
            }
            let lasting = room.is_direct() || rooms.private.contains_key(room);
            let log = rooms.logs.entry(room.clone()).or_insert_with(|| RoomLog::new(clock, lasting));
            // Like a Redis stream id: the time, then a sequence within it.
            let ms = message.sent_at.as_millis().max(0) as u64;
            let id = if ms > log.last_id.ms {
                MessageId { ms, seq: 0 }
            } else {
                MessageId { ms: log.last_id.ms, seq: log.last_id.seq + 1 }
            };
            log.last_id = id;
            log.active_at = log.active_at.max(clock);
            let stored = message.stored(id);
            log.messages.push_back(stored.clone());
            while log.messages.len() > self.history_max_len {
                log.messages.pop_front();
            }
            stored
        };
        if let Some(key) = dedupe_key {
            sent.insert(key, (stored.id, now));
        }
        drop(sent);
        self.appended.notify_waiters();
        Ok(Appended::New(stored))
    }

    async fn after(&self, room: &RoomName, after: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms.logs.get(room).map(|log| log.after(after).take(limit).cloned().collect()).unwrap_or_default())
    }

    async fn recent(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms
            .logs
            .get(room)
            .map(|log| log.messages.iter().skip(log.messages.len().saturating_sub(limit)).cloned().collect())
            .unwrap_or_default())
    }

    async fn before(&self, room: &RoomName, before: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        let rooms = self.live_rooms(UnixMillis::now());
        Ok(rooms
            .logs
            .get(room)
            .map(|log| {
                let end = log.messages.partition_point(|m| m.id < before);
                log.messages.range(end.saturating_sub(limit)..end).cloned().collect()
            })
            .unwrap_or_default())
    }

    async fn last_id(&self, room: &RoomName) -> StoreResult<MessageId> {
        Ok(self.live_rooms(UnixMillis::now()).logs.get(room).map(|log| log.last_id).unwrap_or(MessageId::ZERO))
    }

    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>> {
        let deadline = tokio::time::Instant::now() + wait;
        let woken = self.wake.notified();
        tokio::pin!(woken);
        loop {
            // Register interest before looking, so an append between the look
            // and the wait is not missed.
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let fresh = self.new_messages(cursors);
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            // An append to a room not followed here is no reason to return.
            tokio::select! {
                _ = appended => {}
                _ = woken.as_mut() => return Ok(self.new_messages(cursors)),
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn wake_tail(&self, _room: &RoomName) -> StoreResult<()> {
        self.wake.notify_one();
        Ok(())
    }

    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool> {
        Ok(self.live_rooms(UnixMillis::now()).exists(room))
    }

    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<RoomOpened> {
        if room.is_direct() {
            return Ok(RoomOpened::Open);
        }
        let now = UnixMillis::now();
        {
            // Looked at and charged under the rooms' lock: of two opening
            // one new room, one makes it, and a private room cannot be made
            // of its name meanwhile.
            let mut rooms = self.live_rooms(now);
            if rooms.private.contains_key(room) {
                return Ok(RoomOpened::Private);
            }
            if !room.is_lobby() && !rooms.logs.contains_key(room) {
                if let Err(retry_after) = self.charge_new_room(room, user) {
                    return Ok(RoomOpened::NewRoomRefused { retry_after });
                }
            }
            rooms
                .logs
                .entry(room.clone())
                .and_modify(|log| log.active_at = now)
                .or_insert_with(|| RoomLog::new(now, false));
        }
        let mut user_rooms = lock(&self.user_rooms);
        let mine = user_rooms.entry(user).or_default();
        mine.insert(room.clone(), now);
        if mine.len() > rules::USER_ROOMS_KEPT {
            let oldest = mine.iter().min_by_key(|(_, at)| **at).map(|(room, _)| room.clone());
            if let Some(oldest) = oldest {
                mine.remove(&oldest);
            }
        }
        Ok(RoomOpened::Open)
    }

    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>> {
        let live = self.live_rooms(UnixMillis::now());
        let user_rooms = lock(&self.user_rooms);
        let mut mine: Vec<(&RoomName, &UnixMillis)> = user_rooms
            .get(&user)
            .map(|m| m.iter().filter(|(room, _)| live.logs.get(*room).is_some_and(|log| !log.lasting)).collect())
            .unwrap_or_default();
        mine.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        Ok(mine.into_iter().take(limit).map(|(room, _)| room.clone()).collect())
    }

    async fn mark_read(&self, user: UserId, room: &RoomName, up_to: MessageId) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut read = lock(&self.read);
        let mine = read.entry(user).or_insert_with(|| ReadMarkers { moved_at: now, rooms: HashMap::new() });
        if mine.moved_at <= now - self.room_ttl {
            mine.rooms.clear();
        }
        if mine.rooms.get(room).is_some_and(|id| *id >= up_to) {
            return Ok(false);
        }
        mine.rooms.insert(room.clone(), up_to);
        mine.moved_at = now;
        if mine.rooms.len() > rules::USER_ROOMS_KEPT + 1 {
            let user_rooms = lock(&self.user_rooms);
            let opened = user_rooms.get(&user);
            let rooms = lock(&self.rooms);
            let private = rooms.memberships.get(&user);
            let direct = lock(&self.direct);
            let direct = direct.get(&user);
            mine.rooms.retain(|room, _| {
                opened.is_some_and(|l| l.contains_key(room))
                    || private.is_some_and(|p| p.contains(room))
                    || direct.is_some_and(|d| d.contains_key(room))
            });
        }
        Ok(true)
    }

    async fn read_markers(&self, user: UserId) -> StoreResult<HashMap<RoomName, MessageId>> {
        let read = lock(&self.read);
        Ok(match read.get(&user) {
            Some(mine) if mine.moved_at > UnixMillis::now() - self.room_ttl => mine.rooms.clone(),
            _ => HashMap::new(),
        })
    }

    async fn note_mention(&self, user: UserId, room: &RoomName, id: MessageId) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut inboxes = lock(&self.mentioned);
        let inbox = inboxes.entry(user).or_insert_with(|| MentionInbox { noted_at: now, notes: VecDeque::new() });
        if inbox.noted_at <= now - self.room_ttl {
            inbox.notes.clear();
        }
        inbox.notes.push_front(Mentioned { room: room.clone(), id });
        inbox.notes.truncate(self.mention_inbox_len);
        inbox.noted_at = now;
        Ok(())
    }

    async fn mentions(&self, user: UserId) -> StoreResult<Vec<Mentioned>> {
        let inboxes = lock(&self.mentioned);
        Ok(match inboxes.get(&user) {
            Some(inbox) if inbox.noted_at > UnixMillis::now() - self.room_ttl => inbox.notes.iter().cloned().collect(),
            _ => Vec::new(),
        })
    }
}
