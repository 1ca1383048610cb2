//! The per-user index of sessions: a sorted set of session ids by the time
//! each ends at the latest.

use async_trait::async_trait;
use fred::prelude::*;
use tower_sessions::session::Id;

use super::{
    connection::{millis, Call},
    keys,
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{SessionIndex, StoreResult},
    clock::UnixMillis,
    model::UserId,
};

#[async_trait]
impl SessionIndex for RedisBackend {
    /// Kept on a replica before it answers: "log out everywhere" ends what
    /// the index lists, so an entry a failover loses is a session it can
    /// no longer end, though its sign-in was acknowledged.
    async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()> {
        let args = vec![millis(UnixMillis::now()), millis(expires_by), session.to_string().into()];
        self.conn.run_kept(Call::new(&SCRIPTS.index_add, vec![keys::user_sessions(user)], args)).await
    }

    /// Not waited for: an entry a failover brings back names a session
    /// already deleted, which is harmless (the entry ages out, or is
    /// dropped when found gone).
    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        self.conn.timed("zrem", self.conn.fast.zrem(keys::user_sessions(user), session.to_string())).await
    }

    /// Not waited for either: the deletions of the sessions it returns
    /// are (the session store's), so an index a failover brings back lists
    /// sessions deleted since, which is harmless, or not ended yet.
    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
        let ids: Vec<String> = self.conn.run(&SCRIPTS.index_take_all, vec![keys::user_sessions(user)], vec![]).await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// One `EXISTS` per session, pipelined: sessions are keyed by their
    /// bare ids (tower-sessions-redis-store), so on a cluster each is in a
    /// slot of its own; still one round trip (per master).
    async fn exist(&self, sessions: &[Id]) -> StoreResult<Vec<bool>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let pipeline = self.conn.pipeline();
        for id in sessions {
            let _: () = pipeline.exists(keys::session(id)).await?;
        }
        let found: Vec<i64> = self.conn.timed("exists", pipeline.all()).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }
}
