//! The test harness: a real `redis-server` per test on a free port (which a
//! test can stop and restart), the real application on port 0, and HTTP and
//! WebSocket clients with per-route helpers.

use std::{
    collections::HashMap,
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use palaver::{Application, Config};
use reqwest::{cookie::CookieStore, redirect::Policy, StatusCode};
use serde_json::Value;
use tokio::{net::TcpStream as TokioTcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery";

/// The session cookie's name: what browsers already hold, so it is pinned.
pub const COOKIE: &str = "palaver_session";

/// How long any awaited event may take before the test fails. Generous:
/// CI machines are slow; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut` or fails the test naming what did not happen.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(DEADLINE, what, fut).await
}

pub async fn within_for<T>(deadline: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {deadline:?} waiting for: {what}"),
    }
}

/// How long a poll waits between two looks.
pub const POLL: Duration = Duration::from_millis(20);

/// The one poll: looks with `check` until it yields `Some`, at least once
/// and for at most `deadline`. For states observed from outside (a key in
/// Redis, a page's text), where there is no event to await.
pub async fn poll<T, F, Fut>(deadline: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`poll`] for code that cannot await (starting and stopping processes).
pub fn poll_blocking<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if started.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if poll(DEADLINE, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
    .is_none()
    {
        panic!("timed out after {DEADLINE:?} waiting for: {what}");
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `TEST_LOG=1` logs the applications a test runs (filtered by `RUST_LOG`,
/// `info` by default) into that test's captured output: printed with its
/// failure, under its name, and not mixed with the other tests' logs.
fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_test_writer().try_init();
    }
}

// ---------------------------------------------------------------- Redis --

/// Runs each test body (an `async fn(&dyn TestRedis)`) twice: as
/// `single::<name>` on one `redis-server` and as `cluster::<name>` on a
/// Redis Cluster of six (three masters, three replicas), each its own.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let redis = crate::helpers::RedisServer::start();
                    super::$test(&redis).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let redis = crate::helpers::RedisCluster::start();
                    super::$test(&redis).await;
                }
            )*
        }
    };
}

/// What a test needs of a Redis, whether one server or a cluster.
pub trait TestRedis: Send + Sync {
    /// The `REDIS_URL` naming it.
    fn url(&self) -> String;
    /// Sends one command whose key (if any) is its second word, to the
    /// server that holds that key, and returns the raw RESP reply.
    fn command(&self, args: &[&str]) -> Option<String>;
    /// Every key it holds (on a cluster: on every master).
    fn all_keys(&self) -> Vec<String>;
}

/// The name of one of a room's keys in the store (`messages`, `active`, …).
pub fn room_key(room: &str, what: &str) -> String {
    let room = palaver::model::RoomName::parse(room).expect("a valid room name");
    match what {
        "messages" => palaver::backend::redis::keys::messages(&room),
        "active" => palaver::backend::redis::keys::active(&room),
        other => panic!("no room key {other}"),
    }
}

/// Stores a message in `room`'s stream as the server would have (`fields`
/// after `user`, `body`, `sent_at`: e.g. `client_id`), straight into Redis;
/// returns its id.
pub fn store_message(redis: &RedisServer, room: &str, user: &str, body: &str, sent_at: i64, fields: &[&str]) -> String {
    let key = room_key(room, "messages");
    let sent_at = sent_at.to_string();
    let mut command = vec!["XADD", key.as_str(), "*", "user", user, "body", body, "sent_at", &sent_at];
    command.extend_from_slice(fields);
    let reply = redis.command(&command).unwrap_or_default();
    // A bulk string: "$<len>\r\n<id>\r\n".
    assert!(reply.starts_with('$'), "XADD into {key}: {reply:?}");
    reply.lines().nth(1).expect("an id").to_owned()
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    palaver::clock::UnixMillis::now().as_millis()
}

/// The values of a RESP array reply (keys, members).
pub fn resp_lines(reply: &str) -> Vec<String> {
    reply.split("\r\n").filter(|l| !l.is_empty() && !l.starts_with(['*', '$'])).map(str::to_owned).collect()
}

