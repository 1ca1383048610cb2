//! The event bus: a broadcast channel, so only this process hears it.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::MemoryBackend;
use crate::backend::{Event, EventBus, Notice, StoreResult};

#[async_trait]
impl EventBus for MemoryBackend {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        // No receiver is not an error: nobody is listening yet.
        let _ = self.bus.send(Notice::Event(event.clone()));
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.bus.subscribe()
    }
}
