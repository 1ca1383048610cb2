//! A socket's start: `hello`, its room's presence, the replay after
//! `after`, then the unread counts of the user's other rooms it follows.
//! Every frame carries the room's label.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Flow, Socket, REPLAY_PAGE};
use crate::{
    model::{MessageId, RoomName},
    protocol::{self as frames, ServerFrame},
    realtime::{
        registry::{ConnId, Outbox},
        unread::{just_before, Reader, Starts, Unread},
    },
};

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// `hello`, the room's presence, then every stored message after `after`.
    pub(super) async fn greet(&mut self, after: Option<MessageId>) -> Flow {
        let hello = ServerFrame::Hello {
            user: &self.user.name,
            room: &self.label,
            expires_at: self.deadline.at(),
            rate: self.deps.limits.announced,
            read_markers: true,
        }
        .to_text();
        let (online, count) = self.deps.presence.snapshot(&self.room).await;
        let presence = ServerFrame::Presence { room: &self.label, online: &online, count }.to_text();
        if let flow @ (Flow::Drop | Flow::Close(_)) = self.write([hello, presence]).await {
            return flow;
        }
        let Some(after) = after else { return Flow::Continue };
        // Everything after the room's cursor at registration (`last_sent`)
        // reaches this socket live, so replay covers (after, last_sent].
        // An `after` beyond it replays nothing.
        let until = self.last_sent;
        let mut cursor = after;
        while cursor < until {
            let page = match self.deps.reads.after(&*self.deps.history, &self.room, cursor, REPLAY_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    // Closing (rather than going on without the replay) keeps
                    // the promise of no gap: the client reconnects with the
                    // same `after` once the store is back.
                    tracing::warn!(%err, "replay failed: store unavailable");
                    return Flow::Close(frames::STORE_UNAVAILABLE);
                }
            };
            let full = page.len() == REPLAY_PAGE;
            let frames: Vec<Utf8Bytes> =
                page.iter().take_while(|m| m.id <= until).map(|m| frames::message(&self.label, m)).collect();
            let Some(last) = page.last() else { break };
            cursor = last.id;
            drop(page);
            if let flow @ (Flow::Drop | Flow::Close(_)) = self.write(frames).await {
                return flow;
            }
            if !full {
                break;
            }
        }
        Flow::Continue
    }

    /// Starts counting the unread messages of the user's other listed rooms
    /// ([`RoomAccess::listed`](crate::auth::access::RoomAccess::listed), as
    /// the page's sidebar shows them, each under its label): from
    /// the store up to each room's cursor, then as messages are delivered
    /// (the registry counts those). Sends the counts that are not zero. A
    /// store failure here costs the counts, not the socket.
    pub(super) async fn follow_unread(&mut self, id: ConnId, outbox: Outbox) -> Flow {
        let (deps, user) = (self.deps.clone(), self.user.id);
        let found = tokio::try_join!(deps.access.listed(user), deps.history.read_markers(user));
        let ((listed, inbox), markers) = match found {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(%err, "no unread counts for this socket: store unavailable");
                return Flow::Continue;
            }
        };
        let rooms: Vec<(RoomName, Arc<str>)> = listed
            .into_iter()
            .filter(|listed| *listed.room() != self.room)
            .map(|listed| (listed.room().clone(), listed.label().clone()))
            .collect();
        self.counting = Some((id, outbox));
        self.count(rooms, &Starts::new(markers, &inbox)).await
    }

    /// Starts counting rooms added to the user since this socket began
    /// counting (`room_added`, written just now): from the first message
    /// its user has not seen when that is known (a direct conversation's
    /// first, a mention's), unless a read marker is further on; else from
    /// where [`Starts`] says.
    pub(super) async fn count_added(&mut self, added: Vec<(RoomName, Arc<str>, Option<MessageId>)>) -> Flow {
        let stored =
            tokio::try_join!(self.deps.history.read_markers(self.user.id), self.deps.history.mentions(self.user.id));
        let mut starts = match stored {
            Ok((markers, inbox)) => Starts::new(markers, &inbox),
            Err(err) => {
                tracing::warn!(%err, "an added room counted from its start: store unavailable");
                Starts::default()
            }
        };
        for (room, _, since) in &added {
            if let Some(first) = since {
                if starts.since(room).is_none_or(|at| at < just_before(*first)) {
                    starts.starting(room, *first);
                }
            }
        }
        let rooms = added.into_iter().map(|(room, label, _)| (room, label)).collect();
        self.count(rooms, &starts).await
    }

    /// Counts `rooms` (each under its label) on this socket: from the store
    /// after where `starts` says up to each room's cursor, then as messages
    /// are delivered (the registry counts those). Sends the counts that are
    /// not zero. A store failure here costs the counts, not the socket.
    async fn count(&mut self, rooms: Vec<(RoomName, Arc<str>)>, starts: &Starts) -> Flow {
        let Some((id, outbox)) = self.counting.clone() else { return Flow::Continue };
        let deps = self.deps.clone();
        let positions = futures_util::future::join_all(rooms.iter().map(|(r, _)| deps.hub.start_for(r))).await;
        let rooms: Vec<(RoomName, Arc<str>, MessageId)> = rooms
            .into_iter()
            .zip(positions)
            .filter_map(|((room, label), start)| Some((room, label, start.ok()?)))
            .collect();
        let (cursors, new_rooms) = deps.registry.watch(id, &outbox, &rooms);
        // Their groups' tails, not this socket's room's: on a cluster they
        // may be other groups.
        deps.hub.follow_new_rooms(&new_rooms).await;
        let reader = Reader::new(self.name.clone());
        let counts = futures_util::future::join_all(cursors.iter().map(|(room, cursor)| {
            Unread::stored(&*deps.history, &deps.reads, &reader, room, starts.of(room), *cursor)
        }))
        .await;
        let mut out = Vec::new();
        for ((room, _), stored) in cursors.iter().zip(counts) {
            let label = rooms.iter().find(|(r, ..)| r == room).map_or(room.as_str(), |(_, label, _)| label);
            match deps.registry.settle_unread(id, room, starts.of(room), stored) {
                Some(count) if !count.is_zero() => out.push(count.frame(label)),
                _ => {}
            }
        }
        self.write(out).await
    }
}