/// A `redis-server` child process in its own temp dir and port.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistent: bool,
    /// Cluster mode: the cluster bus port.
    bus_port: Option<u16>,
}

impl RedisServer {
    /// A throwaway Redis, no persistence.
    pub fn start() -> Self {
        Self::launch(false, false)
    }

    /// A Redis with an fsync-always append-only file, so that whatever it
    /// acknowledged survives being killed.
    pub fn start_persistent() -> Self {
        Self::launch(true, false)
    }

    /// A Redis in cluster mode, not yet part of any cluster (for a test
    /// that joins nodes itself, as an operator does).
    pub fn start_cluster_node() -> Self {
        Self::launch(false, true)
    }

    fn launch(persistent: bool, cluster: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer { port: 0, dir, child: None, persistent, bus_port: None };
        for _ in 0..5 {
            server.port = free_port();
            server.bus_port = cluster.then(free_port);
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--loglevel", "warning", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(bus) = self.bus_port {
            // A node that misses a second of pings is failed over: quick,
            // for the failover test, and harmless on one machine.
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]).args([
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus.to_string(),
            ]);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(err) => panic!(
                "cannot run redis-server ({err}). Install it (`apt-get install redis-server`) or run `scripts/test`, \
                 which installs it."
            ),
        };
        self.child = Some(child);
        let up = poll_blocking(Duration::from_secs(5), || {
            if self.ping() {
                return Some(true);
            }
            // Exited: the port was taken meanwhile.
            matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_)))).then_some(false)
        });
        if up != Some(true) {
            self.stop();
        }
        up == Some(true)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command in RESP and returns the raw reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    pub fn ping(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Kills the server (SIGKILL: nothing is saved on the way out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: connections stay open and nothing is answered (commands
    /// time out) until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT: answers again, from where it stopped.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        // SAFETY: a signal to the child process this handle started and still holds.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0, "signal {signal} to redis-server");
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        poll_blocking(DEADLINE, || self.spawn().then_some(()))
            .unwrap_or_else(|| panic!("redis-server did not restart on port {port}"));
    }

    /// A field of `INFO <section>`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        let reply = self.command(&["INFO", section])?;
        reply.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
    }
}

