//! Users: one key per name, created with `SET NX` (`user_create`), changed
//! one field at a time by a script (`user_set`) that leaves the other fields
//! as they are.
//!
//! Every write waits for a replica (`run_kept`): a name a failover frees
//! again could be registered by someone else while the first user's
//! sessions still carry it, and a password change or a disabling it undid
//! would let a refused password or account in again.

use async_trait::async_trait;
use fred::prelude::*;

use super::{connection::Call, keys, scripts::SCRIPTS, RedisBackend};
use crate::{
    backend::{StoreError, StoreResult, StoredUser, UserStore},
    model::{User, UserId},
};

/// A user's record as stored (JSON).
fn read_record(record: &str) -> StoreResult<StoredUser> {
    #[derive(serde::Deserialize)]
    struct Record {
        id: UserId,
        name: String,
        hash: String,
        /// Absent from records written before accounts could be disabled.
        #[serde(default)]
        disabled: bool,
    }
    let r: Record = serde_json::from_str(record).map_err(|e| StoreError::Corrupt(format!("user record: {e}")))?;
    Ok(StoredUser { user: User { id: r.id, name: r.name }, password_hash: r.hash, disabled: r.disabled })
}

impl RedisBackend {
    /// Sets one field of the record under `name`, if it holds `id` (any id
    /// when `None`); the record as written.
    async fn set_user_field(
        &self,
        name: &str,
        id: Option<UserId>,
        field: &str,
        value: serde_json::Value,
    ) -> StoreResult<Option<StoredUser>> {
        let id = id.map(|id| id.to_string()).unwrap_or_default();
        let args = vec![id.into(), field.into(), value.to_string().into()];
        let written: Option<String> =
            self.conn.run_kept(Call::new(&SCRIPTS.user_set, vec![keys::user(name)], args)).await?;
        written.as_deref().map(read_record).transpose()
    }
}

#[async_trait]
impl UserStore for RedisBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let record = serde_json::json!({ "id": user.id, "name": user.name, "hash": password_hash }).to_string();
        let call = Call::new(&SCRIPTS.user_create, vec![keys::user(&user.name)], vec![record.into()]);
        Ok(self.conn.run_kept::<i64>(call).await? == 1)
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        let record: Option<String> = self.conn.timed("get", self.conn.fast.get(keys::user(name))).await?;
        record.as_deref().map(read_record).transpose()
    }

    async fn set_password(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        Ok(self.set_user_field(&user.name, Some(user.id), "hash", password_hash.into()).await?.is_some())
    }

    async fn set_disabled(&self, name: &str, disabled: bool) -> StoreResult<Option<User>> {
        Ok(self.set_user_field(name, None, "disabled", disabled.into()).await?.map(|stored| stored.user))
    }
}
