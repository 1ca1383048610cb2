//! Room history and rooms: a stream per room, an `active` key that says a
//! public room (or a direct room with a message) exists, per-user lists of
//! opened rooms and read markers, and the tails that follow the streams.
//! Private rooms exist by their `meta` key (`rooms`).

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use fred::{prelude::*, types::streams::XReadResponse};

use super::{
    connection::{millis, Call, COMMAND_TIMEOUT},
    keys,
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{rules, Counters, History, Mentioned, RoomOpened, RoomState, StoreError, StoreResult},
    clock::UnixMillis,
    model::{Appended, Message, MessageId, NewMessage, RoomName, UserId},
};

/// How many entries one `XREAD` returns per stream at most.
const TAIL_BATCH: u64 = 512;

/// Where `append_take`'s "the room is new" and `append_store`'s kind are
/// in their arguments: what step 1 decides.
const TAKE_NEW_ROOM: usize = 3;
const STORE_KIND: usize = 9;

/// The keys and arguments of an append's three scripts (docs/cluster.md,
/// "Appending"), made once for the steps or for [`AppendSteps::at_once`].
struct AppendSteps {
    dedupe: Option<String>,
    check_keys: Vec<String>,
    check_args: Vec<Value>,
    take_keys: Vec<String>,
    /// With "the room is new" still to be decided.
    take_args: Vec<Value>,
    store_keys: Vec<String>,
    /// With the room's kind still to be decided.
    store_args: Vec<Value>,
}

impl AppendSteps {
    fn new(backend: &RedisBackend, room: &RoomName, message: &NewMessage) -> Self {
        let client_id = message.client_id.clone().filter(|c| !c.is_empty());
        let dedupe = client_id.as_deref().map(|cid| keys::sent(room, message.sender, cid));
        let now = UnixMillis::now();
        let sender: Value = message.sender.to_string().into();
        let mut check_keys = vec![keys::active(room), keys::meta(room), keys::members(room)];
        check_keys.extend(dedupe.clone());
        let (counter, quota) = if room.is_direct() {
            (keys::new_direct(message.sender), backend.room_limits.new_direct)
        } else {
            (keys::new_rooms(message.sender), backend.new_rooms)
        };
        let take_args: Vec<Value> = vec![
            millis(now),
            backend.user_rate.rate.into(),
            backend.user_rate.burst.into(),
            "0".into(),
            (quota.max as i64).into(),
            (quota.window.as_millis() as i64).into(),
        ];
        let mut store_keys = vec![keys::messages(room), keys::active(room), keys::meta(room), keys::members(room)];
        store_keys.extend(dedupe.clone());
        let store_args: Vec<Value> = vec![
            (backend.history_max_len as i64).into(),
            message.user.as_str().into(),
            message.body.as_str().into(),
            millis(message.sent_at),
            client_id.as_deref().unwrap_or_default().into(),
            (if message.client_id_shown && client_id.is_some() { "1" } else { "0" }).into(),
            (backend.dedupe_window.as_secs() as i64).into(),
            millis(now),
            (backend.room_ttl.as_millis() as i64).into(),
            "".into(),
            sender.clone(),
        ];
        Self {
            dedupe,
            check_keys,
            check_args: vec![sender],
            take_keys: vec![keys::rate(message.sender), counter],
            take_args,
            store_keys,
            store_args,
        }
    }

    /// The three steps as one script, for one Redis.
    fn at_once(&self, room: &RoomName) -> Call<'static> {
        let flag = |on: bool| Value::from(if on { "1" } else { "0" });
        let mut args: Vec<Value> = vec![
            (self.check_keys.len() as i64).into(),
            (self.store_keys.len() as i64).into(),
            flag(room.is_direct()),
            flag(room.is_lobby()),
        ];
        args.extend(self.check_args.iter().chain(&self.take_args).chain(&self.store_args).cloned());
        let keys = [&self.check_keys, &self.take_keys, &self.store_keys].into_iter().flatten().cloned().collect();
        Call::new(&SCRIPTS.append_at_once, keys, args)
    }

    /// What step 1's kind means for step 3, or `None`: the sender may not
    /// write here.
    fn kind(room: &RoomName, kind: i64) -> Option<&'static str> {
        match kind {
            _ if room.is_direct() => Some("direct"),
            0 => Some("public"),
            1 => Some("private"),
            _ => None,
        }
    }

    /// `append_store`'s answer as what the append did.
    fn stored(&self, message: NewMessage, (id, stored): (String, i64)) -> StoreResult<Appended> {
        if stored == 2 {
            return Ok(Appended::NotVisible);
        }
        let id: MessageId = id.parse().map_err(|_| StoreError::Corrupt(format!("stream id {id}")))?;
        Ok(if stored == 1 { Appended::New(message.stored(id)) } else { Appended::Duplicate(id) })
    }
}

