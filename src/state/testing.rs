//! A test rig for the realtime tasks: every handle as the wiring builds it,
//! over the in-process backend, and sockets over in-memory pipes, so the
//! socket, hub, presence and lifecycle tasks are tested without Redis or a
//! network.

use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{io::DuplexStream, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message as WsMessage},
    WebSocketStream,
};
use tower_sessions::Session;

use super::realtime;
use crate::{
    auth::{
        access::{RoomAccess, RoomRef, Visible},
        session::{AuthSession, Current},
        Sessions,
    },
    backend::Backend,
    clock::UnixMillis,
    config::Config,
    model::{MessageId, NewMessage, RoomName, User, UserId},
    realtime::{
        hub::Hub,
        lifecycle::Lifecycle,
        presence::{Presence, PresenceTask},
        registry::{Epoch, Registry},
        socket::{self, SocketContext, SocketDeps},
        upgrade::ws_config,
    },
};

/// How long a test waits for anything before failing.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub struct Rig {
    pub backend: Backend,
    access: RoomAccess,
    pub registry: Arc<Registry>,
    pub sessions: Sessions,
    pub presence: Presence,
    pub hub: Hub,
    pub deps: Arc<SocketDeps>,
    lifecycle: Lifecycle,
    presence_task: Option<PresenceTask>,
}

/// A signed-in user: the session as the store has it, and a handle on it.
pub struct SignedIn {
    pub current: Current,
    pub cookie: AuthSession,
    pub session: Session,
}

pub type Client = WebSocketStream<DuplexStream>;

impl Rig {
    pub fn new(config: Config) -> Rig {
        Self::with_backend(&config, Backend::memory(&config.chat))
    }

    /// A rig over `backend` (the in-process one, with some handles replaced).
    pub fn with_backend(config: &Config, backend: Backend) -> Rig {
        let config = config.clone();
        let keys = crate::auth::tokens::TokenKeys::new(
            &crate::auth::tokens::generate_signing_key(),
            &[],
            "http://127.0.0.1:8080",
            &[],
            config.tokens.access_ttl,
            b"test refresh key",
        )
        .expect("a fresh key");
        let access = RoomAccess::new(backend.history.clone(), backend.rooms.clone(), backend.users.clone());
        let realtime =
            realtime(&config, &backend, &access, "this-instance".into(), Arc::new(keys), &Default::default());
        Rig {
            access,
            registry: realtime.registry,
            sessions: realtime.sessions,
            presence: realtime.lifecycle.presence.clone(),
            hub: realtime.hub,
            deps: realtime.socket,
            lifecycle: realtime.lifecycle,
            presence_task: Some(realtime.presence_task),
            backend,
        }
    }

    /// The presence task, to run (once).
    pub fn presence_task(&mut self) -> PresenceTask {
        self.presence_task.take().expect("the presence task is taken once")
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }

    /// Signs a new user in, as `POST /login` would (registered first,
    /// when the name is new).
    pub async fn sign_in(&self, name: &str) -> SignedIn {
        let session = Session::new(None, Arc::new(self.backend.sessions.clone()), None);
        let cookie = self.sessions.cookie(session.clone());
        let user = User { id: UserId::new_v4(), name: name.into() };
        let user = match self.backend.users.create(&user, "not a hash").await.expect("registered") {
            true => user,
            false => self.backend.users.find(name).await.expect("found").expect("registered").user,
        };
        let current = self.sessions.sign_in(&cookie, user, &Default::default(), false).await.expect("sign in");
        SignedIn { current, cookie, session }
    }

    /// Stores a message from `user` (who need not have a socket) in `room`,
    /// as a send would, and returns its id.
    pub async fn store(&self, room: &str, user: &str, body: &str) -> MessageId {
        let room = RoomName::parse(room).expect("a valid room");
        self.deps.history.append(&room, said(user, body)).await.expect("stored").id().expect("a new message")
    }

    /// Opens a socket for `who` in `room` (a name, or `@user`), as an
    /// accepted upgrade would (asking the same [`RoomAccess`]).
    pub async fn open(&self, who: &SignedIn, room: &str, after: Option<MessageId>) -> (Client, JoinHandle<()>) {
        let epoch = self.registry.epoch();
        let room = self.visible(who, room).await.expect("visible");
        self.open_checked(who, room, epoch, after).await
    }

    /// What the upgrade's check answers `who` for `room`.
    pub async fn visible(&self, who: &SignedIn, room: &str) -> Option<Visible> {
        let wanted = RoomRef::parse(room).expect("a valid room");
        self.access.check(who.current.user.id, &wanted).await.expect("an answer").visible()
    }

    /// Opens a socket whose access was checked (`room`) after `epoch`.
    pub async fn open_checked(
        &self,
        who: &SignedIn,
        room: Visible,
        epoch: Epoch,
        after: Option<MessageId>,
    ) -> (Client, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let slot = self.registry.reserve(who.current.user.id, who.current.session_id).expect("a free slot");
        let ctx = SocketContext {
            session_id: who.current.session_id,
            user: who.current.user.clone(),
            credential: socket::Credential::Cookie,
            room,
            epoch,
            after,
            unread: true,
            expires_at: who.current.expires_at,
            slot,
        };
        let deps = self.deps.clone();
        let task = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(ws_config())).await;
            socket::serve(deps, ws, ctx).await;
        });
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (client, task)
    }
}

/// A message from `user`, without a client id, sent now.
pub fn said(user: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: UserId::new_v4(),
        user: user.into(),
        body: body.into(),
        client_id: None,
        client_id_shown: false,
        sent_at: UnixMillis::now(),
    }
}

/// What the client side of a test socket receives.
#[derive(Debug, PartialEq)]
pub enum Received {
    Json(Value),
    Close(u16, String),
    Ended,
}

pub async fn receive(ws: &mut Client) -> Received {
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => return Received::Json(serde_json::from_str(&text).unwrap()),
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, reason) =
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                    return Received::Close(code, reason);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Ended,
            }
        }
    };
    tokio::time::timeout(DEADLINE, next).await.expect("a frame in time")
}

/// The next JSON frame of `kind`, skipping others.
pub async fn next_of(ws: &mut Client, kind: &str) -> Value {
    loop {
        match receive(ws).await {
            Received::Json(v) if v["type"] == kind => return v,
            Received::Json(_) => continue,
            other => panic!("expected a {kind} frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame.
pub async fn closed(ws: &mut Client) -> (u16, String) {
    loop {
        match receive(ws).await {
            Received::Json(_) => continue,
            Received::Close(code, reason) => return (code, reason),
            Received::Ended => panic!("ended without a close frame"),
        }
    }
}

pub async fn send(ws: &mut Client, frame: Value) {
    ws.send(WsMessage::Text(frame.to_string().into())).await.expect("send");
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let polled = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, polled).await.unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}
