//! What the run plays on: the store (a six-node Redis Cluster, or one
//! Redis with an append-only file) and three release instances on fixed
//! ports, each of which the fault injector can kill, stop and start again.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{
    chaos::{
        journal::{now as run_time, secs},
        resp, web,
    },
    servers::{cluster_healthy, free_port, resident_kib, spawn_palaver_at, start_redis_cluster, Process, RedisNode},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StoreKind {
    /// Three masters, three replicas; `WAIT 1` on every append.
    Cluster,
    /// One Redis, `appendonly yes`, `appendfsync always`.
    Single,
}

impl StoreKind {
    pub(crate) fn parse(name: &str) -> StoreKind {
        match name {
            "cluster" => StoreKind::Cluster,
            "single" => StoreKind::Single,
            other => panic!("unknown --store {other}: cluster or single"),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreKind::Cluster => "cluster",
            StoreKind::Single => "single",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            StoreKind::Cluster => "a Redis Cluster of 3 masters and 3 replicas (cluster-node-timeout 2000 ms, WAIT 1)",
            StoreKind::Single => "one Redis with appendonly yes, appendfsync always",
        }
    }
}

/// The single Redis's `appendfsync`: `always`, so that an ack means the
/// message is on disk, not just in the kernel's page cache: the run kills
/// Redis with SIGKILL, which `everysec` would survive too (the page cache
/// outlives the process), but the promise checked is that nothing acked is
/// lost to a Redis restart, and only `always` keeps it through a machine
/// crash as well. It costs an fsync per write, which a chat's rate affords.
const APPENDFSYNC: &str = "always";

/// A cluster node misses pings for this long before it is failed over:
/// short, so that a run sees many failovers, and long enough that two busy
/// cores do not fail healthy masters over.
const NODE_TIMEOUT_MS: u32 = 2000;

/// How long a supervisor waits before it starts an instance that exited
/// again (systemd's `RestartSec`): long enough not to spin while its store
/// is away, short next to a fault.
pub(crate) const RESTART_PAUSE: Duration = Duration::from_millis(500);

pub(crate) struct Instance {
    pub(crate) port: u16,
    process: Option<Process>,
    /// SIGSTOPped, not yet continued.
    stopped: bool,
    /// Killed by a fault and not wanted back yet: the supervisor leaves it
    /// down.
    held: bool,
    /// When the supervisor starts it again, after it exited by itself.
    restart_at: Option<Instant>,
    /// Its log (standard error), appended to across restarts.
    log: PathBuf,
}

impl Instance {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    /// Wanted up, and not stopped: it should answer (once started).
    pub(crate) fn wanted(&self) -> bool {
        !self.held && !self.stopped
    }

    /// Resident memory (KiB) and open files, from `/proc`; `None` for an
    /// instance not running, or one that exited and was not restarted yet.
    pub(crate) fn footprint(&self) -> Option<(u64, usize)> {
        let pid = self.pid()?;
        let rss = resident_kib(pid)?;
        let files = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some((rss, files))
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: a signal to a child process this run started and still holds.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }
}

/// An instance that exited by itself, and was started again.
pub(crate) struct Exit {
    pub(crate) instance: usize,
    pub(crate) status: String,
}

pub(crate) struct Stage {
    pub(crate) kind: StoreKind,
    pub(crate) nodes: Vec<RedisNode>,
    pub(crate) redis_url: String,
    pub(crate) instances: Vec<Instance>,
    env: Vec<(String, String)>,
    /// Every exit the supervisor saw.
    pub(crate) exits: Vec<Exit>,
}

