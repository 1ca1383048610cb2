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
    /// many. While the store does not answer, sockets stay open: they were
    /// verified, and the next sweep will check them again.
    pub async fn sweep(&self) -> usize {
        let sessions = self.registry.sessions();
        let mut closed = 0;
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
                    tracing::warn!(%err, "revalidation sweep stopped: store unavailable");
                    break;
                }
            }
        }
        if closed > 0 {
            tracing::info!(closed, "revalidation closed sockets of ended sessions");
        }
        closed
    }

    /// Listens to the event bus and runs the periodic sweep; ends at shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut notices = self.bus.subscribe();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset(); // the first sweep is one interval from now
        let sweeping = Arc::new(AtomicBool::new(false));

        // One sweep at a time, off this loop, so events keep flowing meanwhile.
        let start_sweep = |this: &Lifecycle| {
            if sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
            let (this, sweeping) = (this.clone(), sweeping.clone());
            tokio::spawn(async move {
                this.sweep().await;
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
                            if let Some(room) = RoomName::parse(&room) {
                                self.presence.changed_elsewhere(room, instance, joined, left);
                            }
                        }
                    }
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
    use tokio::sync::watch;
    use tower_sessions::SessionStore;

    use super::super::testing::{closed, eventually, next_of, Rig};
    use crate::{
        backend::{EndReason, Event},
        config::Config,
    };

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
        assert_eq!(lifecycle.sweep().await, 0, "both sessions live");

        // Deleted behind everyone's back: no event at all.
        rig.backend.sessions.delete(&alice.current.session_id).await.unwrap();
        assert_eq!(lifecycle.sweep().await, 1);
        assert_eq!(closed(&mut a).await, (4401, "session revoked".into()));
        eventually("the closed socket to leave the registry", || rig.registry.len() == 1).await;
        assert_eq!(rig.registry.sessions(), [bob.current.session_id]);
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
