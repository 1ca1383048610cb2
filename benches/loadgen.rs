//! palaver's load generator: real release binaries, a real `redis-server`,
//! thousands of real WebSocket clients.
//!
//! ```sh
//! cargo bench --bench loadgen -- idle --sockets 10000
//! cargo bench --bench loadgen -- chat --sockets 1000 --rates 100,200,400 --seconds 10
//! cargo bench --bench bare --bench loadgen -- handshakes --server palaver,node,bare
//! ```
//!
//! `--server palaver|node|bare` (or a comma-separated list, run in turn)
//! chooses what is measured, where a scenario makes sense for it: palaver
//! (the release binary), the Node peer (`benches/peers/node`: express,
//! express-session, connect-redis, ws; `npm ci` is run there once if
//! `node_modules` is missing) or the bare ceiling (`benches/bare.rs`, no
//! authentication; built by `cargo bench --bench bare`, found next to this
//! binary in `target/release/deps`, refused when `benches/bare.rs` is newer).
//!
//! `idle`: opens `--sockets` authenticated sockets that only answer pings,
//! and reports the servers' resident memory per socket. `--instances K`
//! runs K servers on one Redis; `--clients P` spreads the sockets over P
//! child processes of this binary (each under the open-file limit).
//!
//! `login`: the cost of a login: Argon2id verification alone (in this
//! process, release build, the same parameters as the server), then whole
//! `POST /login` round trips against a release instance.
//!
//! `replay`: `--sockets` sockets open a room of `--messages` messages with
//! `after=0-0` and never read; reports server RSS before, at the peak, and
//! after they closed, and checks that a reading client gets the whole room
//! in order before and after.
//!
//! `handshakes`: authenticated upgrades per second with `--concurrency`
//! clients, each opening a socket, reading its `hello` and closing, for
//! `--seconds`: palaver with the session cookie, then with an access token
//! (`Authorization: Bearer`); the Node peer with its session cookie; the
//! bare server with nothing. Every handshake must get its `hello` with the
//! right user.
//!
//! `chat`: two instances on one Redis (`--instances`; the bare server: one
//! process);
//! `--sockets` sockets in one room, split across the instances; `--senders`
//! of them send at each total rate in turn. Reports messages delivered per
//! second and delivery latency (send to receipt, over every recipient) at
//! p50/p99/max, and checks that every receiver's sequence of ids equals the
//! acked ids in the room's order and that no socket was closed; also the
//! senders' ack latency (send to ack). `--cluster` (palaver) runs on a
//! six-node Redis Cluster (three masters, three replicas, `redis-cli
//! --cluster create`); `--wait-replicas N` sets `REDIS_WAIT_REPLICAS`.
//!
//! `logout`: two instances A and B on one Redis; `--sockets` idle sockets on
//! B (`--same-room`: all in the victim's room; otherwise spread over 100
//! other rooms); `--repeat` times, a fresh victim session opens one socket
//! on B and `POST /logout` is sent to A: the time from sending it to the
//! victim's close, which must be 4401 `logged out`; no other socket may close.
//!
//! `presence-storm` (palaver): `--sockets` sockets of as many users join one
//! room, evenly over `--seconds`; each keeps its view of the room from
//! `presence` (replaces it) and `presence_diff` (applies to it) frames.
//! Reports how long after the last join each view showed everyone, and
//! fails if a view never does or a socket is closed.
//!
//! `login-storm` (palaver): `--sockets` sockets in one room on two instances
//! chat at `--rate` msg/s for `--seconds` (the baseline), then as long again
//! while `--logins` clients log in back to back with the right password
//! (real Argon2; `--once`: one login each at the start of the period);
//! reports the delivery p99 of both periods and their ratio, and checks
//! that nothing was lost.

