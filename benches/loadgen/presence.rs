//! `presence-storm`: thousands join one room; every client's view of who is
//! online must converge.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::arg,
    http::register_many,
    servers::{start_redis, start_servers, Kind},
    sockets::{next_json, open},
    stats::{ms, pct},
};

/// A client's view of a room's presence.
#[derive(Default)]
struct View {
    online: BTreeSet<String>,
    count: usize,
    /// The names are the whole room (it is at most 500 online, and the
    /// view was last replaced by a complete list).
    complete: bool,
    /// When the count last became the expected one (None while it is not).
    converged_at: Option<Instant>,
    frames: u64,
}

impl View {
    /// Applies a `presence` (replaces the view) or `presence_diff` (changes
    /// it) frame; other frames are ignored.
    fn apply(&mut self, frame: &serde_json::Value, expected: usize) {
        let names = |field: &str| -> Vec<String> {
            frame[field]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        match frame["type"].as_str() {
            Some("presence") => {
                self.online = names("online").into_iter().collect();
                self.count = frame["count"].as_u64().map_or(self.online.len(), |c| c as usize);
                self.complete = self.online.len() == self.count;
            }
            Some("presence_diff") => {
                for name in names("left") {
                    self.online.remove(&name);
                }
                self.online.extend(names("joined"));
                self.count = frame["count"].as_u64().map_or(self.online.len(), |c| c as usize);
                // Lists are only sent in rooms of at most 500: the count
                // rules above that; a complete view's names must agree.
                self.complete &= self.count <= 500;
                if self.complete {
                    assert_eq!(self.online.len(), self.count, "a presence view's names and count disagree: {frame}");
                }
            }
            _ => return,
        }
        self.frames += 1;
        match (self.count == expected, self.converged_at) {
            (true, None) => self.converged_at = Some(Instant::now()),
            (false, Some(_)) => self.converged_at = None,
            _ => {}
        }
    }
}

/// `presence-storm` (palaver): `--sockets` sockets of as many users join
/// one room within `--seconds`; every view must show them all.
pub(crate) async fn presence_storm(kind: Kind, args: &[String]) {
    assert_eq!(kind, Kind::Palaver, "presence-storm measures palaver's presence; the peers have none");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let seconds: f64 = arg(args, "--seconds", 10.0);
    let instances: usize = arg(args, "--instances", 1);
    let settle: u64 = arg(args, "--settle", 10);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, instances, &[]);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "member", sockets).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let joined = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(500);
    let mut tasks = Vec::with_capacity(sockets);
    for (i, cookie) in cookies.into_iter().enumerate() {
        let port = ports[i % ports.len()];
        let (joined, mut stop) = (joined.clone(), stop_rx.clone());
        let at = start + Duration::from_secs_f64(seconds * i as f64 / sockets as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut ws = open(port, &cookie, "?room=storm").await;
            let hello = next_json(&mut ws).await.expect("hello");
            assert_eq!(hello["user"].as_str(), Some(format!("member{i}").as_str()));
            let joined_at = Instant::now();
            joined.fetch_add(1, Ordering::Relaxed);
            let mut view = View::default();
            let ended = loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break None,
                    message = ws.next() => match message {
                        // Once the run stops, the others close and the room
                        // shrinks: what comes now is not part of the storm.
                        _ if *stop.borrow() => break None,
                        Some(Ok(Message::Text(text))) => {
                            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                            view.apply(&frame, sockets);
                        }
                        Some(Ok(Message::Close(frame))) => break Some(format!("closed: {frame:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => break Some(format!("failed: {err}")),
                        None => break Some("ended".to_owned()),
                    },
                }
            };
            (joined_at, view, ended)
        }));
    }
    while joined.load(Ordering::Relaxed) < sockets as u64 {
        assert!(!tasks.iter().any(|t| t.is_finished()), "a socket ended while the room filled");
        assert!(start.elapsed() < Duration::from_secs_f64(seconds + 300.0), "joining took too long");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    stop_tx.send(true).unwrap();
    let mut last_join = start;
    let mut results = Vec::with_capacity(sockets);
    for task in tasks {
        let (joined_at, view, ended) = task.await.unwrap();
        last_join = last_join.max(joined_at);
        results.push((view, ended));
    }
    let join_span = last_join - start;
    let (mut converge, mut not_converged, mut ended, mut frames) = (Vec::new(), 0, 0, 0);
    for (i, (view, how)) in results.iter().enumerate() {
        frames += view.frames;
        if let Some(how) = how {
            ended += 1;
            if ended <= 3 {
                eprintln!("socket {i} was {how}");
            }
        }
        match view.converged_at {
            Some(at) => converge.push(at.saturating_duration_since(last_join)),
            None => {
                not_converged += 1;
                if not_converged <= 3 {
                    eprintln!("socket {i}'s view: {} online after {} frames", view.count, view.frames);
                }
            }
        }
    }
    converge.sort_unstable();
    let within = converge.iter().filter(|d| **d <= Duration::from_secs(2)).count();
    println!(
        "presence-storm (palaver): {sockets} users joined one room over {instances} instance(s) within {join_span:.1?} \
         (offered over {seconds} s); {frames} presence frames received; views showing all {sockets} online, measured from \
         the last join: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {within} of {sockets} within 2 s (target: all); \
         {not_converged} views never converged within {settle} s; {ended} sockets closed",
        ms(pct(&converge, 0.50)),
        ms(pct(&converge, 0.99)),
        converge.last().copied().map_or(f64::NAN, ms),
    );
    assert!(
        not_converged == 0 && ended == 0,
        "{not_converged} views never showed everyone within {settle} s; {ended} sockets were closed"
    );
}
