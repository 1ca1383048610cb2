//! The whole life of a session, in one place: it starts at sign-in (a new
//! id, indexed under its user), slides with activity, and ends by logout
//! (here or everywhere) or revocation: deleted from the store first, then
//! announced, so this instance's sockets close at once and every other
//! instance hears of it on the event bus.
//!
//! Web handlers call one method each and know nothing of indexes or events;
//! sockets re-read sessions through [`Sessions::lookup`] and the sweep
//! checks them through [`Sessions::exist`].

use std::sync::Arc;

use tower_sessions::{session::Id, Session, SessionStore};

use super::session::{live, AuthSession, Current, LiveSession, SessionPolicy};
use crate::{
    backend::{EndReason, Event, EventBus, SessionIndex, SharedSessionStore, StoreError, StoreResult},
    clock::UnixMillis,
    model::{User, UserId},
};

/// Sessions that ended, as this instance's sockets must learn of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub user: UserId,
    pub sessions: Vec<Id>,
    /// Every socket of the user goes, whatever its session.
    pub everywhere: bool,
    pub reason: EndReason,
}

impl Ended {
    pub fn to_event(&self) -> Event {
        Event::Logout {
            user_id: self.user,
            sessions: self.sessions.iter().map(Id::to_string).collect(),
            everywhere: self.everywhere,
            reason: self.reason,
        }
    }

    /// The ended sessions an event from another instance names.
    pub fn from_event(event: &Event) -> Option<Ended> {
        match event {
            Event::Logout { user_id, sessions, everywhere, reason } => Some(Ended {
                user: *user_id,
                sessions: sessions.iter().filter_map(|s| s.parse().ok()).collect(),
                everywhere: *everywhere,
                reason: *reason,
            }),
            _ => None,
        }
    }
}

/// Where this instance closes the sockets of ended sessions (the registry).
pub trait SessionsEnded: Send + Sync {
    /// Closes the affected sockets; returns how many.
    fn ended(&self, ended: &Ended) -> usize;
}

/// The session lifecycle's handle.
#[derive(Clone)]
pub struct Sessions {
    store: SharedSessionStore,
    index: Arc<dyn SessionIndex>,
    bus: Arc<dyn EventBus>,
    local: Arc<dyn SessionsEnded>,
    policy: SessionPolicy,
}

impl Sessions {
    pub fn new(
        store: SharedSessionStore,
        index: Arc<dyn SessionIndex>,
        bus: Arc<dyn EventBus>,
        local: Arc<dyn SessionsEnded>,
        policy: SessionPolicy,
    ) -> Self {
        Self { store, index, bus, local, policy }
    }

    pub fn policy(&self) -> SessionPolicy {
        self.policy
    }

    /// The typed view of a request's cookie session.
    pub fn cookie(&self, session: Session) -> AuthSession {
        AuthSession::new(session, self.policy)
    }

    /// Signs `user` in under a new session id and indexes it under the user.
    /// A session the browser was signed in with before ends, sockets included.
    pub async fn sign_in(&self, session: &AuthSession, user: User) -> StoreResult<Current> {
        let previous = session.current().await?;
        let current = session.start(user).await?;
        let end_by = self.policy.end_by(UnixMillis::now());
        if let Err(err) = self.index.add(current.user.id, current.session_id, end_by).await {
            // A session "log out everywhere" cannot find must not exist.
            let _ = session.end().await;
            return Err(err);
        }
        if let Some(previous) = previous {
            // `start` deleted it from the store already; its sockets go now.
            self.unindex(previous.user.id, previous.session_id).await;
            self.announce(Ended {
                user: previous.user.id,
                sessions: vec![previous.session_id],
                everywhere: false,
                reason: EndReason::LoggedOut,
            })
            .await;
        }
        Ok(current)
    }

    /// The signed-in user of a request, sliding the session (what
    /// `POST /session/refresh` and every page do).
    pub async fn refresh(&self, session: &AuthSession) -> StoreResult<Option<Current>> {
        session.current().await
    }

    /// Ends this session. `None` when there was none.
    pub async fn sign_out(&self, session: &AuthSession) -> StoreResult<Option<Current>> {
        let Some(current) = session.current().await? else { return Ok(None) };
        session.end().await?;
        self.unindex(current.user.id, current.session_id).await;
        tracing::info!(user = %current.user.name, "logged out");
        self.announce(Ended {
            user: current.user.id,
            sessions: vec![current.session_id],
            everywhere: false,
            reason: EndReason::LoggedOut,
        })
        .await;
        Ok(Some(current))
    }

    /// Ends every session of this request's user. `None` when signed out.
    pub async fn sign_out_everywhere(&self, session: &AuthSession) -> StoreResult<Option<Current>> {
        let Some(current) = session.current().await? else { return Ok(None) };
        let mut ended = self.delete_all(current.user.id, Some(current.session_id)).await?;
        session.end().await?;
        ended.push(current.session_id);
        tracing::info!(user = %current.user.name, sessions = ended.len(), "logged out everywhere");
        self.announce(Ended { user: current.user.id, sessions: ended, everywhere: true, reason: EndReason::LoggedOut })
            .await;
        Ok(Some(current))
    }

    /// Ends every session of `user`, whoever asks (a token client, an admin).
    pub async fn end_all(&self, user: UserId, reason: EndReason) -> StoreResult<usize> {
        let ended = self.delete_all(user, None).await?;
        let count = ended.len();
        self.announce(Ended { user, sessions: ended, everywhere: true, reason }).await;
        Ok(count)
    }

    /// Ends one session by id, whoever asks.
    pub async fn end(&self, user: UserId, session: Id, reason: EndReason) -> StoreResult<()> {
        self.store.delete(&session).await.map_err(StoreError::from)?;
        self.unindex(user, session).await;
        self.announce(Ended { user, sessions: vec![session], everywhere: false, reason }).await;
        Ok(())
    }

    /// Removes every indexed session of `user` from the store but `keep`.
    async fn delete_all(&self, user: UserId, keep: Option<Id>) -> StoreResult<Vec<Id>> {
        let mut ended = Vec::new();
        for id in self.index.take_all(user).await? {
            if Some(id) != keep {
                self.store.delete(&id).await.map_err(StoreError::from)?;
                ended.push(id);
            }
        }
        Ok(ended)
    }

    async fn unindex(&self, user: UserId, session: Id) {
        if let Err(err) = self.index.remove(user, session).await {
            // Harmless: the entry points at a deleted session and ages out.
            tracing::warn!(%err, "session index entry not removed");
        }
    }

    /// Closes the local sockets of ended sessions now and tells every other
    /// instance to do the same. The sessions are already gone from the
    /// store, so if the event is lost the sweep still closes remote sockets.
    async fn announce(&self, ended: Ended) {
        self.local.ended(&ended);
        if let Err(err) = self.bus.publish(&ended.to_event()).await {
            tracing::warn!(%err, user = %ended.user, "logout event not published; other instances will find it in their sweep");
        }
    }

    /// Re-reads a session from the store, without sliding it: what a socket
    /// does at its deadline and on `reauth`.
    pub async fn lookup(&self, id: &Id) -> StoreResult<Option<LiveSession>> {
        match self.store.load(id).await? {
            Some(record) => live(&record, UnixMillis::now()),
            None => Ok(None),
        }
    }

    /// Whether each session still exists, in one store round trip.
    pub async fn exist(&self, ids: &[Id]) -> StoreResult<Vec<bool>> {
        self.index.exist(ids).await
    }
}
