//! Users: one key per name, created with `SET NX`.

use async_trait::async_trait;
use fred::prelude::*;

use super::{keys, RedisBackend};
use crate::{
    backend::{StoreError, StoreResult, StoredUser, UserStore},
    model::{User, UserId},
};

#[async_trait]
impl UserStore for RedisBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let record = serde_json::json!({ "id": user.id, "name": user.name, "hash": password_hash }).to_string();
        let set: Option<String> = self
            .conn
            .timed("set", self.conn.fast.set(keys::user(&user.name), record, None, Some(SetOptions::NX), false))
            .await?;
        Ok(set.is_some())
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        let Some(record): Option<String> = self.conn.timed("get", self.conn.fast.get(keys::user(name))).await? else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct Record {
            id: UserId,
            name: String,
            hash: String,
        }
        let r: Record = serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("user record: {e}")))?;
        Ok(Some(StoredUser { user: User { id: r.id, name: r.name }, password_hash: r.hash }))
    }
}
