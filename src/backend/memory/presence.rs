//! Presence: who is online in which room, per instance, each entry until
//! its deadline.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{lock, MemoryBackend};
use crate::{
    backend::{PresenceStore, StoreResult},
    model::RoomName,
};

#[async_trait]
impl PresenceStore for MemoryBackend {
    async fn update(
        &self,
        instance: &str,
        online: &[(RoomName, String)],
        offline: &[(RoomName, String)],
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut presence = lock(&self.presence);
        let until = Instant::now() + ttl;
        for (room, user) in online {
            presence.entry(room.clone()).or_default().insert((instance.to_owned(), user.clone()), until);
        }
        for (room, user) in offline {
            if let Some(entries) = presence.get_mut(room) {
                entries.remove(&(instance.to_owned(), user.clone()));
            }
        }
        Ok(())
    }

    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        let mut presence = lock(&self.presence);
        let now = Instant::now();
        Ok(rooms
            .iter()
            .map(|room| {
                let Some(entries) = presence.get_mut(room) else { return Vec::new() };
                entries.retain(|_, until| *until > now);
                entries.keys().cloned().collect()
            })
            .collect())
    }
}
