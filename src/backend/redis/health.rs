//! Reachability, the subscription's state, and closing every connection.

use async_trait::async_trait;
use fred::prelude::*;

use super::{connection::COMMAND_TIMEOUT, scripts::SCRIPTS, RedisBackend};
use crate::backend::{Health, StoreResult};

#[async_trait]
impl Health for RedisBackend {
    async fn ping(&self) -> StoreResult<()> {
        let _: String = self.conn.timed("ping", self.conn.health.ping(None)).await?;
        Ok(())
    }

    fn subscribed(&self) -> bool {
        self.subscriber.stands()
    }

    async fn close(&self) {
        // The hub's tasks are gone, but their XREAD BLOCKs may still be
        // waiting on the tail connections, and QUIT would queue behind them
        // for up to the block time: answer them first.
        for tail in &self.conn.tails {
            if tail.is_open() {
                let _ = self.conn.run::<()>(&SCRIPTS.wake, vec![tail.wake_key.clone()], vec![]).await;
            }
        }
        let quit = async { tokio::join!(self.subscriber.quit(), self.conn.quit()) };
        if tokio::time::timeout(COMMAND_TIMEOUT, quit).await.is_err() {
            tracing::warn!("Redis connections did not close in time");
        }
    }
}
