//! The real binary: start-up messages and exit codes, the in-process
//! fallback, self-contained assets, and graceful shutdown on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
};

use reqwest::StatusCode;

use crate::helpers::*;

const BINARY: &str = env!("CARGO_BIN_EXE_palaver");

/// A running binary whose log lines are collected.
pub(crate) struct Running {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub(crate) fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Running {
        Self::spawn(Self::command(dir, env))
    }

    fn command(dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BINARY);
        // No NO_COLOR: logs into a pipe carry no colour codes by themselves.
        cmd.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap()).env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("binary starts");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Running { child, lines, seen: Vec::new() }
    }

    /// Waits for a log line containing `needle` and returns it.
    pub(crate) fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no log line with {needle:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The bound port, from the "listening on" line.
    pub(crate) fn port(&mut self) -> u16 {
        let line = self.wait_for_line("listening on ");
        let addr = line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap();
        addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        poll_blocking(DEADLINE, || self.child.try_wait().unwrap()).expect("the binary did not exit")
    }

    /// Every line the binary wrote, once it has exited.
    pub(crate) fn all_lines(&mut self) -> Vec<String> {
        self.wait_exit();
        // The readers end at end of file, and with them the channel.
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn an_unreachable_redis_url_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut run = Running::start(dir.path(), &[("REDIS_URL", &dead), ("LISTEN_ADDR", "127.0.0.1:0")]);
    let status = run.wait_exit();
    assert!(!status.success());
    let line = run.wait_for_line("cannot reach Redis");
    assert!(line.contains(&dead), "{line}");
}

#[test]
fn a_bad_variable_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(dir.path(), &[("SESSION_TTL_SECS", "soon")]);
    assert!(!run.wait_exit().success());
    run.wait_for_line("SESSION_TTL_SECS");
}

