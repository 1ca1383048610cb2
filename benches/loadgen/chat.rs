//! `chat`: fan-out throughput and latency in one room, every receiver's
//! sequence checked against the acks; the room of sockets `login-storm`
//! chats in too.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use palaver::model::MessageId;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::{arg, flag},
    http::register_many,
    servers::{start_palaver_on, start_redis, start_redis_cluster, start_servers, Kind, Process, RedisNode},
    sockets::{next_json, open, Ws},
    stats::{latency_line, pct, unix_micros},
};

/// What one receiving socket got: (send time, latency) in µs per message,
/// the ids in arrival order, and how the server ended it, if it did.
#[derive(Default)]
struct Receiver {
    deliveries: Vec<(u64, u64)>,
    ids: Vec<String>,
    ended: Option<String>,
}

/// A room full of sockets: readers record every `message`; senders wait.
pub(crate) struct ChatRoom {
    received: Arc<Vec<Mutex<Receiver>>>,
    readers: Vec<JoinHandle<()>>,
    senders: Vec<Ws>,
    /// The senders' ack latencies of the last `send`, (0, µs), sorted.
    ack_latencies: Vec<(u64, u64)>,
}

/// Opens `sockets` sockets into `room`, socket i on instance i % instances
/// as user i % users; the first `senders` of them send, the rest receive.
pub(crate) async fn join_room(
    ports: &[u16],
    cookies: &[String],
    room: &str,
    sockets: usize,
    senders: usize,
) -> ChatRoom {
    let receivers = sockets - senders;
    let received: Arc<Vec<Mutex<Receiver>>> = Arc::new((0..receivers).map(|_| Mutex::default()).collect());
    let (mut readers, mut sender_sockets) = (Vec::new(), Vec::new());
    for i in 0..sockets {
        let mut ws = open(ports[i % ports.len()], &cookies[i % cookies.len()], &format!("?room={room}")).await;
        next_json(&mut ws).await.expect("hello");
        if i < senders {
            sender_sockets.push(ws);
            continue;
        }
        let received = received.clone();
        let me = i - senders;
        readers.push(tokio::spawn(async move {
            let ended = loop {
                let text = match ws.next().await {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => break format!("closed: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => break format!("failed: {err}"),
                    None => break "ended".into(),
                };
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "message" {
                    continue;
                }
                let now = unix_micros();
                let sent: u64 = frame["body"].as_str().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
                let mut r = received[me].lock().unwrap();
                r.deliveries.push((sent, now.saturating_sub(sent)));
                r.ids.push(frame["id"].as_str().unwrap().to_owned());
            };
            received[me].lock().unwrap().ended = Some(ended);
        }));
    }
    ChatRoom { received, readers, senders: sender_sockets, ack_latencies: Vec::new() }
}

/// The room's order: palaver's ids are stream ids, `ms-seq`, ordered
/// numerically; the peers' are one counter per room, which palaver's
/// `MessageId` reads as `n-0`.
pub(crate) fn room_order(id: &str) -> MessageId {
    id.parse().expect("a message id")
}

impl ChatRoom {
    /// The senders send `rate` messages per second in all, evenly spaced,
    /// for `seconds`, then wait 2 s for the last acks and close. Returns
    /// how many were sent and the acked ids in the room's order.
    pub(crate) async fn send(&mut self, rate: f64, seconds: f64) -> (u64, Vec<String>) {
        let senders = self.senders.len();
        let per_sender = (rate / senders as f64).max(0.1);
        let mut sending = Vec::new();
        for (s, ws) in std::mem::take(&mut self.senders).into_iter().enumerate() {
            sending.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut sent = 0u64;
                let (mut sink, mut stream) = ws.split();
                let reader = tokio::spawn(async move {
                    let (mut ids, mut acks) = (Vec::new(), Vec::new());
                    while let Some(message) = stream.next().await {
                        let text = match message {
                            Ok(Message::Text(text)) => text,
                            Ok(Message::Close(_)) | Err(_) => break,
                            Ok(_) => continue,
                        };
                        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                        match frame["type"].as_str() {
                            Some("ack") => {
                                let sent: u64 = frame["client_id"]
                                    .as_str()
                                    .and_then(|c| c.rsplit('-').next()?.parse().ok())
                                    .expect("the client_id ends with the send time");
                                acks.push(unix_micros().saturating_sub(sent));
                                ids.push(frame["id"].as_str().unwrap().to_owned())
                            }
                            Some("error") => panic!("sender got an error: {frame}"),
                            _ => {}
                        }
                    }
                    (ids, acks)
                });
                while Instant::now() < end {
                    tick.tick().await;
                    let now = unix_micros();
                    let body = format!("{s}-{sent} {now}");
                    let frame =
                        serde_json::json!({"type": "send", "body": body, "client_id": format!("{s}-{sent}-{now}")});
                    sink.send(Message::Text(frame.to_string().into())).await.unwrap();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = sink.close().await;
                let (ids, acks) = tokio::time::timeout(Duration::from_secs(10), reader)
                    .await
                    .expect("the server answers every send and closes within 10 s of the last")
                    .unwrap();
                (sent, ids, acks)
            }));
        }
        let (mut sent, mut acked) = (0, Vec::new());
        self.ack_latencies.clear();
        for task in sending {
            let (s, ids, acks) = task.await.unwrap();
            sent += s;
            acked.extend(ids);
            self.ack_latencies.extend(acks.into_iter().map(|l| (0, l)));
        }
        acked.sort_by_key(|id| room_order(id));
        self.ack_latencies.sort_unstable_by_key(|&(_, latency)| latency);
        (sent, acked)
    }

    /// Stops the readers; checks that every receiver got exactly the acked
    /// messages, each once, in the room's order, and was not closed.
    /// Returns every (send time, latency), sorted by latency.
    pub(crate) async fn finish(self, acked: &[String]) -> Vec<(u64, u64)> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for r in &self.readers {
            r.abort();
        }
        let mut all = Vec::new();
        let (mut differ, mut ended) = (0, 0);
        for (i, r) in self.received.iter().enumerate() {
            let r = r.lock().unwrap();
            all.extend_from_slice(&r.deliveries);
            if let Some(how) = &r.ended {
                ended += 1;
                if ended <= 3 {
                    eprintln!("receiver {i} was {how}");
                }
            }
            if r.ids != acked {
                differ += 1;
                if differ <= 3 {
                    let first_difference = r.ids.iter().zip(acked).position(|(got, want)| got != want);
                    eprintln!(
                        "receiver {i}: got {} messages, {} acked; first difference at {first_difference:?}",
                        r.ids.len(),
                        acked.len()
                    );
                }
            }
        }
        assert!(
            differ == 0 && ended == 0,
            "{differ} receivers' sequences differ from the acked ids in order; {ended} receivers were closed"
        );
        all.sort_unstable_by_key(|&(_, latency)| latency);
        all
    }
}

