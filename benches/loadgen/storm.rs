//! `storm`: a restarted instance's reconnect storm.
//!
//! Two instances, A and B, on one Redis. `--sockets` sockets of `--users`
//! users, spread over as many rooms, are on A; `--survivors` sockets on B
//! chat in a room of their own at `--rate` msg/s for `--seconds` (the
//! room and its checks are `chat`'s). After a few seconds A is killed
//! (SIGKILL), messages are said into A's rooms through B while it is down,
//! and A is started again on its port. Every client of A reconnects as a
//! real client does: with `after=` the last id it received, after a short
//! random pause, backing off on failed connects (0.5 s doubling to 10 s,
//! each wait between half and all of its step, as palaver-cli does), and
//! on a 503 with `Retry-After` waiting that long plus up to a second of its
//! own. While they come back a trickle of messages (`--trickle` msg/s over
//! A's rooms) goes on through B.
//!
//! Reported: how long after A listened again 99 % and 100 % of its clients
//! had their `hello`; the upgrades answered during the storm (time to the
//! answer, p50/p99/max); the 503s that asked to retry later (shed) and the
//! failed connects (while A was down, and after); the survivors' delivery
//! latency before the kill and during the storm; Redis's load
//! (`instantaneous_ops_per_sec` sampled twice a second: mean and peak,
//! before and during). Checked, or the run panics: every client came back;
//! each received every message of its room exactly once and in order (its
//! ids equal the room's history, read back at the end); every survivor
//! received exactly the acked messages in order, and none was closed.
//!
//! `--no-admission` sets `MAX_PENDING_UPGRADES` far above any storm, to
//! compare with the default.

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    sync::{mpsc, oneshot, watch, Semaphore},
    time::timeout,
};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{
    args::{arg, flag},
    chaos::{resp, rng::Rng},
    chat::{join_room, room_order, UNLIMITED},
    http::{register_many, request},
    servers::{free_port, start_palaver, start_redis, try_start_palaver_at, Kind, Process},
    sockets::{open, try_open, upgrade_request, Ws},
    stats::{latency_line, pct, unix_micros},
};

/// A real client's first wait after a failed connect, and its longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// An upgrade (or its `hello`) not answered within this is given up, as
/// palaver-cli does.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the survivors chat before A is killed: the baseline.
const BASELINE: Duration = Duration::from_secs(5);
/// The first joins: this many handshakes at a time.
const JOINING_AT_ONCE: usize = 256;
/// Long enough for any storm: a client not back by then fails the run.
const BACK_WITHIN: Duration = Duration::from_secs(600);

