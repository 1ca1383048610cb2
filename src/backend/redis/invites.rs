//! Invites: one hash per code (by the code's hash), untagged: every step is
//! one script on that key alone.

use async_trait::async_trait;

use super::{
    connection::{millis, Call},
    keys,
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{rules, Invites, Spend, StoreError, StoreResult},
    clock::UnixMillis,
    model::Invite,
};

/// An invite from `invite_spend`'s reply: uses, left, created_at,
/// expires_at, by.
fn read_invite(fields: &[String]) -> StoreResult<Invite> {
    let corrupt = || StoreError::Corrupt("an invite".into());
    let [uses, left, created_at, expires_at, by] = fields else { return Err(corrupt()) };
    let number = |s: &String| s.parse::<i64>().map_err(|_| corrupt());
    Ok(Invite {
        uses: u32::try_from(number(uses)?).map_err(|_| corrupt())?,
        uses_left: u32::try_from(number(left)?.max(0)).map_err(|_| corrupt())?,
        created_at: UnixMillis::from_millis(number(created_at)?),
        expires_at: UnixMillis::from_millis(number(expires_at)?),
        by: if by.is_empty() { None } else { Some(by.parse().map_err(|_| corrupt())?) },
    })
}

#[async_trait]
impl Invites for RedisBackend {
    async fn create(&self, code_hash: &str, invite: &Invite) -> StoreResult<bool> {
        let forget_at = invite.expires_at + rules::INVITE_REMEMBERED_AFTER_EXPIRY;
        let args = vec![
            i64::from(invite.uses).into(),
            i64::from(invite.uses_left).into(),
            millis(invite.created_at),
            millis(invite.expires_at),
            invite.by.map(|by| by.to_string()).unwrap_or_default().into(),
            millis(forget_at),
        ];
        let made: i64 = self.conn.run(&SCRIPTS.invite_create, vec![keys::invite(code_hash)], args).await?;
        Ok(made == 1)
    }

    /// Waits for a replica: a use a failover gave back would let one
    /// sign-up more in than the invite was made for.
    async fn spend(&self, code_hash: &str, at: UnixMillis) -> StoreResult<Spend> {
        let call = Call::new(&SCRIPTS.invite_spend, vec![keys::invite(code_hash)], vec![millis(at)]);
        let reply: Vec<String> = self.conn.run_kept(call).await?;
        match reply.split_first() {
            Some((status, fields)) if status == "spent" => Ok(Spend::Spent(read_invite(fields)?)),
            Some((status, _)) if status == "unknown" => Ok(Spend::Unknown),
            Some((status, _)) if status == "used_up" => Ok(Spend::UsedUp),
            Some((status, _)) if status == "expired" => Ok(Spend::Expired),
            _ => Err(StoreError::Corrupt(format!("invite_spend answered {reply:?}"))),
        }
    }

    async fn give_back(&self, code_hash: &str) -> StoreResult<bool> {
        let given: i64 = self.conn.run(&SCRIPTS.invite_give_back, vec![keys::invite(code_hash)], vec![]).await?;
        Ok(given == 1)
    }
}