/// The failure of a pipeline, for each of its messages.
fn same_failure(err: &StoreError) -> StoreError {
    match err {
        StoreError::Redis(err) => StoreError::Redis(err.clone()),
        StoreError::Unreplicated { wanted, acked } => StoreError::Unreplicated { wanted: *wanted, acked: *acked },
        StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
        other => StoreError::Usage(other.to_string()),
    }
}

/// What `append_at_once` answered.
enum AtOnce {
    Refused,
    Throttled,
    Quota,
    Seen,
    Stored((String, i64)),
}

impl AtOnce {
    fn read(answer: Value) -> StoreResult<Self> {
        let mut parts: Vec<Value> = answer.convert()?;
        let word = parts.first().and_then(|v| v.as_str().map(|s| s.into_owned())).unwrap_or_default();
        Ok(match word.as_str() {
            "refused" => AtOnce::Refused,
            "throttled" => AtOnce::Throttled,
            "quota" => AtOnce::Quota,
            "seen" => AtOnce::Seen,
            _ if parts.len() == 2 => {
                let stored: i64 = parts.pop().expect("two parts").convert()?;
                AtOnce::Stored((word, stored))
            }
            _ => return Err(StoreError::Corrupt(format!("append_at_once answered {parts:?}"))),
        })
    }

    /// What the append did; `Err` gives the message back when it is a
    /// resend, which is confirmed as the steps confirm it.
    fn outcome(self, steps: &AppendSteps, message: NewMessage) -> Result<StoreResult<Appended>, NewMessage> {
        Ok(match self {
            AtOnce::Refused => Ok(Appended::NotVisible),
            AtOnce::Throttled => Ok(Appended::Throttled),
            AtOnce::Quota => Ok(Appended::NewRoomRefused),
            AtOnce::Stored(answer) => steps.stored(message, answer),
            AtOnce::Seen => return Err(message),
        })
    }
}

impl RedisBackend {
    /// A resend of a stored message: acknowledged with the first id, once
    /// the first copy is known to be on the replicas (the confirming write
    /// and its `WAIT` come after it in the replication stream).
    async fn confirm_resend(&self, dedupe: &str) -> StoreResult<Option<MessageId>> {
        let seen: String =
            self.conn.run_kept(Call::new(&SCRIPTS.append_confirm, vec![dedupe.to_owned()], vec![])).await?;
        if seen.is_empty() {
            return Ok(None);
        }
        seen.parse().map(Some).map_err(|_| StoreError::Corrupt(format!("stream id {seen}")))
    }

    fn parse_entry(id: &str, mut fields: HashMap<String, String>) -> StoreResult<Message> {
        let corrupt = || StoreError::Corrupt(format!("stream entry {id}"));
        Ok(Message {
            id: id.parse().map_err(|_| corrupt())?,
            user: fields.remove("user").ok_or_else(corrupt)?,
            body: fields.remove("body").ok_or_else(corrupt)?,
            sent_at: fields
                .get("sent_at")
                .and_then(|t| t.parse().ok())
                .map(UnixMillis::from_millis)
                .ok_or_else(corrupt)?,
            client_id: fields.remove("client_id"),
        })
    }

    async fn range(
        &self,
        room: &RoomName,
        start: String,
        end: &str,
        limit: usize,
        rev: bool,
    ) -> StoreResult<Vec<Message>> {
        let key = keys::messages(room);
        let fast = &self.conn.fast;
        let entries: Vec<(String, HashMap<String, String>)> = if rev {
            self.conn.timed("xrevrange", fast.xrevrange_values(key, end, start, Some(limit as u64))).await?
        } else {
            self.conn.timed("xrange", fast.xrange_values(key, start, end, Some(limit as u64))).await?
        };
        entries.into_iter().map(|(id, fields)| Self::parse_entry(&id, fields)).collect()
    }
}