pub(crate) async fn storm(args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 15_000);
    let users: usize = arg(args, "--users", 150);
    let survivors: usize = arg(args, "--survivors", 200);
    let rate: f64 = arg(args, "--rate", 50.0);
    let seconds: f64 = arg(args, "--seconds", 60.0);
    let trickle: f64 = arg(args, "--trickle", 10.0);
    let no_admission = flag(args, "--no-admission");
    assert!(users > 0 && sockets >= users && survivors >= 2, "--sockets ≥ --users > 0, --survivors ≥ 2");
    let rooms = users;

    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut env = UNLIMITED.to_vec();
    if no_admission {
        env.push(("MAX_PENDING_UPGRADES", "10000000"));
    }
    let admission = if no_admission { "off (MAX_PENDING_UPGRADES=10000000)" } else { "on (the defaults)" };
    let port_a = free_port();
    let mut a = Some(try_start_palaver_at(&redis_url, port_a, &env, Stdio::inherit()).expect("instance A"));
    let (_b, port_b) = start_palaver(redis_port, &env);
    let cookies = register_many(Kind::Palaver, port_b, "storm", users).await;
    let room_of = |r: usize| format!("storm-{r}");

    // One writer per room, on B: says what A's clients must all receive.
    let mut writers = Vec::new();
    for (r, cookie) in cookies.iter().enumerate().take(rooms) {
        writers.push(Writer::open(port_b, cookie, &room_of(r)).await);
    }

    // A's clients: socket i in room i % rooms, as user (i / rooms) % users,
    // so that each room holds many users.
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(JOINING_AT_ONCE));
    let clients: Vec<_> = (0..sockets)
        .map(|i| {
            let client = Client {
                port: port_a,
                cookie: cookies[(i / rooms) % users].clone(),
                room: room_of(i % rooms),
                rng: Rng::fork(0x5707_3000, i as u64),
            };
            tokio::spawn(client.run(tally.clone(), gate.clone(), stop.clone()))
        })
        .collect();
    let joining = Instant::now();
    wait_for(&tally.joined, sockets, Duration::from_secs(600), "A's clients to join").await;
    eprintln!("storm: {sockets} sockets joined A in {:.1?}", joining.elapsed());
    say_everywhere(&writers, |room| format!("{room}: before")).await;

    // The survivors: chat's room on B, chatting from now on.
    let mut survivors_room = join_room(&[port_b], &cookies, "storm-survivors", survivors, 10.min(survivors / 2)).await;
    let chatting = tokio::spawn(async move {
        let (sent, acked) = survivors_room.send(rate, seconds).await;
        (survivors_room, sent, acked)
    });
    let sampler = RedisLoad::start(redis_port);
    tokio::time::sleep(BASELINE).await;

    // The kill, the messages said meanwhile, the restart.
    tally.storm.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    let killed_us = unix_micros();
    sampler.mark();
    drop(a.take());
    say_everywhere(&writers, |room| format!("{room}: while A was down, 1")).await;
    say_everywhere(&writers, |room| format!("{room}: while A was down, 2")).await;
    a = Some(tokio::task::block_in_place(|| restart(&redis_url, port_a, &env)));
    let listening = Instant::now();
    tally.restarted.store(true, Ordering::SeqCst);
    let trickling = Trickle::start(&writers, trickle);
    wait_for(&tally.back, sockets, BACK_WITHIN, "A's clients to come back").await;
    let back_us = unix_micros();
    let load = sampler.stop();
    trickling.stop().await;

    // The end: a marker in every room, which every client must receive.
    say_everywhere(&writers, |room| format!("{room}: the end")).await;
    wait_for(&tally.ended, sockets, Duration::from_secs(120), "every client's end marker").await;
    stop_tx.send_replace(true);
    let mut received = Vec::with_capacity(sockets);
    for client in clients {
        received.push(client.await.expect("a client of A"));
    }
    drop(writers);

    // The survivors' checks (chat's), then every client of A's.
    let (survivors_room, sent, acked) = chatting.await.unwrap();
    assert_eq!(acked.len() as u64, sent, "every survivor's message is acked");
    let deliveries = survivors_room.finish(&acked).await;
    let checked = check_rooms(port_b, &cookies[0], rooms, &room_of, &received);

    let mut back_after: Vec<Duration> =
        tally.back_at.lock().unwrap().iter().map(|at| at.saturating_duration_since(listening)).collect();
    back_after.sort_unstable();
    let mut upgrades: Vec<(u64, u64)> = tally.upgrade_us.lock().unwrap().iter().map(|&us| (0, us)).collect();
    upgrades.sort_unstable_by_key(|&(_, us)| us);
    let before: Vec<_> = deliveries.iter().copied().filter(|&(sent, _)| sent < killed_us).collect();
    let during: Vec<_> =
        deliveries.iter().copied().filter(|&(sent, _)| (killed_us..=back_us).contains(&sent)).collect();
    let chat_covered =
        if during.is_empty() { " (the survivors' chat had ended: raise --seconds)".to_owned() } else { String::new() };
    println!(
        "storm (palaver, admission {admission}): {sockets} sockets of {users} users in {rooms} rooms on A, \
         {survivors} survivors on B chatting at {rate} msg/s; A killed, listening again after {:.1?}\n\
         back (hello) after A listened again: 99 % in {:.2?}, 100 % in {:.2?}\n\
         upgrades answered during the storm: {} ({}); 503 with Retry-After (shed): {}; failed connects: {} while A \
         was down, {} after\n\
         survivors' delivery latency: before the kill {}; during the storm {}{chat_covered}\n\
         Redis ops/s: before the kill mean {:.0}; during the storm mean {:.0}, peak {}\n\
         checked: every client came back; each received its room's messages ({checked} in all) exactly once, in \
         order; every survivor received exactly the {} acked messages in order, none closed",
        listening - killed_at,
        pct(&back_after, 0.99),
        back_after.last().copied().unwrap_or_default(),
        upgrades.len(),
        latency_line(&upgrades),
        tally.shed.load(Ordering::Relaxed),
        tally.failed_down.load(Ordering::Relaxed),
        tally.failed_up.load(Ordering::Relaxed),
        latency_line(&sorted(before)),
        latency_line(&sorted(during)),
        load.before_mean,
        load.during_mean,
        load.during_peak,
        acked.len(),
    );
    drop(a);
}