impl TestRedis for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn command(&self, args: &[&str]) -> Option<String> {
        RedisServer::command(self, args)
    }
    fn all_keys(&self) -> Vec<String> {
        resp_lines(&self.command(&["KEYS", "*"]).unwrap_or_default())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of real `redis-server` processes in cluster mode, each
/// in its own temp dir on free ports, joined with `redis-cli --cluster
/// create`: three masters with one replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::create(false)
    }

    /// A cluster whose nodes keep an append-only file (fsync always): a
    /// node killed and started again comes back with exactly what it had,
    /// which is how a test makes a failover lose writes
    /// ([`RedisCluster::hold_back`], [`RedisCluster::fail_over_losing`]).
    pub fn start_persistent() -> Self {
        Self::create(true)
    }

    fn create(persistent: bool) -> Self {
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::launch(persistent, true)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run redis-cli ({err}). Install it (`apt-get install redis-tools`) or run `scripts/test`."
                )
            });
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every live node says the cluster is ok and every live
    /// replica is in sync with its master (acknowledged writes need one).
    pub fn wait_healthy(&self) {
        let healthy = poll_blocking(Duration::from_secs(30), || {
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|node| {
                    let ok = node.command(&["CLUSTER", "INFO"]).is_some_and(|info| info.contains("cluster_state:ok"));
                    let synced = match node.info("replication", "role").as_deref().map(str::trim) {
                        Some("slave") => {
                            node.info("replication", "master_link_status").is_some_and(|s| s.trim() == "up")
                        }
                        Some("master") => true,
                        _ => false,
                    };
                    ok && synced
                })
                .then_some(())
        });
        assert!(healthy.is_some(), "the cluster did not become healthy: {:?}", self.describe());
    }

    /// `CLUSTER NODES` as some live node sees it.
    pub fn describe(&self) -> Option<String> {
        self.nodes.iter().filter(|n| n.child.is_some()).find_map(|n| n.command(&["CLUSTER", "NODES"]))
    }

    /// The node that is master of `slot` now, as a live node sees it
    /// (`CLUSTER NODES`: one line per node, a master's line ends with the
    /// slot ranges it serves).
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        let nodes = self.describe()?;
        let port = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let serves = fields.iter().skip(8).any(|range| {
                let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(start), Some(Some(end))) => (start..=end).contains(&slot),
                    (Some(single), None) => single == slot,
                    _ => false,
                }
            });
            let addr = fields.get(1)?.split('@').next()?;
            serves.then(|| addr.rsplit(':').next()?.parse::<u16>().ok()).flatten()
        })?;
        self.nodes.iter().position(|n| n.port == port)
    }

    pub fn master_of(&self, key: &str) -> Option<usize> {
        self.master_of_slot(key_slot(key))
    }

    /// The live node that replicates master `master` now.
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let nodes = self.describe()?;
        let lines: Vec<Vec<&str>> = nodes.lines().map(|line| line.split_whitespace().collect()).collect();
        let port_of = |fields: &[&str]| fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok();
        let master_id = lines.iter().find(|f| port_of(f) == Some(self.nodes[master].port))?.first()?.to_owned();
        let replica = lines.iter().find(|f| {
            f.get(2).is_some_and(|flags| flags.contains("slave") && !flags.contains("fail"))
                && f.get(3) == Some(&master_id)
        })?;
        let port = port_of(replica)?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Kills `replica` once it has everything its master `master` wrote
    /// (SIGKILL; its append-only file keeps what it had): from now on
    /// nothing the master writes reaches it. A replica merely stopped
    /// (SIGSTOP) would not do: the master's writes wait in its socket
    /// buffer and it applies them when continued, and one cut off with
    /// `CLIENT KILL TYPE replica` reconnects within a second and catches up.
    pub fn hold_back(&mut self, master: usize, replica: usize) {
        let offset = |node: &RedisServer, field: &str| node.info("replication", field).map(|v| v.trim().to_owned());
        let caught_up = poll_blocking(DEADLINE, || {
            let wrote = offset(&self.nodes[master], "master_repl_offset")?;
            (offset(&self.nodes[replica], "slave_repl_offset")? == wrote).then_some(())
        });
        assert!(caught_up.is_some(), "node {replica} did not catch up with its master, node {master}");
        self.kill(replica);
    }

    /// After [`RedisCluster::hold_back`]: kills `master` and makes its
    /// replica the master as it came back from its own disk, so that what
    /// the master wrote meanwhile is lost, as in a crash before the
    /// replica had received it. The replica is started again and takes
    /// the master's slots with `CLUSTER FAILOVER TAKEOVER` (no election:
    /// one away from its master this long would not start one by itself,
    /// its data being too old by `cluster-replica-validity-factor`). The
    /// old master is started last: it rejoins as the new master's replica
    /// and resyncs from it, so that what only it had is gone from every
    /// node. Returns once the cluster is healthy again.
    pub fn fail_over_losing(&mut self, master: usize, replica: usize) {
        self.kill(master);
        self.restart(replica);
        let promoted = poll_blocking(DEADLINE, || {
            let node = &self.nodes[replica];
            if node.info("replication", "role").is_some_and(|role| role.trim() == "master") {
                return Some(());
            }
            node.command(&["CLUSTER", "FAILOVER", "TAKEOVER"]);
            None
        });
        assert!(promoted.is_some(), "node {replica} did not take over: {:?}", self.describe());
        self.wait_healthy();
        self.restart(master);
        let rejoined =
            poll_blocking(Duration::from_secs(30), || (self.replica_of(replica) == Some(master)).then_some(()));
        assert!(rejoined.is_some(), "node {master} did not rejoin as a replica: {:?}", self.describe());
        self.wait_healthy();
    }

    /// Kills node `i` (SIGKILL: a crash, nothing saved or handed over).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its port and directory; it rejoins the
    /// cluster (a failed-over master comes back as a replica).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }
}

/// The cluster slot of a key (CRC16 of its hash tag), as Redis computes it.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16384
}

