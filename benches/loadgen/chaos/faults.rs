//! Faults, drawn from the run's seed: an instance killed (SIGKILL) and
//! started again, an instance stopped (SIGSTOP) for a few seconds and
//! continued, a Redis master killed (its replica is promoted; the node is
//! started again later and rejoins as a replica), every node's subscribers
//! cut (`CLIENT KILL TYPE pubsub`), the single Redis killed and started
//! again. Several may be under way at once; never more than two instances
//! out, and one store fault at a time (two masters down would leave no
//! majority to promote a replica). Each is journaled from its start to the
//! moment every instance is ready again. A monitor journals every span in
//! which an instance's `/readyz` was not 200, and a supervisor starts again
//! any instance that exits by itself, whenever it does.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::chaos::{
    journal::{now, FaultLog, Ms, Shared, Unready},
    resp,
    rng::Rng,
    stage::{up, Stage, StoreKind},
    web,
};

pub(crate) type SharedStage = Arc<Mutex<Stage>>;

/// What is out now: instances, and the store.
#[derive(Default)]
struct Out {
    instances: Vec<usize>,
    store: bool,
}

/// Injects faults from `start` until `until`, then waits for every fault
/// under way to be undone and recovered from. Returns how many of each kind.
pub(crate) async fn inject(stage: SharedStage, journal: Shared, mut rng: Rng, start: Ms, until: Ms) {
    let kind = stage.lock().unwrap().kind;
    let count = stage.lock().unwrap().instances.len();
    let out = Arc::new(Mutex::new(Out::default()));
    let mut under_way: Vec<JoinHandle<()>> = Vec::new();
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(now()))).await;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.between(2_000, 8_000))).await;
        if now() >= until {
            break;
        }
        let (stage, journal, out2) = (stage.clone(), journal.clone(), out.clone());
        let choice = rng.below(4);
        let seed = rng.next_u64();
        let fault = {
            let mut out = out.lock().unwrap();
            let free: Vec<usize> = (0..count).filter(|i| !out.instances.contains(i)).collect();
            match choice {
                0 | 1 if out.instances.len() < 2 => {
                    let i = free[(seed % free.len() as u64) as usize];
                    out.instances.push(i);
                    Some(match choice {
                        0 => tokio::spawn(instance_out(stage, journal, out2, i, "kill-instance", Rng::new(seed))),
                        _ => tokio::spawn(instance_out(stage, journal, out2, i, "stop-instance", Rng::new(seed))),
                    })
                }
                2 if !out.store => {
                    out.store = true;
                    Some(match kind {
                        StoreKind::Cluster => tokio::spawn(kill_master(stage, journal, out2, Rng::new(seed))),
                        StoreKind::Single => tokio::spawn(restart_redis(stage, journal, out2, Rng::new(seed))),
                    })
                }
                3 => Some(tokio::spawn(cut_subscribers(stage, journal))),
                _ => None,
            }
        };
        under_way.extend(fault);
    }
    for fault in under_way {
        fault.await.unwrap();
    }
}