#[async_trait]
impl History for RedisBackend {
    /// Three steps (docs/cluster.md, "Appending"): read the room (may the
    /// sender write here? a resend? does it exist?), charge the sender
    /// (rate, new-room quota), store in the room if the sender still may
    /// (and, with `REDIS_WAIT_REPLICAS`, wait for the replicas).
    async fn append(&self, room: &RoomName, mut message: NewMessage) -> StoreResult<Appended> {
        if room.is_direct() && room.other_member(message.sender).is_none() {
            return Ok(Appended::NotVisible);
        }
        let steps = AppendSteps::new(self, room, &message);
        if !self.conn.cluster {
            // One round trip on one Redis: under a busy fan-out every round
            // trip waits its turn behind the room's sockets, so the sender's
            // pace is what the steps cost in turns (BENCHMARKS.md, fan-out
            // at 200 messages per second).
            let answer = self.conn.run_durably(steps.at_once(room)).await?;
            match AtOnce::read(answer)?.outcome(&steps, message) {
                Ok(appended) => return appended,
                // A resend: confirmed as the steps confirm it, below.
                Err(resend) => message = resend,
            }
        }

        // 1. The room: its kind, a resend, and whether the room exists.
        let (seen, exists, kind): (String, i64, i64) =
            self.conn.run(&SCRIPTS.append_check, steps.check_keys.clone(), steps.check_args.clone()).await?;
        let Some(kind) = AppendSteps::kind(room, kind) else { return Ok(Appended::NotVisible) };
        if !seen.is_empty() {
            if let Some(id) = self.confirm_resend(steps.dedupe.as_deref().expect("seen by its key")).await? {
                return Ok(Appended::Duplicate(id));
            }
            // The first copy's window closed between the two reads: the
            // resend now comes after the window, and is stored anew.
        }

        // 2. The sender: their rate, and their quota if the room is new
        // (of new conversations, for a direct room).
        let mut take_args = steps.take_args.clone();
        take_args[TAKE_NEW_ROOM] = (if exists == 0 && !room.is_lobby() { "1" } else { "0" }).into();
        match self.conn.run::<i64>(&SCRIPTS.append_take, steps.take_keys.clone(), take_args).await? {
            2 => return Ok(Appended::Throttled),
            3 => return Ok(Appended::NewRoomRefused),
            _ => {}
        }

        // 3. The room: store (unless a resend got there first, or the
        // sender may no longer write here), then WAIT.
        let mut store_args = steps.store_args.clone();
        store_args[STORE_KIND] = kind.into();
        let answer =
            self.conn.run_durably(Call::new(&SCRIPTS.append_store, steps.store_keys.clone(), store_args)).await?;
        steps.stored(message, answer.convert()?)
    }

    /// On one Redis, every message's one script in one pipeline, with one
    /// `WAIT` after the last; on a cluster, one append after the other.
    /// A resend found in the pipeline is confirmed after the others, as
    /// [`History::append`] confirms it.
    async fn append_all(&self, room: &RoomName, messages: Vec<NewMessage>) -> Vec<StoreResult<Appended>> {
        let direct_refused = room.is_direct() && messages.iter().any(|m| room.other_member(m.sender).is_none());
        if self.conn.cluster || messages.len() < 2 || direct_refused {
            let mut answers = Vec::with_capacity(messages.len());
            for message in messages {
                answers.push(self.append(room, message).await);
            }
            return answers;
        }
        let steps: Vec<AppendSteps> = messages.iter().map(|m| AppendSteps::new(self, room, m)).collect();
        let calls: Vec<Call> = steps.iter().map(|s| s.at_once(room)).collect();
        let replies = match self.conn.run_all_durably(&calls).await {
            Ok(replies) => replies,
            Err(err) => return messages.iter().map(|_| Err(same_failure(&err))).collect(),
        };
        let mut answers = Vec::with_capacity(messages.len());
        for ((message, steps), reply) in messages.into_iter().zip(&steps).zip(replies) {
            answers.push(match AtOnce::read(reply).map(|at_once| at_once.outcome(steps, message)) {
                Ok(Ok(appended)) => appended,
                Ok(Err(resend)) => self.append(room, resend).await,
                Err(err) => Err(err),
            });
        }
        answers
    }

    async fn after(&self, room: &RoomName, after: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        self.range(room, format!("({after}"), "+", limit, false).await
    }

    /// In one script (unread_page.lua): the bodies that do not hold
    /// `@reader` in any ASCII case (every mention of the reader does) stay
    /// in the store.
    async fn unread_after(
        &self,
        room: &RoomName,
        after: MessageId,
        limit: usize,
        reader: &str,
    ) -> StoreResult<Vec<Message>> {
        let args: Vec<Value> = vec![format!("({after}").into(), (limit as i64).into(), format!("@{reader}").into()];
        let entries: Vec<(String, HashMap<String, String>)> =
            self.conn.run(&SCRIPTS.unread_page, vec![keys::messages(room)], args).await?;
        entries.into_iter().map(|(id, fields)| Self::parse_entry(&id, fields)).collect()
    }

