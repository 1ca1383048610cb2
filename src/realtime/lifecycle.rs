//! How sockets end when their session does, or when their user may no
//! longer see their room: logout and membership events from other
//! instances, and the revalidation sweep that catches what events missed.
//! (Changes made on this instance close its sockets directly, through
//! [`Sessions`] and [`crate::auth::memberships`], before the event is even
//! published.)

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{broadcast::error::RecvError, watch};

use super::{presence::Presence, registry::Registry};
use crate::{
    auth::{access::RoomAccess, memberships::Change, Ended, Sessions},
    backend::{AccessChange, Event, EventBus, Notice, RoomState},
    clock::UnixMillis,
    meters::Meters,
    model::{RoomKind, RoomName, UserId},
    protocol::SESSION_REVOKED,
};

/// Sessions (or rooms' states) checked per store round trip in a sweep.
const SWEEP_BATCH: usize = 1000;
/// How soon a sweep the store interrupted is tried again, at first; the
/// wait doubles up to [`SWEEP_RETRY_MAX`]. A sweep matters most right after
/// the store comes back (events sent meanwhile are lost), which is also when
/// the command pool may still be reconnecting: a resync sweep that gave up
/// on its first refusal left revoked sockets open for a whole interval.
const SWEEP_RETRY_FIRST: Duration = Duration::from_millis(50);
const SWEEP_RETRY_MAX: Duration = Duration::from_secs(2);

/// What the lifecycle task listens to and acts on.
#[derive(Clone)]
pub struct Lifecycle {
    pub bus: Arc<dyn EventBus>,
    pub sessions: Sessions,
    pub registry: Arc<Registry>,
    /// Forgets rooms as their membership changes; re-read by the sweep.
    pub access: RoomAccess,
    pub presence: Presence,
    /// How often every open socket's session and room are re-checked.
    pub interval: Duration,
    pub meters: Meters,
}

impl Lifecycle {
    /// Closes the sockets whose session is gone from the store, and those
    /// whose user may no longer see their room; returns how many, or `None`
    /// when the store stopped answering before everything was checked.
    /// Sockets it could not check stay open: they were verified, and the
    /// sweep is tried again ([`Lifecycle::sweep_until_done`]).
    pub async fn sweep(&self) -> Option<usize> {
        let sessions = self.sweep_sessions().await?;
        let rooms = self.sweep_rooms().await?;
        Some(sessions + rooms)
    }

    async fn sweep_sessions(&self) -> Option<usize> {
        let sessions = self.registry.sessions();
        let mut closed = 0;
        let mut done = true;
        for batch in sessions.chunks(SWEEP_BATCH) {
            match self.sessions.exist(batch).await {
                Ok(alive) => {
                    for (session, alive) in batch.iter().zip(alive) {
                        if !alive {
                            closed += self.registry.close_session(session, SESSION_REVOKED);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "revalidation sweep interrupted: store unavailable; trying again shortly");
                    done = false;
                    break;
                }
            }
        }
        if closed > 0 {
            tracing::info!(closed, "revalidation closed sockets of ended sessions");
        }
        done.then_some(closed)
    }

    /// Checks every (private room, user) pair with a socket here, and the
    /// kind of every public room with a socket here, against the store
    /// (not the access cache, which it refreshes), and applies what a lost
    /// event would have: a user no longer a member loses their sockets in
    /// the room; a public room whose name is now a private room's loses
    /// every socket in it (4403 both).
    async fn sweep_rooms(&self) -> Option<usize> {
        let pairs = self.registry.access_pairs();
        let mut closed = 0;
        for batch in pairs.chunks(SWEEP_BATCH) {
            let asked: Vec<(RoomName, UserId)> = batch.iter().map(|(room, user, _)| (room.clone(), *user)).collect();
            let states = match self.access.revalidate(&asked).await {
                Ok(states) => states,
                Err(err) => {
                    tracing::warn!(%err, "room revalidation interrupted: store unavailable; trying again shortly");
                    return None;
                }
            };
            for ((room, user, kind), state) in batch.iter().zip(states) {
                let change = match (kind, state) {
                    (RoomKind::Private, RoomState::Private(Some(_))) => continue,
                    (RoomKind::Private, _) => AccessChange::Removed,
                    (RoomKind::Public, RoomState::Private(_)) => AccessChange::Deleted,
                    (RoomKind::Public | RoomKind::Direct, _) => continue,
                };
                let user = (change == AccessChange::Removed).then_some(*user);
                closed += self.registry.apply(&Change::of(room.clone(), user, change));
            }
        }
        if closed > 0 {
            tracing::info!(closed, "revalidation closed sockets of rooms their users may no longer see");
        }
        Some(closed)
    }

    /// Sweeps until a sweep checks every session, waiting a little longer
    /// after each one the store interrupted; ends early at shutdown.
    async fn sweep_until_done(&self, shutdown: &mut watch::Receiver<bool>) {
        let mut wait = SWEEP_RETRY_FIRST;
        while self.sweep().await.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(SWEEP_RETRY_MAX);
        }
    }

