//! The workload: clients that behave like browsers (a session cookie,
//! `POST /login`, `/logout`, `/logout/everywhere`, `POST /session/refresh`
//! on `reauthenticate`) and like programs (`POST /api/token`, refresh,
//! `reauth` frames with the new access token, `/api/logout`), each holding
//! one socket in a public or private room, chatting, resending what was not
//! acknowledged with the same `client_id`, and reconnecting with `after`
//! (the last id it saw in the room) after any close that allows it. Owners
//! of private rooms add and remove members; members leave; now and then a
//! client tries a private room it is not a member of. Everything is written
//! to the journal as it happens.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::{stream::SplitSink, SinkExt, StreamExt};
use palaver::model::MessageId;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    chaos::{
        journal::{
            now, Closed, Credential, End, Frame, MembershipLog, Ms, SentLog, SessionLog, Shared, SocketLog, UserEnd,
        },
        rng::Rng,
        web::{self, token_exp, Failure, Refusal, Ws},
    },
    http::PASSWORD,
};

/// What the clients are to do now.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub(crate) enum Phase {
    /// The mixed workload.
    Run = 0,
    /// Nothing new: sockets stay (or come back) open, and what was sent
    /// is resent until acknowledged.
    Drain = 1,
    /// Close every socket and stop.
    Close = 2,
}

/// What every client shares: where the instances are, the rooms, who the
/// owners believe is a member, the journal, and the phase.
pub(crate) struct World {
    pub(crate) ports: Vec<u16>,
    pub(crate) journal: Shared,
    pub(crate) public_rooms: Vec<String>,
    /// Private rooms and their owners.
    pub(crate) private_rooms: Vec<(String, String)>,
    pub(crate) members: Mutex<HashMap<String, HashSet<String>>>,
    pub(crate) users: Vec<String>,
    /// How long a spent refresh token is still answered with its successor.
    pub(crate) refresh_grace: Ms,
    phase: AtomicU8,
}

impl World {
    pub(crate) fn new(
        ports: Vec<u16>,
        journal: Shared,
        public_rooms: Vec<String>,
        private_rooms: Vec<(String, String)>,
        members: HashMap<String, HashSet<String>>,
        users: Vec<String>,
        refresh_grace: Ms,
    ) -> World {
        World {
            ports,
            journal,
            public_rooms,
            private_rooms,
            members: Mutex::new(members),
            users,
            refresh_grace,
            phase: AtomicU8::new(Phase::Run as u8),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Run,
            1 => Phase::Drain,
            _ => Phase::Close,
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn is_member(&self, room: &str, user: &str) -> bool {
        self.members.lock().unwrap().get(room).is_some_and(|m| m.contains(user))
    }
}

/// What a socket's reader tells its client.
#[derive(Debug)]
enum Event {
    Hello,
    Ack { client_id: String, id: MessageId },
    Error { code: String, client_id: Option<String> },
    Reauthenticate,
    Reauthenticated,
    Closed(Closed),
}

struct Socket {
    log: Arc<Mutex<SocketLog>>,
    sink: SplitSink<Ws, Message>,
    events: mpsc::UnboundedReceiver<Event>,
    room: String,
    reader: JoinHandle<()>,
}

impl Socket {
    async fn send(&mut self, frame: serde_json::Value) {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.sink.send(Message::Text(frame.to_string().into()))).await;
    }

    /// Closes it from this side (recorded as such) and waits for its reader.
    async fn close(mut self) {
        self.log.lock().unwrap().closing.get_or_insert(now());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.send(Message::Close(None))).await;
        if tokio::time::timeout(Duration::from_secs(3), &mut self.reader).await.is_err() {
            self.reader.abort();
            let mut log = self.log.lock().unwrap();
            log.closed.get_or_insert((now(), Closed::ByClient));
        }
    }
}

/// A session this client holds.
struct Session {
    /// Its index in the journal.
    index: usize,
    cookie: Option<String>,
    access: Option<String>,
    refresh: Option<String>,
}

