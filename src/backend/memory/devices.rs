//! What each session says of itself (the devices of /account), kept per
//! user beside the session index.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use tower_sessions::session::Id;

use super::{lock, Descriptors, MemoryBackend};
use crate::{
    backend::{rules, Devices, ListedSession, SessionIndex, StoreResult},
    clock::UnixMillis,
    model::{SessionDescriptor, UserId},
};

/// `user`'s descriptors, unless their time is up (then they are dropped,
/// as the Redis hash expires).
fn live_descriptors(
    devices: &mut HashMap<UserId, Descriptors>,
    user: UserId,
    now: UnixMillis,
) -> Option<&mut Descriptors> {
    if devices.get(&user).is_some_and(|mine| mine.until <= now) {
        devices.remove(&user);
    }
    devices.get_mut(&user)
}

/// As the Redis backend: every step on one user's descriptors is taken
/// under their lock (with the index's, where a script reads both); a
/// listing reads the index, then the sessions, then drops what is gone.
#[async_trait]
impl Devices for MemoryBackend {
    async fn put(
        &self,
        user: UserId,
        session: Id,
        descriptor: &SessionDescriptor,
        expires_by: UnixMillis,
    ) -> StoreResult<()> {
        let now = UnixMillis::now();
        let index = lock(&self.index);
        let mut devices = lock(&self.devices);
        devices.retain(|_, mine| mine.until > now);
        let mine = devices.entry(user).or_default();
        let indexed = index.get(&user);
        mine.sessions.retain(|id, _| *id == session || indexed.is_some_and(|ids| ids.contains_key(id)));
        mine.sessions.insert(session, descriptor.clone());
        mine.until = mine.until.max(expires_by);
        Ok(())
    }

    async fn touch(&self, user: UserId, session: Id, at: UnixMillis, granularity: Duration) -> StoreResult<bool> {
        let mut devices = lock(&self.devices);
        let found = live_descriptors(&mut devices, user, UnixMillis::now()).and_then(|m| m.sessions.get_mut(&session));
        match found {
            Some(descriptor) if descriptor.last_active_at < at - granularity => {
                descriptor.last_active_at = at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn moved(&self, user: UserId, old: Id, new: Id) -> StoreResult<bool> {
        let mut devices = lock(&self.devices);
        let Some(mine) = live_descriptors(&mut devices, user, UnixMillis::now()) else { return Ok(false) };
        let Some(descriptor) = mine.sessions.remove(&old) else { return Ok(false) };
        mine.sessions.insert(new, descriptor);
        Ok(true)
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        if let Some(mine) = live_descriptors(&mut lock(&self.devices), user, UnixMillis::now()) {
            mine.sessions.remove(&session);
        }
        Ok(())
    }

    async fn list(&self, user: UserId, limit: usize) -> StoreResult<Vec<ListedSession>> {
        let now = UnixMillis::now();
        // The entries that end last, as Redis's ZREVRANGEBYSCORE takes them.
        let mut indexed: Vec<(Id, UnixMillis)> = lock(&self.index)
            .get(&user)
            .map(|ids| ids.iter().filter(|(_, by)| **by > now).map(|(id, by)| (*id, *by)).collect())
            .unwrap_or_default();
        indexed.sort_by_key(|(id, by)| std::cmp::Reverse((*by, id.to_string())));
        indexed.truncate(limit);
        let ids: Vec<Id> = indexed.into_iter().map(|(id, _)| id).collect();
        let exist = SessionIndex::exist(self, &ids).await?;
        let mut index = lock(&self.index);
        let mut devices = lock(&self.devices);
        let mut mine = live_descriptors(&mut devices, user, now);
        let mut sessions = Vec::new();
        for (id, exists) in ids.into_iter().zip(exist) {
            if exists {
                let descriptor = mine.as_ref().and_then(|m| m.sessions.get(&id)).cloned();
                sessions.push(ListedSession { id, descriptor });
            } else {
                if let Some(m) = mine.as_mut() {
                    m.sessions.remove(&id);
                }
                if let Some(entries) = index.get_mut(&user) {
                    entries.remove(&id);
                }
            }
        }
        rules::newest_first(&mut sessions);
        Ok(sessions)
    }
}
