//! `handshakes`: authenticated upgrades per second, each checked; palaver's
//! into its default room, or (`--room-kind`) into a public and a private
//! room in turn.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream,
};

use crate::{
    args::arg,
    http::{bearer, register, RoomApi},
    servers::{servers, start_redis, start_servers, Kind, Process},
    sockets::{next_json, open, NEXT_SOURCE},
};

/// Where palaver's handshakes go (`--room-kind public,private`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum RoomKind {
    /// No `room` in the query, so the lobby: the scenario without the flag.
    Default,
    /// A public room other than the lobby (the first upgrade opens it).
    Public,
    /// A private room the user owns (created before the clock starts).
    Private,
}

impl RoomKind {
    /// `--room-kind a,b`: the kinds to measure in turn (the default room
    /// without the flag).
    fn list(args: &[String]) -> Vec<RoomKind> {
        let Some(list) = args.iter().position(|a| a == "--room-kind").map(|i| &args[i + 1]) else {
            return vec![RoomKind::Default];
        };
        list.split(',')
            .map(|kind| match kind {
                "public" => RoomKind::Public,
                "private" => RoomKind::Private,
                other => panic!("unknown --room-kind {other}: public or private"),
            })
            .collect()
    }

    /// The room its `hello` must name.
    fn room(self) -> &'static str {
        match self {
            RoomKind::Default => "lobby",
            RoomKind::Public => "plaza",
            RoomKind::Private => "vault",
        }
    }

    fn query(self) -> String {
        match self {
            RoomKind::Default => String::new(),
            other => format!("?room={}", other.room()),
        }
    }
}

