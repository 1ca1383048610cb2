//! `handshakes`: authenticated upgrades per second, each checked.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
    MaybeTlsStream,
};

use crate::{
    args::arg,
    http::{bearer, register},
    servers::{servers, start_redis, start_servers, Kind},
    sockets::{next_json, NEXT_SOURCE},
};

/// Upgrades per second with one kind of credential (or none); checks every
/// `hello` names `user`.
async fn handshake_rate(
    port: u16,
    header: Option<(&'static str, String)>,
    user: &'static str,
    concurrency: usize,
    seconds: u64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (done, header) = (done.clone(), header.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request().unwrap();
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
                assert_eq!((hello["type"].as_str(), hello["user"].as_str()), (Some("hello"), Some(user)));
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
/// server in one run, palaver's rates as a share of the bare one.
pub(crate) async fn handshakes(args: &[String]) {
    let concurrency: usize = arg(args, "--concurrency", 32);
    let seconds: u64 = arg(args, "--seconds", 5);
    let (mut palaver, mut bare) = (None, None);
    for kind in servers(args) {
        let dir = tempfile::tempdir().unwrap();
        let (_redis, redis_port) = start_redis(dir.path());
        let servers = start_servers(kind, redis_port, 1, &[("ACCESS_TOKEN_TTL_SECS", "3600")]);
        let port = servers[0].1;
        match kind {
            Kind::Palaver => {
                let cookie = register(port, "shaker");
                let bearer = bearer(port, "shaker");
                let cookie_rate = handshake_rate(port, Some(("cookie", cookie)), "shaker", concurrency, seconds).await;
                let token_rate =
                    handshake_rate(port, Some(("authorization", bearer)), "shaker", concurrency, seconds).await;
                println!(
                    "handshakes (palaver), {concurrency} concurrent, {seconds} s each: cookie {cookie_rate:.0}/s, \
                     access token {token_rate:.0}/s (each read its hello as the right user)"
                );
                palaver = Some((cookie_rate, token_rate));
            }
            Kind::Node => {
                let cookie = register(port, "shaker");
                let rate = handshake_rate(port, Some(("cookie", cookie)), "shaker", concurrency, seconds).await;
                println!(
                    "handshakes (node peer), {concurrency} concurrent, {seconds} s: session cookie {rate:.0}/s \
                     (each read its hello as the right user)"
                );
            }
            Kind::Bare => {
                let rate = handshake_rate(port, None, "anonymous", concurrency, seconds).await;
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
            "palaver against the bare ceiling: cookie {:.0} %, access token {:.0} % (target: at least 60 %)",
            100.0 * cookie / bare,
            100.0 * token / bare
        );
    }
}
