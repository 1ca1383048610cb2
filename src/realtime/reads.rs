//! The store reads sockets make for what they missed (the replay after
//! `after`, the unread counts of `unread=1`), bounded per instance.
//!
//! A replay waits for its client to take each page before reading the
//! next, but sockets opening together each ask for a page at the same
//! moment, and a page of long messages is large: 300 sockets replaying a
//! room of 2,000-character messages at once queue this instance's few
//! store connections behind tens of megabytes, and everyone's commands
//! (a send's append, `/readyz`'s PING, a session's refresh) wait seconds
//! behind them or time out. So each of these reads first takes its size,
//! in messages, from one budget shared by every socket of the instance
//! (`REPLAY_READ_BUDGET`): the store is asked for at most that many
//! messages for sockets at a time, and every other command queues behind
//! little. A read waits its turn (first come, first served); it is never
//! refused, and a replay is paced by it rather than failed.

use std::{future::Future, sync::Arc};

use tokio::sync::Semaphore;

/// The budget of store reads for sockets (see the module's documentation).
#[derive(Clone)]
pub struct ReadBudget {
    messages: Arc<Semaphore>,
    size: u32,
}

impl ReadBudget {
    /// A budget of `messages` read at once (at least one).
    pub fn new(messages: u32) -> Self {
        let size = messages.max(1);
        Self { messages: Arc::new(Semaphore::new(size as usize)), size }
    }

    /// Runs `read`, of at most `limit` messages, once that many fit in the
    /// budget (a read larger than the whole budget waits for all of it).
    pub async fn read<T>(&self, limit: usize, read: impl Future<Output = T>) -> T {
        let weight = u32::try_from(limit).unwrap_or(u32::MAX).clamp(1, self.size);
        let _taken = self.messages.acquire_many(weight).await.expect("the budget is never closed");
        read.await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn no_more_messages_are_read_at_once_than_the_budget_holds() {
        let budget = ReadBudget::new(64);
        let (reading, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reads = (0..10).map(|_| {
            let (budget, reading, most) = (budget.clone(), reading.clone(), most.clone());
            tokio::spawn(async move {
                budget
                    .read(32, async {
                        let now = reading.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        for _ in 0..5 {
                            tokio::task::yield_now().await;
                        }
                        reading.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            })
        });
        for read in reads.collect::<Vec<_>>() {
            read.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "two pages of 32 at a time");
        // A read larger than the budget still runs, alone.
        assert_eq!(budget.read(1000, async { 7 }).await, 7);
    }
}
