//! `logout` and `revoke`: a socket's access ended through instance A, timed
//! from the request to the socket's close on instance B, among many idle
//! sockets on B. Both play on one `Stage`; they differ in the request that
//! ends the access and the close it must bring (`Ending`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{
    args::{arg, flag},
    http::{post_form_as, register, register_many, RoomApi},
    servers::{start_redis, start_servers, Kind, Process},
    sockets::{next_json, open, say, until_closed, Held, MARKER},
    stats::{ms, pct},
};

/// Two instances A and B on one Redis, with idle users and fresh victims
/// (one session, and user, each) registered on A.
struct Stage {
    port_a: u16,
    port_b: u16,
    /// The idle users' cookies: `idle{i}`.
    users: Vec<String>,
    /// The victims' cookies: `victim{k}`.
    victims: Vec<String>,
    // Dropped in this order: the instances, their Redis, its directory.
    _servers: Vec<(Process, u16)>,
    _redis: Process,
    _dir: TempDir,
}

/// Sends the request that ends victim k's access (its cookie given) on a
/// connection of its own; returns the whole response.
type EndRequest = dyn Fn(usize, &str) -> String + Send + Sync;

/// What ends a victim's access, sent to A.
struct Ending {
    /// The request, for messages: "its logout".
    what: &'static str,
    send: Arc<EndRequest>,
    /// The response's status line.
    status: &'static str,
    /// The victim's close: code and reason.
    close: &'static str,
}

impl Stage {
    async fn new(kind: Kind, users: usize, repeat: usize, extra: &[(&str, &str)]) -> Stage {
        let dir = tempfile::tempdir().unwrap();
        let (redis, redis_port) = start_redis(dir.path());
        let servers = start_servers(kind, redis_port, 2, extra);
        let (port_a, port_b) = (servers[0].1, servers[1].1);
        let users = register_many(kind, port_a, "idle", users).await;
        let victims = register_many(kind, port_a, "victim", repeat).await;
        Stage { port_a, port_b, users, victims, _servers: servers, _redis: redis, _dir: dir }
    }

    /// Opens `sockets` idle sockets on B, socket i as user i % users into
    /// `room(i)`; returns them once every one has its `hello` and 2 s more
    /// have let presence settle, with the time the opening took.
    async fn hold(&self, sockets: usize, room: impl Fn(usize) -> String) -> (Held, Duration) {
        let held = Held::open(
            (0..sockets)
                .map(|i| (self.port_b, self.users[i % self.users.len()].clone(), format!("?room={}", room(i))))
                .collect(),
        );
        let open_time = held.opened().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (held, open_time)
    }

    /// Each victim in turn opens one socket on B into `room`; `gap_ms`
    /// later (its arrival has settled) `ending` goes to A. Returns the times
    /// from sending it to the victim's close, sorted.
    fn time(&self, room: &str, gap_ms: u64, ending: Ending) -> Vec<Duration> {
        let (port_b, victims, room) = (self.port_b, self.victims.clone(), room.to_owned());
        // The victims are watched from a thread of their own, so the time
        // measured is the servers', not this process's work reading the
        // idle sockets' frames.
        let mut times = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(end_each(port_b, victims, room, gap_ms, ending))
        })
        .join()
        .expect("the victims' thread panicked");
        times.sort_unstable();
        times
    }
}

/// Ends each victim's access in turn and times its socket's close on B.
async fn end_each(port_b: u16, victims: Vec<String>, room: String, gap_ms: u64, ending: Ending) -> Vec<Duration> {
    let mut times = Vec::with_capacity(victims.len());
    for (k, cookie) in victims.into_iter().enumerate() {
        let mut ws = open(port_b, &cookie, &format!("?room={room}")).await;
        let hello = next_json(&mut ws).await.expect("hello");
        let name = format!("victim{k}");
        assert_eq!((hello["user"].as_str(), hello["room"].as_str()), (Some(name.as_str()), Some(room.as_str())));
        let victim = tokio::spawn(async move {
            let how = until_closed(&mut ws).await;
            (Instant::now(), how)
        });
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
        let send = ending.send.clone();
        let started = Instant::now();
        let response = tokio::task::spawn_blocking(move || send(k, &cookie));
        let (closed_at, how) = tokio::time::timeout(Duration::from_secs(10), victim)
            .await
            .unwrap_or_else(|_| panic!("victim {k}'s socket was not closed within 10 s of {}", ending.what))
            .unwrap();
        let response = response.await.unwrap();
        assert!(response.starts_with(ending.status), "{} answered: {response}", ending.what);
        assert_eq!(how, ending.close, "victim {k}'s socket");
        times.push(closed_at - started);
    }
    times
}