fn sorted(mut samples: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    samples.sort_unstable_by_key(|&(_, latency)| latency);
    samples
}

/// Starts A again on its port, as a supervisor would: it exits at once
/// while its store cannot be reached, and is then tried again.
fn restart(redis_url: &str, port: u16, env: &[(&str, &str)]) -> Process {
    loop {
        match try_start_palaver_at(redis_url, port, env, Stdio::inherit()) {
            Ok(process) => return process,
            Err(why) => {
                eprintln!("storm: A did not start ({why}); trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Waits until `count` reaches `want`, or panics after `within`.
async fn wait_for(count: &AtomicUsize, want: usize, within: Duration, what: &str) {
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < want {
        let so_far = count.load(Ordering::SeqCst);
        assert!(started.elapsed() < within, "waited {within:?} for {what}: {so_far} of {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What A's clients share with the run.
#[derive(Default)]
struct Tally {
    /// Set just before A is killed, and when it listens again.
    storm: AtomicBool,
    restarted: AtomicBool,
    /// Clients that had their first `hello`, and their first after the kill.
    joined: AtomicUsize,
    back: AtomicUsize,
    /// Clients that received their room's end marker.
    ended: AtomicUsize,
    shed: AtomicU64,
    failed_down: AtomicU64,
    failed_up: AtomicU64,
    /// Each upgrade answered during the storm: from the connect to the
    /// answer (101 or a refusal), µs.
    upgrade_us: Mutex<Vec<u64>>,
    /// When each client had its `hello` again.
    back_at: Mutex<Vec<Instant>>,
}

impl Tally {
    fn failed(&self) {
        let which = if self.restarted.load(Ordering::Relaxed) { &self.failed_up } else { &self.failed_down };
        which.fetch_add(1, Ordering::Relaxed);
    }
}

/// One client of A.
struct Client {
    port: u16,
    cookie: String,
    room: String,
    rng: Rng,
}

/// What one client received: its room's message ids, in arrival order,
/// and anything it found wrong.
struct Received {
    room: String,
    ids: Vec<String>,
    problems: Vec<String>,
}

impl Client {
    async fn run(mut self, tally: Arc<Tally>, gate: Arc<Semaphore>, mut stop: watch::Receiver<bool>) -> Received {
        let mut got = Received { room: self.room.clone(), ids: Vec::new(), problems: Vec::new() };
        let (mut joined, mut back) = (false, false);
        loop {
            let after = got.ids.last().cloned().unwrap_or_else(|| "0-0".to_owned());
            let query = format!("?room={}&after={after}", self.room);
            let ws = if joined {
                self.connect(&query, &tally).await
            } else {
                let _turn = gate.acquire().await.unwrap();
                self.connect(&query, &tally).await
            };
            if !joined {
                joined = true;
                tally.joined.fetch_add(1, Ordering::SeqCst);
            } else if tally.storm.load(Ordering::SeqCst) && !back {
                back = true;
                tally.back_at.lock().unwrap().push(Instant::now());
                tally.back.fetch_add(1, Ordering::SeqCst);
            }
            if read(ws, &mut got, &tally, &mut stop).await {
                return got;
            }
            // Lost: a browser's first retry comes within half a second.
            tokio::time::sleep(Duration::from_millis(self.rng.below(500))).await;
        }
    }

    /// Opens the socket and reads its `hello`, trying again as a real
    /// client does until it has one.
    async fn connect(&mut self, query: &str, tally: &Tally) -> Ws {
        let request = upgrade_request(self.port, &self.cookie, query);
        let mut step = BACKOFF_FIRST;
        loop {
            let storm = tally.storm.load(Ordering::Relaxed);
            let started = Instant::now();
            let answered = |tally: &Tally| {
                if storm {
                    tally.upgrade_us.lock().unwrap().push(started.elapsed().as_micros() as u64);
                }
            };
            let retry_after = match timeout(CONNECT_TIMEOUT, try_open(self.port, &request)).await {
                Ok(Ok(mut ws)) => {
                    answered(tally);
                    match timeout(CONNECT_TIMEOUT, hello(&mut ws)).await {
                        Ok(true) => return ws,
                        _ => None,
                    }
                }
                Ok(Err(tungstenite::Error::Http(response))) => {
                    answered(tally);
                    let asked = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
                    asked.filter(|_| response.status() == 503)
                }
                Ok(Err(_)) | Err(_) => None,
            };
            let wait = match retry_after {
                Some(secs) => {
                    tally.shed.fetch_add(1, Ordering::Relaxed);
                    step = BACKOFF_FIRST;
                    Duration::from_secs(secs) + Duration::from_millis(self.rng.below(1000))
                }
                None => {
                    tally.failed();
                    let wait = step.mul_f64(0.5 + 0.5 * (self.rng.below(1000) as f64 / 1000.0));
                    step = (step * 2).min(BACKOFF_MAX);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reads up to the `hello`; false if something else came first or the
/// socket ended.
async fn hello(ws: &mut Ws) -> bool {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                return frame["type"] == "hello";
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return false,
        }
    }
}

/// Reads the socket's messages into `got` until it ends (false) or the run
/// stops (true).
async fn read(mut ws: Ws, got: &mut Received, tally: &Tally, stop: &mut watch::Receiver<bool>) -> bool {
    let end = format!("{}: the end", got.room);
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return true;
            }
            frame = ws.next() => frame,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return false,
            Some(Ok(_)) => continue,
        };
        // Most frames are presence: skip them before parsing.
        if !text.contains(r#""type":"message""#) {
            continue;
        }
        let frame: serde_json::Value = serde_json::from_str(&text).expect("a frame");
        let id = frame["id"].as_str().expect("a message id").to_owned();
        if let Some(last) = got.ids.last() {
            if room_order(&id) <= room_order(last) {
                got.problems.push(format!("{id} after {last}: repeated or out of order"));
            }
        }
        got.ids.push(id);
        if frame["body"].as_str() == Some(end.as_str()) {
            tally.ended.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A socket on B that says things into one room, each acked before the next.
struct Writer {
    room: String,
    said: mpsc::Sender<(String, oneshot::Sender<()>)>,
}

impl Writer {
    async fn open(port: u16, cookie: &str, room: &str) -> Writer {
        let mut ws = open(port, cookie, &format!("?room={room}")).await;
        assert!(hello(&mut ws).await, "a writer's hello in {room}");
        let (said, mut to_say) = mpsc::channel::<(String, oneshot::Sender<()>)>(64);
        let (room, theirs) = (room.to_owned(), room.to_owned());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut waiting: Option<(String, oneshot::Sender<()>)> = None;
            loop {
                tokio::select! {
                    next = to_say.recv(), if waiting.is_none() => {
                        let Some((body, done)) = next else {
                            let _ = ws.close(None).await;
                            return;
                        };
                        n += 1;
                        let client_id = format!("storm-{n}");
                        let frame = serde_json::json!({"type": "send", "body": body, "client_id": client_id});
                        ws.send(Message::Text(frame.to_string().into())).await.expect("a writer sends");
                        waiting = Some((client_id, done));
                    }
                    frame = ws.next() => {
                        let text = match frame {
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Close(_)) | Err(_)) | None => panic!("the writer in {room} was closed"),
                            Some(Ok(_)) => continue,
                        };
                        if text.contains(r#""type":"error""#) {
                            panic!("the writer in {room} was refused: {text}");
                        }
                        if !text.contains(r#""type":"ack""#) {
                            continue;
                        }
                        let ack: serde_json::Value = serde_json::from_str(&text).unwrap();
                        if waiting.as_ref().is_some_and(|(id, _)| ack["client_id"] == id.as_str()) {
                            let (_, done) = waiting.take().unwrap();
                            let _ = done.send(());
                        }
                    }
                }
            }
        });
        Writer { room: theirs, said }
    }
}

/// Says `body(room)` into every room at once; returns once all are acked.
async fn say_everywhere(writers: &[Writer], body: impl Fn(&str) -> String) {
    let mut acks = Vec::new();
    for writer in writers {
        let (done, acked) = oneshot::channel();
        writer.said.send((body(&writer.room), done)).await.expect("a writer");
        acks.push(acked);
    }
    for acked in acks {
        timeout(Duration::from_secs(30), acked).await.expect("acked within 30 s").expect("a writer");
    }
}

/// Messages said into A's rooms in turn, `rate` a second, while its
/// clients come back.
struct Trickle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Trickle {
    fn start(writers: &[Writer], rate: f64) -> Trickle {
        let said: Vec<_> = writers.iter().map(|w| (w.room.clone(), w.said.clone())).collect();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            if rate <= 0.0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for n in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let (room, writer) = &said[(n % said.len() as u64) as usize];
                let (done, _) = oneshot::channel();
                // A room whose writer has too much queued skips its turn.
                let _ = writer.try_send((format!("{room}: during the storm, {n}"), done));
            }
        });
        Trickle { stop, task }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.unwrap();
    }
}

/// Redis's `instantaneous_ops_per_sec`, sampled twice a second until
/// stopped; samples after `mark` count as the storm's.
struct RedisLoad {
    samples: Arc<Mutex<Vec<(bool, u64)>>>,
    storm: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

struct Load {
    before_mean: f64,
    during_mean: f64,
    during_peak: u64,
}

impl RedisLoad {
    fn start(port: u16) -> RedisLoad {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (storm, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let task = tokio::task::spawn_blocking({
            let (samples, storm, stop) = (samples.clone(), storm.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    let ops = resp::info(port, "stats", "instantaneous_ops_per_sec").and_then(|v| v.parse().ok());
                    if let Some(ops) = ops {
                        samples.lock().unwrap().push((storm.load(Ordering::SeqCst), ops));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        });
        RedisLoad { samples, storm, stop, task }
    }

    fn mark(&self) {
        self.storm.store(true, Ordering::SeqCst);
    }

    fn stop(self) -> Load {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.samples.lock().unwrap().clone();
        drop(self.task);
        let mean = |during: bool| {
            let picked: Vec<u64> = samples.iter().filter(|s| s.0 == during).map(|s| s.1).collect();
            picked.iter().sum::<u64>() as f64 / picked.len().max(1) as f64
        };
        let during_peak = samples.iter().filter(|s| s.0).map(|s| s.1).max().unwrap_or(0);
        Load { before_mean: mean(false), during_mean: mean(true), during_peak }
    }
}

/// Every client's ids must be its room's history, whole and in order (each
/// joined with `after=0-0` before anything was said, and came back with
/// `after=` its last id). Panics with the first few that are not; returns
/// how many messages were said into A's rooms.
fn check_rooms(
    port: u16,
    cookie: &str,
    rooms: usize,
    room_of: &dyn Fn(usize) -> String,
    received: &[Received],
) -> usize {
    let histories: std::collections::HashMap<String, Vec<String>> =
        (0..rooms).map(|r| (room_of(r), history(port, cookie, &room_of(r)))).collect();
    let mut wrong = 0;
    for (i, got) in received.iter().enumerate() {
        let want = &histories[&got.room];
        if &got.ids != want || !got.problems.is_empty() {
            wrong += 1;
            if wrong <= 3 {
                let first_difference = got.ids.iter().zip(want).position(|(g, w)| g != w);
                eprintln!(
                    "client {i} in {}: received {} messages, the room holds {}; first difference at \
                     {first_difference:?}; {:?}",
                    got.room,
                    got.ids.len(),
                    want.len(),
                    got.problems.iter().take(3).collect::<Vec<_>>()
                );
            }
        }
    }
    assert_eq!(wrong, 0, "{wrong} of A's clients did not receive their room's messages exactly once, in order");
    histories.values().map(Vec::len).sum()
}

/// A room's whole history, oldest first, read page by page through the
/// history API.
fn history(port: u16, cookie: &str, room: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    loop {
        let before = ids.first().map(|id| format!("&before={id}")).unwrap_or_default();
        let path = format!("/chat/{room}/history?limit=100{before}");
        let response = request(port, "GET", &path, &[format!("Cookie: {cookie}")], "");
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {}", response.lines().next().unwrap_or_default());
        let body = response.split("\r\n\r\n").nth(1).expect("a body");
        let page: serde_json::Value = serde_json::from_str(body).expect("a history page");
        let mut older: Vec<String> =
            page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
        older.append(&mut ids);
        ids = older;
        if page["start"] == true {
            return ids;
        }
    }
}
