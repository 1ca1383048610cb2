//! palaver's load generator: real release binaries, a real `redis-server`,
//! thousands of real WebSocket clients.
//!
//! ```sh
//! cargo bench --bench loadgen -- idle --sockets 10000
//! cargo bench --bench loadgen -- chat --sockets 1000 --rates 100,200,400 --seconds 10
//! ```
//!
//! `idle`: one instance; opens `--sockets` authenticated sockets that only
//! answer pings, and reports the server's resident memory per socket.
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
//! `--seconds`: first with the session cookie, then with an access token
//! (`Authorization: Bearer`), in the same run. Every handshake must get its
//! `hello` with the right user.
//!
//! `chat`: two instances on one Redis; `--sockets` sockets in one room,
//! split across the instances; `--senders` of them send at each total rate
//! in turn. Reports messages delivered per second and delivery latency
//! (send to receipt, over every recipient) at p50/p99/max, and checks that
//! every receiver's sequence of ids equals the acked ids in stream order.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const BINARY: &str = env!("CARGO_BIN_EXE_palaver");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn raise_fd_limit() {
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
    eprintln!("open files limit: {} (the servers inherit it)", limit.rlim_cur);
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

fn start_redis(dir: &std::path::Path) -> (Process, u16) {
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

fn start_palaver(redis_port: u16, extra: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(BINARY);
    cmd.env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
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
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Registers `username` and returns the `Cookie` header value.
fn register(port: u16, username: &str) -> String {
    let response = post_form(port, "/register", &format!("username={username}&password=load-test-password"));
    assert!(response.starts_with("HTTP/1.1 303"), "registration failed: {response}");
    response
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// Source addresses cycle through 127.0.0.1-16: one source address has only
/// ~28k ephemeral ports towards one server port.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

async fn open(port: u16, cookie: &str, query: &str) -> Ws {
    let mut request = format!("ws://127.0.0.1:{port}/ws{query}").into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
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

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn idle(args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (server, port) = start_palaver(redis_port, &[]);
    let pid = server.0.id();

    let cookies: Vec<String> = (0..users).map(|i| register(port, &format!("idle{i}"))).collect();
    // Warm up: one socket per user (their rooms exist, presence is written).
    let mut warm = Vec::new();
    for (i, cookie) in cookies.iter().enumerate() {
        let mut ws = open(port, cookie, &format!("?room=r{i}")).await;
        next_json(&mut ws).await;
        warm.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid);

    let gate = Arc::new(Semaphore::new(256));
    let opened = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(sockets);
    let started = Instant::now();
    for i in 0..sockets {
        let cookie = cookies[i % users].clone();
        let (gate, opened) = (gate.clone(), opened.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut ws = open(port, &cookie, &format!("?room=r{}", i % users)).await;
            next_json(&mut ws).await.expect("hello");
            drop(permit);
            opened.fetch_add(1, Ordering::Relaxed);
            // An idle client: it reads (answering pings) and never sends.
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    while opened.load(Ordering::Relaxed) < sockets as u64 {
        assert!(!tasks.iter().any(|t| t.is_finished()), "a socket ended during the idle run");
        assert!(started.elapsed() < Duration::from_secs(300), "opening sockets took too long");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_time = started.elapsed();
    // Every task has passed its hello once all permits are back and no more
    // are waiting; give the server a moment to settle its allocations.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "idle: {sockets} sockets opened in {open_time:.1?}; server RSS {before} KiB -> {after} KiB: {:.1} KiB per idle authenticated socket",
        (after.saturating_sub(before)) as f64 / sockets as f64
    );
    drop(warm);
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
    let hash = password::hash(Password::new("load-test-password".into())).await;
    let mut verify = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        assert!(password::verify(Password::new("load-test-password".into()), Some(hash.clone())).await);
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
        assert!(login(port, "timer", "load-test-password").starts_with("HTTP/1.1 303"));
        ok.push(started.elapsed());
        let started = Instant::now();
        assert!(login(port, "nobody-here", "load-test-password").starts_with("HTTP/1.1 401"));
        unknown.push(started.elapsed());
    }
    println!("POST /login, right password: {}", summary(ok));
    println!("POST /login, unknown user:   {}", summary(unknown));
}

#[derive(Default)]
struct Receiver {
    latencies_us: Vec<u64>,
    ids: Vec<String>,
}

async fn chat(args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 1000);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let rates: String = arg(args, "--rates", "100,200,400".to_string());
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let unlimited = [
        ("MESSAGE_RATE_PER_SEC", "10000"),
        ("MESSAGE_BURST", "100000"),
        ("USER_MESSAGE_RATE_PER_SEC", "100000"),
        ("USER_MESSAGE_BURST", "100000"),
    ];
    let (_a, port_a) = start_palaver(redis_port, &unlimited);
    let (_b, port_b) = start_palaver(redis_port, &unlimited);
    let cookies: Vec<String> = (0..users).map(|i| register(port_a, &format!("chat{i}"))).collect();

    for rate in rates.split(',').map(|r| r.parse::<u64>().unwrap()) {
        let room = format!("bench-{rate}");
        let received: Arc<Vec<Mutex<Receiver>>> = Arc::new((0..sockets).map(|_| Mutex::default()).collect());
        let ready = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        let mut sender_sockets = Vec::new();
        for i in 0..sockets {
            let port = if i % 2 == 0 { port_a } else { port_b };
            let mut ws = open(port, &cookies[i % users], &format!("?room={room}")).await;
            next_json(&mut ws).await.expect("hello");
            if i < senders {
                sender_sockets.push(ws);
                continue;
            }
            let (received, ready) = (received.clone(), ready.clone());
            readers.push(tokio::spawn(async move {
                ready.fetch_add(1, Ordering::Relaxed);
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else { continue };
                    let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] != "message" {
                        continue;
                    }
                    let now = unix_micros();
                    let sent: u64 = frame["body"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
                    let mut r = received[i].lock().unwrap();
                    r.latencies_us.push(now.saturating_sub(sent));
                    r.ids.push(frame["id"].as_str().unwrap().to_owned());
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // presence settles

        // Senders: each sends rate/senders per second, evenly spaced, and
        // counts its acks.
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let per_sender = (rate as f64 / senders as f64).max(0.1);
        let started = Instant::now();
        let mut sending = Vec::new();
        for (s, ws) in sender_sockets.into_iter().enumerate() {
            let acked = acked.clone();
            sending.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
                let end = Instant::now() + Duration::from_secs(seconds);
                let (mut sent, mut acks) = (0u64, 0u64);
                let (mut sink, mut stream) = ws.split();
                let reader = tokio::spawn(async move {
                    let mut ids = Vec::new();
                    while let Some(Ok(Message::Text(text))) = stream.next().await {
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        match frame["type"].as_str() {
                            Some("ack") => ids.push(frame["id"].as_str().unwrap().to_owned()),
                            Some("error") => panic!("sender got an error: {frame}"),
                            _ => {}
                        }
                    }
                    ids
                });
                while Instant::now() < end {
                    tick.tick().await;
                    let body = format!("{s}-{sent} {}", unix_micros());
                    let frame = serde_json::json!({"type": "send", "body": body, "client_id": format!("{s}-{sent}")});
                    sink.send(Message::Text(frame.to_string().into())).await.unwrap();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = sink.close().await;
                let ids = reader.await.unwrap();
                acks += ids.len() as u64;
                acked.lock().unwrap().extend(ids);
                (sent, acks)
            }));
        }
        let mut sent_total = 0;
        for task in sending {
            let (sent, _) = task.await.unwrap();
            sent_total += sent;
        }
        let elapsed = started.elapsed().as_secs_f64() - 2.0;
        tokio::time::sleep(Duration::from_secs(1)).await;
        for r in &readers {
            r.abort();
        }
        // The room's order is the stream's: ids sort numerically by (ms, seq).
        let stream_order = |id: &String| -> (u64, u64) {
            let (ms, seq) = id.split_once('-').expect("stream ids are ms-seq");
            (ms.parse().unwrap(), seq.parse().unwrap())
        };
        let mut acked = acked.lock().unwrap().clone();
        acked.sort_by_key(stream_order);
        let mut all: Vec<u64> = Vec::new();
        let mut problems = 0;
        let receivers = sockets - senders;
        for (i, r) in received.iter().enumerate().skip(senders) {
            let r = r.lock().unwrap();
            all.extend_from_slice(&r.latencies_us);
            // Exactly the acked messages, each once, in the room's order.
            if r.ids != acked {
                problems += 1;
                if problems <= 3 {
                    let first_difference = r.ids.iter().zip(&acked).position(|(got, want)| got != want);
                    eprintln!(
                        "receiver {i}: got {} messages, {} acked; first difference at {first_difference:?}",
                        r.ids.len(),
                        acked.len()
                    );
                }
            }
        }
        all.sort_unstable();
        let pct =
            |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
        println!(
            "chat @ {rate} msg/s offered into one room of {sockets} sockets over 2 instances ({senders} senders, {receivers} receivers): \
             {sent_total} sent, {} acked, {} deliveries = {:.0} deliveries/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             receivers whose sequence differs from the acked ids in order: {problems}",
            acked.len(),
            all.len(),
            all.len() as f64 / elapsed,
            pct(0.50) as f64 / 1000.0,
            pct(0.99) as f64 / 1000.0,
            all.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
}

/// Fills `room` with `count` messages of `body_len` characters, straight
/// into its stream (as palaver stores them), pipelined.
fn fill_room(redis_port: u16, room: &str, count: usize, body_len: usize) {
    let mut stream = StdTcpStream::connect(("127.0.0.1", redis_port)).unwrap();
    let body = "x".repeat(body_len);
    let key = format!("palaver:room:{room}:messages");
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
    let mut ids: Vec<(u64, u64)> = Vec::new();
    while ids.len() < messages {
        let frame = next_json(&mut reader).await.expect("a frame");
        if frame["type"] == "message" {
            let (ms, seq) = frame["id"].as_str().unwrap().split_once('-').unwrap();
            ids.push((ms.parse().unwrap(), seq.parse().unwrap()));
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

/// Upgrades per second with one kind of credential; checks every `hello`.
async fn handshake_rate(port: u16, header: (&'static str, String), concurrency: usize, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, header) = (done.clone(), header.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
                request.headers_mut().insert(header.0, HeaderValue::from_str(&header.1).unwrap());
                let source =
                    std::net::Ipv4Addr::new(127, 0, 0, 1 + (NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16) as u8);
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                    .await
                    .expect("the upgrade is accepted");
                let hello = next_json(&mut ws).await.expect("hello");
                assert_eq!((hello["type"].as_str(), hello["user"].as_str()), (Some("hello"), Some("shaker")));
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

async fn handshakes(args: &[String]) {
    let concurrency: usize = arg(args, "--concurrency", 32);
    let seconds: u64 = arg(args, "--seconds", 5);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (_server, port) = start_palaver(redis_port, &[("ACCESS_TOKEN_TTL_SECS", "3600")]);
    let cookie = register(port, "shaker");
    let login = r#"{"username":"shaker","password":"load-test-password"}"#;
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
    let bearer = format!("Bearer {}", pair["access_token"].as_str().unwrap());

    let cookie_rate = handshake_rate(port, ("cookie", cookie), concurrency, seconds).await;
    let token_rate = handshake_rate(port, ("authorization", bearer), concurrency, seconds).await;
    println!(
        "handshakes, {concurrency} concurrent, {seconds} s each: cookie {cookie_rate:.0}/s, access token {token_rate:.0}/s \
         (each read its hello as the right user)"
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    raise_fd_limit();
    match args.first().map(String::as_str) {
        Some("idle") => idle(&args).await,
        Some("chat") => chat(&args).await,
        Some("login") => logins(&args).await,
        Some("replay") => replay(&args).await,
        Some("handshakes") => handshakes(&args).await,
        _ => eprintln!(
            "usage: cargo bench --bench loadgen -- idle|chat|login|replay|handshakes [--sockets N] [--rates a,b] \
             [--seconds S] [--count N] [--messages N] [--body N] [--concurrency N]"
        ),
    }
}
