//! What the run plays on: the store (a six-node Redis Cluster, or one
//! Redis with an append-only file) and three release instances on fixed
//! ports, each of which the fault injector can kill, stop and start again.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
};

use crate::{
    chaos::resp,
    servers::{cluster_healthy, free_port, rss_kib, start_redis_cluster, try_start_palaver_at, Process, RedisNode},
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

pub(crate) struct Instance {
    pub(crate) port: u16,
    process: Option<Process>,
    /// SIGSTOPped, not yet continued.
    stopped: bool,
    /// Its log (standard error), appended to across restarts.
    log: PathBuf,
}

impl Instance {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.0.id())
    }

    pub(crate) fn running(&self) -> bool {
        self.process.is_some() && !self.stopped
    }

    /// Resident memory (KiB) and open files, from `/proc`.
    pub(crate) fn footprint(&self) -> Option<(u64, usize)> {
        let pid = self.pid()?;
        let files = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some((rss_kib(pid), files))
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

pub(crate) struct Stage {
    pub(crate) kind: StoreKind,
    pub(crate) nodes: Vec<RedisNode>,
    pub(crate) redis_url: String,
    pub(crate) instances: Vec<Instance>,
    env: Vec<(String, String)>,
}

impl Stage {
    /// The store, then `count` instances on it with `env`; every instance
    /// accepts the others' origins, so tokens issued by one work on all.
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
                log: dir.join(format!("instance-{i}.log")),
            })
            .collect();
        let mut stage = Stage { kind, nodes, redis_url, instances, env };
        for i in 0..count {
            assert!(stage.start_instance(i), "instance {i} did not start");
        }
        stage
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.instances.iter().map(|i| i.port).collect()
    }

    /// Starts instance `i`; false when it did not come up (it exits at once
    /// when its store cannot be reached: the caller tries again, as a
    /// supervisor would, without holding the stage meanwhile).
    pub(crate) fn start_instance(&mut self, i: usize) -> bool {
        let instance = &mut self.instances[i];
        let log = File::options().create(true).append(true).open(&instance.log).unwrap();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match try_start_palaver_at(&self.redis_url, instance.port, &env, Stdio::from(log)) {
            Ok(process) => {
                instance.process = Some(process);
                instance.stopped = false;
                true
            }
            Err(why) => {
                eprintln!("chaos: instance {i} did not start ({why}); trying again");
                false
            }
        }
    }

    /// SIGKILL.
    pub(crate) fn kill_instance(&mut self, i: usize) {
        self.instances[i].process = None;
        self.instances[i].stopped = false;
    }

    pub(crate) fn stop_instance(&mut self, i: usize) {
        self.instances[i].signal(libc::SIGSTOP);
        self.instances[i].stopped = true;
    }

    pub(crate) fn continue_instance(&mut self, i: usize) -> bool {
        self.instances[i].signal(libc::SIGCONT);
        self.instances[i].stopped = false;
        true
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
