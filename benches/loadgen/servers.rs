//! The processes a run measures: `redis-server` (one, or a six-node
//! cluster), release palaver instances, the Node peer and the bare server,
//! each on a free port and killed when its handle drops.

use std::{
    net::TcpStream as StdTcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::args::arg;

const BINARY: &str = env!("CARGO_BIN_EXE_palaver");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// What is measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
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

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Palaver => "palaver",
            Kind::Node => "node peer",
            Kind::Bare => "bare server",
        }
    }
}

/// `--server a,b`: the servers to measure in turn (palaver by default).
pub(crate) fn servers(args: &[String]) -> Vec<Kind> {
    arg(args, "--server", "palaver".to_string()).split(',').map(Kind::parse).collect()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn raise_fd_limit(quiet: bool) {
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

pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn start_redis(dir: &Path) -> (Process, u16) {
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

/// One `redis-server` that can be killed and started again on its port and
/// directory: alone (with or without an append-only file) or as a node of
/// a cluster (which it rejoins from its `nodes.conf`).
pub(crate) struct RedisNode {
    pub(crate) port: u16,
    dir: PathBuf,
    /// `Some(appendfsync)`: persistence in an append-only file.
    aof: Option<&'static str>,
    /// Cluster mode: the bus port and `cluster-node-timeout` (ms; `None`:
    /// Redis's default).
    cluster: Option<(u16, Option<u32>)>,
    process: Option<Process>,
}

impl RedisNode {
    /// A node of a cluster to be, in `dir`.
    pub(crate) fn cluster_node(dir: &Path, node_timeout_ms: Option<u32>) -> RedisNode {
        let mut node = RedisNode { port: free_port(), dir: dir.to_owned(), aof: None, cluster: None, process: None };
        node.cluster = Some((free_port(), node_timeout_ms));
        node.start();
        node
    }

    /// One Redis that keeps what it acknowledged in an append-only file,
    /// fsynced as `appendfsync` says.
    pub(crate) fn with_aof(dir: &Path, appendfsync: &'static str) -> RedisNode {
        let mut node =
            RedisNode { port: free_port(), dir: dir.to_owned(), aof: Some(appendfsync), cluster: None, process: None };
        node.start();
        node
    }

    /// Starts it (again): same port, same directory.
    pub(crate) fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]).arg("--dir").arg(&self.dir);
        match self.aof {
            Some(fsync) => cmd.args(["--appendonly", "yes", "--appendfsync", fsync]),
            None => cmd.args(["--appendonly", "no"]),
        };
        if let Some((bus, timeout)) = self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()]);
            if let Some(ms) = timeout {
                cmd.args(["--cluster-node-timeout", &ms.to_string()]);
            }
        }
        let child = cmd.stdout(Stdio::null()).spawn().expect("redis-server (apt-get install redis-server)");
        self.process = Some(Process(child));
        wait_for_port(self.port, "redis-server");
    }

    /// SIGKILL: nothing saved or handed over on the way out.
    pub(crate) fn kill(&mut self) {
        self.process = None;
    }

    pub(crate) fn running(&self) -> bool {
        self.process.is_some()
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A Redis Cluster of six `redis-server`s (three masters, one replica
/// each), joined with `redis-cli --cluster create`; the nodes and the
/// `redis-cluster://` URL naming them. `node_timeout_ms`: how soon a
/// silent master is failed over (`None`: Redis's default, 15 s).
pub(crate) fn start_redis_cluster(dir: &Path, node_timeout_ms: Option<u32>) -> (Vec<RedisNode>, String) {
    let nodes: Vec<RedisNode> =
        (0..6).map(|i| RedisNode::cluster_node(&dir.join(format!("node-{i}")), node_timeout_ms)).collect();
    let addrs: Vec<String> = nodes.iter().map(RedisNode::addr).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
    let start = Instant::now();
    while !cluster_healthy(&nodes) {
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

/// Every running node agrees the cluster is up, and every running replica
/// is in sync (acks wait for one).
pub(crate) fn cluster_healthy(nodes: &[RedisNode]) -> bool {
    let cli = |addr: &str, args: &[&str]| {
        let (host, port) = addr.split_once(':').unwrap();
        let out = Command::new("redis-cli").args(["-h", host, "-p", port]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    nodes.iter().filter(|n| n.running()).all(|n| {
        cli(&n.addr(), &["CLUSTER", "INFO"]).contains("cluster_state:ok") && {
            let replication = cli(&n.addr(), &["INFO", "replication"]);
            replication.contains("role:master") || replication.contains("master_link_status:up")
        }
    })
}

pub(crate) fn start_palaver(redis_port: u16, extra: &[(&str, &str)]) -> (Process, u16) {
    start_palaver_on(&format!("redis://127.0.0.1:{redis_port}"), extra)
}

pub(crate) fn start_palaver_on(redis_url: &str, extra: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    (start_palaver_at(redis_url, port, extra, Stdio::inherit()), port)
}

/// A release instance on `port` (which may have been another's, killed:
/// it binds with `SO_REUSEADDR`); its log goes to `log`.
pub(crate) fn start_palaver_at(redis_url: &str, port: u16, extra: &[(&str, &str)], log: Stdio) -> Process {
    try_start_palaver_at(redis_url, port, extra, log).unwrap_or_else(|why| panic!("{why}"))
}

/// [`start_palaver_at`], or why it did not start: it exited first (as it
/// does when its store cannot be reached), or its port stayed shut 20 s.
pub(crate) fn try_start_palaver_at(
    redis_url: &str,
    port: u16,
    extra: &[(&str, &str)],
    log: Stdio,
) -> Result<Process, String> {
    let mut process = spawn_palaver_at(redis_url, port, extra, log);
    let start = Instant::now();
    while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = process.0.try_wait() {
            return Err(format!("palaver exited before it listened ({status})"));
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("palaver did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// Starts palaver on `port` and returns at once, without waiting for it.
pub(crate) fn spawn_palaver_at(redis_url: &str, port: u16, extra: &[(&str, &str)], log: Stdio) -> Process {
    // LOADGEN_PALAVER: another build to measure (a before/after table).
    let mut cmd = Command::new(std::env::var_os("LOADGEN_PALAVER").unwrap_or(BINARY.into()));
    cmd.env("REDIS_URL", redis_url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", std::env::var("LOADGEN_SERVER_LOG").unwrap_or("warn".into()))
        // The load generator is one client address with many users and
        // sockets: lift the per-client and per-user limits it would trip.
        .env("MAX_CONNECTIONS", "100000")
        .env("MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("MAX_SOCKETS_PER_USER", "100000")
        .env("MAX_SOCKETS_PER_SESSION", "100000")
        .env("REGISTER_MAX_PER_ADDRESS", "1000000")
        .env("REGISTER_MAX_SUCCESSES_PER_ADDRESS", "1000000")
        .env("ROOMS_PER_USER_PER_HOUR", "1000000");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Process(cmd.stdout(Stdio::null()).stderr(log).spawn().expect("palaver binary"))
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
pub(crate) fn start_servers(kind: Kind, redis_port: u16, count: usize, extra: &[(&str, &str)]) -> Vec<(Process, u16)> {
    (0..count)
        .map(|_| match kind {
            Kind::Palaver => start_palaver(redis_port, extra),
            Kind::Node => start_node(redis_port, count > 1),
            Kind::Bare => start_bare(),
        })
        .collect()
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    resident_kib(pid).unwrap_or_else(|| panic!("no resident memory for process {pid}"))
}

/// A process's resident memory (KiB), `None` once it has exited (a zombie
/// has no `VmRSS`, a reaped process no `/proc` entry).
pub(crate) fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}
