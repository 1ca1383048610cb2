//! `logout`: a socket's access ended on another instance, timed from the
//! request to the close.

use std::time::{Duration, Instant};

use crate::{
    args::{arg, flag},
    http::{post_form_as, register_many},
    servers::{start_redis, start_servers, Kind},
    sockets::{next_json, open, until_closed, Held},
    stats::{ms, pct},
};

/// `logout`: the time from `POST /logout` on instance A to the victim's
/// 4401 on instance B, among `--sockets` idle sockets on B.
pub(crate) async fn logout(kind: Kind, args: &[String]) {
    assert_ne!(kind, Kind::Bare, "the bare server has no sessions to log out");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let repeat: usize = arg(args, "--repeat", 50);
    let gap: u64 = arg(args, "--gap-ms", 500);
    let same_room = flag(args, "--same-room");
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, 2, &[]);
    let (port_a, port_b) = (servers[0].1, servers[1].1);
    let cookies = register_many(kind, port_a, "idle", users).await;
    // Fresh victims: one session (and user) each.
    let victims = register_many(kind, port_a, "victim", repeat).await;

    let victim_room = if same_room { "big".to_owned() } else { "victims".to_owned() };
    let held = Held::open(
        (0..sockets)
            .map(|i| {
                let room = if same_room { victim_room.clone() } else { format!("r{}", i % 100) };
                (port_b, cookies[i % users].clone(), format!("?room={room}"))
            })
            .collect(),
    );
    let open_time = held.opened().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The victims are watched from a thread of their own, so the time
    // measured is the server's, not this process's work reading the 10k
    // idle sockets' frames.
    let mut times = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(watch_victims(port_a, port_b, victims, victim_room, gap))
    })
    .join()
    .expect("the victims' thread panicked");
    let closed = held.closed();
    let why = held.report().await;
    assert_eq!(closed, 0, "{closed} of the other sockets were closed: {why:?}");
    times.sort_unstable();
    let slowest = times.iter().rev().take(5).map(|t| format!("{:.1}", ms(*t))).collect::<Vec<_>>().join(", ");
    println!(
        "logout ({}): {sockets} idle sockets on B ({}, {users} users, opened in {open_time:.1?}); POST /logout on A -> \
         4401 `logged out` on B, {repeat} fresh victims: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (slowest five: {slowest}); \
         every victim got 4401 `logged out`, no other socket closed (target with 10,000 in the same room: p99 at most 10 ms)",
        kind.name(),
        if same_room { "all in the victims' room" } else { "in 100 other rooms" },
        ms(pct(&times, 0.50)),
        ms(pct(&times, 0.90)),
        ms(pct(&times, 0.99)),
        ms(*times.last().unwrap()),
    );
}

/// Logs each victim out on A in turn and times its socket's 4401 on B.
async fn watch_victims(port_a: u16, port_b: u16, victims: Vec<String>, victim_room: String, gap: u64) -> Vec<Duration> {
    let mut times = Vec::with_capacity(victims.len());
    for (k, cookie) in victims.into_iter().enumerate() {
        let mut ws = open(port_b, &cookie, &format!("?room={victim_room}")).await;
        let hello = next_json(&mut ws).await.expect("hello");
        assert_eq!(hello["user"].as_str(), Some(format!("victim{k}").as_str()));
        let victim = tokio::spawn(async move {
            let how = until_closed(&mut ws).await;
            (Instant::now(), how)
        });
        // Its arrival (presence) settles first.
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let started = Instant::now();
        let response = tokio::task::spawn_blocking(move || post_form_as(port_a, "/logout", "", Some(&cookie)));
        let (closed_at, how) = tokio::time::timeout(Duration::from_secs(10), victim)
            .await
            .unwrap_or_else(|_| panic!("victim {k}'s socket was not closed within 10 s of its logout"))
            .unwrap();
        let response = response.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 303"), "logout answered: {response}");
        assert_eq!(how, "4401 logged out", "victim {k}'s socket");
        times.push(closed_at - started);
    }
    times
}
