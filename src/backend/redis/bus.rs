//! The event bus: published on [`EVENTS_CHANNEL`], heard through the
//! subscriber.

use async_trait::async_trait;
use fred::prelude::*;
use tokio::sync::broadcast;

use super::RedisBackend;
use crate::backend::{Event, EventBus, Notice, StoreResult, EVENTS_CHANNEL};

/// On a cluster the events channel is a shard channel: `SPUBLISH` goes to
/// the master owning its slot and reaches that shard's subscribers only,
/// where a classic `PUBLISH` is copied to every node of the cluster.
#[async_trait]
impl EventBus for RedisBackend {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        let payload = serde_json::to_string(event).expect("events serialize");
        let client = self.conn.client();
        if self.conn.cluster {
            self.conn.timed("spublish", client.spublish(EVENTS_CHANNEL, payload)).await
        } else {
            self.conn.timed("publish", client.publish(EVENTS_CHANNEL, payload)).await
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.subscriber.receiver()
    }
}
