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

fn free_port() -> u16 {
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

fn wait_for_port(port: u16, what: &str) {
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

/// A Redis Cluster of six `redis-server`s (three masters, one replica
/// each), joined with `redis-cli --cluster create`; the processes and the
/// `redis-cluster://` URL naming them.
pub(crate) fn start_redis_cluster(dir: &Path) -> (Vec<Process>, String) {
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

pub(crate) fn start_palaver(redis_port: u16, extra: &[(&str, &str)]) -> (Process, u16) {
    start_palaver_on(&format!("redis://127.0.0.1:{redis_port}"), extra)
}

pub(crate) fn start_palaver_on(redis_url: &str, extra: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    let mut cmd = Command::new(BINARY);
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}