    /// Listens to the event bus and runs the periodic sweep; ends at shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut notices = self.bus.subscribe();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset(); // the first sweep is one interval from now
        let sweeping = Arc::new(AtomicBool::new(false));
        let sweeps_stop = shutdown.clone();

        // One sweep at a time, off this loop, so events keep flowing meanwhile.
        let start_sweep = |this: &Lifecycle| {
            if sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
            let (this, sweeping, mut shutdown) = (this.clone(), sweeping.clone(), sweeps_stop.clone());
            tokio::spawn(async move {
                this.sweep_until_done(&mut shutdown).await;
                sweeping.store(false, Ordering::Release);
            });
        };

        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(Notice::Event(event @ Event::Logout { at, .. })) => {
                        if let Some(ended) = Ended::from_event(&event) {
                            let closed = self.registry.close_ended(&ended);
                            if let (Some(at), true) = (at, closed > 0) {
                                self.meters.logout_applied(at.until(UnixMillis::now()));
                            }
                            tracing::debug!(user = %ended.user, closed, "logout event applied");
                        }
                    }
                    Ok(Notice::Event(Event::Presence { room, instance, joined, left })) => {
                        // Our own events come back too: already applied.
                        if instance != self.presence.instance() {
                            if let Some(room) = RoomName::from_stored(&room) {
                                self.presence.changed_elsewhere(room, instance, joined, left);
                            }
                        }
                    }
                    Ok(Notice::Event(event @ Event::Access { .. })) => {
                        if let Some((change, at)) = Change::from_event(&event, self.presence.instance()) {
                            // Forgotten first: a check after the close reads the store.
                            self.access.forget(&change.room);
                            let closed = self.registry.apply(&change);
                            if let (Some(at), true) = (at, closed > 0) {
                                self.meters.access_applied(at.until(UnixMillis::now()));
                            }
                            tracing::debug!(room = %change.room, closed, "membership event applied");
                        }
                    }
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                        // Membership events may have been missed too.
                        self.access.forget_all();
                        start_sweep(&self);
                        self.presence.resync();
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick() => start_sweep(&self),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use async_trait::async_trait;
    use tokio::sync::{broadcast, watch};
    use tower_sessions::{session::Id, SessionStore};

    use crate::state::testing::{closed, eventually, next_of, Rig, SignedIn};
    use crate::{
        backend::{AccessChange, Backend, EndReason, Event, EventBus, Notice, SessionIndex, StoreError, StoreResult},
        clock::UnixMillis,
        config::Config,
        model::{RoomName, UserId},
    };

    fn team() -> RoomName {
        RoomName::parse("team").unwrap()
    }

