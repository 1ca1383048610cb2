//! `chaos`: three release instances on a six-node Redis Cluster (`--store
//! cluster`, three masters and three replicas) or on one Redis with an
//! append-only file (`--store single`), a mixed workload of real clients,
//! and faults injected at random from a seed; then a checker that reads
//! what the clients recorded and the store's history, and fails the run
//! with the first broken promise and the seed that reproduces the run's
//! choices (the interleaving is the machine's).
//!
//! Layout: `stage` (the processes), `client` (the workload), `faults` (the
//! fault injector and the readiness monitor), `audit` (credentials of ended
//! sessions tried again), `journal` (what is recorded), `check` (the
//! rules), `web` (HTTP and WebSocket clients with timeouts), `resp` (Redis
//! commands of the run's own), `rng` (the seeded random source).

mod audit;
mod check;
mod client;
mod faults;
mod journal;
pub(crate) mod resp;
pub(crate) mod rng;
mod stage;
mod web;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use palaver::model::RoomName;

use crate::{
    args::arg,
    chaos::{
        check::{check, Entry, Limits, DEADLINE_BOUND, EVENT_BOUND},
        client::{Client, Phase, World},
        faults::SharedStage,
        journal::{now, secs, start_clock, Credential, Journal, MembershipLog, Ms},
        rng::Rng,
        stage::{Stage, StoreKind},
    },
    http::{register_many, RoomApi},
};

/// The bounds the run sets, short so that two minutes see them all at
/// work: the sweep's period, sessions' idle and absolute lifetimes, access
/// tokens' lifetime.
const REVALIDATE_SECS: u64 = 5;
const SESSION_TTL_SECS: u64 = 30;
const SESSION_MAX_LIFETIME_SECS: u64 = 75;
const ACCESS_TOKEN_TTL_SECS: u64 = 20;
/// docs/protocol.md §1.1's default, left as it is.
const REFRESH_REUSE_GRACE_SECS: u64 = 10;

const PUBLIC_ROOMS: [&str; 4] = ["lobby", "square", "market", "harbor"];
const PRIVATE_ROOMS: usize = 3;

/// An instance's memory and open files may grow by this much over the
/// run, measured after the settle time.
const LEAK_TOLERANCE: f64 = 0.10;