impl TestRedis for RedisCluster {
    fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push_str(if i == 1 { "?" } else { "&" });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    /// Follows `MOVED` from whichever live node answers first.
    fn command(&self, args: &[&str]) -> Option<String> {
        let first = self.nodes.iter().find(|n| n.child.is_some())?;
        let reply = first.command(args)?;
        match reply.strip_prefix("-MOVED ") {
            Some(moved) => {
                let port: u16 = moved.split_whitespace().nth(1)?.rsplit(':').next()?.parse().ok()?;
                self.nodes.iter().find(|n| n.port == port)?.command(args)
            }
            None => Some(reply),
        }
    }

    fn all_keys(&self) -> Vec<String> {
        let masters = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && n.info("replication", "role").is_some_and(|role| role.trim() == "master"));
        masters.flat_map(|n| resp_lines(&n.command(&["KEYS", "*"]).unwrap_or_default())).collect()
    }
}

// ---------------------------------------------------------------- App --

/// The real application, in-process, on port 0.
pub struct TestApp {
    pub addr: SocketAddr,
    pub origin: String,
    /// The route table the instance serves.
    pub routes: Vec<(reqwest::Method, &'static str)>,
    /// Where `/metrics` is served (`METRICS_ADDR`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Settings tests start from: short enough to exercise timing paths.
pub fn base_vars(redis: Option<&dyn TestRedis>) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [("LISTEN_ADDR", "127.0.0.1:0"), ("RUST_LOG", "warn")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match redis {
        Some(redis) => {
            vars.insert("PALAVER_BACKEND".into(), "redis".into());
            vars.insert("REDIS_URL".into(), redis.url());
            // On a cluster an acknowledged append waits for a replica. With
            // several six-node clusters on two busy cores, a replica's
            // answer was seen to take longer than the default 500 ms, which
            // fails a send that is fine: tests allow the most there is.
            vars.insert("REDIS_WAIT_TIMEOUT_MS".into(), "1500".into());
        }
        None => {
            vars.insert("PALAVER_BACKEND".into(), "memory".into());
        }
    }
    vars
}

impl TestApp {
    pub async fn spawn(redis: &dyn TestRedis) -> TestApp {
        Self::spawn_with(Some(redis), &[]).await
    }

    pub async fn spawn_memory() -> TestApp {
        Self::spawn_with(None, &[]).await
    }

    /// Starts an instance with extra variables on top of [`base_vars`].
    pub async fn spawn_with(redis: Option<&dyn TestRedis>, extra: &[(&str, &str)]) -> TestApp {
        let mut vars = base_vars(redis);
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        Self::spawn_config(Config::from_map(&vars).expect("test config is valid")).await
    }

    /// Two instances on one Redis that are one group: each lists the
    /// other's origin in `ALLOWED_ORIGINS`, as instances reached at different
    /// origins are configured (their tokens are then accepted by both).
    pub async fn spawn_group(redis: &dyn TestRedis, extra: &[(&str, &str)]) -> (TestApp, TestApp) {
        let (a, b) = (free_port(), free_port());
        let listen = |port: u16| format!("127.0.0.1:{port}");
        let origin = |port: u16| format!("http://127.0.0.1:{port}");
        let vars_for = |me: u16, other: u16| {
            let mut vars = extra.to_vec();
            vars.push(("LISTEN_ADDR", Box::leak(listen(me).into_boxed_str())));
            vars.push(("ALLOWED_ORIGINS", Box::leak(origin(other).into_boxed_str())));
            vars
        };
        (
            TestApp::spawn_with(Some(redis), &vars_for(a, b)).await,
            TestApp::spawn_with(Some(redis), &vars_for(b, a)).await,
        )
    }

    pub async fn spawn_config(config: Config) -> TestApp {
        init_logging();
        let app = Application::build(config).await.expect("application starts");
        let addr = app.local_addr();
        let origin = app.public_origin().to_owned();
        let routes = app.route_table();
        let metrics_addr = app.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestApp { addr, origin, routes, metrics_addr, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.addr)
    }

    /// Graceful shutdown, as on SIGTERM; waits for it to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        let task = self.task.take().expect("running");
        within("graceful shutdown", task).await.expect("shutdown task")
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The value of one series of its `/metrics` (`name{labels}` exactly as
    /// rendered); `None` when it is absent. Needs `METRICS_ADDR`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let addr = self.metrics_addr.expect("METRICS_ADDR is set");
        let text = reqwest::get(format!("http://{addr}/metrics")).await.ok()?.text().await.ok()?;
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// How many WebSockets it holds open now.
    pub async fn sockets_open(&self) -> u64 {
        self.metric("palaver_sockets_open").await.unwrap_or(0.0) as u64
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------- Users --

/// A browser-like HTTP client: its own cookie jar, redirects not followed.
#[derive(Clone)]
pub struct Browser {
    pub http: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .build()
            .expect("http client");
        Self { http, jar }
    }

    /// The `Cookie` header this browser would send to `app`.
    pub fn cookie_header(&self, app: &TestApp) -> Option<String> {
        let url = app.url("/").parse().unwrap();
        self.jar.cookies(&url).map(|v| v.to_str().unwrap().to_owned())
    }

    /// The session cookie's value, if any.
    pub fn session_id(&self, app: &TestApp) -> Option<String> {
        let header = self.cookie_header(app)?;
        header.split("; ").find_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('=')).map(str::to_owned)
    }

    /// Puts a session cookie in the jar, as an attacker-chosen or stolen id.
    pub fn set_session_id(&self, app: &TestApp, id: &str) {
        let url = app.url("/").parse().unwrap();
        self.jar.add_cookie_str(&format!("{COOKIE}={id}; Path=/"), &url);
    }

    pub async fn get(&self, app: &TestApp, path: &str) -> reqwest::Response {
        self.http.get(app.url(path)).send().await.expect("GET")
    }

    pub async fn post_form(&self, app: &TestApp, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(app.url(path)).form(form).send().await.expect("POST")
    }

    pub async fn post(&self, app: &TestApp, path: &str) -> reqwest::Response {
        self.http.post(app.url(path)).send().await.expect("POST")
    }

    pub async fn register(&self, app: &TestApp, username: &str, password: &str) -> reqwest::Response {
        self.post_form(app, "/register", &[("username", username), ("password", password)]).await
    }

    pub async fn login(&self, app: &TestApp, username: &str, password: &str) -> reqwest::Response {
        self.post_form(app, "/login", &[("username", username), ("password", password)]).await
    }

    pub async fn logout(&self, app: &TestApp) -> reqwest::Response {
        self.post(app, "/logout").await
    }

    pub async fn refresh(&self, app: &TestApp) -> reqwest::Response {
        self.post(app, "/session/refresh").await
    }

    /// Opens `/ws` with this browser's cookies (and its page origin).
    pub async fn open_socket(&self, app: &TestApp, query: &str) -> Result<Socket, StatusCode> {
        let mut request = app.ws_url(query).into_client_request().unwrap();
        if let Some(cookie) = self.cookie_header(app) {
            request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
        }
        request.headers_mut().insert("origin", HeaderValue::from_str(&app.origin).unwrap());
        connect(request).await
    }

    /// Opens a socket and reads its `hello`.
    pub async fn join(&self, app: &TestApp, query: &str) -> (Socket, Value) {
        let mut socket = self.open_socket(app, query).await.expect("upgrade accepted");
        let hello = socket.next_of("hello").await;
        (socket, hello)
    }
}

/// Registers a new user in a fresh browser, signed in.
pub async fn signed_up(app: &TestApp, username: &str) -> Browser {
    let browser = Browser::new();
    let res = browser.register(app, username, PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "registering {username}");
    browser
}

/// Connects; an HTTP refusal comes back as its status.
pub async fn connect(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Socket, StatusCode> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Socket::new(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            Err(StatusCode::from_u16(res.status().as_u16()).unwrap())
        }
        Err(err) => panic!("WebSocket connect failed without an HTTP answer: {err}"),
    }
}

pub fn assert_redirect(res: &reqwest::Response, location: &str) {
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "expected a 303 to {location}");
    assert_eq!(res.headers().get("location").unwrap(), location);
}

// ---------------------------------------------------------------- Sockets --

/// What a socket can receive.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Close(u16, String),
    /// The connection ended without a close frame.
    Ended,
}