/// Checks that the server closed none of `held`.
async fn assert_none_closed(held: Held) {
    let closed = held.closed();
    let why = held.report().await;
    assert_eq!(closed, 0, "{closed} of the other sockets were closed: {why:?}");
}

/// Sorted times at p50, p90, p99 and max, and the slowest five.
fn times_line(times: &[Duration]) -> String {
    let slowest = times.iter().rev().take(5).map(|t| format!("{:.1}", ms(*t))).collect::<Vec<_>>().join(", ");
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (slowest five: {slowest})",
        ms(pct(times, 0.50)),
        ms(pct(times, 0.90)),
        ms(pct(times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
    )
}

/// `logout`: the time from `POST /logout` on instance A to the victim's
/// 4401 on instance B, among `--sockets` idle sockets on B.
pub(crate) async fn logout(kind: Kind, args: &[String]) {
    assert_ne!(kind, Kind::Bare, "the bare server has no sessions to log out");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let repeat: usize = arg(args, "--repeat", 50);
    let gap: u64 = arg(args, "--gap-ms", 500);
    let same_room = flag(args, "--same-room");
    let stage = Stage::new(kind, users, repeat, &[]).await;
    let victim_room = if same_room { "big" } else { "victims" };
    let (held, open_time) =
        stage.hold(sockets, |i| if same_room { victim_room.to_owned() } else { format!("r{}", i % 100) }).await;
    let port_a = stage.port_a;
    let times = stage.time(
        victim_room,
        gap,
        Ending {
            what: "its logout",
            send: Arc::new(move |_, cookie| post_form_as(port_a, "/logout", "", Some(cookie))),
            status: "HTTP/1.1 303",
            close: "4401 logged out",
        },
    );
    assert_none_closed(held).await;
    println!(
        "logout ({}): {sockets} idle sockets on B ({}, {users} users, opened in {open_time:.1?}); POST /logout on A -> \
         4401 `logged out` on B, {repeat} fresh victims: {}; \
         every victim got 4401 `logged out`, no other socket closed (target with 10,000 in the same room: p99 at most 10 ms)",
        kind.name(),
        if same_room { "all in the victims' room" } else { "in 100 other rooms" },
        times_line(&times),
    );
}

/// The private room `revoke` plays in.
const PRIVATE_ROOM: &str = "vault";

/// `revoke` (palaver): the time from the owner's `DELETE
/// /api/rooms/{room}/members/{victim}` on instance A to the victim's 4403
/// on instance B, among `--sockets` idle sockets on B in the same private
/// room; then a message said on A after the removals must reach every one
/// of them.
pub(crate) async fn revoke(kind: Kind, args: &[String]) {
    assert_eq!(kind, Kind::Palaver, "revoke measures palaver's private rooms; the peers have none");
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let repeat: usize = arg(args, "--repeat", 50);
    let gap: u64 = arg(args, "--gap-ms", 500);
    // The owner, the idle users and the victims are all members.
    let members = 1 + users + repeat;
    let max_members = members.max(1000).to_string();
    let stage = Stage::new(kind, users, repeat, &[("MAX_ROOM_MEMBERS", &max_members)]).await;
    let owner = register(stage.port_a, "owner");
    let api = RoomApi::sign_in(stage.port_a, "owner");
    api.create_private(PRIVATE_ROOM);
    let names = (0..users).map(|i| format!("idle{i}")).chain((0..repeat).map(|k| format!("victim{k}"))).collect();
    let added_in = api.add_members(PRIVATE_ROOM, names).await;
    let (held, open_time) = stage.hold(sockets, |_| PRIVATE_ROOM.to_owned()).await;
    let times = stage.time(
        PRIVATE_ROOM,
        gap,
        Ending {
            what: "its removal",
            send: Arc::new(move |k, _| api.remove_member(PRIVATE_ROOM, &format!("victim{k}"))),
            status: "HTTP/1.1 204",
            close: "4403 access revoked",
        },
    );
    // The removals took exactly the victims away: every other socket still
    // gets what is said in the room, across the instances.
    say(stage.port_a, &owner, PRIVATE_ROOM, MARKER).await;
    let heard = held.heard(Duration::from_secs(10)).await;
    assert_none_closed(held).await;
    assert_eq!(
        heard,
        sockets,
        "{} of the other sockets did not get the message said after the removals",
        sockets - heard
    );
    println!(
        "revoke (palaver): {sockets} idle sockets on B (all in the victims' private room, {users} users, {members} \
         members added in {added_in:.1?}, opened in {open_time:.1?}); DELETE /api/rooms/{PRIVATE_ROOM}/members/<victim> \
         by the owner on A -> 4403 `access revoked` on B, {repeat} fresh victims: {}; \
         every victim got 4403 `access revoked`, no other socket closed, all {sockets} got a message said on A after \
         the removals (target: p99 at most 10 ms, as logout's)",
        times_line(&times),
    );
}
