//! A stand-in for the palaver server: the token API and the room routes
//! (SPEC §6) answered from a little state, and every accepted WebSocket
//! handed to the test to drive by hand. And the real `palaver-cli` binary,
//! run as a child with pipes.

#![allow(dead_code)]

pub mod pty;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::timeout,
};
use tokio_tungstenite::{
    accept_hdr_async,
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

pub const WAIT: Duration = Duration::from_secs(10);

/// What the stand-in knows and what it saw.
#[derive(Default)]
pub struct State {
    /// `expires_in` of the access tokens it issues.
    pub access_ttl: u64,
    pub issued: u32,
    pub live_access: HashSet<String>,
    /// The one refresh token that works now.
    pub live_refresh: Option<String>,
    pub refreshes: u32,
    pub logouts: u32,
    /// "METHOD PATH" of every HTTP request, upgrades included.
    pub requests: Vec<String>,
    /// The rooms, by the name alice (the one user who signs in here) calls
    /// them: a direct room as `@bob`.
    pub rooms: BTreeMap<String, RoomState>,
    /// The users that exist.
    pub users: BTreeSet<String>,
    /// Rooms whose upgrade is refused with 403: alice may not see them.
    pub forbidden: HashSet<String>,
    /// `POST /api/rooms` is answered 429 (the new-room quota is spent).
    pub room_quota_spent: bool,
    /// Every access token is refused (refreshes still work).
    pub refuse_tokens: bool,
    /// The next this many upgrades are answered 503.
    pub unavailable: u32,
    /// What `GET /chat/{room}/history` answers with, for any room: the
    /// stored messages, oldest first.
    pub history: Vec<Value>,
    /// The `client` field of every `POST /api/token`.
    pub clients: Vec<Value>,
    /// What `GET /api/sessions` lists; `DELETE /api/sessions/{id}` takes one out.
    pub sessions: Vec<Value>,
}

/// A room as the stand-in keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    /// `public`, `private` or `direct`.
    pub visibility: &'static str,
    /// (user, role), longest standing first.
    pub members: Vec<(String, &'static str)>,
    pub unread: Option<u64>,
}

impl RoomState {
    pub fn public(unread: Option<u64>) -> RoomState {
        RoomState { visibility: "public", members: Vec::new(), unread }
    }

    pub fn private(members: &[(&str, &'static str)]) -> RoomState {
        let members = members.iter().map(|(u, r)| (u.to_string(), *r)).collect();
        RoomState { visibility: "private", members, unread: None }
    }

    pub fn direct(with: &str) -> RoomState {
        let members = vec![("alice".to_owned(), "member"), (with.to_owned(), "member")];
        RoomState { visibility: "direct", members, unread: None }
    }

    pub fn has(&self, user: &str) -> bool {
        self.members.iter().any(|(u, _)| u == user)
    }
}

impl State {
    fn issue(&mut self) -> Value {
        self.issued += 1;
        let (access, refresh) = (format!("AT.secret.{}", self.issued), format!("RT.secret.{}", self.issued));
        self.live_access.insert(access.clone());
        self.live_refresh = Some(refresh.clone());
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
            "session_expires_at": 4_000_000_000_000u64,
        })
    }

    fn accepts(&self, bearer: Option<&str>) -> bool {
        !self.refuse_tokens && bearer.is_some_and(|b| self.live_access.contains(b))
    }

    /// Ends the session: no token works any more.
    pub fn end_session(&mut self) {
        self.live_access.clear();
        self.live_refresh = None;
    }
}

/// One accepted WebSocket, with what its upgrade carried.
pub struct Socket {
    pub query: String,
    pub bearer: Option<String>,
    ws: WebSocketStream<TcpStream>,
}

impl Socket {
    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// The next JSON frame from the client (pings and pongs skipped);
    /// `None` when it closed.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            match timeout(WAIT, self.ws.next()).await.expect("a frame from the client in time")? {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Nothing from the client for `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> Result<(), Value> {
        match timeout(d, self.recv()).await {
            Err(_) => Ok(()),
            Ok(Some(v)) => Err(v),
            Ok(None) => Err(json!("closed")),
        }
    }

    /// Waits for the client's close (it may first wait out its 10 s for
    /// acks) and says with which code.
    pub async fn closed_with(&mut self) -> Option<u16> {
        loop {
            match timeout(2 * WAIT, self.ws.next()).await.expect("a close in time") {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = self.ws.close(Some(frame)).await;
        while let Ok(Some(Ok(_))) = timeout(WAIT, self.ws.next()).await {}
    }

    pub async fn hello(&mut self, user: &str, room: &str) {
        self.send(json!({"type":"hello","user":user,"room":room,"expires_at":4_000_000_000_000u64})).await;
    }
}

pub struct StandIn {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    sockets: mpsc::UnboundedReceiver<Socket>,
}

impl StandIn {
    pub async fn start(access_ttl: u64) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let users = ["alice", "bob", "carol"].into_iter().map(str::to_owned).collect();
        let state = Arc::new(Mutex::new(State { access_ttl, users, ..State::default() }));
        let (tx, sockets) = mpsc::unbounded_channel();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, tx) = (st.clone(), tx.clone());
                tokio::spawn(async move { serve(stream, st, tx).await });
            }
        });
        StandIn { url: format!("http://{addr}"), state, sockets }
    }

    /// The next WebSocket the client opened (with a live token).
    pub async fn socket(&mut self) -> Socket {
        timeout(WAIT, self.sockets.recv()).await.expect("the client connects in time").unwrap()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// A stand-in, and a home where alice has logged in to it.
    pub async fn signed_in(access_ttl: u64) -> (StandIn, Home) {
        let server = StandIn::start(access_ttl).await;
        let home = Home::new(&server.url);
        home.login().await;
        (server, home)
    }

    /// `palaver-cli ARGS` from `home`, its socket greeted in `room` as alice,
    /// once the client has said it is connected.
    pub async fn chat(&mut self, home: &Home, args: &[&str], room: &str) -> (Cli, Socket) {
        let mut cli = home.cli(args);
        let mut socket = self.socket().await;
        socket.hello("alice", room).await;
        cli.err_until(&format!("connected to {room} as alice")).await;
        (cli, socket)
    }

    /// How many upgrades asked for a path starting with `prefix`.
    pub fn upgrades(&self, prefix: &str) -> usize {
        self.state().requests.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

async fn serve(stream: TcpStream, state: Arc<Mutex<State>>, sockets: mpsc::UnboundedSender<Socket>) {
    let mut first = [0u8; 8];
    loop {
        match stream.peek(&mut first).await {
            Ok(n) if n >= 8 => break,
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    if first.starts_with(b"GET /ws") {
        upgrade(stream, state, sockets).await
    } else {
        http(stream, state).await
    }
}

async fn upgrade(stream: TcpStream, state: Arc<Mutex<State>>, sockets: mpsc::UnboundedSender<Socket>) {
    let mut seen = (String::new(), None);
    let st = state.clone();
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        seen = (req.uri().query().unwrap_or("").to_owned(), bearer.clone());
        let mut st = st.lock().unwrap();
        st.requests.push(format!("GET {}", req.uri()));
        let room = seen.0.split('&').find_map(|p| p.strip_prefix("room=")).unwrap_or("").replace("%40", "@");
        let refuse = |status, body: &str| {
            let mut refusal = ErrorResponse::new(Some(body.to_owned()));
            *refusal.status_mut() = status;
            Err(refusal)
        };
        if st.unavailable > 0 {
            st.unavailable -= 1;
            refuse(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"unavailable","message":"store unavailable"}"#)
        } else if !st.accepts(bearer.as_deref()) {
            refuse(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized","message":"sign in again"}"#)
        } else if st.forbidden.contains(&room) {
            refuse(StatusCode::FORBIDDEN, r#"{"error":"forbidden","message":"No such room, or you are not a member."}"#)
        } else {
            Ok(resp)
        }
    };
    if let Ok(ws) = accept_hdr_async(stream, check).await {
        let _ = sockets.send(Socket { query: seen.0, bearer: seen.1, ws });
    }
}

async fn http(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (request_line.next().unwrap_or(""), request_line.next().unwrap_or(""));
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));

    let (status, extra, reply) = {
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{method} {path}"));
        if (method, path) == ("POST", "/api/token") {
            st.clients.push(body["client"].clone());
        }
        match (method, path) {
            ("POST", "/api/token") => match body["password"].as_str() {
                Some("right password") => (200, "", st.issue().to_string()),
                Some("throttle me") => (
                    429,
                    "Retry-After: 30\r\n",
                    json!({"error":"too_many_attempts","message":"Too many failed sign-ins."}).to_string(),
                ),
                _ => (401, "", json!({"error":"invalid_credentials"}).to_string()),
            },
            ("POST", "/api/token/refresh") => {
                let given = body["refresh_token"].as_str().map(str::to_owned);
                if given.is_some() && given == st.live_refresh {
                    st.refreshes += 1;
                    (200, "", st.issue().to_string())
                } else {
                    (401, "", json!({"error":"invalid_token","message":"the session has ended"}).to_string())
                }
            }
            ("POST", "/api/logout") => {
                if bearer.is_some_and(|b| st.live_access.contains(&b)) {
                    st.logouts += 1;
                    st.end_session();
                    (204, "", String::new())
                } else {
                    (401, "", json!({"error":"unauthorized","message":"no such session"}).to_string())
                }
            }
            (_, p) if p == "/api/rooms" || p.starts_with("/api/rooms/") => {
                if st.accepts(bearer.as_deref()) {
                    rooms_api(&mut st, method, &p["/api/rooms".len()..], &body)
                } else {
                    (401, "", json!({"error":"unauthorized","message":"sign in again"}).to_string())
                }
            }
            ("GET", p) if p.starts_with("/chat/") && p.contains("/history") => {
                if st.accepts(bearer.as_deref()) {
                    let limit: usize = p.split_once("limit=").and_then(|(_, n)| n.parse().ok()).unwrap_or(50);
                    let from = st.history.len().saturating_sub(limit);
                    (200, "", json!({"messages": st.history[from..], "start": from == 0}).to_string())
                } else {
                    (401, "", json!({"error":"unauthorized","message":"sign in again"}).to_string())
                }
            }
            (_, p) if p.starts_with("/api/sessions") && !st.accepts(bearer.as_deref()) => {
                (401, "", json!({"error":"unauthorized","message":"sign in again"}).to_string())
            }
            ("GET", "/api/sessions") => (200, "", json!({ "sessions": st.sessions }).to_string()),
            ("DELETE", p) if p.starts_with("/api/sessions/") => {
                let id = &p["/api/sessions/".len()..];
                match st.sessions.iter().position(|s| s["id"] == id) {
                    Some(i) => {
                        st.sessions.remove(i);
                        (204, "", String::new())
                    }
                    None => (
                        404,
                        "",
                        json!({"error":"not_found","message":"You have no session with that id."}).to_string(),
                    ),
                }
            }
            _ => (404, "", json!({"error":"not_found"}).to_string()),
        }
    };
    let reason = StatusCode::from_u16(status).unwrap().canonical_reason().unwrap_or("");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{reply}",
        reply.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The room routes, for alice, as SPEC §6 has them; `rest` is the path after
/// `/api/rooms`.
fn rooms_api(st: &mut State, method: &str, rest: &str, body: &Value) -> (u16, &'static str, String) {
    let hidden =
        || (404, "", json!({"error":"not_found","message":"No such room, or you are not a member."}).to_string());
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        ("GET", []) => {
            let rooms: Vec<Value> = st
                .rooms
                .iter()
                .filter(|(_, r)| r.visibility == "public" || r.has("alice"))
                .map(|(name, r)| {
                    let mut v = json!({"name": name, "visibility": r.visibility});
                    if r.visibility == "private" {
                        let role = r.members.iter().find(|(u, _)| u == "alice").map(|(_, role)| *role);
                        v["role"] = json!(role);
                    }
                    if let Some(n) = r.unread {
                        v["unread"] = json!(n);
                    }
                    v
                })
                .collect();
            (200, "", json!({ "rooms": rooms }).to_string())
        }
        ("POST", []) => {
            let name = body["name"].as_str().unwrap_or("").to_owned();
            let visibility = if body["visibility"] == "public" { "public" } else { "private" };
            if name == "reserved" {
                (422, "", json!({"error":"invalid_name","message":"That name cannot be used."}).to_string())
            } else if st.room_quota_spent {
                let said = json!({"error":"rate_limited","message":"Too many new rooms."});
                (429, "Retry-After: 30\r\n", said.to_string())
            } else if st.rooms.contains_key(&name) {
                (409, "", json!({"error":"name_taken","message":"That name is taken."}).to_string())
            } else {
                let members = if visibility == "private" { vec![("alice".to_owned(), "owner")] } else { Vec::new() };
                st.rooms.insert(name.clone(), RoomState { visibility, members, unread: None });
                let role = (visibility == "private").then_some("owner");
                (201, "", json!({"name": name, "visibility": visibility, "role": role}).to_string())
            }
        }
        (method, [name, "members", rest @ ..]) => {
            let Some(room) = st.rooms.get_mut(*name).filter(|r| r.visibility != "public" && r.has("alice")) else {
                return hidden();
            };
            let direct = || {
                let said = json!({"error":"direct_room","message":"A direct conversation's members never change."});
                (409, "", said.to_string())
            };
            match (method, rest) {
                ("GET", []) => {
                    let members: Vec<Value> = room.members.iter().map(|(u, r)| json!({"user": u, "role": r})).collect();
                    (200, "", json!({ "members": members }).to_string())
                }
                ("PUT", [_]) if room.visibility == "direct" => direct(),
                ("PUT", [user]) if !st.users.contains(*user) => {
                    (404, "", json!({"error":"no_such_user","message":"No such user."}).to_string())
                }
                ("PUT", [user]) => {
                    if !room.has(user) {
                        room.members.push((user.to_string(), "member"));
                    }
                    (204, "", String::new())
                }
                ("DELETE", [_]) if room.visibility == "direct" => direct(),
                ("DELETE", [user]) => {
                    let owner = room.members.iter().any(|(u, r)| u == "alice" && *r == "owner");
                    if *user != "alice" && !owner {
                        let said = json!({"error":"forbidden","message":"Only the room's owner removes others."});
                        return (403, "", said.to_string());
                    }
                    room.members.retain(|(u, _)| u != user);
                    let has_owner = room.members.iter().any(|(_, r)| *r == "owner");
                    match room.members.first_mut() {
                        Some(longest_standing) if !has_owner => longest_standing.1 = "owner",
                        Some(_) => {}
                        None => {
                            st.rooms.remove(*name);
                        }
                    }
                    (204, "", String::new())
                }
                _ => (405, "", json!({"error":"method_not_allowed"}).to_string()),
            }
        }
        _ => (404, "", json!({"error":"not_found"}).to_string()),
    }
}

/// A directory of its own for one test's credentials file.
pub struct Home {
    pub dir: PathBuf,
    pub server: String,
}

impl Home {
    pub fn new(server: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("palaver-cli-it-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Home { dir, server: server.to_owned() }
    }

    pub fn credentials(&self) -> PathBuf {
        self.dir.join("palaver").join("credentials.json")
    }

    pub fn saved(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.credentials()).unwrap()).unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> Cli {
        self.cli_with(args, &[])
    }

    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> Cli {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palaver-cli"));
        // Times print in UTC unless a test sets TZ.
        cmd.args(args).env_clear().env("TZ", "UTC").env("PALAVER_CREDENTIALS", self.credentials());
        // A home made with no server leaves PALAVER_SERVER unset.
        if !self.server.is_empty() {
            cmd.env("PALAVER_SERVER", &self.server);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Cli::spawn(cmd)
    }

    /// `palaver-cli ARGS` from `home` on a terminal of its own (a TERM that
    /// line editors know; times in UTC unless `env` sets TZ).
    pub fn terminal(&self, args: &[&str], env: &[(&str, &str)]) -> pty::Terminal {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palaver-cli"));
        cmd.args(args).env_clear().env("TERM", "xterm").env("TZ", "UTC").env("PALAVER_CREDENTIALS", self.credentials());
        if !self.server.is_empty() {
            cmd.env("PALAVER_SERVER", &self.server);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        pty::Terminal::spawn(cmd)
    }

    /// `login alice` with the right password.
    pub async fn login(&self) {
        let out = self.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "right password")]).finish().await;
        assert_eq!(out.code, 0, "{out:?}");
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binary, running.
pub struct Cli {
    /// Taken by [`Cli::finish`]; killed on drop otherwise (a failed test).
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    out: mpsc::UnboundedReceiver<String>,
    err: mpsc::UnboundedReceiver<String>,
    out_all: Arc<Mutex<Vec<String>>>,
    err_all: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub out: Vec<String>,
    pub err: Vec<String>,
}

impl Finished {
    pub fn err_has(&self, text: &str) -> bool {
        self.err.iter().any(|l| l.contains(text))
    }
}

fn pump(r: impl std::io::Read + Send + 'static, all: Arc<Mutex<Vec<String>>>) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            all.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    rx
}

impl Cli {
    fn spawn(mut cmd: Command) -> Cli {
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let (out_all, err_all) = (Arc::default(), Arc::default());
        let out = pump(child.stdout.take().unwrap(), Arc::clone(&out_all));
        let err = pump(child.stderr.take().unwrap(), Arc::clone(&err_all));
        Cli { child: Some(child), stdin, out, err, out_all, err_all }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn end_input(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line (every one is a message).
    pub async fn out_line(&mut self) -> String {
        match timeout(WAIT, self.out.recv()).await {
            Ok(Some(line)) => line,
            _ => panic!("no stdout line; stderr so far: {:?}", self.err_all.lock().unwrap()),
        }
    }

    /// Reads stderr until a line containing `text`.
    pub async fn err_until(&mut self, text: &str) -> String {
        loop {
            match timeout(WAIT, self.err.recv()).await {
                Ok(Some(line)) if line.contains(text) => return line,
                Ok(Some(_)) => {}
                _ => panic!("no stderr line with {text:?}; stderr: {:?}", self.err_all.lock().unwrap()),
            }
        }
    }

    /// Waits for the exit, and checks that no token was ever printed.
    pub async fn finish(mut self) -> Finished {
        self.stdin = None;
        let mut child = self.child.take().unwrap();
        let code = tokio::task::spawn_blocking(move || {
            for _ in 0..300 {
                if let Some(status) = child.try_wait().unwrap() {
                    return status.code().unwrap_or(-1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            panic!("palaver-cli did not exit within 15 s");
        })
        .await
        .unwrap();
        // Let the pumps drain what is left.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = self.out_all.lock().unwrap().clone();
        let err = self.err_all.lock().unwrap().clone();
        for line in out.iter().chain(&err) {
            assert!(!line.contains("secret"), "a token was printed: {line}");
        }
        Finished { code, out, err }
    }
}
