//! The whole life of a session, in one place: it starts at sign-in (a new
//! id, indexed under its user), slides with activity, and ends by logout
//! (here or everywhere) or revocation: deleted from the store first, then
//! announced, so this instance's sockets close at once and every other
//! instance hears of it on the event bus.
//!
//! Web handlers call one method each and know nothing of indexes or events;
//! sockets re-read sessions through [`Sessions::lookup`] and the sweep
//! checks them through [`Sessions::exist`].

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::rand::SecureRandom;
use serde::Serialize;
use tower_sessions::{session::Id, Session, SessionStore};

use super::{
    devices::{Device, SessionView, ACTIVITY_GRANULARITY},
    journal::Journal,
    refresh::{self, Decision, Secret},
    session::{live, AuthSession, Current, LiveSession, SessionPolicies, SessionPolicy},
    tokens::{Claims, TokenError, TokenKeys},
};
use crate::{
    backend::{
        Devices, EndReason, Event, EventBus, SessionIndex, SharedSessionStore, StoreError, StoreResult, TokenStore,
        UserStore,
    },
    clock::UnixMillis,
    model::{EndedBy, SecurityEventKind, SessionDescriptor, SessionKind, TokenRecord, User, UserId},
};

/// The most sessions of one user listed (the newest).
pub const SESSIONS_LISTED: usize = 100;

/// How long a WebSocket ticket may wait to be used.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// What `POST /api/token` and `/api/token/refresh` answer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    pub session_expires_at: UnixMillis,
}

/// Why a refresh token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// Not a token of a live session (malformed, unknown, ended, past its
    /// lifetime).
    Invalid,
    /// A spent token presented after the grace: the session was ended.
    Reused,
}

/// A token session, as an access token (or ticket) proved it.
#[derive(Debug, Clone)]
pub struct TokenCurrent {
    pub user: User,
    pub session_id: Id,
    pub sid: String,
    /// When the session expires.
    pub expires_at: UnixMillis,
    /// When the access token (or the one a ticket was issued for) expires;
    /// `None` only when the session was found by its `sid` alone.
    pub token_expires_at: Option<UnixMillis>,
}

/// Random bytes, base64url.
fn random_text(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf).expect("the system has randomness");
    URL_SAFE_NO_PAD.encode(buf)
}