use std::{
    collections::BTreeSet,
    io::{BufRead, Read, Write},
    net::TcpStream as StdTcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use palaver::model::MessageId;
use tokio::{net::TcpStream, sync::Semaphore, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const BINARY: &str = env!("CARGO_BIN_EXE_palaver");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const PASSWORD: &str = "load-test-password";

/// What is measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Palaver,
    /// The Node peer, benches/peers/node.
    Node,
    /// The bare ceiling, benches/bare.rs: no authentication.
    Bare,
}

impl Kind {
    fn parse(name: &str) -> Kind {
        match name {
            "palaver" => Kind::Palaver,
            "node" => Kind::Node,
            "bare" => Kind::Bare,
            other => panic!("unknown --server {other}: palaver, node or bare"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Palaver => "palaver",
            Kind::Node => "node peer",
            Kind::Bare => "bare server",
        }
    }
}

/// `--server a,b`: the servers to measure in turn (palaver by default).
fn servers(args: &[String]) -> Vec<Kind> {
    arg(args, "--server", "palaver".to_string()).split(',').map(Kind::parse).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn raise_fd_limit(quiet: bool) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        // Root may raise the hard limit too; others get their hard limit.
        let wanted = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000.max(limit.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    if !quiet {
        eprintln!("open files limit: {} (the servers inherit it)", limit.rlim_cur);
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis(dir: &Path) -> (Process, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    wait_for_port(port, "redis-server");
    (Process(child), port)
}

/// A Redis Cluster of six `redis-server`s (three masters, one replica
/// each), joined with `redis-cli --cluster create`; the processes and the
/// `redis-cluster://` URL naming them.
fn start_redis_cluster(dir: &Path) -> (Vec<Process>, String) {
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..6 {
        let (port, bus) = (free_port(), free_port());
        let node_dir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        wait_for_port(port, "redis-server");
        nodes.push(Process(child));
        addrs.push(format!("127.0.0.1:{port}"));
    }
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
    // Every node agrees the cluster is up, and every replica is in sync
    // (acks wait for one).
    let start = Instant::now();
    let cli = |addr: &str, args: &[&str]| {
        let (host, port) = addr.split_once(':').unwrap();
        let out = Command::new("redis-cli").args(["-h", host, "-p", port]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    while !addrs.iter().all(|a| {
        cli(a, &["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
            let replication = cli(a, &["INFO", "replication"]);
            replication.contains("role:master") || replication.contains("master_link_status:up")
        }
    }) {
        assert!(start.elapsed() < Duration::from_secs(30), "the cluster did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut url = format!("redis-cluster://{}", addrs[0]);
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        url.push_str(if i == 1 { "?" } else { "&" });
        url.push_str(&format!("node={addr}"));
    }
    (nodes, url)
}

fn start_palaver(redis_port: u16, extra: &[(&str, &str)]) -> (Process, u16) {
    start_palaver_on(&format!("redis://127.0.0.1:{redis_port}"), extra)
}

fn start_palaver_on(redis_url: &str, extra: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(BINARY);
    cmd.env("REDIS_URL", redis_url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", std::env::var("LOADGEN_SERVER_LOG").unwrap_or("warn".into()))
        // The load generator is one client address with many users and
        // sockets: lift the per-client and per-user limits it would trip.
        .env("MAX_CONNECTIONS", "100000")
        .env("MAX_SOCKETS_PER_USER", "100000")
        .env("MAX_SOCKETS_PER_SESSION", "100000")
        .env("REGISTER_MAX_PER_ADDRESS", "1000000")
        .env("ROOMS_PER_USER_PER_HOUR", "1000000");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.stdout(Stdio::null()).spawn().expect("palaver binary");
    wait_for_port(port, "palaver");
    (Process(child), port)
}

/// The Node peer's directory; its dependencies are installed from the
/// committed lockfile the first time.
fn node_peer_dir() -> PathBuf {
    let dir = Path::new(MANIFEST_DIR).join("benches/peers/node");
    if !dir.join("node_modules/.package-lock.json").exists() {
        eprintln!("installing the Node peer's dependencies (npm ci in {})", dir.display());
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("npm (Node 20 or later)");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    dir
}

/// `fanout`: several instances share rooms (over Redis pub/sub).
fn start_node(redis_port: u16, fanout: bool) -> (Process, u16) {
    let dir = node_peer_dir();
    let port = free_port();
    let child = Command::new("node")
        .arg(dir.join("server.js"))
        .env("PORT", port.to_string())
        .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
        .env("FANOUT", if fanout { "redis" } else { "local" })
        .stdout(Stdio::null())
        .spawn()
        .expect("node (Node 20 or later)");
    wait_for_port(port, "the node peer");
    (Process(child), port)
}

/// The bare server's binary: `cargo bench --bench bare` puts it beside this
/// one, as `bare-<hash>`. The newest is taken; one older than its source is
/// refused rather than measured.
fn bare_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let deps = me.parent().unwrap();
    let newest = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("bare-").is_some_and(|hash| !hash.contains('.'))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let Some((built, path)) = newest else {
        panic!("no bare server in {}: run `cargo bench --bench bare --bench loadgen -- …`", deps.display())
    };
    let source = std::fs::metadata(Path::new(MANIFEST_DIR).join("benches/bare.rs")).unwrap().modified().unwrap();
    assert!(
        source <= built,
        "{} is older than benches/bare.rs: run `cargo bench --bench bare --bench loadgen -- …`",
        path.display()
    );
    path
}

fn start_bare() -> (Process, u16) {
    let port = free_port();
    let child = Command::new(bare_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("the bare server");
    wait_for_port(port, "the bare server");
    (Process(child), port)
}

/// `count` instances of `kind` on one Redis, sharing rooms when several.
fn start_servers(kind: Kind, redis_port: u16, count: usize, extra: &[(&str, &str)]) -> Vec<(Process, u16)> {
    (0..count)
        .map(|_| match kind {
            Kind::Palaver => start_palaver(redis_port, extra),
            Kind::Node => start_node(redis_port, count > 1),
            Kind::Bare => start_bare(),
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// POSTs a form over raw HTTP/1.1 and returns the whole response.
fn post_form(port: u16, path: &str, body: &str) -> String {
    post_form_as(port, path, body, None)
}

/// POSTs a form, with a `Cookie` header when given.
fn post_form_as(port: u16, path: &str, body: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{cookie}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Registers `username` and returns the `Cookie` header value (palaver and
/// the Node peer answer registration alike: 303 and a session cookie).
fn register(port: u16, username: &str) -> String {
    let response = post_form(port, "/register", &format!("username={username}&password={PASSWORD}"));
    assert!(
        response.starts_with("HTTP/1.1 303"),
        "registration of {username} failed: {}",
        response.lines().next().unwrap_or("")
    );
    session_cookie(&response)
}

fn session_cookie(response: &str) -> String {
    response
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie")))
        .map(|(_, value)| value.trim())
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Registers `{prefix}{i}` for every i below `count`, a few at a time (each
/// costs palaver an Argon2 hash), and returns their cookies in order. The
/// bare server has no users: empty cookies.
async fn register_many(kind: Kind, port: u16, prefix: &str, count: usize) -> Vec<String> {
    if kind == Kind::Bare {
        return vec![String::new(); count];
    }
    let started = Instant::now();
    let prefix = prefix.to_owned();
    let cookies = tokio::task::spawn_blocking(move || {
        let next = AtomicU64::new(0);
        let cookies: Vec<Mutex<String>> = (0..count).map(|_| Mutex::default()).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        break;
                    }
                    *cookies[i].lock().unwrap() = register(port, &format!("{prefix}{i}"));
                });
            }
        });
        cookies.into_iter().map(|c| c.into_inner().unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    if count >= 1000 {
        eprintln!("registered {count} users in {:.1?}", started.elapsed());
    }
    cookies
}

/// Source addresses cycle through 127.0.0.1-16: one source address has only
/// ~28k ephemeral ports towards one server port.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

async fn open(port: u16, cookie: &str, query: &str) -> Ws {
    let mut request = format!("ws://127.0.0.1:{port}/ws{query}").into_client_request().unwrap();
    if !cookie.is_empty() {
        request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    let mut attempt = 0;
    loop {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16) as u8);
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
            let (ws, _) = tokio_tungstenite::client_async(request.clone(), MaybeTlsStream::Plain(stream))
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(ws)
        };
        match connected.await {
            Ok(ws) => return ws,
            Err(err) if attempt < 5 => {
                attempt += 1;
                eprintln!("connect retry after: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot open a socket: {err}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(frame)) => panic!("socket closed: {frame:?}"),
            Ok(_) => continue,
            Err(err) => panic!("socket failed: {err}"),
        }
    }
}

/// Reads frames until the socket ends; says how (a close frame's code and
/// reason, an error, or the stream's end).
async fn until_closed(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => return format!("{} {}", u16::from(frame.code), frame.reason),
            Some(Ok(Message::Close(None))) => return "a close without a code".into(),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return format!("an error: {err}"),
            None => return "the end of the stream".into(),
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// The value at fraction `p` of sorted samples.
fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Idle sockets held open: each answers pings and nothing else, and ends
/// only if the server ends it (saying how).
struct Held {
    tasks: Vec<JoinHandle<String>>,
    opened: Arc<AtomicU64>,
}

impl Held {
    /// Opens a socket for each `(port, cookie, query)`, 256 handshakes at a
    /// time; every one must get its `hello`.
    fn open(sockets: Vec<(u16, String, String)>) -> Held {
        let gate = Arc::new(Semaphore::new(256));
        let opened = Arc::new(AtomicU64::new(0));
        let tasks = sockets
            .into_iter()
            .map(|(port, cookie, query)| {
                let (gate, opened) = (gate.clone(), opened.clone());
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.unwrap();
                    let mut ws = open(port, &cookie, &query).await;
                    let hello = next_json(&mut ws).await.expect("hello");
                    assert_eq!(hello["type"], "hello");
                    drop(permit);
                    opened.fetch_add(1, Ordering::Relaxed);
                    until_closed(&mut ws).await
                })
            })
            .collect();
        Held { tasks, opened }
    }

    /// Waits until every socket has its `hello`; none may end meanwhile.
    async fn opened(&self) -> Duration {
        let started = Instant::now();
        while self.opened.load(Ordering::Relaxed) < self.tasks.len() as u64 {
            assert_eq!(self.closed(), 0, "a socket ended while the sockets were opening");
            assert!(started.elapsed() < Duration::from_secs(600), "opening sockets took too long");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    /// How many sockets the server ended.
    fn closed(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Why the first few ended.
    async fn report(self) -> Vec<String> {
        let mut why = Vec::new();
        for task in self.tasks {
            if task.is_finished() && why.len() < 5 {
                why.push(task.await.unwrap_or_else(|e| format!("panicked: {e}")));
            } else {
                task.abort();
            }
        }
        why
    }
}

/// The idle sockets numbered `indices` of a run: socket i goes to instance
/// i % instances, as user i % users, into room r{i % users}.
fn idle_sockets(ports: &[u16], cookies: &[String], indices: impl Iterator<Item = usize>) -> Vec<(u16, String, String)> {
    indices
        .map(|i| (ports[i % ports.len()], cookies[i % cookies.len()].clone(), format!("?room=r{}", i % cookies.len())))
        .collect()
}

async fn idle(kind: Kind, args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let instances: usize = arg(args, "--instances", 1);
    let clients: usize = arg(args, "--clients", 1);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, instances, &[]);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let pids: Vec<u32> = servers.iter().map(|(p, _)| p.0.id()).collect();

    let cookies = register_many(kind, ports[0], "idle", users).await;
    // Warm up: one socket per user on each instance (their rooms exist,
    // presence is written, the servers' pools are in use).
    let warm = Held::open(
        (0..users * instances)
            .map(|i| (ports[i / users], cookies[i % users].clone(), format!("?room=r{}", i % users)))
            .collect(),
    );
    warm.opened().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();

    let started = Instant::now();
    let (open_time, intact) = if clients <= 1 {
        let held = Held::open(idle_sockets(&ports, &cookies, 0..sockets));
        let open_time = held.opened().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        (open_time, held)
    } else {
        // Child processes of this binary, each holding every clients-th
        // socket, each under its own open-file limit.
        let cookie_file = dir.path().join("cookies");
        std::fs::write(&cookie_file, cookies.join("\n")).unwrap();
        let ports_arg = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut children = Vec::new();
        for part in 0..clients {
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["idle-client", "--ports", &ports_arg, "--sockets", &sockets.to_string()])
                .args(["--part", &part.to_string(), "--parts", &clients.to_string()])
                .arg("--cookies")
                .arg(&cookie_file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a load-generator child");
            children.push(Process(child));
        }
        for child in &mut children {
            let line = tokio::task::block_in_place(|| read_line(&mut child.0));
            assert!(line.starts_with("opened"), "a load-generator child failed: {line:?}");
        }
        let open_time = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
        // Each child checks, when its standard input closes, that none of
        // its sockets ended, and says so.
        for child in &mut children {
            drop(child.0.stdin.take());
            let line = tokio::task::block_in_place(|| read_line(&mut child.0));
            assert!(line.starts_with("intact"), "a load-generator child lost sockets: {line:?}");
        }
        print_idle(kind, sockets, instances, clients, open_time, &before, &after);
        assert_eq!(warm.closed(), 0, "a warm-up socket ended");
        return;
    };
    let after: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
    let closed = intact.closed();
    let why = intact.report().await;
    assert!(closed == 0 && warm.closed() == 0, "{closed} idle sockets ended during the run: {why:?}");
    print_idle(kind, sockets, instances, clients, open_time, &before, &after);
}

/// One line from a child's standard output.
fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line
}

fn print_idle(
    kind: Kind,
    sockets: usize,
    instances: usize,
    clients: usize,
    open_time: Duration,
    before: &[u64],
    after: &[u64],
) {
    let total_before: u64 = before.iter().sum();
    let total_after: u64 = after.iter().sum();
    let per_instance: Vec<String> = (0..instances)
        .map(|k| {
            let on_it = (0..sockets).filter(|i| i % instances == k).count().max(1);
            format!(
                "instance {k}: {} -> {} KiB, {:.1} KiB per socket over {on_it}",
                before[k],
                after[k],
                after[k].saturating_sub(before[k]) as f64 / on_it as f64
            )
        })
        .collect();
    println!(
        "idle ({}): {sockets} sockets on {instances} instance(s) from {clients} load-generator process(es), opened in {open_time:.1?}; \
         server RSS {total_before} KiB -> {total_after} KiB in total: {:.1} KiB per idle authenticated socket; {}; \
         no socket ended (target for palaver: at most 6 KiB per socket)",
        kind.name(),
        total_after.saturating_sub(total_before) as f64 / sockets as f64,
        per_instance.join("; ")
    );
    // A regression check, not a timing: at 10k sockets and more the fixed
    // overhead is amortised, so a per-socket cost over the target means a
    // socket got bigger (a buffer, a field, a boxed future).
    let per_socket = total_after.saturating_sub(total_before) as f64 / sockets as f64;
    if kind == Kind::Palaver && sockets >= 10_000 {
        assert!(per_socket <= 6.0, "an idle palaver socket costs {per_socket:.1} KiB, over the 6 KiB target");
    }
}

/// The hidden `idle-client` subcommand: holds this child's share of an
/// idle run's sockets, prints `opened N` once all have their `hello`, and
/// when its standard input closes prints `intact N` if none ended.
async fn idle_client(args: &[String]) {
    let ports: Vec<u16> = arg(args, "--ports", String::new()).split(',').map(|p| p.parse().unwrap()).collect();
    let sockets: usize = arg(args, "--sockets", 0);
    let part: usize = arg(args, "--part", 0);
    let parts: usize = arg(args, "--parts", 1);
    let cookies: Vec<String> = std::fs::read_to_string(arg(args, "--cookies", String::new()))
        .unwrap()
        .split('\n')
        .map(str::to_owned)
        .collect();
    let held = Held::open(idle_sockets(&ports, &cookies, (0..sockets).filter(|i| i % parts == part)));
    let count = held.tasks.len();
    held.opened().await;
    println!("opened {count}");
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await.unwrap().unwrap();
    let closed = held.closed();
    let why = held.report().await;
    if closed == 0 {
        println!("intact {count}");
    } else {
        println!("closed {closed} of {count}: {why:?}");
        std::process::exit(1);
    }
}

/// POSTs a login and returns the status line.
fn login(port: u16, username: &str, password: &str) -> String {
    let response = post_form(port, "/login", &format!("username={username}&password={password}"));
    response.lines().next().unwrap_or_default().to_owned()
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "mean {:.1?}, p50 {:.1?}, max {:.1?} over {}",
        mean,
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples.len()
    )
}

async fn logins(args: &[String]) {
    use palaver::auth::password::{self, Password};
    let count: usize = arg(args, "--count", 30);
    let hash = password::hash(Password::new(PASSWORD.into()), &metrics::Histogram::noop()).await;
    let mut verify = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        assert!(
            password::verify(Password::new(PASSWORD.into()), Some(hash.clone()), &metrics::Histogram::noop()).await
        );
        verify.push(started.elapsed());
    }
    println!("argon2id verify (m=19456 KiB, t=2, p=1): {}", summary(verify));

    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (_server, port) = start_palaver(redis_port, &[("LOGIN_MAX_FAILURES", "1000000")]);
    register(port, "timer");
    let (mut ok, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let started = Instant::now();
        assert!(login(port, "timer", PASSWORD).starts_with("HTTP/1.1 303"));
        ok.push(started.elapsed());
        let started = Instant::now();
        assert!(login(port, "nobody-here", PASSWORD).starts_with("HTTP/1.1 401"));
        unknown.push(started.elapsed());
    }
    println!("POST /login, right password: {}", summary(ok));
    println!("POST /login, unknown user:   {}", summary(unknown));
}

/// What one receiving socket got: (send time, latency) in µs per message,
/// the ids in arrival order, and how the server ended it, if it did.
#[derive(Default)]
struct Receiver {
    deliveries: Vec<(u64, u64)>,
    ids: Vec<String>,
    ended: Option<String>,
}

/// A room full of sockets: readers record every `message`; senders wait.
struct ChatRoom {
    received: Arc<Vec<Mutex<Receiver>>>,
    readers: Vec<JoinHandle<()>>,
    senders: Vec<Ws>,
    /// The senders' ack latencies of the last `send`, (0, µs), sorted.
    ack_latencies: Vec<(u64, u64)>,
}

/// Opens `sockets` sockets into `room`, socket i on instance i % instances
/// as user i % users; the first `senders` of them send, the rest receive.
async fn join_room(ports: &[u16], cookies: &[String], room: &str, sockets: usize, senders: usize) -> ChatRoom {
    let receivers = sockets - senders;
    let received: Arc<Vec<Mutex<Receiver>>> = Arc::new((0..receivers).map(|_| Mutex::default()).collect());
    let (mut readers, mut sender_sockets) = (Vec::new(), Vec::new());
    for i in 0..sockets {
        let mut ws = open(ports[i % ports.len()], &cookies[i % cookies.len()], &format!("?room={room}")).await;
        next_json(&mut ws).await.expect("hello");
        if i < senders {
            sender_sockets.push(ws);
            continue;
        }
        let received = received.clone();
        let me = i - senders;
        readers.push(tokio::spawn(async move {
            let ended = loop {
                let text = match ws.next().await {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => break format!("closed: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => break format!("failed: {err}"),
                    None => break "ended".into(),
                };
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "message" {
                    continue;
                }
                let now = unix_micros();
                let sent: u64 = frame["body"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
                let mut r = received[me].lock().unwrap();
                r.deliveries.push((sent, now.saturating_sub(sent)));
                r.ids.push(frame["id"].as_str().unwrap().to_owned());
            };
            received[me].lock().unwrap().ended = Some(ended);
        }));
    }
    ChatRoom { received, readers, senders: sender_sockets, ack_latencies: Vec::new() }
}

/// The room's order: palaver's ids are stream ids, `ms-seq`, ordered
/// numerically; the peers' are one counter per room, which palaver's
/// `MessageId` reads as `n-0`.
fn room_order(id: &str) -> MessageId {
    id.parse().expect("a message id")
}

impl ChatRoom {
    /// The senders send `rate` messages per second in all, evenly spaced,
    /// for `seconds`, then wait 2 s for the last acks and close. Returns
    /// how many were sent and the acked ids in the room's order.
    async fn send(&mut self, rate: f64, seconds: f64) -> (u64, Vec<String>) {
        let senders = self.senders.len();
        let per_sender = (rate / senders as f64).max(0.1);
        let mut sending = Vec::new();
        for (s, ws) in std::mem::take(&mut self.senders).into_iter().enumerate() {
            sending.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut sent = 0u64;
                let (mut sink, mut stream) = ws.split();
                let reader = tokio::spawn(async move {
                    let (mut ids, mut acks) = (Vec::new(), Vec::new());
                    while let Some(message) = stream.next().await {
                        let text = match message {
                            Ok(Message::Text(text)) => text,
                            Ok(Message::Close(_)) | Err(_) => break,
                            Ok(_) => continue,
                        };
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        match frame["type"].as_str() {
                            Some("ack") => {
                                let sent: u64 = frame["client_id"]
                                    .as_str()
                                    .and_then(|c| c.rsplit('-').next()?.parse().ok())
                                    .expect("the client_id ends with the send time");
                                acks.push(unix_micros().saturating_sub(sent));
                                ids.push(frame["id"].as_str().unwrap().to_owned())
                            }
                            Some("error") => panic!("sender got an error: {frame}"),
                            _ => {}
                        }
                    }
                    (ids, acks)
                });
                while Instant::now() < end {
                    tick.tick().await;
                    let now = unix_micros();
                    let body = format!("{s}-{sent} {now}");
                    let frame =
                        serde_json::json!({"type": "send", "body": body, "client_id": format!("{s}-{sent}-{now}")});
                    sink.send(Message::Text(frame.to_string().into())).await.unwrap();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = sink.close().await;
                let (ids, acks) = tokio::time::timeout(Duration::from_secs(10), reader)
                    .await
                    .expect("the sender's socket closes")
                    .unwrap();
                (sent, ids, acks)
            }));
        }
        let (mut sent, mut acked) = (0, Vec::new());
        self.ack_latencies.clear();
        for task in sending {
            let (s, ids, acks) = task.await.unwrap();
            sent += s;
            acked.extend(ids);
            self.ack_latencies.extend(acks.into_iter().map(|l| (0, l)));
        }
        acked.sort_by_key(|id| room_order(id));
        self.ack_latencies.sort_unstable_by_key(|&(_, latency)| latency);
        (sent, acked)
    }

    /// Stops the readers; checks that every receiver got exactly the acked
    /// messages, each once, in the room's order, and was not closed.
    /// Returns every (send time, latency), sorted by latency.
    async fn finish(self, acked: &[String]) -> Vec<(u64, u64)> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for r in &self.readers {
            r.abort();
        }
        let mut all = Vec::new();
        let (mut differ, mut ended) = (0, 0);
        for (i, r) in self.received.iter().enumerate() {
            let r = r.lock().unwrap();
            all.extend_from_slice(&r.deliveries);
            if let Some(how) = &r.ended {
                ended += 1;
                if ended <= 3 {
                    eprintln!("receiver {i} was {how}");
                }
            }
            if r.ids != acked {
                differ += 1;
                if differ <= 3 {
                    let first_difference = r.ids.iter().zip(acked).position(|(got, want)| got != want);
                    eprintln!(
                        "receiver {i}: got {} messages, {} acked; first difference at {first_difference:?}",
                        r.ids.len(),
                        acked.len()
                    );
                }
            }
        }
        assert!(
            differ == 0 && ended == 0,
            "{differ} receivers' sequences differ from the acked ids in order; {ended} receivers were closed"
        );
        all.sort_unstable_by_key(|&(_, latency)| latency);
        all
    }
}

/// p50, p99 and max of latencies in µs, as milliseconds.
fn latency_line(sorted: &[(u64, u64)]) -> String {
    let at = |p: f64| pct(sorted, p).1 as f64 / 1000.0;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50),
        at(0.99),
        sorted.last().map_or(0, |d| d.1) as f64 / 1000.0
    )
}

/// Rate limits lifted for the load generator's few senders.
const UNLIMITED: [(&str, &str); 4] = [
    ("MESSAGE_RATE_PER_SEC", "10000"),
    ("MESSAGE_BURST", "100000"),
    ("USER_MESSAGE_RATE_PER_SEC", "100000"),
    ("USER_MESSAGE_BURST", "100000"),
];

async fn chat(kind: Kind, args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 1000);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let rates: String = arg(args, "--rates", "100,200,400".to_string());
    // The bare server is one process: it has nothing to share rooms with.
    let instances = if kind == Kind::Bare { 1 } else { arg(args, "--instances", 2) };
    let dir = tempfile::tempdir().unwrap();
    // --cluster (palaver): a six-node Redis Cluster instead of one Redis;
    // --wait-replicas N sets REDIS_WAIT_REPLICAS (the cost of WAIT).
    let cluster = flag(args, "--cluster") && kind == Kind::Palaver;
    let wait_replicas: Option<String> = args.iter().position(|a| a == "--wait-replicas").map(|i| args[i + 1].clone());
    let mut extra = UNLIMITED.to_vec();
    if let Some(n) = &wait_replicas {
        extra.push(("REDIS_WAIT_REPLICAS", n));
    }
    let (_redis, redis_port) = start_redis(dir.path());
    let (_cluster, servers) = if cluster {
        let (nodes, url) = start_redis_cluster(dir.path());
        let servers: Vec<_> = (0..instances).map(|_| start_palaver_on(&url, &extra)).collect();
        (nodes, servers)
    } else {
        (Vec::new(), start_servers(kind, redis_port, instances, &extra))
    };
    let store = match (cluster, &wait_replicas) {
        (true, None) => "a Redis Cluster of 3+3, WAIT 1".to_owned(),
        (true, Some(n)) => format!("a Redis Cluster of 3+3, REDIS_WAIT_REPLICAS={n}"),
        (false, None) => "one Redis".to_owned(),
        (false, Some(n)) => format!("one Redis, REDIS_WAIT_REPLICAS={n}"),
    };
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "chat", users).await;

    for rate in rates.split(',').map(|r| r.parse::<u64>().unwrap()) {
        let mut room = join_room(&ports, &cookies, &format!("bench-{rate}"), sockets, senders).await;
        tokio::time::sleep(Duration::from_secs(2)).await; // presence settles
        let started = Instant::now();
        let (sent, acked) = room.send(rate as f64, seconds as f64).await;
        let elapsed = started.elapsed().as_secs_f64() - 2.0;
        assert_eq!(acked.len() as u64, sent, "every message sent is acked");
        let acks = std::mem::take(&mut room.ack_latencies);
        let all = room.finish(&acked).await;
        println!(
            "chat ({}) @ {rate} msg/s offered into one room of {sockets} sockets over {instances} instance(s) on \
             {store} ({senders} senders, {} receivers): {sent} sent, {} acked, {} deliveries = {:.0} deliveries/s; \
             latency {}; ack latency {}; every receiver got exactly the acked ids in order, none was closed \
             (target: p99 at most 100 ms)",
            kind.name(),
            sockets - senders,
            acked.len(),
            all.len(),
            all.len() as f64 / elapsed,
            latency_line(&all),
            latency_line(&acks),
        );
    }
}

/// Fills `room` with `count` messages of `body_len` characters, straight
/// into its stream (as palaver stores them), pipelined.
fn fill_room(redis_port: u16, room: &str, count: usize, body_len: usize) {
    let mut stream = StdTcpStream::connect(("127.0.0.1", redis_port)).unwrap();
    let body = "x".repeat(body_len);
    let key = palaver::backend::redis::keys::messages(&palaver::model::RoomName::parse(room).expect("a room name"));
    let now = unix_micros() / 1000;
    let mut batch = String::new();
    for i in 0..count {
        let sent_at = now.to_string();
        let args = ["XADD", &key, "*", "user", "filler", "body", &body, "sent_at", &sent_at];
        batch.push_str(&format!("*{}\r\n", args.len()));
        for arg in args {
            batch.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        if i % 500 == 499 || i == count - 1 {
            stream.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    // Each reply is a bulk string, `$<len>` and the id: two lines.
    let mut lines = 0;
    let mut buf = vec![0u8; 1 << 16];
    while lines < 2 * count {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection");
        lines += buf[..n].iter().filter(|b| **b == b'\n').count();
    }
}

/// Opens a socket by hand that never reads a byte after its request.
fn never_reading(port: u16, cookie: &str, query: &str) -> StdTcpStream {
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// `replay`: memory while many sockets replay a full room and never read.
async fn replay(args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 400);
    let messages: usize = arg(args, "--messages", 10_000);
    let body: usize = arg(args, "--body", 500);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (server, port) = start_palaver(redis_port, &[("HISTORY_MAX_LEN", &messages.to_string())]);
    let pid = server.0.id();
    let cookie = register(port, "replayer");
    // The room exists (its page was opened) and is full.
    let page = format!("GET /chat/full HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(page.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    fill_room(redis_port, "full", messages, body);

    // Correctness first: a client that reads gets the whole room, in order.
    let mut reader = open(port, &cookie, "?room=full&after=0-0").await;
    let mut ids: Vec<MessageId> = Vec::new();
    while ids.len() < messages {
        let frame = next_json(&mut reader).await.expect("a frame");
        if frame["type"] == "message" {
            ids.push(room_order(frame["id"].as_str().unwrap()));
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "replay in order, no repeat");

    drop(reader);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = rss_kib(pid);
    let started = Instant::now();
    let held: Vec<StdTcpStream> = (0..sockets).map(|_| never_reading(port, &cookie, "?room=full&after=0-0")).collect();
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = rss_kib(pid);
    drop(held);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pid);
    // Still serving: a new reader replays the room.
    let mut check = open(port, &cookie, "?room=full&after=0-0").await;
    let mut got = 0;
    while got < messages {
        if next_json(&mut check).await.expect("a frame")["type"] == "message" {
            got += 1;
        }
    }
    println!(
        "replay: {sockets} never-reading sockets replaying {messages} messages of {body} characters: \
         server RSS before {before} KiB, peak {peak} KiB ({:.1} KiB per socket), at 15 s {during} KiB, \
         10 s after they closed {after} KiB; a reading client got all {messages} in order before and after",
        (peak.saturating_sub(before)) as f64 / sockets as f64
    );
}

/// Upgrades per second with one kind of credential (or none); checks every
/// `hello` names `user`.
async fn handshake_rate(
    port: u16,
    header: Option<(&'static str, String)>,
    user: &'static str,
    concurrency: usize,
    seconds: u64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, header) = (done.clone(), header.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
                if let Some((name, value)) = &header {
                    request.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
                }
                let source =
                    std::net::Ipv4Addr::new(127, 0, 0, 1 + (NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16) as u8);
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                    .await
                    .expect("the upgrade is accepted");
                let hello = next_json(&mut ws).await.expect("hello");
                assert_eq!((hello["type"].as_str(), hello["user"].as_str()), (Some("hello"), Some(user)));
                let _ = ws.close(None).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// POSTs palaver's JSON login for an access token; returns `Bearer …`.
fn bearer(port: u16, username: &str) -> String {
    let login = format!(r#"{{"username":"{username}","password":"{PASSWORD}"}}"#);
    let request = format!(
        "POST /api/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{login}",
        login.len()
    );
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let pair: serde_json::Value = serde_json::from_str(body).expect("a token pair");
    format!("Bearer {}", pair["access_token"].as_str().unwrap())
}

/// `handshakes` for every `--server`, in turn; with palaver and the bare
/// server in one run, palaver's rates as a share of the bare one.
async fn handshakes(args: &[String]) {
    let concurrency: usize = arg(args, "--concurrency", 32);
    let seconds: u64 = arg(args, "--seconds", 5);
    let (mut palaver, mut bare) = (None, None);
    for kind in servers(args) {
        let dir = tempfile::tempdir().unwrap();
        let (_redis, redis_port) = start_redis(dir.path());
        let servers = start_servers(kind, redis_port, 1, &[("ACCESS_TOKEN_TTL_SECS", "3600")]);
        let port = servers[0].1;
        match kind {
            Kind::Palaver => {
                let cookie = register(port, "shaker");
                let bearer = bearer(port, "shaker");
                let cookie_rate = handshake_rate(port, Some(("cookie", cookie)), "shaker", concurrency, seconds).await;
                let token_rate =
                    handshake_rate(port, Some(("authorization", bearer)), "shaker", concurrency, seconds).await;
                println!(
                    "handshakes (palaver), {concurrency} concurrent, {seconds} s each: cookie {cookie_rate:.0}/s, \
                     access token {token_rate:.0}/s (each read its hello as the right user)"
                );
                palaver = Some((cookie_rate, token_rate));
            }
            Kind::Node => {
                let cookie = register(port, "shaker");
                let rate = handshake_rate(port, Some(("cookie", cookie)), "shaker", concurrency, seconds).await;
                println!(
                    "handshakes (node peer), {concurrency} concurrent, {seconds} s: session cookie {rate:.0}/s \
                     (each read its hello as the right user)"
                );
            }
            Kind::Bare => {
                let rate = handshake_rate(port, None, "anonymous", concurrency, seconds).await;
                println!(
                    "handshakes (bare server), {concurrency} concurrent, {seconds} s: no credential {rate:.0}/s \
                     (each read its hello)"
                );
                bare = Some(rate);
            }
        }
    }
    if let (Some((cookie, token)), Some(bare)) = (palaver, bare) {
        println!(
            "palaver against the bare ceiling: cookie {:.0} %, access token {:.0} % (target: at least 60 %)",
            100.0 * cookie / bare,
            100.0 * token / bare
        );
    }
}

/// `logout`: the time from `POST /logout` on instance A to the victim's
/// 4401 on instance B, among `--sockets` idle sockets on B.
async fn logout(kind: Kind, args: &[String]) {
    assert_ne!(kind, Kind::Bare, "the bare server has no sessions to log out");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let repeat: usize = arg(args, "--repeat", 50);
    let gap: u64 = arg(args, "--gap-ms", 500);
    let same_room = flag(args, "--same-room");
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, 2, &[]);
    let (port_a, port_b) = (servers[0].1, servers[1].1);
    let cookies = register_many(kind, port_a, "idle", users).await;
    // Fresh victims: one session (and user) each.
    let victims = register_many(kind, port_a, "victim", repeat).await;

    let victim_room = if same_room { "big".to_owned() } else { "victims".to_owned() };
    let held = Held::open(
        (0..sockets)
            .map(|i| {
                let room = if same_room { victim_room.clone() } else { format!("r{}", i % 100) };
                (port_b, cookies[i % users].clone(), format!("?room={room}"))
            })
            .collect(),
    );
    let open_time = held.opened().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The victims are watched from a thread of their own, so the time
    // measured is the server's, not this process's work reading the 10k
    // idle sockets' frames.
    let mut times = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(watch_victims(port_a, port_b, victims, victim_room, gap))
    })
    .join()
    .expect("the victims' thread panicked");
    let closed = held.closed();
    let why = held.report().await;
    assert_eq!(closed, 0, "{closed} of the other sockets were closed: {why:?}");
    times.sort_unstable();
    let slowest = times.iter().rev().take(5).map(|t| format!("{:.1}", ms(*t))).collect::<Vec<_>>().join(", ");
    println!(
        "logout ({}): {sockets} idle sockets on B ({}, {users} users, opened in {open_time:.1?}); POST /logout on A -> \
         4401 `logged out` on B, {repeat} fresh victims: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (slowest five: {slowest}); \
         every victim got 4401 `logged out`, no other socket closed (target with 10,000 in the same room: p99 at most 10 ms)",
        kind.name(),
        if same_room { "all in the victims' room" } else { "in 100 other rooms" },
        ms(pct(&times, 0.50)),
        ms(pct(&times, 0.90)),
        ms(pct(&times, 0.99)),
        ms(*times.last().unwrap()),
    );
}

/// Logs each victim out on A in turn and times its socket's 4401 on B.
async fn watch_victims(port_a: u16, port_b: u16, victims: Vec<String>, victim_room: String, gap: u64) -> Vec<Duration> {
    let mut times = Vec::with_capacity(victims.len());
    for (k, cookie) in victims.into_iter().enumerate() {
        let mut ws = open(port_b, &cookie, &format!("?room={victim_room}")).await;
        let hello = next_json(&mut ws).await.expect("hello");
        assert_eq!(hello["user"].as_str(), Some(format!("victim{k}").as_str()));
        let victim = tokio::spawn(async move {
            let how = until_closed(&mut ws).await;
            (Instant::now(), how)
        });
        // Its arrival (presence) settles first.
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let started = Instant::now();
        let response = tokio::task::spawn_blocking(move || post_form_as(port_a, "/logout", "", Some(&cookie)));
        let (closed_at, how) = tokio::time::timeout(Duration::from_secs(10), victim)
            .await
            .unwrap_or_else(|_| panic!("victim {k}'s socket was not closed within 10 s of its logout"))
            .unwrap();
        let response = response.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 303"), "logout answered: {response}");
        assert_eq!(how, "4401 logged out", "victim {k}'s socket");
        times.push(closed_at - started);
    }
    times
}

/// A client's view of a room's presence.
#[derive(Default)]
struct View {
    online: BTreeSet<String>,
    count: usize,
    /// The names are the whole room (it is at most 500 online, and the
    /// view was last replaced by a complete list).
    complete: bool,
    /// When the count last became the expected one (None while it is not).
    converged_at: Option<Instant>,
    frames: u64,
}

impl View {
    /// Applies a `presence` (replaces the view) or `presence_diff` (changes
    /// it) frame; other frames are ignored.
    fn apply(&mut self, frame: &serde_json::Value, expected: usize) {
        let names = |field: &str| -> Vec<String> {
            frame[field]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        match frame["type"].as_str() {
            Some("presence") => {
                self.online = names("online").into_iter().collect();
                self.count = frame["count"].as_u64().map_or(self.online.len(), |c| c as usize);
                self.complete = self.online.len() == self.count;
            }
            Some("presence_diff") => {
                for name in names("left") {
                    self.online.remove(&name);
                }
                self.online.extend(names("joined"));
                self.count = frame["count"].as_u64().map_or(self.online.len(), |c| c as usize);
                // Lists are only sent in rooms of at most 500: the count
                // rules above that; a complete view's names must agree.
                self.complete &= self.count <= 500;
                if self.complete {
                    assert_eq!(self.online.len(), self.count, "a presence view's names and count disagree: {frame}");
                }
            }
            _ => return,
        }
        self.frames += 1;
        match (self.count == expected, self.converged_at) {
            (true, None) => self.converged_at = Some(Instant::now()),
            (false, Some(_)) => self.converged_at = None,
            _ => {}
        }
    }
}

/// `presence-storm` (palaver): `--sockets` sockets of as many users join
/// one room within `--seconds`; every view must show them all.
async fn presence_storm(kind: Kind, args: &[String]) {
    assert_eq!(kind, Kind::Palaver, "presence-storm measures palaver's presence; the peers have none");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let seconds: f64 = arg(args, "--seconds", 10.0);
    let instances: usize = arg(args, "--instances", 1);
    let settle: u64 = arg(args, "--settle", 10);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, instances, &[]);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "member", sockets).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let joined = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(500);
    let mut tasks = Vec::with_capacity(sockets);
    for (i, cookie) in cookies.into_iter().enumerate() {
        let port = ports[i % ports.len()];
        let (joined, mut stop) = (joined.clone(), stop_rx.clone());
        let at = start + Duration::from_secs_f64(seconds * i as f64 / sockets as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut ws = open(port, &cookie, "?room=storm").await;
            let hello = next_json(&mut ws).await.expect("hello");
            assert_eq!(hello["user"].as_str(), Some(format!("member{i}").as_str()));
            let joined_at = Instant::now();
            joined.fetch_add(1, Ordering::Relaxed);
            let mut view = View::default();
            let ended = loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break None,
                    message = ws.next() => match message {
                        // Once the run stops, the others close and the room
                        // shrinks: what comes now is not part of the storm.
                        _ if *stop.borrow() => break None,
                        Some(Ok(Message::Text(text))) => {
                            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                            view.apply(&frame, sockets);
                        }
                        Some(Ok(Message::Close(frame))) => break Some(format!("closed: {frame:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => break Some(format!("failed: {err}")),
                        None => break Some("ended".to_owned()),
                    },
                }
            };
            (joined_at, view, ended)
        }));
    }
    while joined.load(Ordering::Relaxed) < sockets as u64 {
        assert!(!tasks.iter().any(|t| t.is_finished()), "a socket ended while the room filled");
        assert!(start.elapsed() < Duration::from_secs_f64(seconds + 300.0), "joining took too long");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    stop_tx.send(true).unwrap();
    let mut last_join = start;
    let mut results = Vec::with_capacity(sockets);
    for task in tasks {
        let (joined_at, view, ended) = task.await.unwrap();
        last_join = last_join.max(joined_at);
        results.push((view, ended));
    }
    let join_span = last_join - start;
    let (mut converge, mut not_converged, mut ended, mut frames) = (Vec::new(), 0, 0, 0);
    for (i, (view, how)) in results.iter().enumerate() {
        frames += view.frames;
        if let Some(how) = how {
            ended += 1;
            if ended <= 3 {
                eprintln!("socket {i} was {how}");
            }
        }
        match view.converged_at {
            Some(at) => converge.push(at.saturating_duration_since(last_join)),
            None => {
                not_converged += 1;
                if not_converged <= 3 {
                    eprintln!("socket {i}'s view: {} online after {} frames", view.count, view.frames);
                }
            }
        }
    }
    converge.sort_unstable();
    let within = converge.iter().filter(|d| **d <= Duration::from_secs(2)).count();
    println!(
        "presence-storm (palaver): {sockets} users joined one room over {instances} instance(s) within {join_span:.1?} \
         (offered over {seconds} s); {frames} presence frames received; views showing all {sockets} online, measured from \
         the last join: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {within} of {sockets} within 2 s (target: all); \
         {not_converged} views never converged within {settle} s; {ended} sockets closed",
        ms(pct(&converge, 0.50)),
        ms(pct(&converge, 0.99)),
        converge.last().copied().map_or(f64::NAN, ms),
    );
    assert!(
        not_converged == 0 && ended == 0,
        "{not_converged} views never showed everyone within {settle} s; {ended} sockets were closed"
    );
}

/// `login-storm` (palaver): chat delivery p99 before and during a storm of
/// concurrent logins (real Argon2, right passwords).
async fn login_storm(kind: Kind, args: &[String]) {
    assert_eq!(kind, Kind::Palaver, "login-storm measures palaver's logins (the Node peer hashes with SHA-256)");
    let sockets: usize = arg(args, "--sockets", 1000);
    let logins: usize = arg(args, "--logins", 50);
    let rate: f64 = arg(args, "--rate", 100.0);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let once = flag(args, "--once");
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let mut env = UNLIMITED.to_vec();
    env.push(("LOGIN_MAX_FAILURES", "1000000"));
    let servers = start_servers(kind, redis_port, 2, &env);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "chat", users).await;
    register_many(kind, ports[0], "storm", logins).await;

    let mut room = join_room(&ports, &cookies, "storm", sockets, senders).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // presence settles
    let period = Duration::from_secs(seconds);
    let start_us = unix_micros();
    let storm_start = Instant::now() + period;
    let storm_end = storm_start + period;
    // Each storm client logs in back to back (alternating instances), so
    // `logins` are in flight for the whole second period; with `--once`,
    // each logs in once at its start.
    let storm: Vec<_> = (0..logins)
        .map(|k| {
            let port = ports[k % ports.len()];
            tokio::spawn(async move {
                tokio::time::sleep_until(storm_start.into()).await;
                let mut times = Vec::new();
                while Instant::now() < storm_end {
                    let started = Instant::now();
                    let status =
                        tokio::task::spawn_blocking(move || login(port, &format!("storm{k}"), PASSWORD)).await.unwrap();
                    assert!(status.starts_with("HTTP/1.1 303"), "storm login {k} answered {status}");
                    times.push(started.elapsed());
                    if once {
                        break;
                    }
                }
                times
            })
        })
        .collect();
    let (sent, acked) = room.send(rate, 2.0 * seconds as f64).await;
    assert_eq!(acked.len() as u64, sent, "every message sent is acked");
    let all = room.finish(&acked).await;
    let mut login_times = Vec::new();
    for task in storm {
        login_times.extend(task.await.unwrap());
    }
    login_times.sort_unstable();
    let split = start_us + period.as_micros() as u64;
    let baseline: Vec<(u64, u64)> = all.iter().copied().filter(|(sent, _)| *sent < split).collect();
    let during: Vec<(u64, u64)> = all.iter().copied().filter(|(sent, _)| *sent >= split).collect();
    let ratio = pct(&during, 0.99).1 as f64 / pct(&baseline, 0.99).1.max(1) as f64;
    println!(
        "login-storm (palaver): {sockets} sockets in one room over 2 instances, {rate} msg/s; baseline {seconds} s: {}; \
         during {logins} concurrent logins{} for {seconds} s ({} logins, each p50 {:.1} ms, p99 {:.1} ms): {}; \
         p99 ratio {ratio:.2} (target: at most 1.20); {sent} sent, all acked and delivered to every receiver in order",
        latency_line(&baseline),
        if once { " (one burst)" } else { " (back to back)" },
        login_times.len(),
        ms(pct(&login_times, 0.50)),
        ms(pct(&login_times, 0.99)),
        latency_line(&during),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let command = args.first().map(String::as_str).unwrap_or_default();
    raise_fd_limit(command == "idle-client");
    match command {
        "login" => logins(&args).await,
        "replay" => replay(&args).await,
        "handshakes" => handshakes(&args).await,
        "idle-client" => idle_client(&args).await,
        "idle" | "chat" | "logout" | "presence-storm" | "login-storm" => {
            for kind in servers(&args) {
                match command {
                    "idle" => idle(kind, &args).await,
                    "chat" => chat(kind, &args).await,
                    "logout" => logout(kind, &args).await,
                    "presence-storm" => presence_storm(kind, &args).await,
                    _ => login_storm(kind, &args).await,
                }
            }
        }
        _ => eprintln!(
            "usage: cargo bench --bench loadgen -- idle|chat|login|replay|handshakes|logout|presence-storm|login-storm \
             [--server palaver,node,bare] [--sockets N] [--instances K] [--clients P] [--rates a,b] [--seconds S] \
             [--count N] [--messages N] [--body N] [--concurrency N] [--same-room] [--repeat N] [--logins N] [--rate R] [--cluster] [--wait-replicas N]\n\
             (the bare server: cargo bench --bench bare --bench loadgen -- …)"
        ),
    }
}