pub struct Socket {
    pub ws: WebSocketStream<MaybeTlsStream<TokioTcpStream>>,
    /// Who is online, as the presence frames read so far say.
    pub online: std::collections::BTreeSet<String>,
}

impl Socket {
    pub fn new(ws: WebSocketStream<MaybeTlsStream<TokioTcpStream>>) -> Socket {
        Socket { ws, online: Default::default() }
    }

    /// Reads presence frames (the first list, then diffs) until the room's
    /// online set is exactly `want`; skips other frames. Checks each frame's
    /// count against the set it leaves.
    pub async fn presence_until(&mut self, want: &[&str]) {
        let want: std::collections::BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        while self.online != want {
            let frame = self.next_of_any(&["presence", "presence_diff"]).await;
            let names = |key: &str| -> Vec<String> {
                frame[key].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect()
            };
            if frame["type"] == "presence" {
                self.online = names("online").into_iter().collect();
            } else {
                for name in names("joined") {
                    self.online.insert(name);
                }
                for name in names("left") {
                    self.online.remove(&name);
                }
            }
            assert_eq!(frame["count"].as_u64().unwrap() as usize, self.online.len(), "{frame}");
        }
    }

    /// The next frame (pings are answered by tungstenite and skipped).
    pub async fn next_frame(&mut self) -> Frame {
        within("a frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Frame::Json(serde_json::from_str(&text).expect("server frames are JSON"));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return Frame::Close(code, reason);
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Frame::Ended,
                }
            }
        })
        .await
    }

    /// The next JSON frame of `kind`, skipping others (presence, mostly).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            match self.next_frame().await {
                Frame::Json(v) if v["type"] == kind => return v,
                Frame::Json(_) => continue,
                other => panic!("expected a {kind} frame, got {other:?}"),
            }
        }
    }

    /// The next JSON frame whose type is one of `kinds`, skipping others.
    pub async fn next_of_any(&mut self, kinds: &[&str]) -> Value {
        loop {
            match self.next_frame().await {
                Frame::Json(v) if kinds.iter().any(|k| v["type"] == *k) => return v,
                Frame::Json(_) => continue,
                other => panic!("expected one of {kinds:?}, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Frame::Json(_) => continue,
                Frame::Close(code, reason) => return (code, reason),
                Frame::Ended => panic!("the socket ended without a close frame"),
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws.send(Message::Text(value.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned().into())).await.expect("send");
    }

    /// Sends a chat message and returns the ack.
    pub async fn say(&mut self, body: &str, client_id: &str) -> Value {
        self.send_json(serde_json::json!({"type": "send", "body": body, "client_id": client_id})).await;
        let ack = self.next_of_any(&["ack", "error"]).await;
        assert_eq!(ack["type"], "ack", "{body:?} was not acknowledged: {ack}");
        assert_eq!(ack["client_id"], client_id);
        ack
    }
}

// ---------------------------------------------------------- Raw HTTP/1 --

/// Reads up to the end of a response head (or until the connection ends).
pub async fn read_head(stream: &mut TokioTcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => data.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

/// Opens a `POST /login` that announces 16,000 bytes of body and sends one:
/// the attack of issue 20 (a byte every 3 s keeps it open until the 408).
/// Returns once the server reads the body (its `100 Continue`), so the
/// request is in flight.
pub async fn slow_body(app: &TestApp) -> TokioTcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = TokioTcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 16000\r\nExpect: 100-continue\r\n\r\n",
        app.addr, app.origin
    );
    stream.write_all(head.as_bytes()).await.expect("head written");
    let answer = within("100 Continue", read_head(&mut stream)).await;
    assert!(answer.starts_with("HTTP/1.1 100 "), "the body is being read: {answer}");
    stream.write_all(b"u").await.expect("a byte of body");
    stream
}