    /// Alice's private room "team", with each of `members` added.
    async fn team_of(rig: &Rig, alice: &SignedIn, members: &[&SignedIn]) {
        let rooms = &rig.backend.rooms;
        rooms.create_private(&team(), &alice.current.user).await.unwrap();
        for member in members {
            rooms.add_member(&team(), alice.current.user.id, &member.current.user).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_membership_event_from_another_instance_closes_exactly_that_users_sockets_in_the_room() {
        let rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.lifecycle().run(stopped));
        let (alice, bob) = (rig.sign_in("alice").await, rig.sign_in("bob").await);
        team_of(&rig, &alice, &[&bob]).await;
        let (mut bob_team, _) = rig.open(&bob, "team", None).await;
        let (mut bob_lobby, _) = rig.open(&bob, "lobby", None).await;
        let (mut alice_team, _) = rig.open(&alice, "team", None).await;
        for ws in [&mut bob_team, &mut bob_lobby, &mut alice_team] {
            next_of(ws, "hello").await;
        }
        // Removed on another instance: the store, then the event.
        let bob_id = bob.current.user.id;
        rig.backend.rooms.remove_member(&team(), alice.current.user.id, bob_id).await.unwrap();
        let event = Event::Access {
            room: "team".into(),
            instance: "another".into(),
            user: Some(bob_id),
            change: AccessChange::Removed,
            label: None,
            since: None,
            at: Some(UnixMillis::now()),
        };
        rig.backend.bus.publish(&event).await.unwrap();
        assert_eq!(closed(&mut bob_team).await, (4403, "access revoked".into()));
        assert_eq!(next_of(&mut bob_lobby, "room_removed").await["room"], "team");
        eventually("bob's team socket to leave the registry", || rig.registry.len() == 2).await;
        assert!(rig.visible(&bob, "team").await.is_none(), "the cache forgot the room");
        assert!(rig.visible(&alice, "team").await.is_some());
    }

    #[tokio::test]
    async fn the_sweep_closes_what_a_lost_membership_event_would_have() {
        let rig = Rig::new(Config::default());
        let (alice, bob, carol) = (rig.sign_in("alice").await, rig.sign_in("bob").await, rig.sign_in("carol").await);
        team_of(&rig, &alice, &[&bob]).await;
        let (mut bob_team, _) = rig.open(&bob, "team", None).await;
        let (mut alice_team, _) = rig.open(&alice, "team", None).await;
        let (mut carol_old, _) = rig.open(&carol, "old", None).await;
        for ws in [&mut bob_team, &mut alice_team, &mut carol_old] {
            next_of(ws, "hello").await;
        }
        let lifecycle = rig.lifecycle();
        assert_eq!(lifecycle.sweep().await, Some(0), "everyone may see their room");
        // Behind everyone's back: bob removed, and the name of carol's
        // public room (never used: it does not exist in the store) taken
        // by a private room. No event at all.
        rig.backend.rooms.remove_member(&team(), alice.current.user.id, bob.current.user.id).await.unwrap();
        assert!(rig.visible(&bob, "team").await.is_some(), "the cache still says so");
        rig.backend.rooms.create_private(&RoomName::parse("old").unwrap(), &alice.current.user).await.unwrap();
        assert_eq!(lifecycle.sweep().await, Some(2));
        assert_eq!(closed(&mut bob_team).await, (4403, "access revoked".into()));
        assert_eq!(closed(&mut carol_old).await, (4403, "access revoked".into()));
        assert!(rig.visible(&bob, "team").await.is_none(), "the sweep refreshed the cache");
        eventually("the closed sockets to leave the registry", || rig.registry.len() == 1).await;
    }

    /// The in-process store, except that the first `refusals` session checks
    /// fail (a command pool still reconnecting after the store came back),
    /// and that notices come from the test (a subscriber that reconnected).
    struct Reconnecting {
        index: Arc<dyn SessionIndex>,
        bus: Arc<dyn EventBus>,
        refusals: AtomicUsize,
        notices: broadcast::Sender<Notice>,
    }

    #[async_trait]
    impl SessionIndex for Reconnecting {
        async fn add(&self, user: UserId, session: Id, expires_by: UnixMillis) -> StoreResult<()> {
            self.index.add(user, session, expires_by).await
        }
        async fn remove(&self, user: UserId, session: Id) -> StoreResult<()> {
            self.index.remove(user, session).await
        }
        async fn take_all(&self, user: UserId) -> StoreResult<Vec<Id>> {
            self.index.take_all(user).await
        }
        async fn exist(&self, sessions: &[Id]) -> StoreResult<Vec<bool>> {
            let refuse = self.refusals.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
            if refuse {
                return Err(StoreError::Usage("the pool is still reconnecting".into()));
            }
            self.index.exist(sessions).await
        }
    }

    #[async_trait]
    impl EventBus for Reconnecting {
        async fn publish(&self, event: &Event) -> StoreResult<()> {
            self.bus.publish(event).await
        }
        fn subscribe(&self) -> broadcast::Receiver<Notice> {
            self.notices.subscribe()
        }
    }

    #[tokio::test]
    async fn a_logout_event_from_another_instance_closes_exactly_that_sessions_sockets() {
        let rig = Rig::new(Config::default());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.lifecycle().run(stopped));
        let laptop = rig.sign_in("alice").await;
        let phone = rig.sign_in("alice").await;
        let (mut a, _) = rig.open(&laptop, "lobby", None).await;
        let (mut b, _) = rig.open(&phone, "lobby", None).await;
        next_of(&mut a, "hello").await;
        next_of(&mut b, "hello").await;

        // As published by another instance's `POST /logout`.
        let event = Event::Logout {
            user_id: laptop.current.user.id,
            sessions: vec![laptop.current.session_id.to_string()],
            everywhere: false,
            reason: EndReason::LoggedOut,
            at: None,
        };
        rig.backend.bus.publish(&event).await.unwrap();
        assert_eq!(closed(&mut a).await, (4401, "logged out".into()));
        eventually("the closed socket to leave the registry", || rig.registry.len() == 1).await;
        assert_eq!(rig.registry.sessions(), [phone.current.session_id], "the other session's socket stays");
    }