#[tokio::test]
async fn the_binary_runs_from_an_empty_directory_reading_dot_env_and_says_which_store() {
    let dir = tempfile::tempdir().unwrap();
    // .env is read; the real environment wins over it.
    std::fs::write(dir.path().join(".env"), "PALAVER_BACKEND=memory\nLISTEN_ADDR=127.0.0.1:1\n").unwrap();
    let mut run = Running::start(dir.path(), &[("LISTEN_ADDR", "127.0.0.1:0")]);
    run.wait_for_line("IN-PROCESS");
    let port = run.port();
    assert_ne!(port, 0);
    let base = format!("http://127.0.0.1:{port}");
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap().text().await.unwrap();
    assert_eq!(health, r#"{"status":"ok","backend":"memory"}"#);
    // Templates and assets are inside the binary.
    assert_eq!(reqwest::get(format!("{base}/login")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(reqwest::get(format!("{base}/static/chat.js")).await.unwrap().status(), StatusCode::OK);
}

#[test]
fn auto_falls_back_to_memory_only_when_no_local_redis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let local_redis = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
    let mut run = Running::start(dir.path(), &[("LISTEN_ADDR", "127.0.0.1:0")]);
    if local_redis {
        run.wait_for_line("store: Redis");
    } else {
        let warning = run.wait_for_line("no Redis at redis://127.0.0.1:6379");
        assert!(warning.contains("IN-PROCESS"), "{warning}");
    }
    run.port();
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_zero() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(dir.path(), &[("REDIS_URL", &redis.url()), ("LISTEN_ADDR", "127.0.0.1:0")]);
    let port = run.port();
    // Talk to it with the usual helpers through a TestApp-shaped address.
    let app = ExternalApp::new(port);
    let browser = Browser::new();
    let res = browser
        .http
        .post(format!("{}/register", app.base))
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let mut socket = app.open_socket(&browser).await;
    socket.next_of("hello").await;

    sigterm(&run.child);
    assert_eq!(socket.closed().await, (1001, "server shutting down".to_string()));
    let status = run.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    run.wait_for_line("palaver stopped");
}

/// A server started as a separate process.
struct ExternalApp {
    base: String,
    port: u16,
}

impl ExternalApp {
    fn new(port: u16) -> Self {
        Self { base: format!("http://127.0.0.1:{port}"), port }
    }

    /// Registers a user in a fresh browser, signed in.
    async fn signed_up(&self, username: &str) -> Browser {
        let browser = Browser::new();
        let form = [("username", username), ("password", PASSWORD)];
        let res = browser.http.post(format!("{}/register", self.base)).form(&form).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        browser
    }

    async fn open_socket(&self, browser: &Browser) -> Socket {
        use reqwest::cookie::CookieStore;
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
        let mut request = format!("ws://127.0.0.1:{}/ws", self.port).into_client_request().unwrap();
        let cookie = browser.jar.cookies(&self.base.parse().unwrap()).unwrap();
        request.headers_mut().insert("cookie", HeaderValue::from_str(cookie.to_str().unwrap()).unwrap());
        connect(request).await.expect("upgrade")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_dies_without_cleaning_up_drops_out_of_presence() {
    let redis = RedisServer::start();
    let ttl = ("PRESENCE_TTL_SECS", "3");
    let a = TestApp::spawn_with(Some(&redis), &[ttl]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut b = Running::start(dir.path(), &[("REDIS_URL", &redis.url()), ("LISTEN_ADDR", "127.0.0.1:0"), ttl]);
    let b_app = ExternalApp::new(b.port());

    let alice = signed_up(&a, "alice").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let bob = b_app.signed_up("bob").await;
    let mut bobs = b_app.open_socket(&bob).await;
    bobs.next_of("hello").await;
    alices.presence_until(&["alice", "bob"]).await;

    // SIGKILL: no graceful shutdown, no presence cleanup.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    alices.presence_until(&["alice"]).await;
}

#[test]
fn plain_http_beyond_loopback_is_refused_with_one_line_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Running::start(dir.path(), &[("LISTEN_ADDR", "0.0.0.0:0"), ("PALAVER_BACKEND", "memory")]);
    let status = run.wait_exit();
    assert_eq!(status.code(), Some(2), "{status:?}");
    let lines = run.all_lines();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    let line = &lines[0];
    assert!(line.starts_with(r#"palaver: invalid LISTEN_ADDR="0.0.0.0:0": "#), "{line}");
    for needed in ["clear text", "PUBLIC_ORIGIN=https://", "ALLOW_INSECURE_HTTP=true"] {
        assert!(line.contains(needed), "{line} lacks {needed:?}");
    }

    // Opted in, it starts, and says what it is doing.
    let allow = ("ALLOW_INSECURE_HTTP", "true");
    let mut run = Running::start(dir.path(), &[("LISTEN_ADDR", "0.0.0.0:0"), ("PALAVER_BACKEND", "memory"), allow]);
    let warning = run.wait_for_line("plain HTTP beyond loopback");
    assert!(warning.contains("WARN") && warning.contains("clear text"), "{warning}");
    assert_ne!(run.port(), 0);
}

/// Starts the binary on the in-process store, asks it one question, stops
/// it with SIGTERM and returns every line it wrote.
async fn lines_of_a_short_run(env: &[(&str, &str)], port_of: impl Fn(&str) -> Option<u16>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = vec![("LISTEN_ADDR", "127.0.0.1:0"), ("PALAVER_BACKEND", "memory")];
    vars.extend_from_slice(env);
    let mut run = Running::start(dir.path(), &vars);
    let line = run.wait_for_line("listening on");
    let port = port_of(&line).unwrap_or_else(|| panic!("no port in {line}"));
    let res = reqwest::get(format!("http://127.0.0.1:{port}/nowhere")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    sigterm(&run.child);
    assert!(run.wait_exit().success());
    let lines = run.all_lines();
    assert!(lines.iter().any(|l| l.contains("palaver stopped")), "{lines:?}");
    lines
}

#[tokio::test]
async fn logs_into_a_pipe_carry_no_colour_codes() {
    let port_of = |line: &str| line.split("listening on ").nth(1)?.split([' ', ':']).nth(1)?.parse().ok();
    let lines = lines_of_a_short_run(&[], port_of).await;
    // The in-process store's warning is among them: levels are coloured on a terminal.
    assert!(lines.iter().any(|l| l.contains("WARN")), "{lines:?}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "an ANSI escape in {line:?}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_bound_address() {
    let port_of = |line: &str| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let addr: std::net::SocketAddr = event["addr"].as_str()?.parse().ok()?;
        assert!(event["message"].as_str()?.contains(&addr.to_string()), "{event}");
        Some(addr.port())
    };
    let lines = lines_of_a_short_run(&[("LOG_FORMAT", "json")], port_of).await;
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(event["level"].is_string() && event["message"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
    }
}

/// Sets this process's open-file soft limit to its hard limit.
fn raise_own_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// The probe's finding, end to end: more idle connections than the process
/// may open files. The cap keeps the server below its limit (600 - 256 in
/// reserve = 344) by evicting idle connections, so /healthz still answers
/// at once, and accept never fails with "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_open_files_do_not_starve_healthz() {
    use std::os::unix::process::CommandExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const OPEN_FILES: libc::rlim_t = 600;
    raise_own_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Running::command(dir.path(), &[("PALAVER_BACKEND", "memory"), ("LISTEN_ADDR", "127.0.0.1:0")]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: OPEN_FILES, rlim_max: OPEN_FILES };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut run = Running::spawn(cmd);
    let port = run.port();

    let mut idle = Vec::new();
    for _ in 0..700 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let asked = std::time::Instant::now();
    let mut fresh = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    fresh.write_all(b"GET /healthz HTTP/1.1\r\nHost: palaver\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    within("GET /healthz past the open-file limit", fresh.read_to_string(&mut answer)).await.unwrap();
    let took = asked.elapsed();
    eprintln!("GET /healthz with 700 connections held and 600 open files: {:?} in {took:?}", answer.lines().next());
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(took < std::time::Duration::from_secs(1), "answered only after {took:?}");
    drop(idle);
    let cap = run.wait_for_line("connection cap: ");
    assert!(cap.contains("connection cap: 344 "), "{cap}");
    let sockets = run.wait_for_line("WebSocket cap: ");
    assert!(sockets.contains("WebSocket cap: 310 "), "a tenth kept for HTTP: {sockets}");
    run.seen.extend(run.lines.try_iter());
    assert!(!run.seen.iter().any(|l| l.contains("accept failed")), "{}", run.seen.join("\n"));
}

/// `?token=` is accepted (the seed recommends it), so query strings must
/// never reach a log: not at trace level, not on a refusal.
#[tokio::test]
async fn a_token_in_the_query_string_never_reaches_a_log_line() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let env = [("LISTEN_ADDR", "127.0.0.1:0"), ("PALAVER_BACKEND", "memory"), ("RUST_LOG", "trace")];
    let mut run = Running::start(dir.path(), &env);
    let port = run.port();
    let app = ExternalApp::new(port);
    app.signed_up("alice").await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/token", app.base))
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let pair: serde_json::Value = res.json().await.unwrap();
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let url = |token: &str| format!("ws://127.0.0.1:{port}/ws?room=lobby&token={token}");
    let mut socket = connect(url(&access).into_client_request().unwrap()).await.expect("?token= accepted");
    socket.next_of("hello").await;
    // A refused one too, and a malformed query around a token.
    let forged = format!("{access}x");
    assert_eq!(connect(url(&forged).into_client_request().unwrap()).await.err(), Some(StatusCode::UNAUTHORIZED));
    let bad_room = format!("ws://127.0.0.1:{port}/ws?room=Not+A+Room&token={access}");
    assert_eq!(connect(bad_room.into_client_request().unwrap()).await.err(), Some(StatusCode::BAD_REQUEST));
    drop(socket);
    sigterm(&run.child);
    assert!(run.wait_exit().success());
    let lines = run.all_lines();
    assert!(lines.len() > 20, "trace logging was on: {} lines", lines.len());
    let signature = access.rsplit('.').next().unwrap();
    for line in &lines {
        assert!(!line.contains(signature) && !line.contains("token="), "a token in a log line: {line}");
    }
}