pub(crate) async fn chaos(args: &[String]) {
    let minutes: f64 = arg(args, "--minutes", 2.0);
    let seed: u64 = arg(
        args,
        "--seed",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000,
    );
    let store = StoreKind::parse(&arg(args, "--store", "cluster".to_string()));
    let users: usize = arg(args, "--users", 12);
    let clients: usize = arg(args, "--clients", 30);
    let settle: u64 = arg(args, "--settle", 20);
    let warm_up: u64 = arg(args, "--warm-up", 30);
    let reproduce = format!(
        "cargo {} --bench loadgen -- chaos --store {} --minutes {minutes} --seed {seed} --users {users} --clients {clients} \
         --warm-up {warm_up} --settle {settle}",
        // scripts/test runs it in the test profile, against the test build.
        if cfg!(debug_assertions) { "test" } else { "bench" },
        store.name()
    );
    println!("chaos: seed {seed} ({reproduce})");
    start_clock();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("token-key.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(made.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&made.stderr));
    let env: Vec<(&str, String)> = vec![
        ("REVALIDATE_INTERVAL_SECS", REVALIDATE_SECS.to_string()),
        ("SESSION_TTL_SECS", SESSION_TTL_SECS.to_string()),
        ("SESSION_MAX_LIFETIME_SECS", SESSION_MAX_LIFETIME_SECS.to_string()),
        ("ACCESS_TOKEN_TTL_SECS", ACCESS_TOKEN_TTL_SECS.to_string()),
        ("REFRESH_REUSE_GRACE_SECS", REFRESH_REUSE_GRACE_SECS.to_string()),
        // Nothing trimmed: the checker reads every room whole.
        ("HISTORY_MAX_LEN", "10000000".to_string()),
        // Two busy cores: a replica's WAIT answer can take longer than the
        // default 500 ms (the tests allow the same).
        ("REDIS_WAIT_TIMEOUT_MS", "1500".to_string()),
        ("TOKEN_SIGNING_KEY", key.display().to_string()),
    ];
    let path = dir.path().to_owned();
    let stage = tokio::task::spawn_blocking(move || Stage::start(store, 3, &env, &path)).await.unwrap();
    let ports = stage.ports();
    let stage: SharedStage = Arc::new(Mutex::new(stage));
    let stop_supervising = Arc::new(AtomicBool::new(false));
    let supervisor = tokio::spawn(faults::supervise(stage.clone(), stop_supervising.clone()));
    for &port in &ports {
        faults::wait_up(port).await;
    }

    // Users, and the private rooms with their first members.
    let usernames: Vec<String> = (0..users).map(|i| format!("chaos{i}")).collect();
    register_many(crate::servers::Kind::Palaver, ports[0], "chaos", users).await;
    let mut journal = Journal::default();
    let mut members: HashMap<String, HashSet<String>> = HashMap::new();
    let mut setup = Rng::fork(seed, u64::MAX);
    let mut private_rooms = Vec::new();
    for k in 0..PRIVATE_ROOMS {
        let (room, owner) = (format!("vault{k}"), usernames[k].clone());
        let api = RoomApi::sign_in(ports[0], &owner);
        api.create_private(&room);
        let chosen: Vec<String> =
            usernames.iter().filter(|u| **u != owner).filter(|_| setup.chance(0.5)).cloned().collect();
        api.add_members(&room, chosen.clone()).await;
        for user in chosen.iter().chain([&owner]) {
            journal.memberships.push(MembershipLog {
                room: room.clone(),
                user: user.clone(),
                added: true,
                sent: 0,
                answered: Some(0),
            });
        }
        members.insert(room.clone(), chosen.into_iter().chain([owner.clone()]).collect());
        private_rooms.push((room, owner));
    }
    let journal = Arc::new(Mutex::new(journal));
    let rooms: Vec<String> =
        PUBLIC_ROOMS.iter().map(|r| r.to_string()).chain(private_rooms.iter().map(|(r, _)| r.clone())).collect();
    let world = Arc::new(World::new(
        ports.clone(),
        journal.clone(),
        PUBLIC_ROOMS.iter().map(|r| r.to_string()).collect(),
        private_rooms.clone(),
        members,
        usernames.clone(),
        REFRESH_REUSE_GRACE_SECS * 1000,
    ));
    let stop_watching = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(faults::watch_readiness(ports.clone(), journal.clone(), stop_watching.clone()));
    let peaks = tokio::spawn(peak_footprints(stage.clone(), stop_watching.clone()));
    let round = Round { world: world.clone(), stage: stage.clone(), seed, users, clients };

    // The warm-up: a round of the same workload and faults, checked like
    // the rest, after which each instance's memory and open files are the
    // baseline. What an instance grows to once and keeps (allocator arenas
    // sized by the load, the connections of each room group's tail, the
    // pools remade after a fault) is a cost paid once, not a leak; what
    // grows with the length of the run is. An instance restarted late in
    // the warm-up has not followed every room since (each room group's
    // tail keeps its connection once made), so each then follows them all.
    round.run(0, warm_up * 1000).await;
    follow_every_room(&ports, &rooms, &private_rooms).await;
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let before = footprints(&stage).await;
    let (load_end, retried) = round.run(1, (minutes * 60_000.0) as Ms).await;
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.await.unwrap();
    let peaks = peaks.await.unwrap();

    // The store's history of every room.
    let node = stage.lock().unwrap().any_node();
    let histories: HashMap<String, Vec<Entry>> = rooms.iter().map(|room| (room.clone(), history(node, room))).collect();

    // After the settle time: memory, open files, readiness.
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = footprints(&stage).await;
    let mut ready = Vec::new();
    for &port in &ports {
        ready.push(matches!(web::request(port, "GET", "/readyz", &[], "").await, Ok(r) if r.status == 200));
    }

    stop_supervising.store(true, std::sync::atomic::Ordering::Relaxed);
    supervisor.await.unwrap();
    let (mut exits, mut statuses) = (BTreeMap::<usize, usize>::new(), BTreeMap::<String, usize>::new());
    for exit in &stage.lock().unwrap().exits {
        *exits.entry(exit.instance).or_default() += 1;
        *statuses.entry(exit.status.clone()).or_default() += 1;
    }

    let journal = journal.lock().unwrap();
    let limits = Limits {
        revalidate: REVALIDATE_SECS * 1000,
        session_ttl: SESSION_TTL_SECS * 1000,
        session_max: SESSION_MAX_LIFETIME_SECS * 1000,
        cluster: store == StoreKind::Cluster,
        load_end,
    };
    let private: Vec<String> = private_rooms.iter().map(|(r, _)| r.clone()).collect();
    let mut verdict = check(&journal, &histories, &private, &limits);
    for (i, ((b, a), up)) in before.iter().zip(&after).zip(&ready).enumerate() {
        let (Some((rss_before, files_before)), Some((rss_after, files_after))) = (b, a) else { continue };
        if *rss_after as f64 > *rss_before as f64 * (1.0 + LEAK_TOLERANCE)
            || *files_after as f64 > *files_before as f64 * (1.0 + LEAK_TOLERANCE)
        {
            verdict.violations.push(check::Violation {
                rule: "no leak",
                at: now(),
                text: format!(
                    "instance {i} {settle} s after the load: {} KiB resident, {files_after} open files; {settle} s \
                     after the warm-up: {rss_before} KiB, {files_before} (more than {:.0} % above)",
                    rss_after,
                    LEAK_TOLERANCE * 100.0
                ),
            });
        }
        if !up {
            verdict.violations.push(check::Violation {
                rule: "ready after the load",
                at: now(),
                text: format!("instance {i}'s /readyz is not 200 {settle} s after the load"),
            });
        }
    }

    let c = &verdict.counts;
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &journal.faults {
        *faults.entry(f.kind).or_default() += 1;
    }
    let list = |m: &BTreeMap<String, usize>| match m.is_empty() {
        true => "none".to_owned(),
        false => m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "),
    };
    let kinds = |m: &BTreeMap<&str, usize>| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
    let tokens = journal.sessions.iter().filter(|s| s.credential == Credential::Token).count();
    let added = journal.memberships.iter().filter(|m| m.added && m.sent > 0 && m.answered.is_some()).count();
    let removed = journal.memberships.iter().filter(|m| !m.added && m.answered.is_some()).count();
    println!(
        "chaos ({}, seed {seed}, {warm_up} s of warm-up then {minutes} min): 3 instances on {}, {users} users, \
         {clients} clients a round ({} cookie, {} token), {} public and {PRIVATE_ROOMS} private rooms",
        store.name(),
        store.describe(),
        (0..clients).filter(|c| (c / users) % 2 == 0).count(),
        (0..clients).filter(|c| (c / users) % 2 == 1).count(),
        PUBLIC_ROOMS.len(),
    );
    let lossy: BTreeMap<&str, usize> = journal.faults.iter().filter(|f| f.loses_events).map(|f| (f.kind, 0)).collect();
    println!(
        "  faults injected: {} ({}); those that can lose events (the sweep's bound then): {}",
        journal.faults.len(),
        kinds(&faults),
        lossy.keys().copied().collect::<Vec<_>>().join(", ")
    );
    println!(
        "  unready spans seen by the monitor: {} (longest {})",
        journal.unready.len(),
        secs(journal.unready.iter().map(|u| u.to - u.from).max().unwrap_or(0))
    );
    let per_instance = exits.iter().map(|(i, n)| format!("instance {i}: {n}")).collect::<Vec<_>>().join(", ");
    println!(
        "  instances that exited by themselves, started again by the supervisor: {}{}",
        exits.values().sum::<usize>(),
        if exits.is_empty() { String::new() } else { format!(" ({per_instance}; {})", list(&statuses)) }
    );
    println!(
        "  sessions: {} signed in ({} cookie, {tokens} token); ended by a request: {}",
        journal.sessions.len(),
        journal.sessions.len() - tokens,
        kinds(&c.ends)
    );
    println!(
        "  membership changes answered: {added} adds, {removed} removals; private-room probes refused: {}",
        c.probes_refused
    );
    println!(
        "  credentials of ended sessions tried again: {} ({} at the end), {} refused, the rest inconclusive (store or \
         instance away)",
        c.retries, retried, c.retries_refused
    );
    println!("  sockets: {} opened; closed: {}", c.sockets, list(&c.closes));
    println!("  upgrades refused: {}", list(&c.refused_upgrades));
    println!(
        "  messages: {} sent, {} acked, {} stored; {} deliveries checked in order, {} sockets' tails checked; \
         stored twice after a failover: {}, lost copies seen before a resend: {}",
        c.sent, c.acked, c.stored, c.deliveries, c.tail_checked, c.stored_twice, c.lost_copies
    );
    println!(
        "  closing bounds checked: {} ({} stretched to REVALIDATE_INTERVAL_SECS={REVALIDATE_SECS} by a fault that \
         could lose the event; otherwise {} ms after the ending request's answer, {} ms after a deadline)",
        kinds(&c.demands),
        c.stretched,
        EVENT_BOUND,
        DEADLINE_BOUND
    );
    for (i, ((b, p), a)) in before.iter().zip(&peaks).zip(&after).enumerate() {
        let mib = |f: &Option<(u64, usize)>| f.map_or("-".into(), |(rss, _)| format!("{:.1} MiB", rss as f64 / 1024.0));
        let files = |f: &Option<(u64, usize)>| f.map_or("-".into(), |(_, n)| n.to_string());
        println!(
            "  instance {i}: resident {} {settle} s after the warm-up, {} at the peak, {} {settle} s after the load; \
             open files {}, {}, {}; /readyz {}",
            mib(b),
            mib(p),
            mib(a),
            files(b),
            files(p),
            files(a),
            if ready[i] { "200" } else { "NOT 200" }
        );
    }
    drop(journal);
    match verdict.violations.first() {
        None => println!("  violations: 0 (every promise held)"),
        Some(first) => {
            let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &verdict.violations {
                *rules.entry(v.rule).or_default() += 1;
            }
            println!("  violations: {} ({})", verdict.violations.len(), kinds(&rules));
            for v in verdict.violations.iter().skip(1).take(9) {
                println!("    at {}: [{}] {}", secs(v.at), v.rule, v.text);
            }
            println!("\nFIRST VIOLATION [{}] at {}: {}", first.rule, secs(first.at), first.text);
            println!("seed {seed} reproduces the run's choices: {reproduce}");
            let kept = dir.keep();
            println!("the instances' logs are kept in {}", kept.display());
            drop(stage);
            std::process::exit(1);
        }
    }
}

/// On every instance, a socket into every room (the private rooms as
/// their owners, who stay members), closed after `hello`.
async fn follow_every_room(ports: &[u16], rooms: &[String], private_rooms: &[(String, String)]) {
    let owner = |room: &String| private_rooms.iter().find(|(r, _)| r == room).map_or("chaos0", |(_, o)| o.as_str());
    for &port in ports {
        for room in rooms {
            let body = format!("username={}&password={}", owner(room), crate::http::PASSWORD);
            let headers = ["Content-Type: application/x-www-form-urlencoded".to_owned()];
            let signed_in = web::request(port, "POST", "/login", &headers, &body).await;
            let cookie = match signed_in {
                Ok(r) if r.status == 303 => r.cookie().expect("a session cookie"),
                other => panic!("signing in on port {port} after the warm-up: {other:?}"),
            };
            let mut ws = web::upgrade(port, &format!("?room={room}"), &format!("Cookie: {cookie}"))
                .await
                .unwrap_or_else(|refused| panic!("a socket into {room} on port {port} after the warm-up: {refused:?}"));
            crate::sockets::next_json(&mut ws).await.expect("hello");
            let _ = futures_util::SinkExt::close(&mut ws).await;
        }
    }
}

/// Every instance's (resident KiB, open files), `None` for one not running.
async fn footprints(stage: &SharedStage) -> Vec<Option<(u64, usize)>> {
    let stage = stage.clone();
    tokio::task::spawn_blocking(move || stage.lock().unwrap().instances.iter().map(|i| i.footprint()).collect())
        .await
        .unwrap()
}

/// The most each instance held while the run went on, sampled each second.
async fn peak_footprints(stage: SharedStage, stop: Arc<AtomicBool>) -> Vec<Option<(u64, usize)>> {
    let mut peaks: Vec<Option<(u64, usize)>> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let now = footprints(&stage).await;
        peaks.resize(now.len(), None);
        for (peak, now) in peaks.iter_mut().zip(now) {
            if let Some((rss, files)) = now {
                let (p_rss, p_files) = peak.unwrap_or((0, 0));
                *peak = Some((p_rss.max(rss), p_files.max(files)));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    peaks
}

/// A room's whole history, as XRANGE gives it.
fn history(node: u16, room: &str) -> Vec<Entry> {
    let key = palaver::backend::redis::keys::messages(&RoomName::parse(room).expect("a room name"));
    let reply = resp::keyed(node, &["XRANGE", &key, "-", "+"]).expect("XRANGE");
    reply
        .items()
        .iter()
        .map(|entry| {
            let [id, fields] = entry.items() else { panic!("an XRANGE entry: {entry:?}") };
            let fields: HashMap<String, String> =
                fields.items().chunks(2).map(|kv| (kv[0].text(), kv[1].text())).collect();
            Entry {
                id: id.text().parse().expect("a stream id"),
                user: fields.get("user").cloned().unwrap_or_default(),
                client_id: fields.get("client_id").cloned(),
            }
        })
        .collect()
}

/// One round of the workload: `clients` clients (numbered from `round *
/// clients`, so that their `client_id`s and random streams are their own),
/// the auditor, and faults from 5 s in until 15 s before its end (none if
/// that leaves no time); then the drain, the final audit and the close.
/// Returns when the load stopped, and how many ended sessions' credentials
/// were tried at the end.
struct Round {
    world: Arc<World>,
    stage: SharedStage,
    seed: u64,
    users: usize,
    clients: usize,
}

impl Round {
    async fn run(&self, round: u64, length: Ms) -> (Ms, usize) {
        let (seed, users) = (self.seed, self.users);
        let streams = u64::MAX - 10 * round;
        self.world.set_phase(Phase::Run);
        let started = now();
        let mut tasks = Vec::new();
        for c in 0..self.clients {
            let id = round as usize * self.clients + c;
            let user = self.world.users[c % users].clone();
            // The first client of each user holds a cookie, the second
            // tokens, and so on; one client in seven ignores
            // `reauthenticate`.
            let credential = if (c / users) % 2 == 0 { Credential::Cookie } else { Credential::Token };
            let client = Client::new(id, user, credential, c % 7 == 3, Rng::fork(seed, id as u64), self.world.clone());
            tasks.push(tokio::spawn(client.run()));
        }
        let max = SESSION_MAX_LIFETIME_SECS * 1000;
        let auditor = tokio::spawn(audit::audit(self.world.clone(), Rng::fork(seed, streams - 1), max));
        let injector = tokio::spawn(faults::inject(
            self.stage.clone(),
            self.world.journal.clone(),
            Rng::fork(seed, streams - 2),
            started + 5_000,
            started + length.saturating_sub(15_000),
        ));
        tokio::time::sleep(Duration::from_millis((started + length).saturating_sub(now()))).await;
        injector.await.unwrap();

        // The load stops: nothing new; what was sent goes again until
        // acked; then every credential of an ended session is tried once
        // more.
        self.world.set_phase(Phase::Drain);
        auditor.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let retried = audit::audit_all(&self.world, &mut Rng::fork(seed, streams - 3), max).await;
        let load_end = now();
        self.world.set_phase(Phase::Close);
        for task in tasks {
            task.await.unwrap();
        }
        (load_end, retried)
    }
}
