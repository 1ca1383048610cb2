//! Holding under abuse: throttles that count concurrent attempts, per-user
//! and per-session limits, replay that cannot be made to hold memory,
//! honest answers to bad input and to a store that does not confirm, and a
//! shutdown that leaves no ghosts in presence.

use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

/// A form POST written by hand, so that many can be written on connections
/// opened beforehand and arrive together.
fn form_post(app: &TestApp, path: &str, body: &str, forwarded_for: Option<&str>) -> Vec<u8> {
    let xff = forwarded_for.map(|v| format!("X-Forwarded-For: {v}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{xff}Connection: close\r\n\r\n{body}",
        app.addr,
        body.len()
    )
    .into_bytes()
}

/// The status code of the response on `stream`.
async fn status_of(mut stream: TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = within("a response", stream.read(&mut buf)).await.expect("read");
        assert!(n > 0, "the connection closed without a response");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head)[9..12].parse().expect("a status code")
}

async fn pre_open(app: &TestApp, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_logins_are_a_thousand_attempts() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("LOGIN_MAX_FAILURES", "10")]).await;
    signed_up(&app, "alice").await;

    let wrong = form_post(&app, "/login", "username=alice&password=not+the+password", None);
    let mut streams = pre_open(&app, 999).await;
    for stream in &mut streams {
        stream.write_all(&wrong).await.expect("write");
    }
    let statuses: Vec<u16> = futures_util::future::join_all(streams.into_iter().map(status_of)).await;
    let verified = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((verified, refused), (10, 989), "only the allowed attempts reach the password check");

    // The right password now is attempt 1000, and is refused like the rest.
    let right = form_post(&app, "/login", &format!("username=alice&password={}", PASSWORD.replace(' ', "+")), None);
    let mut last = TcpStream::connect(app.addr).await.unwrap();
    last.write_all(&right).await.unwrap();
    assert_eq!(status_of(last).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_throttled_per_client() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("REGISTER_MAX_PER_ADDRESS", "3")]).await;
    for i in 0..3 {
        assert_redirect(&Browser::new().register(&app, &format!("user{i}"), PASSWORD).await, "/chat");
    }
    let res = Browser::new().register(&app, "user3", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(res.text().await.unwrap().contains(r#"id="form-error""#));
    // Nothing was created.
    assert_eq!(Browser::new().login(&app, "user3", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    // Concurrent registrations count each: 20 at once from one client.
    let other = TestApp::spawn_with(Some(&redis), &[("REGISTER_MAX_PER_ADDRESS", "5"), ("TRUSTED_PROXIES", "127.0.0.1")])
        .await;
    let mut streams = pre_open(&other, 20).await;
    for (i, stream) in streams.iter_mut().enumerate() {
        let body = format!("username=burst{i}&password=correct+horse+battery");
        stream.write_all(&form_post(&other, "/register", &body, Some("198.51.100.20"))).await.unwrap();
    }
    let statuses: Vec<u16> = futures_util::future::join_all(streams.into_iter().map(status_of)).await;
    assert_eq!(statuses.iter().filter(|s| **s == 303).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15, "{statuses:?}");
}

/// Fails logins for `name` from `forwarded_for` until refused; returns how
/// many 401s came first.
async fn failures_until_429(app: &TestApp, name: &str, forwarded_for: &str) -> usize {
    for failures in 0..20 {
        let stream = TcpStream::connect(app.addr).await.unwrap();
        let mut stream = stream;
        let post = form_post(app, "/login", &format!("username={name}&password=wrong+password"), Some(forwarded_for));
        stream.write_all(&post).await.unwrap();
        match status_of(stream).await {
            401 => continue,
            429 => return failures,
            other => panic!("unexpected {other}"),
        }
    }
    panic!("never throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_clients_are_counted_per_ipv6_slash_64_and_ports_do_not_hide_them() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("LOGIN_MAX_FAILURES", "2"), ("TRUSTED_PROXIES", "127.0.0.0/8")])
        .await;
    // Two addresses of one /64 are one client.
    assert_eq!(failures_until_429(&app, "alice", "2001:db8:1:2::1").await, 2);
    assert_eq!(failures_until_429(&app, "alice", "2001:db8:1:2::ffff").await, 0, "same /64, same budget");
    assert_eq!(failures_until_429(&app, "alice", "2001:db8:1:3::1").await, 2, "another /64");
    // `ip:port` and `[v6]:port` name the client, not the proxy: two clients
    // behind it keep their own budgets.
    assert_eq!(failures_until_429(&app, "bob", "198.51.100.1:4711").await, 2);
    assert_eq!(failures_until_429(&app, "bob", "198.51.100.2:4712").await, 2);
    assert_eq!(failures_until_429(&app, "bob", "[2001:db8:9::1]:443").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_fill_the_instance_with_sockets() {
    let redis = RedisServer::start();
    let caps = [("MAX_CONNECTIONS", "100"), ("MAX_SOCKETS_PER_USER", "5"), ("MAX_SOCKETS_PER_SESSION", "3")];
    let app = TestApp::spawn_with(Some(&redis), &caps).await;
    let laptop = signed_up(&app, "alice").await;
    let phone = Browser::new();
    assert_redirect(&phone.login(&app, "alice", PASSWORD).await, "/chat");

    // Twenty upgrades of one session at once: exactly the session's cap gets in.
    let opened = futures_util::future::join_all((0..20).map(|_| laptop.open_socket(&app, ""))).await;
    let (sockets, refused): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);
    assert_eq!(sockets.len(), 3);
    let refused: Vec<StatusCode> = refused.into_iter().filter_map(Result::err).collect();
    assert!(refused.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{refused:?}");
    // Another session of the same user: up to the user's cap.
    let (_p1, _) = phone.join(&app, "").await;
    let (_p2, _) = phone.join(&app, "").await;
    assert_eq!(phone.open_socket(&app, "").await.err(), Some(StatusCode::TOO_MANY_REQUESTS));
    // Everyone else is unaffected.
    let bob = signed_up(&app, "bob").await;
    bob.join(&app, "").await;
    // A closed socket frees its place.
    drop(sockets);
    let (laptop, app) = (&laptop, &app);
    eventually("a place to free up", || async move { laptop.open_socket(app, "").await.is_ok() }).await;
}