/// A message sent and not yet acknowledged.
struct Pending {
    client_id: String,
    body: String,
    room: String,
    /// Its index in the journal's `sent`.
    sent: usize,
    /// When to send it (again).
    due: Ms,
}

pub(crate) struct Client {
    id: usize,
    user: String,
    credential: Credential,
    /// Ignores `reauthenticate`, so its sockets meet their deadlines.
    sleepy: bool,
    rng: Rng,
    world: Arc<World>,
    session: Option<Session>,
    socket: Option<Socket>,
    /// Sockets of sessions this client ended, waiting for the server to
    /// close them (the checker times it), and sockets it is closing.
    left_open: Vec<Socket>,
    /// The room to reconnect to, after a close that allows it.
    rejoin: Option<String>,
    /// The last message id this client saw in each room.
    last_seen: HashMap<String, MessageId>,
    outbox: Vec<Pending>,
    next_message: u64,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Refresh tokens this client spent, and when.
    spent: Vec<(Ms, String)>,
}

fn form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap()
}

impl Client {
    pub(crate) fn new(
        id: usize,
        user: String,
        credential: Credential,
        sleepy: bool,
        rng: Rng,
        world: Arc<World>,
    ) -> Client {
        Client {
            id,
            user,
            credential,
            sleepy,
            rng,
            world,
            session: None,
            socket: None,
            left_open: Vec::new(),
            rejoin: None,
            last_seen: HashMap::new(),
            outbox: Vec::new(),
            next_message: 0,
            failures: 0,
            spent: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            let phase = self.world.phase();
            if phase == Phase::Close {
                break;
            }
            if self.session.is_none() {
                if !self.sign_in().await {
                    self.backoff().await;
                }
                continue;
            }
            if self.socket.is_none() {
                if !self.open().await {
                    self.backoff().await;
                }
                continue;
            }
            let tick = Duration::from_millis(self.rng.between(300, 700));
            let event = {
                let socket = self.socket.as_mut().unwrap();
                tokio::select! {
                    event = socket.events.recv() => Some(event.unwrap_or(Event::Closed(Closed::Broken("reader gone".into())))),
                    _ = tokio::time::sleep(tick) => None,
                }
            };
            match event {
                Some(event) => self.on_event(event).await,
                None => {
                    self.resend_due().await;
                    if phase == Phase::Run {
                        self.act().await;
                    }
                }
            }
        }
        if let Some(socket) = self.socket.take() {
            socket.close().await;
        }
        for socket in std::mem::take(&mut self.left_open) {
            socket.close().await;
        }
    }

    async fn backoff(&mut self) {
        self.failures += 1;
        let ceiling = 300 * u64::from(self.failures.min(10));
        tokio::time::sleep(Duration::from_millis(self.rng.between(100, ceiling))).await;
    }

