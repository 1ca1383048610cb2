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
    servers::{start_palaver_on, start_redis, start_redis_cluster, start_servers, Kind},
    sockets::{next_json, open, Ws},
    stats::{latency_line, unix_micros},
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
                    .expect("the sender's socket closes")
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

pub(crate) async fn chat(kind: Kind, args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 1000);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let rates: String = arg(args, "--rates", "100,200,400".to_string());
    // The bare server is one process: it has nothing to share rooms with.
    let instances = if kind == Kind::Bare { 1 } else { arg(args, "--instances", 2) };
    let dir = tempfile::tempdir().unwrap();
    // --cluster (palaver): a six-node Redis Cluster instead of one Redis;
    // --wait-replicas N sets REDIS_WAIT_REPLICAS (the cost of WAIT).
    let cluster = flag(args, "--cluster") && kind == Kind::Palaver;
    let wait_replicas: Option<String> = args.iter().position(|a| a == "--wait-replicas").map(|i| args[i + 1].clone());
    let mut extra = UNLIMITED.to_vec();
    if let Some(n) = &wait_replicas {
        extra.push(("REDIS_WAIT_REPLICAS", n));
    }
    let (_redis, redis_port) = start_redis(dir.path());
    let (_cluster, servers) = if cluster {
        let (nodes, url) = start_redis_cluster(dir.path(), None);
        let servers: Vec<_> = (0..instances).map(|_| start_palaver_on(&url, &extra)).collect();
        (nodes, servers)
    } else {
        (Vec::new(), start_servers(kind, redis_port, instances, &extra))
    };
    let store = match (cluster, &wait_replicas) {
        (true, None) => "a Redis Cluster of 3+3, WAIT 1".to_owned(),
        (true, Some(n)) => format!("a Redis Cluster of 3+3, REDIS_WAIT_REPLICAS={n}"),
        (false, None) => "one Redis".to_owned(),
        (false, Some(n)) => format!("one Redis, REDIS_WAIT_REPLICAS={n}"),
    };
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "chat", users).await;

    for rate in rates.split(',').map(|r| r.parse::<u64>().unwrap()) {
        let mut room = join_room(&ports, &cookies, &format!("bench-{rate}"), sockets, senders).await;
        tokio::time::sleep(Duration::from_secs(2)).await; // presence settles
        let started = Instant::now();
        let (sent, acked) = room.send(rate as f64, seconds as f64).await;
        let elapsed = started.elapsed().as_secs_f64() - 2.0;
        assert_eq!(acked.len() as u64, sent, "every message sent is acked");
        let acks = std::mem::take(&mut room.ack_latencies);
        let all = room.finish(&acked).await;
        println!(
            "chat ({}) @ {rate} msg/s offered into one room of {sockets} sockets over {instances} instance(s) on \
             {store} ({senders} senders, {} receivers): {sent} sent, {} acked, {} deliveries = {:.0} deliveries/s; \
             latency {}; ack latency {}; every receiver got exactly the acked ids in order, none was closed \
             (target: p99 at most 100 ms)",
            kind.name(),
            sockets - senders,
            acked.len(),
            all.len(),
            all.len() as f64 / elapsed,
            latency_line(&all),
            latency_line(&acks),
        );
    }
}
