//! What a socket does with each frame from its client: `send` (stored,
//! then acknowledged), `read` (its room's marker), `reauth` (the session
//! re-read, the deadline moved), and the refusals and rate limits around
//! them; and what the deadline's timer decides.

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{timeout, Instant},
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use super::{Credential, Flow, Socket, CLOSE_TIMEOUT, MAX_FLOOD, READ_NOT_STORED};
use crate::{
    backend::StoreResult,
    clock::UnixMillis,
    model::{clean_body, Appended, MessageId, NewMessage, RoomKind, MAX_CLIENT_ID_CHARS},
    protocol::{self as frames, ClientFrame, ErrorCode, ServerFrame},
    realtime::deadline::{Lookup, Step},
};

/// At most this many `send` frames already read are stored in one round
/// trip.
const SEND_RUN: usize = 32;

/// What [`Socket::admit`] found of a `send`.
enum Admit {
    Ready(NewMessage),
    /// Refused for its fields: why, and its client_id if it had one.
    Invalid(&'static str, Option<String>),
    /// Over the socket's rate; its client_id.
    TooFast(String),
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Asks the store whether this is still the user's live session.
    async fn recheck(&mut self) -> Lookup {
        let sessions = &self.deps.sessions;
        let found = match &self.credential {
            Credential::Cookie => {
                sessions.lookup(&self.session_id).await.map(|live| live.map(|live| (live.user.id, live.expires_at)))
            }
            Credential::Token { sid, .. } => sessions
                .token_session(sid, self.user.id)
                .await
                .map(|live| live.map(|live| (live.user.id, live.expires_at))),
        };
        if let Err(err) = &found {
            tracing::warn!(%err, "session not re-checked: store unavailable");
        }
        Lookup::judge(found, self.user.id, UnixMillis::now())
    }

    pub(super) async fn on_timer(&mut self) -> Flow {
        let step = match self.deadline.on_timer(UnixMillis::now()) {
            Step::Recheck => {
                let found = self.recheck().await;
                self.deadline.at_deadline(UnixMillis::now(), found)
            }
            step => step,
        };
        self.carry_out(step).await
    }

    async fn on_reauth(&mut self, token: Option<String>) -> Flow {
        if let Err(flow) = self.rate_limit(None).await {
            return flow;
        }
        self.flood = 0;
        // A token socket proves itself with a new token of the same user
        // and session; anything else ends it.
        let token_expires_at = match &self.credential {
            Credential::Cookie => None,
            Credential::Token { sid, .. } => {
                let claims = token.as_deref().map(|t| self.deps.sessions.verify_token(t));
                match claims {
                    Some(Ok(claims)) if claims.sub == self.user.id && claims.sid == *sid => Some(claims.expires_at()),
                    Some(Err(err)) => {
                        tracing::info!(%err, user = %self.user.name, "reauth with an invalid token");
                        return Flow::Close(frames::INVALID_TOKEN);
                    }
                    _ => return Flow::Close(frames::INVALID_TOKEN),
                }
            }
        };
        let found = self.recheck().await;
        let step = self.deadline.on_reauth(UnixMillis::now(), token_expires_at, found);
        self.carry_out(step).await
    }

    /// Does what the deadline decided.
    async fn carry_out(&mut self, step: Step) -> Flow {
        match step {
            Step::Wait | Step::Recheck => Flow::Continue,
            Step::Warn(expires_at) => self.write([ServerFrame::Reauthenticate { expires_at }.to_text()]).await,
            Step::Reauthenticated(expires_at) => {
                self.write([ServerFrame::Reauthenticated { expires_at }.to_text()]).await
            }
            Step::RetryLater => {
                self.error(ErrorCode::Unavailable, "The session could not be checked; try again.", None).await
            }
            Step::Expire => Flow::Close(frames::SESSION_EXPIRED),
            Step::TokenExpired => Flow::Close(frames::TOKEN_EXPIRED),
            // Unverifiable is not valid: the socket does not outlive the
            // deadline it knows. 1013 makes the client come back later.
            Step::StoreUnavailable => Flow::Close(frames::STORE_UNAVAILABLE),
        }
    }

    pub(super) async fn incoming(&mut self, frame: Option<Result<WsMessage, WsError>>) -> Flow {
        let message = match frame {
            None => return Flow::Drop,
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(_))) => return Flow::Close(frames::TOO_BIG),
            Some(Err(WsError::Protocol(err))) => {
                tracing::debug!(%err, "WebSocket protocol error");
                return Flow::Close(frames::PROTOCOL_ERROR);
            }
            Some(Err(WsError::Utf8(_))) => return Flow::Close(frames::INVALID_TEXT),
            Some(Err(err)) => {
                tracing::debug!(%err, "socket read failed");
                return Flow::Drop;
            }
        };
        self.last_seen = Instant::now();
        match message {
            WsMessage::Text(text) => match serde_json::from_str::<ClientFrame>(&text) {
                // Boxed: their futures are large and would otherwise be part
                // of every idle socket's task for its whole life.
                Ok(ClientFrame::Send { body, client_id }) => Box::pin(self.on_sends(body, client_id)).await,
                Ok(ClientFrame::Reauth { token }) => Box::pin(self.on_reauth(token)).await,
                Ok(ClientFrame::Read { up_to }) => Box::pin(self.on_read(up_to)).await,
                Err(_) => self.refuse("Frames are JSON objects with a known \"type\".", None).await,
            },
            WsMessage::Binary(_) => self.refuse("Binary frames are not accepted.", None).await,
            // Pongs only prove liveness; tungstenite answers pings itself.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Flow::Continue,
            // tungstenite has queued the reply to the peer's close.
            WsMessage::Close(_) => {
                let _ = timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                Flow::Drop
            }
        }
    }

    /// Answers an invalid frame; too many in a minute end the socket.
    async fn refuse(&mut self, message: &str, client_id: Option<&str>) -> Flow {
        if self.invalid.hit(Instant::now().into_std()) {
            return Flow::Close(frames::POLICY_VIOLATION);
        }
        self.error(ErrorCode::Invalid, message, client_id).await
    }

    async fn error(&mut self, code: ErrorCode, message: &str, client_id: Option<&str>) -> Flow {
        self.write([ServerFrame::Error { code, message, client_id }.to_text()]).await
    }

    /// The rate limit for frames that cost a store round trip. `Err` holds
    /// what to do instead of handling the frame.
    async fn rate_limit(&mut self, client_id: Option<&str>) -> Result<(), Flow> {
        if self.bucket.take(Instant::now().into_std()) {
            return Ok(());
        }
        Err(self.too_fast(client_id).await)
    }

    /// Acknowledges a stored message: an accepted frame, which ends a run
    /// of refusals (docs/protocol.md §3.6).
    async fn acknowledge(&mut self, client_id: Option<&str>, id: MessageId) -> Flow {
        self.flood = 0;
        self.write([ServerFrame::Ack { client_id, id }.to_text()]).await
    }

    /// Answers a frame refused for its rate; flooding on ends the socket.
    /// `flood` counts refusals since the last accepted frame (a `reauth` or
    /// `read` past the bucket, or a stored `send`).
    async fn too_fast(&mut self, client_id: Option<&str>) -> Flow {
        self.flood += 1;
        if self.flood > MAX_FLOOD {
            return Flow::Close(frames::POLICY_VIOLATION);
        }
        self.error(ErrorCode::RateLimited, "Too many messages; slow down.", client_id).await
    }

    /// A `send`, and the frames the client sent after it that are already
    /// here: their sends are stored in one round trip (a client ahead of
    /// the store catches up in turns, not one turn per message), and
    /// answered one by one, in order, as if each came alone. The first
    /// frame that is not a `send` ends the run and is handled after it.
    async fn on_sends(&mut self, body: String, client_id: Option<String>) -> Flow {
        let mut sends = vec![(body, client_id)];
        let mut then = None;
        while sends.len() < SEND_RUN {
            // Only what is here already; the loop's select waits for more.
            let Some(frame) = self.ws.next().now_or_never() else { break };
            if let Some(Ok(WsMessage::Text(text))) = &frame {
                if let Ok(ClientFrame::Send { body, client_id }) = serde_json::from_str::<ClientFrame>(text) {
                    self.last_seen = Instant::now();
                    sends.push((body, client_id));
                    continue;
                }
            }
            then = Some(frame);
            break;
        }
        let mut ready = Vec::new();
        for (body, client_id) in sends {
            match self.admit(body, client_id) {
                Admit::Ready(message) => ready.push(message),
                refused => {
                    // What came before it is answered first.
                    let flow = self.store(std::mem::take(&mut ready)).await;
                    if !matches!(flow, Flow::Continue) {
                        return flow;
                    }
                    let flow = match refused {
                        Admit::Invalid(why, client_id) => self.refuse(why, client_id.as_deref()).await,
                        Admit::TooFast(client_id) => self.too_fast(Some(&client_id)).await,
                        Admit::Ready(_) => unreachable!("matched above"),
                    };
                    if !matches!(flow, Flow::Continue) {
                        return flow;
                    }
                }
            }
        }
        match self.store(ready).await {
            Flow::Continue => match then {
                Some(frame) => Box::pin(self.incoming(frame)).await,
                None => Flow::Continue,
            },
            flow => flow,
        }
    }

    /// Whether a `send` may go to the store: its fields, and the socket's
    /// rate (which it spends).
    fn admit(&mut self, body: String, client_id: Option<String>) -> Admit {
        let given = client_id.filter(|c| !c.is_empty());
        if given.as_deref().is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS) {
            return Admit::Invalid("client_id is at most 64 characters.", None);
        }
        let Some(body) = clean_body(&body) else {
            return Admit::Invalid("A message is 1 to 2000 characters.", given);
        };
        // Every message gets an id to recognise a resend by: the sender's, or
        // one assigned here and echoed in the ack or error, so that a resend
        // after an unconfirmed store is never stored twice.
        let shown = given.is_some();
        let client_id = given.unwrap_or_else(|| format!("s-{}", uuid::Uuid::new_v4().simple()));
        if !self.bucket.take(Instant::now().into_std()) {
            return Admit::TooFast(client_id);
        }
        Admit::Ready(NewMessage {
            sender: self.user.id,
            user: self.user.name.clone(),
            body: body.to_owned(),
            client_id: Some(client_id),
            client_id_shown: shown,
            sent_at: UnixMillis::now(),
        })
    }

    /// Stores admitted messages, in order, and answers each.
    async fn store(&mut self, messages: Vec<NewMessage>) -> Flow {
        if messages.is_empty() {
            return Flow::Continue;
        }
        let client_ids: Vec<String> = messages.iter().map(|m| m.client_id.clone().unwrap_or_default()).collect();
        let answers = self.deps.history.append_all(&self.room, messages).await;
        for (client_id, answer) in client_ids.iter().zip(answers) {
            let flow = self.answer_send(client_id, answer).await;
            if !matches!(flow, Flow::Continue) {
                return flow;
            }
        }
        Flow::Continue
    }

    async fn answer_send(&mut self, client_id: &str, answer: StoreResult<Appended>) -> Flow {
        let cid = Some(client_id);
        match answer {
            Ok(Appended::New(stored)) => {
                self.note_direct(stored.id, stored.sent_at).await;
                let flow = self.acknowledge(cid, stored.id).await;
                if self.kind == RoomKind::Public {
                    self.deps.memberships.mentioned(&self.room, &self.user, &stored).await;
                }
                flow
            }
            Ok(Appended::Duplicate(id)) => {
                tracing::debug!(%id, "resend of a stored message acknowledged again");
                self.acknowledge(cid, id).await
            }
            // Over the user's rate across all their sockets: as flooding.
            Ok(Appended::Throttled) => self.too_fast(cid).await,
            Ok(Appended::NewRoomRefused) => {
                let message = "This room does not exist, and you have opened many new rooms lately. Try later.";
                self.error(ErrorCode::RateLimited, message, cid).await
            }
            // The store says the user may not see the room (removed, and
            // the event not here yet): what the registry would do.
            Ok(Appended::NotVisible) => Flow::Close(frames::ACCESS_REVOKED),
            Err(err) => {
                // A store that did not answer may still have stored it (a
                // command can run after its caller gave up): say so, and
                // let the resend, with the same client_id, settle it.
                tracing::warn!(%err, "message not confirmed by the store");
                let message = "Not confirmed: the message may or may not be stored. \
                               Send it again with the same client_id; it is never stored twice.";
                self.error(ErrorCode::Unavailable, message, cid).await
            }
        }
    }

    /// After a message (`id`) stored in a direct room, records the
    /// conversation in both users' lists (the sidebar's, and
    /// `GET /api/rooms`) and tells the other user's sockets of it, so that
    /// a conversation just started shows and counts on their open pages:
    /// once per socket, which keeps a conversation's place in the lists
    /// close to its last message without a write per message. Best effort:
    /// a failure costs the list entry, not the message.
    async fn note_direct(&mut self, id: MessageId, at: UnixMillis) {
        let Some(other) = self.other.as_ref().filter(|_| !self.noted) else { return };
        self.noted = true;
        if let Err(err) = self.deps.rooms.note_direct(&self.room, &self.user, other, at).await {
            tracing::warn!(%err, "direct conversation not listed: store unavailable");
        }
        self.deps.memberships.direct_started(&self.room, &self.user, other.id, id).await;
    }

    /// Moves the user's read marker in this room. Only ids the room has are
    /// taken, so a marker never runs ahead of it: those this socket was
    /// sent (or could have been: up to the room's cursor when it joined),
    /// and beyond them, what the store has.
    async fn on_read(&mut self, up_to: String) -> Flow {
        let Ok(up_to) = up_to.parse::<MessageId>() else {
            return self.refuse("up_to is a message id.", None).await;
        };
        // Costs a store round trip, like a send (the client spends a token too).
        if let Err(flow) = self.rate_limit(None).await {
            return flow;
        }
        if up_to > self.last_sent {
            // Not sent here (yet): the client may have it from the page, or
            // as its own message's ack, before the tail brings it here.
            match self.deps.history.last_id(&self.room).await {
                Ok(newest) if up_to <= newest => {}
                Ok(_) => return self.refuse("up_to is after the newest message of this room.", None).await,
                Err(err) => {
                    tracing::warn!(%err, "read marker not checked: store unavailable");
                    return self.error(ErrorCode::Unavailable, READ_NOT_STORED, None).await;
                }
            }
        }
        self.flood = 0;
        match self.deps.history.mark_read(self.user.id, &self.room, up_to).await {
            Ok(_) => {
                let registry = &self.deps.registry;
                registry.send(registry.read(self.user.id, &self.room, up_to)).await;
                Flow::Continue
            }
            Err(err) => {
                tracing::warn!(%err, "read marker not stored");
                self.error(ErrorCode::Unavailable, READ_NOT_STORED, None).await
            }
        }
    }
}