    fn port(&mut self) -> (usize, u16) {
        let i = self.rng.below(self.world.ports.len() as u64) as usize;
        (i, self.world.ports[i])
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, crate::chaos::journal::Journal> {
        self.world.journal.lock().unwrap()
    }

    /// The credential header of the current session.
    fn credential_header(&self) -> String {
        let session = self.session.as_ref().expect("a session");
        match self.credential {
            Credential::Cookie => format!("Cookie: {}", session.cookie.as_deref().unwrap()),
            Credential::Token => format!("Authorization: Bearer {}", session.access.as_deref().unwrap()),
        }
    }

    /// Notes a request that may have slid the session: answered at `at`,
    /// or, with no answer, up to the moment it could last have been served
    /// (an instance stopped for up to 5 s, a store command's timeout).
    fn slid(&self, answered: Option<Ms>) {
        let Some(session) = &self.session else { return };
        let at = answered.unwrap_or(now() + 7_000);
        let mut journal = self.journal();
        let log = &mut journal.sessions[session.index];
        log.last_slide = log.last_slide.max(at);
    }

    /// Registers a new session in the journal.
    fn begin_session(&mut self, cookie: Option<String>, pair: Option<&serde_json::Value>, signed_in: Ms) {
        let access = pair.map(|p| p["access_token"].as_str().unwrap().to_owned());
        let refresh = pair.map(|p| p["refresh_token"].as_str().unwrap().to_owned());
        let index = {
            let mut journal = self.journal();
            journal.sessions.push(SessionLog {
                client: self.id,
                user: self.user.clone(),
                credential: self.credential,
                signed_in,
                last_slide: signed_in,
                ended: None,
                cookie: cookie.clone(),
                access_tokens: access.iter().cloned().collect(),
                refresh_tokens: refresh.iter().cloned().collect(),
            });
            journal.sessions.len() - 1
        };
        self.session = Some(Session { index, cookie, access, refresh });
        self.spent.clear();
        self.failures = 0;
    }

    /// Ends the current session on this side: its socket is left open for
    /// the server to close, and what it had not delivered is given up.
    fn drop_session(&mut self, end: Option<End>) {
        if let (Some(session), Some(end)) = (&self.session, end) {
            self.journal().sessions[session.index].ended = Some(end);
        }
        self.session = None;
        if let Some(socket) = self.socket.take() {
            self.remember(&socket);
            self.left_open.push(socket);
        }
        self.outbox.clear();
    }

    /// Keeps the last id `socket` saw, for the next `after` in its room.
    fn remember(&mut self, socket: &Socket) {
        if let Some(last) = socket.log.lock().unwrap().last_message() {
            let seen = self.last_seen.entry(socket.room.clone()).or_insert(last);
            *seen = (*seen).max(last);
        }
    }

    async fn sign_in(&mut self) -> bool {
        if self.world.phase() != Phase::Run {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return true;
        }
        let (_, port) = self.port();
        match self.credential {
            Credential::Cookie => {
                let body = form(&[("username", &self.user), ("password", PASSWORD)]);
                let headers = ["Content-Type: application/x-www-form-urlencoded".to_owned()];
                match web::request(port, "POST", "/login", &headers, &body).await {
                    Ok(r) if r.status == 303 && r.cookie().is_some() => {
                        self.begin_session(r.cookie(), None, now());
                        true
                    }
                    _ => false,
                }
            }
            Credential::Token => {
                let body = serde_json::json!({"username": self.user, "password": PASSWORD}).to_string();
                let headers = ["Content-Type: application/json".to_owned()];
                match web::request(port, "POST", "/api/token", &headers, &body).await {
                    Ok(r) if r.status == 200 => {
                        let pair = r.json();
                        self.begin_session(None, Some(&pair), now());
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// The rooms this client's user may see, as the owners last said.
    fn visible_rooms(&self) -> Vec<String> {
        let mut rooms = self.world.public_rooms.clone();
        rooms.extend(
            self.world
                .private_rooms
                .iter()
                .filter(|(r, _)| self.world.is_member(r, &self.user))
                .map(|(r, _)| r.clone()),
        );
        rooms
    }

    /// Opens a socket: into the room to rejoin, or a room of its own
    /// choosing; `after` the last id it saw there (or, the first time,
    /// sometimes the whole room, sometimes nothing).
    async fn open(&mut self) -> bool {
        let room = match self.rejoin.clone() {
            Some(room) => room,
            None => {
                // Private rooms half the time, when it is a member of any:
                // that is where removals have sockets to close.
                let rooms = self.visible_rooms();
                let private = &rooms[self.world.public_rooms.len()..];
                if !private.is_empty() && self.rng.chance(0.5) {
                    self.rng.pick(private).clone()
                } else {
                    self.rng.pick(&rooms).clone()
                }
            }
        };
        self.open_in(room, true).await
    }

    /// Opens a socket into `room`; `keep`: as this client's socket (else
    /// it is a probe, closed at once).
    async fn open_in(&mut self, room: String, keep: bool) -> bool {
        let (instance, port) = self.port();
        let after = match self.last_seen.get(&room) {
            Some(id) => Some(*id),
            None if self.rng.chance(0.3) => Some(MessageId::ZERO),
            None => None,
        };
        let query = match after {
            Some(after) => format!("?room={room}&after={after}"),
            None => format!("?room={room}"),
        };
        let header = self.credential_header();
        let session = self.session.as_ref().unwrap();
        let upgrade_sent = now();
        let token_exps = match (&session.access, self.credential) {
            (Some(token), Credential::Token) => vec![(upgrade_sent, token_exp(token))],
            _ => Vec::new(),
        };
        let log = Arc::new(Mutex::new(SocketLog {
            id: 0,
            client: self.id,
            user: self.user.clone(),
            session: session.index,
            credential: self.credential,
            instance,
            room: room.clone(),
            after,
            upgrade_sent,
            hello: None,
            refused: None,
            token_exps,
            reauth_exp: None,
            frames: Vec::new(),
            closing: None,
            closed: None,
        }));
        {
            let mut journal = self.journal();
            log.lock().unwrap().id = journal.sockets.len();
            journal.sockets.push(log.clone());
        }
        let ws = match web::upgrade(port, &query, &header).await {
            Ok(ws) => ws,
            Err(refusal) => {
                let (refused, answered) = match &refusal {
                    Refusal::Status(status) => (status.to_string(), Some(now())),
                    Refusal::Failed(Failure::Refused) => ("connection refused".to_owned(), None),
                    Refusal::Failed(Failure::Unknown(why)) => (why.clone(), None),
                };
                log.lock().unwrap().refused = Some(refused);
                match refusal {
                    Refusal::Status(401) => self.credential_refused().await,
                    Refusal::Status(403) if keep => self.rejoin = None,
                    Refusal::Status(_) if self.credential == Credential::Cookie => self.slid(answered),
                    Refusal::Failed(Failure::Unknown(_)) if self.credential == Credential::Cookie => self.slid(None),
                    _ => {}
                }
                return false;
            }
        };
        if self.credential == Credential::Cookie {
            self.slid(Some(now()));
        }
        let (sink, stream) = ws.split();
        let (tx, mut events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(stream, log.clone(), tx));
        let first = tokio::time::timeout(web::TIMEOUT, events.recv()).await;
        let socket = Socket { log, sink, events, room: room.clone(), reader };
        match first {
            Ok(Some(Event::Hello)) => {}
            Ok(Some(Event::Closed(closed))) => {
                if keep {
                    self.closed(&room, &closed).await;
                }
                return false;
            }
            _ => {
                socket.close().await;
                return false;
            }
        }
        self.failures = 0;
        if !keep {
            // A probe of a room this user may not see: it should have been
            // refused; the checker reads what it got.
            tokio::time::sleep(Duration::from_millis(500)).await;
            socket.close().await;
            return true;
        }
        self.rejoin = Some(room.clone());
        self.socket = Some(socket);
        // What was not acknowledged in this room goes again, in order.
        for pending in &mut self.outbox {
            if pending.room == room {
                pending.due = 0;
            }
        }
        self.outbox.retain(|p| p.room == room);
        self.resend_due().await;
        true
    }

    /// The credential was refused (401): a token client refreshes, a
    /// cookie client signs in again.
    async fn credential_refused(&mut self) {
        if self.credential == Credential::Token && self.refresh().await {
            return;
        }
        self.drop_session(None);
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Hello => {}
            Event::Ack { client_id, id } => {
                if let Some(at) = self.outbox.iter().position(|p| p.client_id == client_id) {
                    let pending = self.outbox.remove(at);
                    self.journal().sent[pending.sent].acked.get_or_insert((now(), id));
                }
            }
            Event::Error { code, client_id } => {
                // `unavailable` (the outcome is unknown) and `rate_limited`
                // are sent again, with the same client_id.
                if let Some(pending) = self.outbox.iter_mut().find(|p| Some(&p.client_id) == client_id.as_ref()) {
                    if code == "unavailable" || code == "rate_limited" {
                        pending.due = now() + 500 + self.rng.below(1000);
                    }
                }
            }
            Event::Reauthenticate if !self.sleepy => self.reauthenticate().await,
            Event::Reauthenticate => {}
            Event::Reauthenticated => {}
            Event::Closed(closed) => {
                let socket = self.socket.take().unwrap();
                self.remember(&socket);
                let room = socket.room.clone();
                let _ = socket.reader.await;
                self.closed(&room, &closed).await;
            }
        }
    }

    /// After the server closed this client's socket in `room`.
    async fn closed(&mut self, room: &str, closed: &Closed) {
        match closed {
            Closed::Code(4401, reason) if reason == "token expired" || reason == "invalid token" => {
                if !self.refresh().await {
                    self.drop_session(None);
                }
            }
            Closed::Code(4401, _) => self.drop_session(None),
            Closed::Code(4403, _) => {
                self.rejoin = None;
                self.outbox.clear();
            }
            _ => {
                // Reconnect with `after`, with a little jitter.
                self.rejoin = Some(room.to_owned());
                tokio::time::sleep(Duration::from_millis(self.rng.between(100, 1000))).await;
            }
        }
    }

    /// Sends what is due: new messages' first tries, and resends.
    async fn resend_due(&mut self) {
        let Some(socket) = &mut self.socket else { return };
        let at = now();
        let room = socket.room.clone();
        for pending in self.outbox.iter_mut().filter(|p| p.due <= at && p.room == room) {
            let frame = serde_json::json!({"type": "send", "body": pending.body, "client_id": pending.client_id});
            socket.send(frame).await;
            // No answer within 10 s: send it again.
            pending.due = at + 10_000;
            self.world.journal.lock().unwrap().sent[pending.sent].attempts += 1;
        }
    }

    /// One step of the workload, chosen at random.
    async fn act(&mut self) {
        let r = self.rng.below(10_000);
        match (self.credential, r) {
            (_, 0..=3499) => self.say().await,
            (_, 3500..=3599) => self.switch_room().await,
            (_, 3600..=3999) => self.manage_members().await,
            (_, 4000..=4199) => self.probe_private_room().await,
            (Credential::Cookie, 4200..=4239) => self.logout("/logout", false).await,
            (Credential::Cookie, 4240..=4251) => self.logout("/logout/everywhere", true).await,
            (Credential::Cookie, 4252..=4271) => self.sign_in_over().await,
            (Credential::Cookie, 4272..=4371) => {
                self.refresh_cookie().await;
            }
            (Credential::Token, 4200..=4239) => self.logout("/api/logout", false).await,
            (Credential::Token, 4240..=4251) => self.logout("/api/logout/everywhere", true).await,
            (Credential::Token, 4252..=4271) => self.reuse_spent_token().await,
            (Credential::Token, 4272..=4371) => {
                self.refresh().await;
            }
            _ => {}
        }
    }

    async fn say(&mut self) {
        let Some(socket) = &self.socket else { return };
        if self.outbox.len() >= 5 {
            return;
        }
        let client_id = format!("c{}-{}", self.id, self.next_message);
        self.next_message += 1;
        let body = format!("{client_id} from {}", self.user);
        let sent = {
            let mut journal = self.world.journal.lock().unwrap();
            journal.sent.push(SentLog {
                user: self.user.clone(),
                room: socket.room.clone(),
                client_id: client_id.clone(),
                first_sent: now(),
                attempts: 0,
                acked: None,
            });
            journal.sent.len() - 1
        };
        self.outbox.push(Pending { client_id, body, room: socket.room.clone(), sent, due: 0 });
        self.resend_due().await;
    }

    /// Leaves the room for another: this client closes its socket.
    async fn switch_room(&mut self) {
        if let Some(socket) = self.socket.take() {
            self.remember(&socket);
            socket.close().await;
        }
        self.rejoin = None;
        self.outbox.clear();
    }

    /// Tries a private room this user is not a member of (a removed
    /// member's, or a stranger's): the upgrade must be refused.
    async fn probe_private_room(&mut self) {
        let strangers: Vec<String> = self
            .world
            .private_rooms
            .iter()
            .filter(|(r, _)| !self.world.is_member(r, &self.user))
            .map(|(r, _)| r.clone())
            .collect();
        if strangers.is_empty() {
            return;
        }
        let room = self.rng.pick(&strangers).clone();
        self.open_in(room, false).await;
    }

    /// The owner of a private room adds or removes someone; a member of
    /// one leaves it now and then.
    async fn manage_members(&mut self) {
        let owned: Vec<String> =
            self.world.private_rooms.iter().filter(|(_, o)| *o == self.user).map(|(r, _)| r.clone()).collect();
        let (room, user, add) = if let Some(room) = owned.first().filter(|_| self.rng.chance(0.9)) {
            let others: Vec<String> = self.world.users.iter().filter(|u| **u != self.user).cloned().collect();
            let user = self.rng.pick(&others).clone();
            let add = !self.world.is_member(room, &user);
            (room.clone(), user, add)
        } else {
            // Leaving: only a room it is in and does not own, now and then.
            let Some(room) = self.socket.as_ref().map(|s| s.room.clone()) else { return };
            if !self.rng.chance(0.1)
                || owned.contains(&room)
                || !self.world.private_rooms.iter().any(|(r, _)| *r == room)
            {
                return;
            }
            (room, self.user.clone(), false)
        };
        let (_, port) = self.port();
        let mut headers = vec![self.credential_header()];
        if self.credential == Credential::Cookie {
            headers.push(format!("Origin: http://127.0.0.1:{port}"));
        }
        let method = if add { "PUT" } else { "DELETE" };
        let sent = now();
        let answer = web::request(port, method, &format!("/api/rooms/{room}/members/{user}"), &headers, "").await;
        // The room API slides a cookie session, as every page does.
        if self.credential == Credential::Cookie {
            match &answer {
                Ok(r) if r.status != 401 => self.slid(Some(now())),
                Err(Failure::Unknown(_)) => self.slid(None),
                _ => {}
            }
        }
        let answered = match &answer {
            Ok(r) if r.status == 204 => Some(now()),
            Ok(_) | Err(Failure::Refused) => return,
            Err(Failure::Unknown(_)) => None,
        };
        if answered.is_some() {
            let mut members = self.world.members.lock().unwrap();
            let room_members = members.entry(room.clone()).or_default();
            if add {
                room_members.insert(user.clone());
            } else {
                room_members.remove(&user);
            }
        }
        self.journal().memberships.push(MembershipLog { room, user, added: add, sent, answered });
    }

    /// `POST /logout`, `/logout/everywhere`, `/api/logout` or
    /// `/api/logout/everywhere`.
    async fn logout(&mut self, path: &'static str, everywhere: bool) {
        let (_, port) = self.port();
        let sent = now();
        let answer = web::request(port, "POST", path, &[self.credential_header()], "").await;
        let ok = match self.credential {
            Credential::Cookie => 303,
            Credential::Token => 204,
        };
        match answer {
            Ok(r) if r.status == ok => {
                let end = End { by: path, sent, answered: now() };
                if everywhere {
                    let user_end = UserEnd { user: self.user.clone(), end: end.clone() };
                    self.journal().user_ends.push(user_end);
                }
                self.drop_session(Some(end));
            }
            // Signed out already (a 303 to /login for a cookie is the same
            // answer, so only a token client can tell): sign in again.
            Ok(r) if r.status == 401 => self.drop_session(None),
            Ok(_) | Err(Failure::Refused) => {}
            // It may or may not have ended the session: this client gives
            // it up, and the checker asks nothing of it but its deadline.
            Err(Failure::Unknown(_)) => self.drop_session(None),
        }
    }

    /// A browser signing in again while signed in: the old session ends.
    async fn sign_in_over(&mut self) {
        let (_, port) = self.port();
        let body = form(&[("username", &self.user), ("password", PASSWORD)]);
        let headers = ["Content-Type: application/x-www-form-urlencoded".to_owned(), self.credential_header()];
        let sent = now();
        match web::request(port, "POST", "/login", &headers, &body).await {
            Ok(r) if r.status == 303 && r.cookie().is_some() => {
                let answered = now();
                self.drop_session(Some(End { by: "a sign-in over it", sent, answered }));
                self.begin_session(r.cookie(), None, answered);
            }
            Ok(_) | Err(Failure::Refused) => {}
            Err(Failure::Unknown(_)) => self.drop_session(None),
        }
    }

    /// `POST /session/refresh`: slides the cookie session.
    async fn refresh_cookie(&mut self) -> bool {
        let (_, port) = self.port();
        match web::request(port, "POST", "/session/refresh", &[self.credential_header()], "").await {
            Ok(r) if r.status == 200 => {
                self.slid(Some(now()));
                true
            }
            Ok(r) if r.status == 401 => {
                self.drop_session(None);
                false
            }
            Ok(_) | Err(Failure::Refused) => false,
            Err(Failure::Unknown(_)) => {
                self.slid(None);
                false
            }
        }
    }

    /// `POST /api/token/refresh`: a new pair, the session slid. False when
    /// refused (the session is over: the caller gives it up).
    async fn refresh(&mut self) -> bool {
        let Some(refresh) = self.session.as_ref().and_then(|s| s.refresh.clone()) else { return false };
        let (_, port) = self.port();
        let body = serde_json::json!({"refresh_token": refresh}).to_string();
        let headers = ["Content-Type: application/json".to_owned()];
        match web::request(port, "POST", "/api/token/refresh", &headers, &body).await {
            Ok(r) if r.status == 200 => {
                let answered = now();
                let pair = r.json();
                let access = pair["access_token"].as_str().unwrap().to_owned();
                let next = pair["refresh_token"].as_str().unwrap().to_owned();
                self.slid(Some(answered));
                let session = self.session.as_mut().unwrap();
                {
                    let mut journal = self.world.journal.lock().unwrap();
                    let log = &mut journal.sessions[session.index];
                    log.access_tokens.push(access.clone());
                    log.refresh_tokens.push(next.clone());
                }
                session.access = Some(access);
                if let Some(spent) = session.refresh.replace(next) {
                    self.spent.push((answered, spent));
                }
                true
            }
            Ok(r) if r.status == 401 => {
                self.drop_session(None);
                false
            }
            Ok(_) | Err(Failure::Refused) => false,
            Err(Failure::Unknown(_)) => {
                self.slid(None);
                false
            }
        }
    }

    /// `reauthenticate`: a cookie client refreshes its session and sends
    /// `reauth`; a token client refreshes its tokens and sends `reauth`
    /// with the new access token.
    async fn reauthenticate(&mut self) {
        let refreshed = match self.credential {
            Credential::Cookie => self.refresh_cookie().await,
            Credential::Token => self.refresh().await,
        };
        if !refreshed {
            return;
        }
        let access = self.session.as_ref().and_then(|s| s.access.clone());
        let Some(socket) = &mut self.socket else { return };
        match (self.credential, access) {
            (Credential::Token, Some(token)) => {
                socket.log.lock().unwrap().reauth_exp = Some(token_exp(&token));
                socket.send(serde_json::json!({"type": "reauth", "token": token})).await;
            }
            _ => socket.send(serde_json::json!({"type": "reauth"})).await,
        }
    }

    /// Presents a refresh token spent more than the grace ago: two parties
    /// hold the session's tokens, so it must end at once (401), its sockets
    /// closed with 4401 `session revoked`.
    async fn reuse_spent_token(&mut self) {
        let grace = self.world.refresh_grace;
        let Some((_, token)) = self.spent.iter().rev().find(|(at, _)| at + grace + 2_000 < now()).cloned() else {
            return;
        };
        let (_, port) = self.port();
        let body = serde_json::json!({"refresh_token": token}).to_string();
        let headers = ["Content-Type: application/json".to_owned()];
        let sent = now();
        match web::request(port, "POST", "/api/token/refresh", &headers, &body).await {
            Ok(r) if r.status == 401 => self.drop_session(Some(End {
                by: "a spent refresh token presented after the grace",
                sent,
                answered: now(),
            })),
            Ok(r) if r.status == 200 => {
                // Refused by the promise: the checker reports it.
                let session = self.session.as_ref().unwrap().index;
                let retry = crate::chaos::journal::Retry {
                    session,
                    what: "a refresh token spent longer ago than the grace",
                    sent,
                    status: Some(200),
                };
                self.journal().retries.push(retry);
            }
            Ok(_) | Err(Failure::Refused) => {}
            Err(Failure::Unknown(_)) => self.drop_session(None),
        }
    }
}

/// A socket's reader: records every frame with the time it came, tells
/// the client what it acts on, and records how the socket ended.
async fn read(
    mut stream: futures_util::stream::SplitStream<Ws>,
    log: Arc<Mutex<SocketLog>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let closed = loop {
        let Some(message) = stream.next().await else { break Closed::Broken("the stream ended".into()) };
        let at = now();
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(Some(frame))) => break Closed::Code(frame.code.into(), frame.reason.to_string()),
            Ok(Message::Close(None)) => break Closed::Code(1005, String::new()),
            Ok(_) => continue,
            Err(err) => break Closed::Broken(err.to_string()),
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let kind = frame_kind(frame["type"].as_str().unwrap_or_default());
        let mut message = None;
        let event = match kind {
            "hello" => {
                log.lock().unwrap().hello = Some(at);
                Some(Event::Hello)
            }
            "message" => {
                let id: MessageId = frame["id"].as_str().and_then(|i| i.parse().ok()).expect("a message id");
                let user = frame["user"].as_str().unwrap_or_default().to_owned();
                message = Some((id, user, frame["client_id"].as_str().map(str::to_owned)));
                None
            }
            "ack" => Some(Event::Ack {
                client_id: frame["client_id"].as_str().unwrap_or_default().to_owned(),
                id: frame["id"].as_str().and_then(|i| i.parse().ok()).expect("an acked id"),
            }),
            "error" => Some(Event::Error {
                code: frame["code"].as_str().unwrap_or_default().to_owned(),
                client_id: frame["client_id"].as_str().map(str::to_owned),
            }),
            "reauthenticate" => Some(Event::Reauthenticate),
            "reauthenticated" => {
                let mut log = log.lock().unwrap();
                if let Some(exp) = log.reauth_exp.take() {
                    log.token_exps.push((at, exp));
                }
                Some(Event::Reauthenticated)
            }
            _ => None,
        };
        log.lock().unwrap().frames.push(Frame { at, kind, message });
        if let Some(event) = event {
            let _ = events.send(event);
        }
    };
    let at = now();
    let mut log = log.lock().unwrap();
    let closed = if log.closing.is_some() { Closed::ByClient } else { closed };
    log.closed.get_or_insert((at, closed.clone()));
    let _ = events.send(Event::Closed(closed));
}

/// The kinds of server frame (docs/protocol.md §3.2), as static names.
fn frame_kind(kind: &str) -> &'static str {
    const KINDS: [&str; 11] = [
        "hello",
        "presence",
        "presence_diff",
        "message",
        "ack",
        "unread",
        "room_added",
        "room_removed",
        "reauthenticate",
        "reauthenticated",
        "error",
    ];
    KINDS.iter().find(|k| **k == kind).copied().unwrap_or("unknown")
}
