//! The store reads sockets make for what they missed (the replay after
//! `after`, the unread counts of `unread=1` and of `GET /api/rooms`),
//! bounded per instance.
//!
//! A replay waits for its client to take each page before reading the
//! next, but sockets opening together each ask for a page at the same
//! moment, and a page of long messages is large: 300 sockets replaying a
//! room of 2,000-character messages at once queue this instance's few
//! store connections behind tens of megabytes, and everyone's commands
//! (a send's append, a session's refresh) wait seconds behind them or time
//! out. So each of these reads first takes what it may cost, in bytes,
//! from one budget shared by every socket of the instance
//! (`REPLAY_READ_BUDGET_BYTES`): the store is never asked for much more
//! than that for sockets at a time, and every other command queues behind
//! little. A read waits its turn (first come, first served); it is never
//! refused, and a replay is paced by it rather than failed.
//!
//! What a read will cost is not known before it is made, so it is
//! estimated: the messages it asks for at most, times the size of a
//! message as the latest reads found it. The estimate rises at once to a
//! larger size seen and comes down slowly: a burst of long messages is
//! charged as such from its first pages, and short ones, the usual case,
//! let many reads run together.

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc,
};

use tokio::sync::Semaphore;

use crate::{
    backend::{History, StoreResult},
    model::{Message, MessageId, RoomName, MAX_BODY_CHARS},
};

/// What a message is taken to cost before any has been read: the longest
/// body, plus its id, sender and time.
const FIRST_ESTIMATE: u32 = MAX_BODY_CHARS as u32 + 64;
/// The least a message is taken to cost: its id, sender and time.
const LEAST_ESTIMATE: u32 = 64;

/// The budget of store reads for sockets (see the module's documentation).
#[derive(Clone)]
pub struct ReadBudget {
    bytes: Arc<Semaphore>,
    size: u32,
    /// Bytes per message, as the latest reads found them.
    per_message: Arc<AtomicU32>,
}

impl ReadBudget {
    /// A budget of `bytes` read at once (at least one message's worth).
    pub fn new(bytes: u32) -> Self {
        let size = bytes.max(FIRST_ESTIMATE);
        Self {
            bytes: Arc::new(Semaphore::new(size as usize)),
            size,
            per_message: Arc::new(AtomicU32::new(FIRST_ESTIMATE)),
        }
    }

    /// [`History::after`], once what it may cost fits in the budget (a read
    /// that may cost more than the whole budget waits for all of it).
    pub async fn after(
        &self,
        history: &dyn History,
        room: &RoomName,
        after: MessageId,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let _taken = self.take(limit).await;
        let page = history.after(room, after, limit).await?;
        self.learn(&page);
        Ok(page)
    }

    /// [`History::unread_after`], charged as [`ReadBudget::after`] would
    /// be: its bodies are those that may mention the reader, and a room may
    /// hold nothing else.
    pub async fn unread_after(
        &self,
        history: &dyn History,
        room: &RoomName,
        after: MessageId,
        limit: usize,
        reader: &str,
    ) -> StoreResult<Vec<Message>> {
        let _taken = self.take(limit).await;
        history.unread_after(room, after, limit, reader).await
    }

    async fn take(&self, messages: usize) -> tokio::sync::SemaphorePermit<'_> {
        let per_message = u64::from(self.per_message.load(Ordering::Relaxed));
        let cost = (messages.max(1) as u64).saturating_mul(per_message).min(u64::from(self.size)) as u32;
        self.bytes.acquire_many(cost).await.expect("the budget is never closed")
    }

    /// Moves the estimate toward what `page` cost: up at once, down by an
    /// eighth of the way.
    fn learn(&self, page: &[Message]) {
        if page.is_empty() {
            return;
        }
        let bytes: usize = page.iter().map(|m| m.body.len() + m.user.len() + LEAST_ESTIMATE as usize).sum();
        let seen = u32::try_from(bytes / page.len()).unwrap_or(u32::MAX).clamp(LEAST_ESTIMATE, FIRST_ESTIMATE * 4);
        let _ = self.per_message.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if seen >= old { seen } else { old - (old - seen) / 8 })
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::UnixMillis;

    fn page(n: usize, body_chars: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message {
                id: MessageId { ms: i as u64 + 1, seq: 0 },
                user: String::new(),
                body: "x".repeat(body_chars),
                sent_at: UnixMillis::from_millis(0),
                client_id: None,
            })
            .collect()
    }

    /// How many reads of `messages` messages the budget lets run at once.
    async fn at_once(budget: &ReadBudget, messages: usize) -> usize {
        let mut held = Vec::new();
        while let Ok(permit) = tokio::time::timeout(Duration::from_millis(10), budget.take(messages)).await {
            held.push(permit);
        }
        held.len()
    }

    #[tokio::test]
    async fn reads_of_long_messages_run_a_few_at_a_time_and_of_short_ones_many() {
        let budget = ReadBudget::new(32 * 2064 * 4);
        assert_eq!(at_once(&budget, 32).await, 4, "charged as the longest before anything is read");
        budget.learn(&page(32, 2000));
        assert_eq!(at_once(&budget, 32).await, 4);
        for _ in 0..40 {
            budget.learn(&page(32, 36));
        }
        let short = at_once(&budget, 32).await;
        assert!(short >= 64, "messages of about 100 bytes: {short} pages at once");
        // Long messages again are charged in full from the first page.
        budget.learn(&page(1, 2000));
        assert_eq!(at_once(&budget, 32).await, 4);
        // A read that may cost more than the budget still runs, alone.
        assert_eq!(at_once(&budget, 1000).await, 1);
    }
}