fn ticket_hash(ticket: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, ticket.as_bytes()))
}

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
            at: Some(UnixMillis::now()),
        }
    }

    /// The ended sessions an event from another instance names.
    pub fn from_event(event: &Event) -> Option<Ended> {
        match event {
            Event::Logout { user_id, sessions, everywhere, reason, .. } => Some(Ended {
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
    /// Cookie sessions' lifetimes; token sessions follow the usual ones.
    policies: SessionPolicies,
    tokens: Arc<dyn TokenStore>,
    keys: Arc<TokenKeys>,
    /// `REFRESH_REUSE_GRACE_SECS`.
    refresh_grace: Duration,
    devices: Arc<dyn Devices>,
    journal: Journal,
    /// Read at each refresh: a disabled account's token is not refreshed.
    users: Arc<dyn UserStore>,
}

/// What the session lifecycle is made of.
pub struct SessionsParts {
    pub store: SharedSessionStore,
    pub index: Arc<dyn SessionIndex>,
    pub bus: Arc<dyn EventBus>,
    pub local: Arc<dyn SessionsEnded>,
    pub policies: SessionPolicies,
    pub tokens: Arc<dyn TokenStore>,
    pub keys: Arc<TokenKeys>,
    pub refresh_grace: Duration,
    pub devices: Arc<dyn Devices>,
    pub journal: Journal,
    pub users: Arc<dyn UserStore>,
}

impl Sessions {
    pub fn new(parts: SessionsParts) -> Self {
        let SessionsParts { store, index, bus, local, policies, tokens, keys, refresh_grace, devices, journal, users } =
            parts;
        Self { store, index, bus, local, policies, tokens, keys, refresh_grace, devices, journal, users }
    }

    /// The lifetimes of token sessions.
    fn token_policy(&self) -> SessionPolicy {
        self.policies.normal
    }

    /// The typed view of a request's cookie session.
    pub fn cookie(&self, session: Session) -> AuthSession {
        AuthSession::new(session, self.policies, self.devices.clone())
    }

    /// Signs `user` in under a new session id, indexes it under the user
    /// and describes it (`device`; `long`: "keep me signed in"). A session
    /// the browser was signed in with before ends, sockets included.
    pub async fn sign_in(
        &self,
        session: &AuthSession,
        user: User,
        device: &Device,
        long: bool,
    ) -> StoreResult<Current> {
        let previous = session.current().await?;
        if previous.is_none() {
            self.confirm_ended(session).await?;
        }
        let current = session.start(user, long).await?;
        if let Err(err) = self.index.add(current.user.id, current.session_id, current.end_by).await {
            // A session "log out everywhere" cannot find must not exist.
            let _ = session.end().await;
            return Err(err);
        }
        let descriptor = device.describe(SessionKind::Browser, UnixMillis::now(), long, None);
        self.describe(current.user.id, current.session_id, &descriptor, current.end_by).await;
        self.signed_in(current.user.id, device).await;
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
        let Some(current) = session.current().await? else {
            self.confirm_ended(session).await?;
            return Ok(None);
        };
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
        let Some(current) = session.current().await? else {
            self.confirm_ended(session).await?;
            return Ok(None);
        };
        let user = current.user.id;
        let described = self.described(user).await;
        let mut ended = self.delete_all(user, Some(current.session_id)).await?;
        if let Err(err) = session.end().await {
            self.reindex(user, &[current.session_id]).await;
            return Err(err);
        }
        ended.push(current.session_id);
        tracing::info!(user = %current.user.name, sessions = ended.len(), "logged out everywhere");
        self.record_ended(user, &ended, &described, EndedBy::LogoutEverywhere).await;
        self.announce(Ended { user, sessions: ended, everywhere: true, reason: EndReason::LoggedOut }).await;
        Ok(Some(current))
    }

    /// Ends every session of `user`, whoever asks (a token client, an
    /// operator: `by`).
    pub async fn end_all(&self, user: UserId, reason: EndReason, by: EndedBy) -> StoreResult<usize> {
        let described = self.described(user).await;
        let ended = self.delete_all(user, None).await?;
        let count = ended.len();
        self.record_ended(user, &ended, &described, by).await;
        self.announce(Ended { user, sessions: ended, everywhere: true, reason }).await;
        Ok(count)
    }

    /// What `user`'s sessions say of themselves, by store id (for the
    /// events of ending them; best effort).
    async fn described(&self, user: UserId) -> HashMap<Id, SessionDescriptor> {
        match self.devices.list(user, SESSIONS_LISTED).await {
            Ok(listed) => listed.into_iter().filter_map(|l| Some((l.id, l.descriptor?))).collect(),
            Err(err) => {
                tracing::warn!(%err, "sessions not described before ending them");
                HashMap::new()
            }
        }
    }

    /// A `session_ended` entry for each of `ended`.
    async fn record_ended(&self, user: UserId, ended: &[Id], described: &HashMap<Id, SessionDescriptor>, by: EndedBy) {
        for id in ended {
            let (client, address) =
                described.get(id).map(|d| (d.client.clone(), d.address.clone())).unwrap_or_default();
            self.journal.record(user, SecurityEventKind::SessionEnded { by, client, address }).await;
        }
    }

    /// A `signed_in` entry.
    async fn signed_in(&self, user: UserId, device: &Device) {
        let Device { client, address } = device.clone();
        self.journal.record(user, SecurityEventKind::SignedIn { client, address }).await;
    }

    /// Ends one session by id, whoever asks.
    pub async fn end(&self, user: UserId, session: Id, reason: EndReason) -> StoreResult<()> {
        self.store.delete(&session).await.map_err(StoreError::from)?;
        self.unindex(user, session).await;
        self.announce(Ended { user, sessions: vec![session], everywhere: false, reason }).await;
        Ok(())
    }

    /// Ends `user`'s session whose public id is `public` (their listing
    /// from session `current` finds it), its sockets everywhere with 4401
    /// `session revoked`. `None` when no live session of theirs has that id.
    pub async fn end_listed(&self, user: UserId, public: &str, current: Id) -> StoreResult<Option<SessionView>> {
        let listed = self.list(user, current).await?;
        let Some(found) = listed.into_iter().find(|s| s.id == public) else { return Ok(None) };
        self.end(user, found.store_id, EndReason::Revoked).await?;
        tracing::info!(%user, "a session ended by its user");
        let (client, address) = (found.client.clone(), found.address.clone());
        self.journal.record(user, SecurityEventKind::SessionEnded { by: EndedBy::You, client, address }).await;
        Ok(Some(found))
    }

    /// Ends every session of `user` but `keep` (revoked: their sockets
    /// close with 4401 `session revoked`), and returns them. `keep` stays
    /// indexed throughout, so a "log out everywhere" meanwhile still finds
    /// it.
    pub async fn end_others(&self, user: UserId, keep: Id, by: EndedBy) -> StoreResult<Vec<SessionView>> {
        let mut ended: Vec<SessionView> = Vec::new();
        loop {
            let listed = self.list(user, keep).await?;
            let full = listed.len() >= SESSIONS_LISTED;
            let others: Vec<SessionView> = listed.into_iter().filter(|s| !s.current).collect();
            if others.is_empty() {
                break;
            }
            for other in &others {
                self.store.delete(&other.store_id).await.map_err(StoreError::from)?;
                self.unindex(user, other.store_id).await;
                let (client, address) = (other.client.clone(), other.address.clone());
                self.journal.record(user, SecurityEventKind::SessionEnded { by, client, address }).await;
            }
            ended.extend(others);
            if !full {
                break;
            }
        }
        if !ended.is_empty() {
            let sessions = ended.iter().map(|s| s.store_id).collect();
            self.announce(Ended { user, sessions, everywhere: false, reason: EndReason::Revoked }).await;
        }
        Ok(ended)
    }

    /// Gives this cookie session a new id, all else kept (a password
    /// change): indexed and described under the new id before the old
    /// one's entries go. `None` when not signed in.
    pub async fn cycle(&self, session: &AuthSession) -> StoreResult<Option<Current>> {
        let Some((old, current)) = session.cycle().await? else { return Ok(None) };
        let user = current.user.id;
        if let Err(err) = self.index.add(user, current.session_id, current.end_by).await {
            // A session "log out everywhere" cannot find must not exist.
            let _ = session.end().await;
            self.unindex(user, old).await;
            return Err(err);
        }
        if let Err(err) = self.devices.moved(user, old, current.session_id).await {
            tracing::warn!(%err, "session descriptor not moved");
        }
        if let Err(err) = self.index.remove(user, old).await {
            tracing::warn!(%err, "session index entry not removed");
        }
        Ok(Some(current))
    }

    /// Removes every indexed session of `user` from the store but `keep`,
    /// and returns them. Every deletion is tried; if one fails, what was
    /// not deleted (and `keep`) goes back into the index before the error
    /// is returned, so that the next "log out everywhere" finds it still.
    async fn delete_all(&self, user: UserId, keep: Option<Id>) -> StoreResult<Vec<Id>> {
        let (mut ended, mut left, mut failed) = (Vec::new(), Vec::new(), None);
        for id in self.index.take_all(user).await? {
            if Some(id) == keep {
                left.push(id);
                continue;
            }
            match self.store.delete(&id).await {
                Ok(()) => ended.push(id),
                Err(err) => {
                    left.push(id);
                    failed.get_or_insert(StoreError::from(err));
                }
            }
        }
        if let Some(err) = failed {
            self.reindex(user, &left).await;
            return Err(err);
        }
        Ok(ended)
    }

    /// Puts sessions taken from `user`'s index back. Their own deadlines
    /// are not known here: each is kept until the longest a session can
    /// live from now, which only keeps an entry longer than needed (an
    /// entry of a session gone is dropped when found).
    async fn reindex(&self, user: UserId, sessions: &[Id]) {
        let until = UnixMillis::now() + self.policies.normal.max_lifetime.max(self.policies.long.max_lifetime);
        for &id in sessions {
            if let Err(err) = self.index.add(user, id, until).await {
                tracing::error!(%err, %user, "a session taken from the index to be ended is not in it again");
            }
        }
    }

    /// A request that ends its session, or signs in over it, may name one
    /// the store no longer holds: ended by an earlier request whose
    /// deletion no replica confirmed (answered 503, so the client asks
    /// again), or whose answer was lost. Deleting it again, and waiting for
    /// a replica, confirms that end before this request answers as if it
    /// were done: a failover could bring the session back otherwise.
    async fn confirm_ended(&self, session: &AuthSession) -> StoreResult<()> {
        match session.presented_gone() {
            Some(id) => self.store.delete(&id).await.map_err(StoreError::from),
            None => Ok(()),
        }
    }

    async fn unindex(&self, user: UserId, session: Id) {
        if let Err(err) = self.index.remove(user, session).await {
            // Harmless: the entry points at a deleted session and ages out.
            tracing::warn!(%err, "session index entry not removed");
        }
        if let Err(err) = self.devices.remove(user, session).await {
            // Harmless too: a descriptor of a session no longer indexed is
            // dropped when next found.
            tracing::warn!(%err, "session descriptor not removed");
        }
    }

    /// Describes a session just indexed. Best effort: a session without a
    /// descriptor is still listed (as "Unknown") and ends like any other.
    async fn describe(
        &self,
        user: UserId,
        session: Id,
        descriptor: &crate::model::SessionDescriptor,
        end_by: UnixMillis,
    ) {
        if let Err(err) = self.devices.put(user, session, descriptor, end_by).await {
            tracing::warn!(%err, "session descriptor not written");
        }
    }

    /// Every live session of `user` (the newest [`SESSIONS_LISTED`]), as
    /// seen from session `current`.
    pub async fn list(&self, user: UserId, current: Id) -> StoreResult<Vec<SessionView>> {
        let listed = self.devices.list(user, SESSIONS_LISTED).await?;
        Ok(listed.into_iter().map(|listed| SessionView::new(listed, current)).collect())
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

    /// Starts a token session for `user` (who just proved their password)
    /// from `device`: indexed like a cookie session, so every way a session
    /// ends ends it.
    pub async fn sign_in_token(&self, user: User, device: &Device) -> StoreResult<TokenPair> {
        let now = UnixMillis::now();
        let id = Id::default();
        let sid = random_text(16);
        let first = Secret::random();
        let record = TokenRecord { user, sid, signed_in_at: now, refresh: refresh::first_state(&first, now) };
        let policy = self.token_policy();
        let expires_at = policy.expiry(now, now).expect("a new session is within its lifetime");
        let end_by = policy.end_by(now);
        self.tokens.create_token_session(id, &record, expires_at, end_by).await?;
        if let Err(err) = self.index.add(record.user.id, id, end_by).await {
            // A session "log out everywhere" cannot find must not exist.
            let _ = self.store.delete(&id).await;
            return Err(err);
        }
        let descriptor = device.describe(SessionKind::Token, now, false, Some(record.sid.clone()));
        self.describe(record.user.id, id, &descriptor, end_by).await;
        self.signed_in(record.user.id, device).await;
        tracing::info!(user = %record.user.name, "token session started");
        Ok(self.pair(&record, &first, expires_at, now))
    }

    fn pair(
        &self,
        record: &TokenRecord,
        refresh: &Secret,
        session_expires_at: UnixMillis,
        now: UnixMillis,
    ) -> TokenPair {
        let (access_token, expires) = self.keys.issue(&record.user, &record.sid, now);
        TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: now.until(expires).as_secs(),
            refresh_token: refresh.token(&record.sid),
            session_expires_at,
        }
    }

    /// Spends a refresh token for a new pair, sliding the session (see
    /// `refresh` for the rules of rotation and reuse).
    /// `address`: where it was presented from (said when a spent token
    /// comes back).
    pub async fn refresh_token(&self, presented: &str, address: &str) -> StoreResult<Result<TokenPair, RefreshError>> {
        let Some((sid, secret)) = refresh::parse(presented) else { return Ok(Err(RefreshError::Invalid)) };
        // A concurrent refresh may rotate between our read and our write;
        // then the decision is made again on what it left.
        for _ in 0..3 {
            let Some(found) = self.tokens.find_token_session(sid).await? else {
                return Ok(Err(RefreshError::Invalid));
            };
            let now = UnixMillis::now();
            let state = &found.record.refresh;
            match refresh::decide(state, &secret, now, self.refresh_grace) {
                Decision::Rotate => {
                    let Some(expires_at) = self.token_policy().expiry(found.record.signed_in_at, now) else {
                        return Ok(Err(RefreshError::Invalid));
                    };
                    if !self.may_sign_in(&found.record.user).await? {
                        return Ok(Err(RefreshError::Invalid));
                    }
                    let next = self.keys.successor(&secret);
                    let record = TokenRecord { refresh: refresh::rotated(state, &next, now), ..found.record.clone() };
                    if self.tokens.update_token_session(sid, &state.current, &record, expires_at).await? {
                        let user = record.user.id;
                        if let Err(err) = self.devices.touch(user, found.id, now, ACTIVITY_GRANULARITY).await {
                            tracing::warn!(%err, "session activity not recorded");
                        }
                        return Ok(Ok(self.pair(&record, &next, expires_at, now)));
                    }
                }
                Decision::Replay => {
                    // The successor it got is still the current token: the
                    // same answer again. If the chain moved on since, two
                    // holders are using it.
                    if let Some(next) = self.keys.replayed_successor(&secret, &state.current) {
                        return Ok(Ok(self.pair(&found.record, &next, found.expires_at, now)));
                    }
                    return self.reused(&found.record, found.id, address).await;
                }
                Decision::Reuse => return self.reused(&found.record, found.id, address).await,
                Decision::Unknown => return Ok(Err(RefreshError::Invalid)),
            }
        }
        Ok(Err(RefreshError::Invalid))
    }

    /// Whether `user`'s account exists still and is not disabled.
    async fn may_sign_in(&self, user: &User) -> StoreResult<bool> {
        let stored = self.users.find(&user.name).await?;
        Ok(stored.is_some_and(|stored| stored.user.id == user.id && !stored.disabled))
    }

    async fn reused(&self, record: &TokenRecord, id: Id, from: &str) -> StoreResult<Result<TokenPair, RefreshError>> {
        tracing::warn!(user = %record.user.name, "a spent refresh token was used again; ending its session");
        let user = record.user.id;
        let described = self.described(user).await;
        let (client, address) = described.get(&id).map(|d| (d.client.clone(), d.address.clone())).unwrap_or_default();
        self.end(user, id, EndReason::Revoked).await?;
        let detected = SecurityEventKind::RefreshReuseDetected { client: client.clone(), address: from.to_owned() };
        self.journal.record(user, detected).await;
        self.journal.record(user, SecurityEventKind::SessionEnded { by: EndedBy::RefreshReuse, client, address }).await;
        Ok(Err(RefreshError::Reused))
    }

    /// Checks an access token (no store) and then that its session lives
    /// (one read). `Ok(Err(_))`: refused.
    pub async fn authenticate_token(&self, token: &str) -> StoreResult<Result<TokenCurrent, TokenError>> {
        let claims = match self.keys.verify(token) {
            Ok(claims) => claims,
            Err(err) => return Ok(Err(err)),
        };
        Ok(self
            .token_session(&claims.sid, claims.sub)
            .await?
            .map(|mut current| {
                current.token_expires_at = Some(claims.expires_at());
                current
            })
            .ok_or_else(|| TokenError::Invalid("its session has ended".into())))
    }

    /// Checks an access token's form, signature and claims only.
    pub fn verify_token(&self, token: &str) -> Result<Claims, TokenError> {
        self.keys.verify(token)
    }

    /// The live token session `sid`, if it belongs to `user`.
    pub async fn token_session(&self, sid: &str, user: UserId) -> StoreResult<Option<TokenCurrent>> {
        Ok(self.tokens.find_token_session(sid).await?.filter(|found| found.record.user.id == user).map(|found| {
            TokenCurrent {
                user: found.record.user,
                session_id: found.id,
                sid: found.record.sid,
                expires_at: found.expires_at,
                token_expires_at: None,
            }
        }))
    }

    /// A one-use ticket to open a WebSocket for token session `sid`, on the
    /// authority of an access token expiring at `token_expires_at` (the
    /// socket ends with that token, as if it had been opened with it).
    pub async fn issue_ticket(&self, sid: &str, token_expires_at: UnixMillis) -> StoreResult<String> {
        let ticket = random_text(32);
        let value = format!("{sid} {}", token_expires_at.as_millis());
        self.tokens.put_ticket(&ticket_hash(&ticket), &value, TICKET_TTL).await?;
        Ok(ticket)
    }

    /// Redeems a ticket (once): the live session it was for.
    pub async fn redeem_ticket(&self, ticket: &str) -> StoreResult<Option<TokenCurrent>> {
        if ticket.is_empty() || ticket.len() > 64 {
            return Ok(None);
        }
        let Some(value) = self.tokens.take_ticket(&ticket_hash(ticket)).await? else { return Ok(None) };
        let Some((sid, token_expires_at)) = value.split_once(' ') else { return Ok(None) };
        let token_expires_at = token_expires_at.parse().ok().map(UnixMillis::from_millis);
        let Some(found) = self.tokens.find_token_session(sid).await? else { return Ok(None) };
        Ok(Some(TokenCurrent {
            user: found.record.user,
            session_id: found.id,
            sid: found.record.sid,
            expires_at: found.expires_at,
            token_expires_at,
        }))
    }

    /// Whether each session still exists, in one store round trip.
    pub async fn exist(&self, ids: &[Id]) -> StoreResult<Vec<bool>> {
        self.index.exist(ids).await
    }
}