/// Rate limits lifted for the load generator's few senders.
pub(crate) const UNLIMITED: [(&str, &str); 4] = [
    ("MESSAGE_RATE_PER_SEC", "10000"),
    ("MESSAGE_BURST", "100000"),
    ("USER_MESSAGE_RATE_PER_SEC", "100000"),
    ("USER_MESSAGE_BURST", "100000"),
];

/// One room's run at one rate: what it sent, delivered and how fast.
pub(crate) struct Measured {
    pub(crate) sent: u64,
    pub(crate) acked: usize,
    pub(crate) deliveries_per_sec: f64,
    /// Every delivery's (send time, latency) in µs, sorted by latency.
    pub(crate) latencies: Vec<(u64, u64)>,
    pub(crate) ack_latencies: Vec<(u64, u64)>,
}

/// Fills `room` with `sockets` sockets, `senders` of them sending `rate`
/// messages per second in all for `seconds`; checks every receiver.
pub(crate) async fn measure(
    ports: &[u16],
    cookies: &[String],
    room: &str,
    sockets: usize,
    senders: usize,
    rate: u64,
    seconds: u64,
) -> Measured {
    let mut room = join_room(ports, cookies, room, sockets, senders).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // presence settles
    let started = Instant::now();
    let (sent, acked) = room.send(rate as f64, seconds as f64).await;
    let elapsed = started.elapsed().as_secs_f64() - 2.0;
    assert_eq!(acked.len() as u64, sent, "every message sent is acked");
    let ack_latencies = std::mem::take(&mut room.ack_latencies);
    let latencies = room.finish(&acked).await;
    let deliveries_per_sec = latencies.len() as f64 / elapsed;
    Measured { sent, acked: acked.len(), deliveries_per_sec, latencies, ack_latencies }
}

