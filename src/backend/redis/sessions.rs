//! The session records (tower-sessions' `SessionStore`): tower-sessions-redis-store's,
//! keyed by the bare session id, except that a deletion waits for a replica.
//!
//! Deleting is how every session ends (logout, logout everywhere, a
//! revocation, a sign-in over it, a password change), for cookie and token
//! sessions alike: a deletion a failover undid would bring an ended session
//! back, its credentials accepted again after the end was acknowledged.
//! Creating and saving do not wait: a record a failover loses signs the
//! browser out, and a slide it loses brings back an earlier expiry; `save`
//! is `SET XX`, so it never brings back a deleted session either.

use std::fmt;

use async_trait::async_trait;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use super::{connection::Call, keys, scripts::SCRIPTS, RedisBackend};

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend").field("cluster", &self.conn.cluster).finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionStore for RedisBackend {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.records.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.records.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.records.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let call = Call::new(&SCRIPTS.session_delete, vec![keys::session(id), keys::session_gone(id)], vec![]);
        self.conn.run_kept::<i64>(call).await.map_err(|err| session_store::Error::Backend(err.to_string()))?;
        Ok(())
    }
}