impl Stage {
    /// The store, then `count` instances on it with `env` (started, not
    /// waited for: see [`up`]); every instance accepts the others'
    /// origins, so tokens issued by one work on all.
    pub(crate) fn start(kind: StoreKind, count: usize, env: &[(&str, String)], dir: &Path) -> Stage {
        let (nodes, redis_url) = match kind {
            StoreKind::Cluster => start_redis_cluster(dir, Some(NODE_TIMEOUT_MS)),
            StoreKind::Single => {
                let node = RedisNode::with_aof(&dir.join("redis"), APPENDFSYNC);
                let url = format!("redis://127.0.0.1:{}", node.port);
                (vec![node], url)
            }
        };
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        let origins = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        env.push(("ALLOWED_ORIGINS".into(), origins));
        let instances = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| Instance {
                port,
                process: None,
                stopped: false,
                held: false,
                restart_at: None,
                log: dir.join(format!("instance-{i}.log")),
            })
            .collect();
        let mut stage = Stage { kind, nodes, redis_url, instances, env, exits: Vec::new() };
        for i in 0..count {
            stage.spawn(i);
        }
        stage
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.instances.iter().map(|i| i.port).collect()
    }

    /// Starts instance `i`'s process, without waiting for it.
    fn spawn(&mut self, i: usize) {
        let instance = &mut self.instances[i];
        let log = File::options().create(true).append(true).open(&instance.log).unwrap();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        instance.process = Some(spawn_palaver_at(&self.redis_url, instance.port, &env, Stdio::from(log)));
        instance.stopped = false;
        instance.restart_at = None;
    }

    /// What a supervisor does (systemd's `Restart=always`): an instance
    /// that exited by itself (palaver exits at start-up when its store
    /// cannot be reached or read, as it should under a supervisor) is
    /// started again [`RESTART_PAUSE`] later; one a fault killed is left
    /// down until [`Stage::want_back`]. Quick: never waits for a process.
    pub(crate) fn supervise(&mut self) {
        let now = Instant::now();
        for i in 0..self.instances.len() {
            let exited = self.instances[i].process.as_mut().and_then(|p| p.0.try_wait().ok().flatten());
            if let Some(status) = exited {
                eprintln!("chaos: {:>8} instance {i} exited ({status}); starting it again", secs(run_time()));
                self.exits.push(Exit { instance: i, status: status.to_string() });
                self.instances[i].process = None;
                self.instances[i].restart_at = Some(now + RESTART_PAUSE);
            }
            let instance = &self.instances[i];
            if instance.process.is_none() && !instance.held && instance.restart_at.is_some_and(|at| at <= now) {
                self.spawn(i);
            }
        }
    }

    /// SIGKILL, and kept down until [`Stage::want_back`].
    pub(crate) fn kill_instance(&mut self, i: usize) {
        self.instances[i].process = None;
        self.instances[i].stopped = false;
        self.instances[i].held = true;
    }

    /// Starts a killed instance again (the supervisor keeps it up from
    /// then on).
    pub(crate) fn want_back(&mut self, i: usize) {
        self.instances[i].held = false;
        if self.instances[i].process.is_none() {
            self.spawn(i);
        }
    }

    pub(crate) fn stop_instance(&mut self, i: usize) {
        self.instances[i].signal(libc::SIGSTOP);
        self.instances[i].stopped = true;
    }

    pub(crate) fn continue_instance(&mut self, i: usize) {
        self.instances[i].signal(libc::SIGCONT);
        self.instances[i].stopped = false;
    }

    /// The nodes that are masters now (by their own word), running ones only.
    pub(crate) fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n].running()
                    && resp::info(self.nodes[n].port, "replication", "role").as_deref() == Some("master")
            })
            .collect()
    }

    /// Every running node says the cluster is ok and every running replica
    /// is in sync; on one Redis, that it answers.
    pub(crate) fn store_healthy(&self) -> bool {
        match self.kind {
            StoreKind::Cluster => cluster_healthy(&self.nodes),
            StoreKind::Single => resp::command(self.nodes[0].port, &["PING"]).is_ok_and(|r| r.text() == "PONG"),
        }
    }

    /// A port of a running node, for commands that follow `MOVED`.
    pub(crate) fn any_node(&self) -> u16 {
        self.nodes.iter().find(|n| n.running()).expect("a running node").port
    }

    /// Every running node's port.
    pub(crate) fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.running()).map(|n| n.port).collect()
    }
}

/// Whether the instance on `port` is up: it answered `GET /healthz` with
/// 200, which needs its store now (an open port says only that it started
/// once: it may have lost its store since, or be about to exit).
pub(crate) async fn up(port: u16) -> bool {
    let asked = tokio::time::timeout(Duration::from_secs(2), web::request(port, "GET", "/healthz", &[], ""));
    matches!(asked.await, Ok(Ok(r)) if r.status == 200)
}