/// A store for `kind` (one Redis, or with `cluster` a six-node cluster for
/// palaver) and `instances` servers on it, with the chat limits lifted.
/// Fields drop in order: the servers, then the store, then its folder.
pub(crate) struct Stage {
    _servers: Vec<Process>,
    _redis: (Process, Vec<RedisNode>),
    _dir: tempfile::TempDir,
    pub(crate) ports: Vec<u16>,
    pub(crate) store: String,
}

pub(crate) fn stage(kind: Kind, instances: usize, cluster: bool, wait_replicas: Option<&str>) -> Stage {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = UNLIMITED.to_vec();
    if let Some(n) = wait_replicas {
        extra.push(("REDIS_WAIT_REPLICAS", n));
    }
    let (redis, redis_port) = start_redis(dir.path());
    let (cluster_nodes, servers) = if cluster {
        let (nodes, url) = start_redis_cluster(dir.path(), None);
        let servers: Vec<_> = (0..instances).map(|_| start_palaver_on(&url, &extra)).collect();
        (nodes, servers)
    } else {
        (Vec::new(), start_servers(kind, redis_port, instances, &extra))
    };
    let store = match (cluster, wait_replicas) {
        (true, None) => "a Redis Cluster of 3+3, WAIT 1".to_owned(),
        (true, Some(n)) => format!("a Redis Cluster of 3+3, REDIS_WAIT_REPLICAS={n}"),
        (false, None) => "one Redis".to_owned(),
        (false, Some(n)) => format!("one Redis, REDIS_WAIT_REPLICAS={n}"),
    };
    let ports = servers.iter().map(|(_, port)| *port).collect();
    Stage {
        _servers: servers.into_iter().map(|(server, _)| server).collect(),
        _redis: (redis, cluster_nodes),
        _dir: dir,
        ports,
        store,
    }
}

pub(crate) async fn chat(kind: Kind, args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 1000);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let rates: String = arg(args, "--rates", "100,200,400".to_string());
    // The bare server is one process: it has nothing to share rooms with.
    let instances = if kind == Kind::Bare { 1 } else { arg(args, "--instances", 2) };
    // --cluster (palaver): a six-node Redis Cluster instead of one Redis;
    // --wait-replicas N sets REDIS_WAIT_REPLICAS (the cost of WAIT).
    let cluster = flag(args, "--cluster") && kind == Kind::Palaver;
    let wait_replicas: Option<String> = args.iter().position(|a| a == "--wait-replicas").map(|i| args[i + 1].clone());
    let stage = stage(kind, instances, cluster, wait_replicas.as_deref());
    let cookies = register_many(kind, stage.ports[0], "chat", users).await;

    for rate in rates.split(',').map(|r| r.parse::<u64>().unwrap()) {
        let run = measure(&stage.ports, &cookies, &format!("bench-{rate}"), sockets, senders, rate, seconds).await;
        println!(
            "chat ({}) @ {rate} msg/s offered into one room of {sockets} sockets over {instances} instance(s) on \
             {} ({senders} senders, {} receivers): {} sent, {} acked, {} deliveries = {:.0} deliveries/s; \
             latency {}; ack latency {}; every receiver got exactly the acked ids in order, none was closed \
             (target: p99 at most 100 ms)",
            kind.name(),
            stage.store,
            sockets - senders,
            run.sent,
            run.acked,
            run.latencies.len(),
            run.deliveries_per_sec,
            latency_line(&run.latencies),
            latency_line(&run.ack_latencies),
        );
    }
}

/// One row of the standard fan-out table: `sockets` in one room of one
/// instance, 20 users (so 100 sockets per session in a room of 2,000),
/// one sender at `rate` messages per second.
struct Row {
    sockets: usize,
    rate: u64,
}

