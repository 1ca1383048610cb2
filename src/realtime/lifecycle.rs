//! How sockets end when their session does: logout events from other
//! instances, and the revalidation sweep that catches what events missed.
//! (Logouts on this instance close its sockets directly, through
//! [`Sessions`], before the event is even published.)

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
    auth::{Ended, Sessions},
    backend::{Event, EventBus, Notice},
    clock::UnixMillis,
    meters::Meters,
    model::RoomName,
    protocol::SESSION_REVOKED,
};

/// Sessions checked per store round trip in a sweep.
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
    pub presence: Presence,
    /// How often every open socket's session is re-checked.
    pub interval: Duration,
    pub meters: Meters,
}

impl Lifecycle {
    /// Closes the sockets whose session is gone from the store; returns how
    /// many, or `None` when the store stopped answering before every
    /// session was checked. Sockets it could not check stay open: they were
    /// verified, and the sweep is tried again ([`Lifecycle::sweep_until_done`]).
    pub async fn sweep(&self) -> Option<usize> {
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
                    Ok(Notice::Event(Event::Access { .. })) => {}
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
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

    use crate::state::testing::{closed, eventually, next_of, Rig};
    use crate::{
        backend::{Backend, EndReason, Event, EventBus, Notice, SessionIndex, StoreError, StoreResult},
        clock::UnixMillis,
        config::Config,
        model::UserId,
    };

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