    #[tokio::test]
    async fn the_sweep_closes_sockets_whose_session_vanished_from_the_store() {
        let rig = Rig::new(Config::default());
        let alice = rig.sign_in("alice").await;
        let bob = rig.sign_in("bob").await;
        let (mut a, _) = rig.open(&alice, "lobby", None).await;
        let (mut b, _) = rig.open(&bob, "lobby", None).await;
        next_of(&mut a, "hello").await;
        next_of(&mut b, "hello").await;
        let lifecycle = rig.lifecycle();
        assert_eq!(lifecycle.sweep().await, Some(0), "both sessions live");

        // Deleted behind everyone's back: no event at all.
        rig.backend.sessions.delete(&alice.current.session_id).await.unwrap();
        assert_eq!(lifecycle.sweep().await, Some(1));
        assert_eq!(closed(&mut a).await, (4401, "session revoked".into()));
        eventually("the closed socket to leave the registry", || rig.registry.len() == 1).await;
        assert_eq!(rig.registry.sessions(), [bob.current.session_id]);
    }

    /// The subscriber is back (a resync) before the command pool is: the
    /// sweep the resync starts is refused by the store at first, and must
    /// not wait a whole interval to try again.
    #[tokio::test]
    async fn a_resync_sweep_the_store_refuses_is_tried_again_until_it_runs() {
        let config = Config::default(); // a 30 s interval: far beyond this test
        let memory = Backend::memory(&config.chat);
        let (notices, _) = broadcast::channel(16);
        let store = Arc::new(Reconnecting {
            index: memory.session_index.clone(),
            bus: memory.bus.clone(),
            refusals: AtomicUsize::new(3),
            notices: notices.clone(),
        });
        let backend = Backend { session_index: store.clone(), bus: store.clone(), ..memory };
        let rig = Rig::with_backend(&config, backend);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.lifecycle().run(stopped));
        let alice = rig.sign_in("alice").await;
        let (mut a, _) = rig.open(&alice, "lobby", None).await;
        next_of(&mut a, "hello").await;

        // Ended while no event could be heard; then the subscriber is back.
        rig.backend.sessions.delete(&alice.current.session_id).await.unwrap();
        notices.send(Notice::Resync).unwrap();
        assert_eq!(closed(&mut a).await, (4401, "session revoked".into()));
        assert_eq!(store.refusals.load(Ordering::Acquire), 0, "the store refused the first three tries");
    }

    #[tokio::test]
    async fn the_periodic_sweep_runs_without_being_asked() {
        let rig = Rig::new(Config::from_map(&[("REVALIDATE_INTERVAL_SECS".into(), "1".into())].into()).unwrap());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(rig.lifecycle().run(stopped));
        let alice = rig.sign_in("alice").await;
        let (mut a, _) = rig.open(&alice, "lobby", None).await;
        next_of(&mut a, "hello").await;
        rig.backend.sessions.delete(&alice.current.session_id).await.unwrap();
        assert_eq!(closed(&mut a).await, (4401, "session revoked".into()));
    }
}