/// `fanout`: the standard fan-out table, every row for every `--server`
/// in turn (each on a fresh Redis), palaver against the bare server of the
/// same run. Panics when palaver delivers less than 90 % of the bare
/// server's deliveries per second or its p99 is above 1.5 times the bare
/// server's (`--report-only`: says so and goes on), so that a regression
/// fails loudly. A server that fails a row's check (loses, repeats or
/// reorders a message, or closes a receiver) is reported as failed; for
/// palaver that fails the run too.
pub(crate) async fn fanout(args: &[String]) {
    let rows: String = arg(args, "--rows", "2000x50,2000x200,1000x400".to_string());
    let rows: Vec<Row> = rows
        .split(',')
        .map(|row| {
            let (sockets, rate) = row.split_once('x').expect("--rows SOCKETSxRATE,…");
            Row { sockets: sockets.parse().unwrap(), rate: rate.parse().unwrap() }
        })
        .collect();
    let users: usize = arg(args, "--users", 20);
    let seconds: u64 = arg(args, "--seconds", 10);
    let report_only = flag(args, "--report-only");
    let kinds = crate::servers::servers(args);
    let mut missed = Vec::new();
    println!("| sockets × msg/s | server | deliveries/s | p50 | p99 | max | ack p99 | against bare |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in &rows {
        let mut results: Vec<(Kind, Result<Measured, String>)> = Vec::new();
        for &kind in &kinds {
            let stage = stage(kind, 1, false, None);
            let cookies = register_many(kind, stage.ports[0], "fan", users).await;
            let ports = stage.ports.clone();
            let (sockets, rate) = (row.sockets + 1, row.rate);
            let run = tokio::spawn(async move { measure(&ports, &cookies, "fan", sockets, 1, rate, seconds).await });
            let result = run.await.map_err(|err| match err.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(err) => err.to_string(),
            });
            drop(stage);
            results.push((kind, result));
        }
        let bare = results.iter().find_map(|(k, r)| (*k == Kind::Bare).then_some(r.as_ref().ok()).flatten());
        let p99 = |m: &Measured| pct(&m.latencies, 0.99).1 as f64 / 1000.0;
        for (kind, result) in &results {
            let label = format!("{} × {}", row.sockets, row.rate);
            match result {
                Ok(m) => {
                    let against = match (kind, bare) {
                        (Kind::Bare, _) | (_, None) => String::new(),
                        (_, Some(b)) => {
                            let (share, ratio) = (m.deliveries_per_sec / b.deliveries_per_sec, p99(m) / p99(b));
                            if *kind == Kind::Palaver && (share < 0.9 || ratio > 1.5) {
                                missed.push(format!("{label}: {:.0} % of bare, p99 {ratio:.2}×", share * 100.0));
                            }
                            format!("{:.0} % of deliveries/s, p99 {ratio:.2}×", share * 100.0)
                        }
                    };
                    let at = |p: f64| pct(&m.latencies, p).1 as f64 / 1000.0;
                    println!(
                        "| {label} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {against} |",
                        kind.name(),
                        m.deliveries_per_sec,
                        at(0.5),
                        at(0.99),
                        m.latencies.last().map_or(0, |d| d.1) as f64 / 1000.0,
                        pct(&m.ack_latencies, 0.99).1 as f64 / 1000.0,
                    );
                }
                Err(why) => {
                    // The innermost panic's words (a check in a task of the run).
                    let why = why.rsplit(", \"").next().unwrap_or_default();
                    let why = why.split('"').next().unwrap_or_default().lines().next().unwrap_or_default();
                    println!("| {label} | {} | failed its check: {why} | | | | | |", kind.name());
                    if *kind == Kind::Palaver {
                        missed.push(format!("{label}: palaver failed its check: {why}"));
                    }
                }
            }
        }
    }
    println!(
        "every row: one instance, one Redis, {users} users, one sender, {seconds} s; every receiver of a row \
         without 'failed' got exactly the acked ids in order and none was closed (target: palaver at least 90 % \
         of the bare server's deliveries/s, p99 at most 1.5× the bare server's)"
    );
    if !missed.is_empty() {
        let said = format!("palaver missed its target against the bare server: {}", missed.join("; "));
        if report_only {
            println!("{said}");
        } else {
            panic!("{said}");
        }
    }
}
