//! What each session says of itself: a hash per user (session id ->
//! descriptor JSON) in the user's slot, beside the session index it is
//! checked against.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use tower_sessions::session::Id;

use super::{connection::millis, keys, scripts::SCRIPTS, RedisBackend};
use crate::{
    backend::{rules, Devices, ListedSession, SessionIndex, StoreError, StoreResult},
    clock::UnixMillis,
    model::{SessionDescriptor, UserId},
};

/// The descriptors' key and the index's, as the scripts take them.
fn user_keys(user: UserId) -> Vec<String> {
    vec![keys::user_devices(user), keys::user_sessions(user)]
}

#[async_trait]
impl Devices for RedisBackend {
    async fn put(
        &self,
        user: UserId,
        session: Id,
        descriptor: &SessionDescriptor,
        expires_by: UnixMillis,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(descriptor).expect("descriptors serialize");
        let args = vec![session.to_string().into(), json.into(), millis(expires_by)];
        self.conn.run::<()>(&SCRIPTS.device_put, user_keys(user), args).await
    }

    async fn touch(&self, user: UserId, session: Id, at: UnixMillis, granularity: Duration) -> StoreResult<bool> {
        let args = vec![session.to_string().into(), millis(at), (granularity.as_millis() as i64).into()];
        let written: i64 = self.conn.run(&SCRIPTS.device_touch, vec![keys::user_devices(user)], args).await?;
        Ok(written == 1)
    }

    async fn moved(&self, user: UserId, old: Id, new: Id) -> StoreResult<bool> {
        let args = vec![old.to_string().into(), new.to_string().into()];
        let moved: i64 = self.conn.run(&SCRIPTS.device_move, vec![keys::user_devices(user)], args).await?;
        Ok(moved == 1)
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        self.conn.timed("hdel", self.conn.fast.hdel(keys::user_devices(user), session.to_string())).await
    }

    async fn list(&self, user: UserId, limit: usize) -> StoreResult<Vec<ListedSession>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let args = vec![millis(UnixMillis::now()), (limit as i64).into()];
        let (ids, descriptors): (Vec<String>, Vec<Option<String>>) =
            self.conn.run(&SCRIPTS.device_list, user_keys(user), args).await?;
        if ids.len() != descriptors.len() {
            return Err(StoreError::Corrupt("a listing of sessions without its descriptors".into()));
        }
        let listed: Vec<(Id, Option<String>)> =
            ids.iter().zip(descriptors).filter_map(|(id, d)| Some((id.parse().ok()?, d))).collect();
        let found: Vec<Id> = listed.iter().map(|(id, _)| *id).collect();
        let exist = SessionIndex::exist(self, &found).await?;
        let gone: Vec<Value> =
            found.iter().zip(&exist).filter(|(_, exists)| !**exists).map(|(id, _)| id.to_string().into()).collect();
        if !gone.is_empty() {
            self.conn.run::<()>(&SCRIPTS.device_drop, user_keys(user), gone).await?;
        }
        let mut sessions: Vec<ListedSession> = listed
            .into_iter()
            .zip(exist)
            .filter(|(_, exists)| *exists)
            .map(|((id, json), _)| ListedSession {
                id,
                // Unreadable reads as undescribed: the session is still listed.
                descriptor: json.and_then(|json| serde_json::from_str(&json).ok()),
            })
            .collect();
        rules::newest_first(&mut sessions);
        Ok(sessions)
    }
}