    async fn recent(&self, room: &RoomName, limit: usize) -> StoreResult<Vec<Message>> {
        let mut messages = self.range(room, "-".into(), "+", limit, true).await?;
        messages.reverse();
        Ok(messages)
    }

    async fn before(&self, room: &RoomName, before: MessageId, limit: usize) -> StoreResult<Vec<Message>> {
        // Nothing is before 0-0 (and Redis refuses "(0-0" as an end).
        if before == MessageId::ZERO || limit == 0 {
            return Ok(Vec::new());
        }
        let mut messages = self.range(room, "-".into(), &format!("({before}"), limit, true).await?;
        messages.reverse();
        Ok(messages)
    }

    async fn last_id(&self, room: &RoomName) -> StoreResult<MessageId> {
        Ok(self.range(room, "-".into(), "+", 1, true).await?.first().map(|m| m.id).unwrap_or(MessageId::ZERO))
    }

    fn tail_groups(&self) -> usize {
        self.conn.tails.len()
    }

    fn tail_group(&self, room: &RoomName) -> usize {
        self.conn.group_of(room)
    }

    async fn tail(
        &self,
        cursors: &[(RoomName, MessageId)],
        wait: Duration,
    ) -> StoreResult<Vec<(RoomName, Vec<Message>)>> {
        let Some((first, _)) = cursors.first() else {
            return Err(StoreError::Usage("a tail needs a room to follow".into()));
        };
        let group = self.conn.group_of(first);
        if let Some((other, _)) = cursors.iter().find(|(room, _)| self.conn.group_of(room) != group) {
            return Err(StoreError::Usage(format!("rooms {first} and {other} are tailed by different groups")));
        }
        let tail = &self.conn.tails[group];
        let mut wake_cursor = tail.wake_cursor.lock().await;
        if wake_cursor.is_none() {
            // Start after whatever wake entries exist, so old pokes are ignored.
            let last: Vec<(String, HashMap<String, String>)> = self
                .conn
                .timed("xrevrange", self.conn.fast.xrevrange_values(&tail.wake_key, "+", "-", Some(1)))
                .await?;
            *wake_cursor = Some(last.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".into()));
        }
        let mut stream_keys: Vec<String> = cursors.iter().map(|(room, _)| keys::messages(room)).collect();
        let mut ids: Vec<String> = cursors.iter().map(|(_, id)| id.to_string()).collect();
        stream_keys.push(tail.wake_key.clone());
        ids.push(wake_cursor.clone().unwrap_or_default());

        let client = self.conn.tail_client(tail).await?;
        let read = client.xread::<Value, _, _>(Some(TAIL_BATCH), Some(wait.as_millis() as u64), stream_keys, ids);
        // A blocking read in flight when the connection dropped was seen to
        // never return; the cursors make a retry safe, so give up on it and
        // start over on a fresh connection.
        let reply = match tokio::time::timeout(wait + COMMAND_TIMEOUT, read).await {
            Ok(reply) => reply?,
            Err(_) => {
                tracing::warn!(group, "XREAD BLOCK did not return; reconnecting the tail connection");
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, client.force_reconnection()).await;
                return Err(StoreError::Redis(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "XREAD BLOCK did not return",
                )));
            }
        };
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let mut reply: XReadResponse<String, String, String, String> = reply.into_xread_response()?;
        if let Some(pokes) = reply.remove(&tail.wake_key) {
            if let Some((id, _)) = pokes.last() {
                *wake_cursor = Some(id.clone());
            }
        }
        let mut out = Vec::new();
        for (room, _) in cursors {
            if let Some(entries) = reply.remove(&keys::messages(room)) {
                let messages = entries
                    .into_iter()
                    .map(|(id, fields)| Self::parse_entry(&id, fields))
                    .collect::<StoreResult<Vec<_>>>()?;
                out.push((room.clone(), messages));
            }
        }
        Ok(out)
    }

    async fn wake_tail(&self, room: &RoomName) -> StoreResult<()> {
        let key = self.conn.tails[self.conn.group_of(room)].wake_key.clone();
        self.conn.run::<()>(&SCRIPTS.wake, vec![key], vec![]).await
    }

    async fn room_exists(&self, room: &RoomName) -> StoreResult<bool> {
        // Two keys of one slot: one command on a cluster too.
        let exists: i64 =
            self.conn.timed("exists", self.conn.fast.exists(vec![keys::active(room), keys::meta(room)])).await?;
        Ok(exists > 0)
    }

    /// Like an append (docs/cluster.md, "Opening a room"): what is the
    /// room? If it does not exist, charge the user's quota; then the room's
    /// part and the user's part, in different slots: two script calls, one
    /// round trip.
    async fn open_room(&self, room: &RoomName, user: UserId) -> StoreResult<RoomOpened> {
        if room.is_direct() {
            return Ok(RoomOpened::Open);
        }
        if !room.is_lobby() {
            match self.room_state(room, user).await?.0 {
                RoomState::Private(_) => return Ok(RoomOpened::Private),
                RoomState::Public => {}
                RoomState::Missing => {
                    let counted = self.incr(&[rules::NewRooms::counter(user)], self.new_rooms.window).await?;
                    if let Err(retry_after) = self.new_rooms.allows(counted[0]) {
                        return Ok(RoomOpened::NewRoomRefused { retry_after });
                    }
                }
            }
        }
        let (now, ttl) = (millis(UnixMillis::now()), Value::from(self.room_ttl.as_millis() as i64));
        let calls = [
            Call::new(
                &SCRIPTS.open_room,
                vec![keys::active(room), keys::messages(room), keys::meta(room)],
                vec![now.clone(), ttl.clone()],
            ),
            Call::new(
                &SCRIPTS.open_room_user,
                vec![keys::user_rooms(user)],
                vec![room.as_str().into(), now, ttl, (rules::USER_ROOMS_KEPT as i64).into()],
            ),
        ];
        let opened: i64 = self.conn.run_all(&calls).await?.swap_remove(0).convert()?;
        if opened == 0 {
            // The name became a private room's since it was read: the
            // user's list must not name it.
            self.conn.timed("zrem", self.conn.fast.zrem::<(), _, _>(keys::user_rooms(user), room.as_str())).await?;
            return Ok(RoomOpened::Private);
        }
        Ok(RoomOpened::Open)
    }

    /// The user's list, then whether each room still exists (pipelined).
    async fn user_rooms(&self, user: UserId, limit: usize) -> StoreResult<Vec<RoomName>> {
        let names: Vec<String> =
            self.conn.timed("zrevrange", self.conn.fast.zrevrange(keys::user_rooms(user), 0, -1, false)).await?;
        let rooms: Vec<RoomName> = names.iter().filter_map(|name| RoomName::parse(name)).collect();
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.conn.pipeline();
        for room in &rooms {
            let _: () = pipeline.exists(keys::active(room)).await?;
        }
        let exist: Vec<i64> = self.conn.timed("exists", pipeline.all()).await?;
        Ok(rooms.into_iter().zip(exist).filter(|(_, e)| *e == 1).map(|(room, _)| room).take(limit).collect())
    }

    async fn mark_read(&self, user: UserId, room: &RoomName, up_to: MessageId) -> StoreResult<bool> {
        let keys =
            vec![keys::user_read(user), keys::user_rooms(user), keys::user_private(user), keys::user_direct(user)];
        let args = vec![
            room.as_str().into(),
            (up_to.ms as i64).into(),
            (up_to.seq as i64).into(),
            (self.room_ttl.as_millis() as i64).into(),
            ((rules::USER_ROOMS_KEPT + 1) as i64).into(),
        ];
        let moved: i64 = self.conn.run(&SCRIPTS.mark_read, keys, args).await?;
        Ok(moved == 1)
    }

    async fn read_markers(&self, user: UserId) -> StoreResult<HashMap<RoomName, MessageId>> {
        let all: HashMap<String, String> =
            self.conn.timed("hgetall", self.conn.fast.hgetall(keys::user_read(user))).await?;
        // A field that does not parse (written by hand) counts as no marker.
        Ok(all.iter().filter_map(|(room, id)| Some((RoomName::from_stored(room)?, id.parse().ok()?))).collect())
    }

    async fn note_mention(&self, user: UserId, room: &RoomName, id: MessageId) -> StoreResult<()> {
        let args: Vec<Value> = vec![
            format!("{room} {id}").into(),
            (self.mention_inbox_len as i64).into(),
            (self.room_ttl.as_millis() as i64).into(),
        ];
        self.conn.run::<i64>(&SCRIPTS.mention_note, vec![keys::user_mentions(user)], args).await?;
        Ok(())
    }

    async fn mentions(&self, user: UserId) -> StoreResult<Vec<Mentioned>> {
        let notes: Vec<String> =
            self.conn.timed("lrange", self.conn.fast.lrange(keys::user_mentions(user), 0, -1)).await?;
        // A note that does not parse (written by hand) is skipped.
        Ok(notes
            .iter()
            .filter_map(|note| {
                let (room, id) = note.split_once(' ')?;
                Some(Mentioned { room: RoomName::from_stored(room)?, id: id.parse().ok()? })
            })
            .collect())
    }
}