/// Waits until every instance wanted up answers `/readyz` with 200 (at
/// most 60 s, then goes on: the checker sees the unready span).
async fn all_ready(stage: &SharedStage) -> Ms {
    let started = now();
    loop {
        let ports: Vec<u16> =
            with_stage(stage, |s| s.instances.iter().filter(|i| i.wanted()).map(|i| i.port).collect()).await;
        let mut ready = true;
        for port in ports {
            ready &= matches!(web::request(port, "GET", "/readyz", &[], "").await, Ok(r) if r.status == 200);
        }
        if ready || now() - started > 60_000 {
            return now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn record(journal: &Shared, fault: FaultLog) {
    eprintln!(
        "chaos: {:>8} {} {} (undone at {}, ready again at {})",
        crate::chaos::journal::secs(fault.start),
        fault.kind,
        fault.target,
        crate::chaos::journal::secs(fault.undone),
        crate::chaos::journal::secs(fault.recovered),
    );
    journal.lock().unwrap().faults.push(fault);
}

/// Runs `work` on a blocking thread with the stage (starting a Redis node
/// waits for its port).
async fn with_stage<T: Send + 'static>(stage: &SharedStage, work: impl FnOnce(&mut Stage) -> T + Send + 'static) -> T {
    let stage = stage.clone();
    tokio::task::spawn_blocking(move || work(&mut stage.lock().unwrap())).await.unwrap()
}

/// Supervises the instances ([`Stage::supervise`]) every 100 ms until
/// `stop`, whatever the faults are doing.
pub(crate) async fn supervise(stage: SharedStage, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        with_stage(&stage, Stage::supervise).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the instance on `port` is [`up`]; panics after
/// [`RESTART_FOR`] (its store may be away for a fault of its own
/// meanwhile, and the supervisor starts it as often as it exits).
pub(crate) async fn wait_up(port: u16) {
    let giving_up = tokio::time::Instant::now() + RESTART_FOR;
    while !up(port).await {
        assert!(
            tokio::time::Instant::now() < giving_up,
            "the instance on port {port} was not up within {RESTART_FOR:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Taking one instance of the stage out, or bringing it back.
type Step = fn(&mut Stage, usize);

/// How long an instance may take to be up again before the run gives up.
const RESTART_FOR: Duration = Duration::from_secs(60);

/// Takes instance `i` out (`kill-instance`: SIGKILL; `stop-instance`:
/// SIGSTOP) for a while drawn from `away` (ms), then back (wanted up
/// again, or continued), and waits until it is up.
async fn instance_out(
    stage: SharedStage,
    journal: Shared,
    out: Arc<Mutex<Out>>,
    i: usize,
    kind: &'static str,
    mut rng: Rng,
) {
    let ((lo, hi), take, give): (_, Step, Step) = match kind {
        "kill-instance" => ((500, 4_000), Stage::kill_instance, Stage::want_back),
        _ => ((1_000, 5_000), Stage::stop_instance, Stage::continue_instance),
    };
    let start = now();
    let port = with_stage(&stage, move |s| {
        take(s, i);
        s.instances[i].port
    })
    .await;
    tokio::time::sleep(Duration::from_millis(rng.between(lo, hi))).await;
    with_stage(&stage, move |s| give(s, i)).await;
    wait_up(port).await;
    let undone = now();
    let recovered = all_ready(&stage).await;
    out.lock().unwrap().instances.retain(|&x| x != i);
    let target = format!("instance {i}");
    record(&journal, FaultLog { kind, target, instance: Some(i), start, undone, recovered, loses_events: false });
}

/// SIGKILLs a master; once its replica has taken its slots, waits a few
/// seconds (the shard has no replica: its appends are refused) and starts
/// the node again, which rejoins as the new master's replica.
async fn kill_master(stage: SharedStage, journal: Shared, out: Arc<Mutex<Out>>, mut rng: Rng) {
    let pick = rng.next_u64();
    let start = now();
    let node = with_stage(&stage, move |s| {
        let masters = s.masters();
        let node = masters[(pick % masters.len() as u64) as usize];
        s.nodes[node].kill();
        node
    })
    .await;
    // The replica is promoted (after cluster-node-timeout and an election).
    let promoted = poll(&stage, 30_000, |s| s.masters().len() == 3 && s.store_healthy()).await;
    tokio::time::sleep(Duration::from_millis(rng.between(1_000, 5_000))).await;
    with_stage(&stage, move |s| s.nodes[node].start()).await;
    let synced = poll(&stage, 30_000, |s| s.store_healthy()).await;
    let undone = now();
    let recovered = all_ready(&stage).await;
    out.lock().unwrap().store = false;
    let port = with_stage(&stage, move |s| s.nodes[node].port).await;
    let note = match (promoted, synced) {
        (true, true) => String::new(),
        _ => " (the cluster did not become healthy within 30 s)".to_owned(),
    };
    let target = format!("master on port {port}{note}");
    record(
        &journal,
        FaultLog { kind: "kill-master", target, instance: None, start, undone, recovered, loses_events: true },
    );
}

/// SIGKILLs the single Redis and starts it again on its append-only file.
async fn restart_redis(stage: SharedStage, journal: Shared, out: Arc<Mutex<Out>>, mut rng: Rng) {
    let start = now();
    with_stage(&stage, |s| s.nodes[0].kill()).await;
    tokio::time::sleep(Duration::from_millis(rng.between(500, 3_000))).await;
    with_stage(&stage, |s| s.nodes[0].start()).await;
    let undone = now();
    let recovered = all_ready(&stage).await;
    out.lock().unwrap().store = false;
    let target = "the single Redis".to_owned();
    record(
        &journal,
        FaultLog { kind: "restart-redis", target, instance: None, start, undone, recovered, loses_events: true },
    );
}

/// `CLIENT KILL TYPE pubsub` on every running node: every instance's
/// subscriber is dropped at once, and what is published before it is
/// back is lost.
async fn cut_subscribers(stage: SharedStage, journal: Shared) {
    let start = now();
    let killed = with_stage(&stage, |s| {
        s.node_ports()
            .into_iter()
            .map(|port| {
                resp::command(port, &["CLIENT", "KILL", "TYPE", "pubsub"]).map_or(0, |r| r.text().parse().unwrap_or(0))
            })
            .sum::<u64>()
    })
    .await;
    // The instances notice the cut when their connections read it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recovered = all_ready(&stage).await;
    let target = format!("{killed} subscriber connections");
    record(
        &journal,
        FaultLog {
            kind: "cut-subscribers",
            target,
            instance: None,
            start,
            undone: start,
            recovered,
            loses_events: true,
        },
    );
}

/// Polls `check` on the stage every 100 ms for at most `within` ms.
async fn poll(stage: &SharedStage, within: Ms, check: fn(&Stage) -> bool) -> bool {
    let started = now();
    loop {
        if with_stage(stage, move |s| check(s)).await {
            return true;
        }
        if now() - started > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks every instance's `/readyz` every 200 ms until `stop` says so;
/// journals each span in which one did not answer 200.
pub(crate) async fn watch_readiness(ports: Vec<u16>, journal: Shared, stop: Arc<AtomicBool>) {
    let mut since: Vec<Option<(Ms, String)>> = vec![None; ports.len()];
    while !stop.load(Ordering::Relaxed) {
        for (i, &port) in ports.iter().enumerate() {
            let at = now();
            let why = match tokio::time::timeout(Duration::from_secs(1), web::request(port, "GET", "/readyz", &[], ""))
                .await
            {
                Ok(Ok(r)) if r.status == 200 => None,
                Ok(Ok(r)) => Some(format!("{} {}", r.status, r.json()["status"].as_str().unwrap_or_default())),
                Ok(Err(err)) => Some(format!("{err:?}")),
                Err(_) => Some("no answer within 1 s".into()),
            };
            match (&since[i], why) {
                (None, Some(why)) => since[i] = Some((at, why)),
                (Some((from, why)), None) => {
                    journal.lock().unwrap().unready.push(Unready {
                        instance: i,
                        from: *from,
                        to: at,
                        why: why.clone(),
                    });
                    since[i] = None;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, open) in since.into_iter().enumerate() {
        if let Some((from, why)) = open {
            journal.lock().unwrap().unready.push(Unready { instance: i, from, to: now(), why });
        }
    }
}
