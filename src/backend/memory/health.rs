//! Health: an in-process store is always there.

use async_trait::async_trait;

use super::MemoryBackend;
use crate::backend::{Health, StoreResult};

#[async_trait]
impl Health for MemoryBackend {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn close(&self) {}
}
