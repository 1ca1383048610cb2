//! How sockets end when their session does: logout events from any
//! instance, and the revalidation sweep that catches what events missed.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use tokio::sync::{broadcast::error::RecvError, watch};
use tower_sessions::session::Id;

use super::frames::{LOGGED_OUT, SESSION_REVOKED};
use crate::{
    backend::{Event, Notice, UserId},
    chat::RoomName,
    state::SharedState,
};

/// Sessions checked per store round trip in a sweep.
const SWEEP_BATCH: usize = 1000;

/// Closes the local sockets of ended sessions now and tells every other
/// instance to do the same. The sessions are already gone from the store,
/// so if the event is lost the sweep still closes the remote sockets.
pub async fn announce_logout(state: &SharedState, user: UserId, sessions: &[Id], everywhere: bool) {
    close_local(state, user, sessions, everywhere);
    let event = Event::Logout { user_id: user, sessions: sessions.iter().map(Id::to_string).collect(), everywhere };
    if let Err(err) = state.backend.bus.publish(&event).await {
        tracing::warn!(%err, %user, "logout event not published; other instances will find it in their sweep");
    }
}

fn close_local(state: &SharedState, user: UserId, sessions: &[Id], everywhere: bool) -> usize {
    if everywhere {
        state.registry.close_user(&user, LOGGED_OUT)
    } else {
        sessions.iter().map(|s| state.registry.close_session(s, LOGGED_OUT)).sum()
    }
}

/// Closes the sockets whose session is gone from the store; returns how
/// many. While the store does not answer, sockets stay open: they were
/// verified, and the next sweep will check them again.
pub async fn sweep(state: &SharedState) -> usize {
    let sessions = state.registry.sessions();
    let mut closed = 0;
    for batch in sessions.chunks(SWEEP_BATCH) {
        match state.backend.session_index.exist(batch).await {
            Ok(alive) => {
                for (session, alive) in batch.iter().zip(alive) {
                    if !alive {
                        closed += state.registry.close_session(session, SESSION_REVOKED);
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
pub async fn run(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let mut notices = state.backend.bus.subscribe();
    let mut tick = tokio::time::interval(state.config.revalidate_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset(); // the first sweep is one interval from now
    let sweeping = Arc::new(AtomicBool::new(false));

    // One sweep at a time, off this loop, so events keep flowing meanwhile.
    let start_sweep = |state: &SharedState| {
        if sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (state, sweeping) = (state.clone(), sweeping.clone());
        tokio::spawn(async move {
            sweep(&state).await;
            sweeping.store(false, Ordering::Release);
        });
    };

    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok(Notice::Event(Event::Logout { user_id, sessions, everywhere })) => {
                    let ids: Vec<Id> = sessions.iter().filter_map(|s| s.parse().ok()).collect();
                    let closed = close_local(&state, user_id, &ids, everywhere);
                    tracing::debug!(%user_id, closed, "logout event applied");
                }
                Ok(Notice::Event(Event::Presence { room })) => {
                    if let Some(room) = RoomName::parse(&room) {
                        state.presence.changed_elsewhere(room);
                    }
                }
                Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                    start_sweep(&state);
                    state.presence.resync();
                }
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => start_sweep(&state),
            _ = shutdown.changed() => return,
        }
    }
}
