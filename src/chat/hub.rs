//! Fan-out without loss: each instance tails the streams of the rooms it has
//! sockets in and hands every stored message to those sockets, in stream
//! order, exactly once.
//!
//! Pub/sub would drop messages published while a subscriber reconnects (the
//! failure Socket.IO's Redis adapter is known for). A stream does not: the
//! tail reads on from the last id it delivered in each room (the room's
//! cursor in the registry), so after a dropped connection or a Redis restart
//! with persistence it resumes exactly where it stopped.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    backend::StoreResult,
    chat::{MessageId, RoomName},
    state::SharedState,
};

/// How long one `XREAD BLOCK` waits before the room set is read again.
const TAIL_WAIT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The tail loop; ends when `shutdown` turns true.
pub async fn run(state: SharedState, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let cursors = state.registry.cursors();
        let result = tokio::select! {
            result = state.backend.history.tail(&cursors, TAIL_WAIT) => result,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(batches) => {
                backoff = Duration::from_millis(100);
                for (room, messages) in batches {
                    state.registry.deliver(&room, &messages);
                }
            }
            Err(err) => {
                tracing::warn!(%err, "tailing room history failed; retrying from the same ids");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where a socket joining `room` should start: the room's cursor when this
/// instance already follows it, else the newest stored id (the tail then
/// starts there).
pub async fn start_for(state: &SharedState, room: &RoomName) -> StoreResult<MessageId> {
    match state.registry.room_cursor(room) {
        Some(cursor) => Ok(cursor),
        None => state.backend.history.last_id(room).await,
    }
}