/// One server of a kind on a fresh Redis, its access tokens lasting the
/// run. Fields drop in order: the server, then the store, then its folder.
struct Alone {
    _servers: Vec<(Process, u16)>,
    _redis: Process,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Alone {
    fn start(kind: Kind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (redis, redis_port) = start_redis(dir.path());
        let servers = start_servers(kind, redis_port, 1, &[("ACCESS_TOKEN_TTL_SECS", "3600")]);
        let port = servers[0].1;
        Self { _servers: servers, _redis: redis, _dir: dir, port }
    }
}

/// Upgrades per second with one kind of credential (or none) into `into`;
/// checks every `hello` names `user` and the room.
async fn handshake_rate(
    port: u16,
    header: Option<(&'static str, String)>,
    user: &'static str,
    into: RoomKind,
    concurrency: usize,
    seconds: u64,
) -> f64 {
    let clients = vec![(header, user.to_owned()); concurrency];
    clients_rate(port, clients, into, seconds).await
}

/// Upgrades per second of clients that each reconnect again and again with
/// their own credential (or none) as their own user, checking every `hello`.
async fn clients_rate(
    port: u16,
    clients: Vec<(Option<(&'static str, String)>, String)>,
    into: RoomKind,
    seconds: u64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (header, user) in clients {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut request = format!("ws://127.0.0.1:{port}/ws{}", into.query()).into_client_request().unwrap();
                if let Some((name, value)) = &header {
                    request.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
                }
                let source =
                    std::net::Ipv4Addr::new(127, 0, 0, 1 + (NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16) as u8);
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
                let (mut ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                    .await
                    .expect("the upgrade is accepted");
                let hello = next_json(&mut ws).await.expect("hello");
                assert_eq!(
                    (hello["type"].as_str(), hello["user"].as_str(), hello["room"].as_str()),
                    (Some("hello"), Some(user.as_str()), Some(into.room()))
                );
                let _ = ws.close(None).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// `handshakes` for every `--server`, in turn; with palaver and the bare
/// server in one run, palaver's rates (its first room kind's) as a share of
/// the bare one; with a public and a private room, the private rates as a
/// share of the public ones. `--room-kind` applies to palaver: the peers
/// have no private rooms, and their handshakes go to their default room.
pub(crate) async fn handshakes(args: &[String]) {
    let concurrency: usize = arg(args, "--concurrency", 32);
    let seconds: u64 = arg(args, "--seconds", 5);
    let room_kinds = RoomKind::list(args);
    let (mut palaver, mut bare) = (None, None);
    for kind in servers(args) {
        let alone = Alone::start(kind);
        let port = alone.port;
        match kind {
            Kind::Palaver => {
                let cookie = register(port, "shaker");
                let bearer = bearer(port, "shaker");
                if room_kinds.contains(&RoomKind::Private) {
                    RoomApi::sign_in(port, "shaker").create_private(RoomKind::Private.room());
                }
                let mut rates = Vec::new();
                for &into in &room_kinds {
                    let cookie_rate =
                        handshake_rate(port, Some(("cookie", cookie.clone())), "shaker", into, concurrency, seconds)
                            .await;
                    let token_rate = handshake_rate(
                        port,
                        Some(("authorization", bearer.clone())),
                        "shaker",
                        into,
                        concurrency,
                        seconds,
                    )
                    .await;
                    match into {
                        RoomKind::Default => println!(
                            "handshakes (palaver), {concurrency} concurrent, {seconds} s each: cookie {cookie_rate:.0}/s, \
                             access token {token_rate:.0}/s (each read its hello as the right user)"
                        ),
                        _ => println!(
                            "handshakes (palaver, {} room `{}`), {concurrency} concurrent, {seconds} s each: \
                             cookie {cookie_rate:.0}/s, access token {token_rate:.0}/s (each read its hello as the \
                             right user in the right room)",
                            if into == RoomKind::Private { "private" } else { "public" },
                            into.room()
                        ),
                    }
                    rates.push((into, cookie_rate, token_rate));
                }
                palaver = rates.first().map(|&(_, cookie, token)| (cookie, token));
                let rates_of = |kind| rates.iter().find(|(into, ..)| *into == kind).map(|&(_, c, t)| (c, t));
                if let (Some((public_cookie, public_token)), Some((private_cookie, private_token))) =
                    (rates_of(RoomKind::Public), rates_of(RoomKind::Private))
                {
                    println!(
                        "palaver, private room against public room: cookie {:.0} %, access token {:.0} % \
                         (target: at least 90 %)",
                        100.0 * private_cookie / public_cookie,
                        100.0 * private_token / public_token
                    );
                }
            }
            Kind::Node => {
                let cookie = register(port, "shaker");
                let rate =
                    handshake_rate(port, Some(("cookie", cookie)), "shaker", RoomKind::Default, concurrency, seconds)
                        .await;
                println!(
                    "handshakes (node peer), {concurrency} concurrent, {seconds} s: session cookie {rate:.0}/s \
                     (each read its hello as the right user)"
                );
            }
            Kind::Bare => {
                let rate = handshake_rate(port, None, "anonymous", RoomKind::Default, concurrency, seconds).await;
                println!(
                    "handshakes (bare server), {concurrency} concurrent, {seconds} s: no credential {rate:.0}/s \
                     (each read its hello)"
                );
                bare = Some(rate);
            }
        }
    }
    if let (Some((cookie, token)), Some(bare)) = (palaver, bare) {
        println!(
            "palaver against the bare ceiling: cookie {:.0} %, access token {:.0} % (target: at least 75 % with a cookie, 70 % with a token)",
            100.0 * cookie / bare,
            100.0 * token / bare
        );
    }
}

/// `churn`: `--clients` users (32), each reconnecting again and again into
/// one room, the way a flapping network looks: palaver's public room with
/// presence on (each join and leave is a presence change the others in the
/// room are sent), with a cookie and then with an access token; the peers
/// into their room. Every `hello` is checked for its user and room.
pub(crate) async fn churn(args: &[String]) {
    let clients: usize = arg(args, "--clients", 32);
    let seconds: u64 = arg(args, "--seconds", 10);
    let (mut palaver, mut bare) = (None, None);
    for kind in servers(args) {
        let alone = Alone::start(kind);
        let port = alone.port;
        let names: Vec<String> = (0..clients).map(|i| format!("flap{i}")).collect();
        match kind {
            Kind::Palaver => {
                let cookies: Vec<_> = names.iter().map(|n| (Some(("cookie", register(port, n))), n.clone())).collect();
                let tokens = names.iter().map(|n| (Some(("authorization", bearer(port, n))), n.clone())).collect();
                // A room people come back to has been said something in:
                // it exists (a free name is read from the store at every
                // upgrade, as nothing announces that it came to exist).
                let first = cookies[0].0.as_ref().expect("a cookie").1.clone();
                let mut ws = open(port, &first, &RoomKind::Public.query()).await;
                next_json(&mut ws).await.expect("hello");
                ws.send(Message::Text(r#"{"type":"send","body":"welcome","client_id":"w"}"#.into())).await.unwrap();
                while next_json(&mut ws).await.expect("an ack")["type"] != "ack" {}
                drop(ws);
                let cookie = clients_rate(port, cookies, RoomKind::Public, seconds).await;
                let token = clients_rate(port, tokens, RoomKind::Public, seconds).await;
                println!(
                    "churn (palaver), {clients} users reconnecting into public room `plaza` (presence on, one message in it), {seconds} s \
                     each: cookie {cookie:.0}/s, access token {token:.0}/s (each read its hello as its user)"
                );
                palaver = Some((cookie, token));
            }
            Kind::Node => {
                let cookies = names.iter().map(|n| (Some(("cookie", register(port, n))), n.clone())).collect();
                let rate = clients_rate(port, cookies, RoomKind::Default, seconds).await;
                println!(
                    "churn (node peer), {clients} users reconnecting into one room, {seconds} s: session cookie \
                     {rate:.0}/s (each read its hello as its user)"
                );
            }
            Kind::Bare => {
                let anonymous = (0..clients).map(|_| (None, "anonymous".to_owned())).collect();
                let rate = clients_rate(port, anonymous, RoomKind::Default, seconds).await;
                println!(
                    "churn (bare server), {clients} clients reconnecting into one room, {seconds} s: no credential \
                     {rate:.0}/s (each read its hello)"
                );
                bare = Some(rate);
            }
        }
    }
    if let (Some((cookie, token)), Some(bare)) = (palaver, bare) {
        println!(
            "churn, palaver against the bare ceiling: cookie {:.0} %, access token {:.0} % (target: at least 75 % \
             with a cookie, 70 % with a token)",
            100.0 * cookie / bare,
            100.0 * token / bare
        );
    }
}
