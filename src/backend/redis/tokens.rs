//! Token sessions (stored under their id, like cookie sessions, and found
//! by their `sid` through a pointer), one-use tickets and shared secrets.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use tower_sessions::session::Id;

use base64::{engine::general_purpose::STANDARD, Engine};

use super::{
    connection::{millis, Call},
    keys,
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{Candidate, SharedSecret, StoreError, StoreResult, StoredTokenSession, TokenStore},
    clock::UnixMillis,
    model::TokenRecord,
};

fn token_json(record: &TokenRecord) -> String {
    serde_json::to_string(record).expect("records serialize")
}

fn token_session(id: &str, record: &str, expires_at: i64) -> StoreResult<StoredTokenSession> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("token session {what}"));
    Ok(StoredTokenSession {
        id: id.parse().map_err(|_| corrupt("id"))?,
        record: serde_json::from_str(record).map_err(|_| corrupt("record"))?,
        expires_at: UnixMillis::from_millis(expires_at),
    })
}

/// A shared secret from `secret_share`'s reply: the current value, then
/// each retired value and its time, base64.
fn shared_secret(name: &str, reply: Value) -> StoreResult<SharedSecret> {
    let corrupt = || StoreError::Corrupt(format!("the shared secret {name}"));
    let reply: Vec<String> = reply.convert()?;
    let (current, retired) = reply.split_first().ok_or_else(corrupt)?;
    let retired = retired
        .chunks(2)
        .map(|pair| match pair {
            [value, until] => {
                Some((STANDARD.decode(value).ok()?, UnixMillis::from_millis(until.parse::<f64>().ok()? as i64)))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(corrupt)?;
    Ok(SharedSecret { current: STANDARD.decode(current).map_err(|_| corrupt())?, retired })
}

impl RedisBackend {
    /// The session id a token session's `sid` names. (On a cluster the
    /// pointer and the session are in different slots: it is read first.)
    async fn token_session_id(&self, sid: &str) -> StoreResult<Option<String>> {
        self.conn.timed("get", self.conn.fast.get(keys::sid(sid))).await
    }
}

#[async_trait]
impl TokenStore for RedisBackend {
    /// The session and its pointer are set in one pipeline: a pointer to a
    /// session not (yet) there finds nothing, and a session without its
    /// pointer can never be found; either way nothing is let in. Not
    /// waited for, for the same reason: a failover that loses either
    /// signs the client out (its tokens are refused), and the index entry
    /// that "log out everywhere" needs is waited for on its own.
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()> {
        let pipeline = self.conn.pipeline();
        let at = |ms: UnixMillis| Some(Expiration::PXAT(ms.as_millis()));
        let _: () = pipeline.set(keys::session(&id), token_json(record), at(expires_at), None, false).await?;
        let _: () = pipeline.set(keys::sid(&record.sid), keys::session(&id), at(end_by), None, false).await?;
        self.conn.timed("set", pipeline.all::<()>()).await
    }

    /// One round trip on a single Redis (a script follows the pointer); two
    /// on a cluster, where the pointer and the session are in other slots.
    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>> {
        if !self.conn.cluster {
            let found: Option<(String, String, i64)> =
                self.conn.run(&SCRIPTS.token_find, vec![keys::sid(sid)], vec![]).await?;
            return found.map(|(id, record, expires_at)| token_session(&id, &record, expires_at)).transpose();
        }
        let Some(id) = self.token_session_id(sid).await? else { return Ok(None) };
        let found: Option<(String, i64)> = self.conn.run(&SCRIPTS.token_read, vec![id.clone()], vec![]).await?;
        found.map(|(record, expires_at)| token_session(&id, &record, expires_at)).transpose()
    }

    /// The pointer never changes once set, so following it first and then
    /// comparing-and-setting the session alone is as safe as one script.
    /// Waits for a replica: a rotation a failover undid would make the
    /// spent token current again, so that presenting it after the grace
    /// would no longer end the session.
    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool> {
        let Some(id) = self.token_session_id(sid).await? else { return Ok(false) };
        let args = vec![expected.into(), token_json(record).into(), millis(expires_at)];
        let replaced: i64 = self.conn.run_kept(Call::new(&SCRIPTS.token_update, vec![id], args)).await?;
        Ok(replaced == 1)
    }

    async fn put_ticket(&self, ticket_hash: &str, sid: &str, ttl: Duration) -> StoreResult<()> {
        let expire = Some(Expiration::PX(ttl.as_millis() as i64));
        self.conn
            .timed("set", self.conn.fast.set::<(), _, _>(keys::ticket(ticket_hash), sid, expire, None, false))
            .await
    }

    /// Waits for a replica: a ticket a failover gave back could open a
    /// second socket.
    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>> {
        self.conn.run_kept(Call::new(&SCRIPTS.ticket_take, vec![keys::ticket(ticket_hash)], vec![])).await
    }

    /// One script call per secret (a secret and its retired values share
    /// a slot), all in one pipeline.
    async fn share_secrets(&self, candidates: &[Candidate<'_>], now: UnixMillis) -> StoreResult<Vec<SharedSecret>> {
        let calls: Vec<Call> = candidates
            .iter()
            .map(|candidate| {
                let (kept, until) = candidate
                    .retire
                    .map_or((String::new(), 0), |(kept, until)| (STANDARD.encode(kept), until.as_millis()));
                let args = vec![STANDARD.encode(candidate.value).into(), kept.into(), until.into(), millis(now)];
                Call::new(
                    &SCRIPTS.secret_share,
                    vec![keys::secret(candidate.name), keys::secret_retired(candidate.name)],
                    args,
                )
            })
            .collect();
        let replies = self.conn.run_all(&calls).await?;
        candidates.iter().zip(replies).map(|(candidate, reply)| shared_secret(candidate.name, reply)).collect()
    }
}
