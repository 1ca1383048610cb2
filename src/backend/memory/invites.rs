//! Invite codes, by the hash of the code: created once, spent one use at a
//! time, a use given back when the sign-up it was spent on fails.

use std::collections::hash_map::Entry;

use async_trait::async_trait;

use super::{lock, MemoryBackend};
use crate::{
    backend::{rules, Invites, Spend, StoreResult},
    clock::UnixMillis,
    model::Invite,
};

/// Whether the store still remembers an invite (as Redis expires its key).
fn remembered(invite: &Invite, now: UnixMillis) -> bool {
    invite.expires_at + rules::INVITE_REMEMBERED_AFTER_EXPIRY > now
}

/// Each step under the invites' lock: one atomic step, as one script is.
#[async_trait]
impl Invites for MemoryBackend {
    async fn create(&self, code_hash: &str, invite: &Invite) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        invites.retain(|_, i| remembered(i, now));
        match invites.entry(code_hash.to_owned()) {
            Entry::Occupied(_) => Ok(false),
            Entry::Vacant(slot) => {
                slot.insert(invite.clone());
                Ok(true)
            }
        }
    }

    async fn spend(&self, code_hash: &str, at: UnixMillis) -> StoreResult<Spend> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        let Some(invite) = invites.get_mut(code_hash).filter(|i| remembered(i, now)) else {
            return Ok(Spend::Unknown);
        };
        if invite.expires_at <= at {
            return Ok(Spend::Expired);
        }
        if invite.uses_left == 0 {
            return Ok(Spend::UsedUp);
        }
        invite.uses_left -= 1;
        Ok(Spend::Spent(invite.clone()))
    }

    async fn give_back(&self, code_hash: &str) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let mut invites = lock(&self.invites);
        match invites.get_mut(code_hash).filter(|i| remembered(i, now)) {
            Some(invite) if invite.uses_left < invite.uses => {
                invite.uses_left += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
