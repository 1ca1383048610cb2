//! palaver-cli end to end against real instances: signing in with the
//! token API, chatting with a browser user across instances, surviving a
//! restart of its instance, being signed out by the browser's "log out
//! everywhere", its own logout leaving the browser alone, listing and
//! ending its user's sessions, and waiting as long as a busy instance
//! asks (503 with `Retry-After`).
//!
//! The CLI is a workspace member: `cargo test --workspace` (what
//! `scripts/test` runs) builds it beside this test binary.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use crate::helpers::*;

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>").join("palaver-cli");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p palaver-cli` (scripts/test does)",
        path.display()
    );
    path
}

/// A palaver-cli process with its output read line by line.
struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen_err: Vec<String>,
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

impl Cli {
    fn command(server: &str, credentials: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env_clear()
            .env("PALAVER_SERVER", server)
            .env("PALAVER_CREDENTIALS", credentials)
            .env("PALAVER_PASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn start(server: &str, credentials: &std::path::Path, args: &[&str]) -> Cli {
        let mut child = Self::command(server, credentials, args).spawn().expect("palaver-cli starts");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Cli { stdin: child.stdin.take(), child, stdout, stderr, seen_err: Vec::new() }
    }

    /// Runs a command to its end: its status and stdout.
    fn run(server: &str, credentials: &std::path::Path, args: &[&str]) -> (ExitStatus, String) {
        let out = Self::command(server, credentials, args).stdin(Stdio::null()).output().expect("palaver-cli runs");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stdout_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => continue,
                Err(_) => panic!("palaver-cli printed no {what}; stderr: {:?}", self.stderr_so_far()),
            }
        }
    }

    fn stderr_so_far(&mut self) -> Vec<String> {
        self.seen_err.extend(self.stderr.try_iter());
        self.seen_err.clone()
    }

    /// Waits for the `n`th stderr line containing `needle` (counting all seen).
    fn stderr_count(&mut self, needle: &str, n: usize, deadline: Duration) {
        let until = std::time::Instant::now() + deadline;
        while self.seen_err.iter().filter(|l| l.contains(needle)).count() < n {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.seen_err.push(line),
                Err(_) => panic!("no {n}× {needle:?} on palaver-cli's stderr: {:?}", self.seen_err),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        poll_blocking(DEADLINE * 2, || self.child.try_wait().unwrap()).expect("palaver-cli exits")
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_in_chats_with_a_browser_user_survives_a_restart_and_signs_out() {
    let redis = RedisServer::start();
    let (a, b) = TestApp::spawn_group(&redis, &[]).await;
    let b_addr = b.addr.to_string();
    let group = format!("{},{}", a.origin, b.origin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    signed_up(&a, "alice").await;
    let bob = signed_up(&a, "bob").await;
    let (mut bobs, _) = bob.join(&a, "").await;

    let (status, out) = Cli::run(&b.origin, &credentials, &["login", "alice"]);
    assert!(status.success(), "login: {status:?}");
    assert!(out.contains("Signed in as alice"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&credentials).unwrap().permissions().mode() & 0o777, 0o600);

    let mut cli = Cli::start(&b.origin, &credentials, &["chat", "lobby"]);
    cli.stderr_count("connected to lobby as alice", 1, DEADLINE);
    bobs.say("hello cli", "b1").await;
    cli.stdout_line("bob's message", |l| l.ends_with("bob: hello cli"));
    cli.type_line("hi bob, from a terminal");
    loop {
        let m = bobs.next_of("message").await;
        if m["user"] == "alice" {
            assert_eq!(m["body"], "hi bob, from a terminal");
            break;
        }
    }

    // Its instance restarts under it: it reconnects and misses nothing.
    b.shutdown().await.unwrap();
    bobs.say("while you were away", "b2").await;
    let b = TestApp::spawn_with(Some(&redis), &[("LISTEN_ADDR", &b_addr), ("ALLOWED_ORIGINS", &group)]).await;
    cli.stderr_count("connected to lobby as alice", 2, Duration::from_secs(20));
    cli.stdout_line("the message sent meanwhile", |l| l.ends_with("bob: while you were away"));
    bobs.say("and after", "b3").await;
    let next = cli.stdout_line("the next message", |l| l.contains("bob: "));
    assert!(next.ends_with("bob: and after"), "nothing repeated: {next}");

    // Stdin ends: it leaves once what it sent is acknowledged.
    cli.stdin.take();
    assert!(cli.wait().success());

    // Its logout ends its own session, not the browser's.
    let (status, out) = Cli::run(&b.origin, &credentials, &["logout"]);
    assert!(status.success() && out.contains("Signed out"), "{status:?} {out}");
    assert!(!credentials.exists(), "the credentials are gone");
    bobs.say("still here", "b4").await;
    assert_eq!(bob.get(&a, "/chat/lobby").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_in_a_browser_signs_the_cli_out_on_another_instance() {
    let redis = RedisServer::start();
    let (a, b) = TestApp::spawn_group(&redis, &[]).await;
    let browser = signed_up(&a, "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    assert!(Cli::run(&b.origin, &credentials, &["login", "alice"]).0.success());
    let mut cli = Cli::start(&b.origin, &credentials, &["chat", "lobby"]);
    cli.stderr_count("connected to lobby as alice", 1, DEADLINE);

    assert_redirect(&browser.post(&a, "/logout/everywhere").await, "/login");
    let status = cli.wait();
    assert_eq!(status.code(), Some(4), "signed out");
    cli.stderr_count("signed out: logged out", 1, DEADLINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pipe_goes_at_the_servers_pace_and_is_stored_whole_and_in_order() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("MESSAGE_RATE_PER_SEC", "20"), ("MESSAGE_BURST", "5")]).await;
    signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    assert!(Cli::run(&app.origin, &credentials, &["login", "alice"]).0.success());

    // Twelve times the burst, all in the pipe before the socket opens.
    let lines: Vec<String> = (0..60).map(|n| format!("line {n:02}")).collect();
    let mut cli = Cli::start(&app.origin, &credentials, &["chat", "lobby"]);
    for line in &lines {
        cli.type_line(line);
    }
    cli.stdin.take();
    let status = cli.wait();
    let said = cli.stderr_so_far();
    assert!(status.success(), "{status:?}: {said:?}");
    assert!(!said.iter().any(|l| l.contains("rate_limited")), "sent faster than the server takes: {said:?}");

    let page: serde_json::Value = bob.get(&app, "/chat/lobby/history?limit=100").await.json().await.unwrap();
    let stored: Vec<&str> = page["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(stored, lines, "every line, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_shows_the_rooms_last_twenty_messages_then_live_ones_without_repeats() {
    let redis = RedisServer::start();
    // A burst that takes bob's 25 at once (the user's own is 40).
    let app = TestApp::spawn_with(Some(&redis), &[("MESSAGE_BURST", "30")]).await;
    signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    let (mut bobs, _) = bob.join(&app, "").await;
    for n in 1..=25 {
        bobs.say(&format!("earlier {n:02}"), &format!("e{n}")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    assert!(Cli::run(&app.origin, &credentials, &["login", "alice"]).0.success());

    let mut cli = Cli::start(&app.origin, &credentials, &["chat", "lobby"]);
    for n in 6..=25 {
        let line = cli.stdout_line("an earlier message", |_| true);
        assert!(line.ends_with(&format!("bob: earlier {n:02}")), "the last 20, oldest first: {line}");
    }
    cli.stderr_count("connected to lobby as alice", 1, DEADLINE);
    bobs.say("live now", "l1").await;
    let next = cli.stdout_line("the live message", |_| true);
    assert!(next.ends_with("bob: live now"), "nothing shown twice: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_its_users_sessions_as_itself_and_ends_a_browsers() {
    let redis = RedisServer::start();
    let (a, b) = TestApp::spawn_group(&redis, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    let laptop = crate::account::chrome(&a, "alice", true).await;
    let (mut browser_socket, _) = laptop.join(&a, "").await;
    let (status, _) = Cli::run(&b.origin, &credentials, &["login", "alice"]);
    assert!(status.success(), "login: {status:?}");

    let (status, out) = Cli::run(&b.origin, &credentials, &["sessions"]);
    assert!(status.success(), "sessions: {status:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let mine = lines.iter().find(|l| l.ends_with("(this one)")).expect("this session marked");
    assert!(mine.contains(" token ") && mine.contains(" palaver-cli/"), "{mine}");
    let browser = lines.iter().find(|l| l.contains("Chrome on Linux")).expect("the browser's session");
    assert!(browser.contains(" browser ") && !browser.ends_with("(this one)"), "{browser}");
    let id = browser.split_whitespace().next().unwrap();

    let (status, out) = Cli::run(&b.origin, &credentials, &["sessions", "end", id]);
    assert!(status.success(), "sessions end: {status:?}");
    assert_eq!(out, format!("Ended session {id}\n"));
    let closed = within_for(Duration::from_secs(3), "the browser's socket to close", browser_socket.closed()).await;
    assert_eq!(closed, (4401, "session revoked".to_string()));
    assert_eq!(laptop.refresh(&a).await.status(), StatusCode::UNAUTHORIZED);
    let (status, out) = Cli::run(&b.origin, &credentials, &["sessions"]);
    assert!(status.success() && out.lines().count() == 1, "{out}");
    let (status, _) = Cli::run(&b.origin, &credentials, &["sessions", "end", id]);
    assert_eq!(status.code(), Some(1), "an id no longer there");
}

/// A front for an instance that turns its first `shed` upgrades away as an
/// instance with every place taken does (503, `Retry-After: secs`) and
/// passes everything else through; it notes when each upgrade arrived.
struct BusyFront {
    origin: String,
    upgrades: Arc<Mutex<Vec<Instant>>>,
}

impl BusyFront {
    async fn start(app: &TestApp, shed: usize, secs: u64) -> BusyFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let (seen, upstream) = (upgrades.clone(), app.addr);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let head = read_head(&mut client).await;
                    if head.starts_with("GET /ws") {
                        let arrived = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(Instant::now());
                            seen.len()
                        };
                        if arrived <= shed {
                            let body = "too many connections are being opened; try again shortly";
                            let answer = format!(
                                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {secs}\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = client.write_all(answer.as_bytes()).await;
                            return;
                        }
                    }
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    if server.write_all(head.as_bytes()).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        BusyFront { origin, upgrades }
    }

    fn upgrades(&self) -> Vec<Instant> {
        self.upgrades.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_instance_is_waited_for_as_long_as_it_asks_and_the_user_told_once() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    let front = BusyFront::start(&app, 2, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    assert!(Cli::run(&front.origin, &credentials, &["login", "alice"]).0.success());

    let mut cli = Cli::start(&front.origin, &credentials, &["chat", "lobby"]);
    cli.stderr_count("connected to lobby as alice", 1, Duration::from_secs(20));
    let upgrades = front.upgrades();
    assert_eq!(upgrades.len(), 3, "two turned away, then in");
    for (i, pair) in upgrades.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        assert!(waited >= Duration::from_secs(2), "attempt {} came {waited:?} after the one before", i + 2);
    }
    let said = cli.stderr_so_far();
    let busy: Vec<_> = said.iter().filter(|l| l.contains("the server is busy; retrying in ")).collect();
    assert_eq!(busy.len(), 1, "told once: {said:?}");
}
