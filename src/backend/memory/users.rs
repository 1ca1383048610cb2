//! Users and their accounts: created once per folded name, then a new
//! password or the disabled flag written in place.

use std::collections::hash_map::Entry;

use async_trait::async_trait;

use super::{lock, MemoryBackend};
use crate::{
    backend::{StoreResult, StoredUser, UserStore},
    model::{folded_username, User},
};

#[async_trait]
impl UserStore for MemoryBackend {
    async fn create(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        match lock(&self.users).entry(folded_username(&user.name)) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(slot) => {
                let password_hash = password_hash.to_owned();
                slot.insert(StoredUser { user: user.clone(), password_hash, disabled: false });
                Ok(true)
            }
        }
    }

    async fn find(&self, name: &str) -> StoreResult<Option<StoredUser>> {
        Ok(lock(&self.users).get(&folded_username(name)).cloned())
    }

    async fn set_password(&self, user: &User, password_hash: &str) -> StoreResult<bool> {
        let mut users = lock(&self.users);
        let Some(stored) = users.get_mut(&folded_username(&user.name)).filter(|s| s.user.id == user.id) else {
            return Ok(false);
        };
        stored.password_hash = password_hash.to_owned();
        Ok(true)
    }

    async fn set_disabled(&self, name: &str, disabled: bool) -> StoreResult<Option<User>> {
        Ok(lock(&self.users).get_mut(&folded_username(name)).map(|stored| {
            stored.disabled = disabled;
            stored.user.clone()
        }))
    }
}
