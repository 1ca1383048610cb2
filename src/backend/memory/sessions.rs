//! Sessions: the cookie sessions (tower-sessions' `SessionStore`), the
//! per-user index of sessions, and the token sessions with their tickets
//! and the shared secrets. A session id names a cookie session or a token
//! session, so ending and looking up go through both maps.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use super::{lock, MemoryBackend};
use crate::{
    backend::{Candidate, SessionIndex, SharedSecret, StoreResult, StoredTokenSession, TokenStore},
    clock::UnixMillis,
    model::{TokenRecord, UserId},
};

fn is_live(record: &Record) -> bool {
    record.expiry_date > OffsetDateTime::now_utc()
}

#[async_trait]
impl SessionStore for MemoryBackend {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let mut sessions = lock(&self.sessions);
        if self.session_creates.fetch_add(1, Ordering::Relaxed) % 256 == 0 {
            sessions.retain(|_, r| is_live(r));
        }
        while sessions.contains_key(&record.id) {
            record.id = Id::default();
        }
        sessions.insert(record.id, record.clone());
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        // Like Redis `SET XX`: saving never resurrects a deleted session.
        if let Some(existing) = lock(&self.sessions).get_mut(&record.id) {
            *existing = record.clone();
        }
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(id) {
            Some(record) if is_live(record) => Ok(Some(record.clone())),
            Some(_) => {
                sessions.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        // An id names a cookie session or a token session; ending either
        // is deleting it (as in Redis, where both live under their id).
        lock(&self.sessions).remove(id);
        lock(&self.tokens).remove(id);
        Ok(())
    }
}

#[async_trait]
impl SessionIndex for MemoryBackend {
    async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()> {
        let mut index = lock(&self.index);
        let sessions = index.entry(user).or_default();
        let now = UnixMillis::now();
        sessions.retain(|_, by| *by > now);
        sessions.insert(session, expires_by);
        Ok(())
    }

    async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
        if let Some(sessions) = lock(&self.index).get_mut(&user) {
            sessions.remove(&session);
        }
        Ok(())
    }

    async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
        Ok(lock(&self.index).remove(&user).map(|s| s.into_keys().collect()).unwrap_or_default())
    }

    async fn exist(&self, ids: &[Id]) -> StoreResult<Vec<bool>> {
        let sessions = lock(&self.sessions);
        let tokens = lock(&self.tokens);
        let now = UnixMillis::now();
        Ok(ids
            .iter()
            .map(|id| sessions.get(id).is_some_and(is_live) || tokens.get(id).is_some_and(|(_, until)| *until > now))
            .collect())
    }
}

#[async_trait]
impl TokenStore for MemoryBackend {
    async fn create_token_session(
        &self,
        id: Id,
        record: &TokenRecord,
        expires_at: UnixMillis,
        end_by: UnixMillis,
    ) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut sids = lock(&self.sids);
        sids.retain(|_, (_, until)| *until > now);
        sids.insert(record.sid.clone(), (id, end_by));
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, (_, until)| *until > now);
        tokens.insert(id, (record.clone(), expires_at));
        Ok(())
    }

    async fn find_token_session(&self, sid: &str) -> StoreResult<Option<StoredTokenSession>> {
        let now = UnixMillis::now();
        let Some((id, _)) = lock(&self.sids).get(sid).copied().filter(|(_, until)| *until > now) else {
            return Ok(None);
        };
        Ok(lock(&self.tokens).get(&id).filter(|(_, until)| *until > now).map(|(record, until)| StoredTokenSession {
            id,
            record: record.clone(),
            expires_at: *until,
        }))
    }

    async fn update_token_session(
        &self,
        sid: &str,
        expected: &str,
        record: &TokenRecord,
        expires_at: UnixMillis,
    ) -> StoreResult<bool> {
        let now = UnixMillis::now();
        let Some((id, _)) = lock(&self.sids).get(sid).copied().filter(|(_, until)| *until > now) else {
            return Ok(false);
        };
        let mut tokens = lock(&self.tokens);
        match tokens.get_mut(&id) {
            Some((stored, until)) if *until > now && stored.refresh.current == expected => {
                *stored = record.clone();
                *until = expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn put_ticket(&self, ticket_hash: &str, sid: &str, ttl: Duration) -> StoreResult<()> {
        let now = Instant::now();
        let mut tickets = lock(&self.tickets);
        tickets.retain(|_, (_, until)| *until > now);
        tickets.insert(ticket_hash.to_owned(), (sid.to_owned(), now + ttl));
        Ok(())
    }

    async fn take_ticket(&self, ticket_hash: &str) -> StoreResult<Option<String>> {
        let now = Instant::now();
        Ok(lock(&self.tickets).remove(ticket_hash).filter(|(_, until)| *until > now).map(|(sid, _)| sid))
    }

    async fn share_secrets(&self, candidates: &[Candidate<'_>], now: UnixMillis) -> StoreResult<Vec<SharedSecret>> {
        let mut secrets = lock(&self.secrets);
        let share = |candidate: &Candidate<'_>| {
            let secret = secrets
                .entry(candidate.name.to_owned())
                .or_insert_with(|| SharedSecret { current: candidate.value.to_vec(), retired: Vec::new() });
            if let Some((kept, until)) = candidate.retire.filter(|_| secret.current != candidate.value) {
                match secret.retired.iter_mut().find(|(value, _)| value == kept) {
                    Some((_, at)) => *at = (*at).max(until),
                    None => secret.retired.push((kept.to_vec(), until)),
                }
            }
            secret.retired.retain(|(_, until)| *until > now);
            secret.clone()
        };
        Ok(candidates.iter().map(share).collect())
    }
}
