//! Holding under abuse: throttles that count concurrent attempts, per-user
//! and per-session limits, replay that cannot be made to hold memory,
//! honest answers to bad input and to a store that does not confirm, and a
//! shutdown that leaves no ghosts in presence.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
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
async fn failed_registrations_are_throttled_per_client_and_successful_ones_forgiven() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("REGISTER_MAX_PER_ADDRESS", "3")]).await;
    // Successes are forgiven, as a login is: more accounts than the budget.
    for i in 0..5 {
        assert_redirect(&Browser::new().register(&app, &format!("user{i}"), PASSWORD).await, "/chat");
    }
    for _ in 0..3 {
        assert_eq!(Browser::new().register(&app, "user0", PASSWORD).await.status(), StatusCode::CONFLICT);
    }
    let res = Browser::new().register(&app, "user5", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(res.text().await.unwrap().contains(r#"id="form-error""#));
    // Nothing was created.
    assert_eq!(Browser::new().login(&app, "user5", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    // Concurrent attempts count each, before any is decided: 20 at once
    // from one client, each for a name taken.
    let other =
        TestApp::spawn_with(Some(&redis), &[("REGISTER_MAX_PER_ADDRESS", "5"), ("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let mut streams = pre_open(&other, 20).await;
    for stream in streams.iter_mut() {
        let body = "username=user0&password=correct+horse+battery";
        stream.write_all(&form_post(&other, "/register", body, Some("198.51.100.20"))).await.unwrap();
    }
    let statuses: Vec<u16> = futures_util::future::join_all(streams.into_iter().map(status_of)).await;
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 5, "{statuses:?}");
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
    let app =
        TestApp::spawn_with(Some(&redis), &[("LOGIN_MAX_FAILURES", "2"), ("TRUSTED_PROXIES", "127.0.0.0/8")]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_spreading_over_sockets_is_held_to_their_own_rate() {
    let redis = RedisServer::start();
    let limits = [
        ("USER_MESSAGE_RATE_PER_SEC", "0.5"),
        ("USER_MESSAGE_BURST", "4"),
        ("MESSAGE_RATE_PER_SEC", "1000"),
        ("MESSAGE_BURST", "1000"),
    ];
    let (a, b) = (TestApp::spawn_with(Some(&redis), &limits).await, TestApp::spawn_with(Some(&redis), &limits).await);
    let alice = signed_up(&a, "alice").await;
    let mut sockets = Vec::new();
    for app in [&a, &b, &a, &b, &a] {
        sockets.push(alice.join(app, "").await.0);
    }
    // Five sockets on two instances, four messages each, all at once.
    for (s, socket) in sockets.iter_mut().enumerate() {
        for i in 0..4 {
            socket
                .send_json(json!({"type": "send", "body": format!("{s}.{i}"), "client_id": format!("{s}-{i}")}))
                .await;
        }
    }
    let (mut acked, mut limited) = (0, 0);
    for socket in &mut sockets {
        for _ in 0..4 {
            match socket.next_of_any(&["ack", "error"]).await {
                v if v["type"] == "ack" => acked += 1,
                v => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    assert!(v["client_id"].as_str().is_some(), "names the refused message: {v}");
                    limited += 1;
                }
            }
        }
    }
    assert_eq!((acked, limited), (4, 16), "the user's burst, across every socket and instance");
    assert_eq!(redis.command(&["XLEN", &room_key("lobby", "messages")]).unwrap().trim(), ":4");
    // Someone else is not held back by alice.
    let bob = signed_up(&b, "bob").await;
    let (mut bobs, _) = bob.join(&b, "").await;
    bobs.say("me too", "b1").await;
}

/// A user's rate of two messages, then one every ten seconds; the socket's
/// own rate out of the way.
const ONLY_THE_USERS_RATE: [(&str, &str); 4] = [
    ("USER_MESSAGE_RATE_PER_SEC", "0.1"),
    ("USER_MESSAGE_BURST", "2"),
    ("MESSAGE_RATE_PER_SEC", "1000"),
    ("MESSAGE_BURST", "1000"),
];

#[tokio::test]
async fn flooding_past_the_users_rate_ends_the_socket_like_flooding_past_its_own() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &ONLY_THE_USERS_RATE).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    for i in 0..20 {
        socket.send_json(json!({"type": "send", "body": format!("m{i}"), "client_id": format!("c{i}")})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    let close = loop {
        match socket.next_frame().await {
            Frame::Json(v) if v["type"] == "ack" => acks += 1,
            Frame::Json(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                limited += 1;
            }
            Frame::Json(_) => {}
            Frame::Close(code, reason) => break (code, reason),
            Frame::Ended => panic!("ended without a close frame"),
        }
    };
    assert_eq!((acks, limited, close), (2, 10, (1008, "policy violation".to_string())));
}

#[tokio::test]
async fn an_accepted_frame_ends_a_run_of_refusals() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &ONLY_THE_USERS_RATE).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    socket.say("first", "c0").await;
    socket.say("second", "c1").await;
    let refused_run =
        |from: usize| (from..from + 10).map(|i| json!({"type": "send", "body": "more", "client_id": format!("c{i}")}));
    for frame in refused_run(2) {
        socket.send_json(frame).await;
        assert_eq!(socket.next_of_any(&["ack", "error"]).await["code"], "rate_limited");
    }
    // A resend of a stored message is acknowledged: accepted, so the run
    // of ten refusals is over and ten more are answered, not closed.
    assert_eq!(socket.say("first", "c0").await["type"], "ack");
    for frame in refused_run(12) {
        socket.send_json(frame).await;
        assert_eq!(socket.next_of_any(&["ack", "error"]).await["code"], "rate_limited");
    }
    socket.send_json(json!({"type": "send", "body": "one too many", "client_id": "c22"})).await;
    assert_eq!(socket.closed().await, (1008, "policy violation".to_string()));
}

#[tokio::test]
async fn opening_new_rooms_is_a_quota_and_the_sidebar_lists_my_rooms_only() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("ROOMS_PER_USER_PER_HOUR", "2")]).await;
    let alice = signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    assert_eq!(alice.get(&app, "/chat/first").await.status(), StatusCode::OK);
    assert_eq!(alice.get(&app, "/chat/second").await.status(), StatusCode::OK);
    let refused = alice.get(&app, "/chat/third").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(redis.command(&["EXISTS", &room_key("third", "active")]).unwrap().trim(), ":0", "not created");
    // Rooms that exist cost nothing to visit, and lobby is always there.
    assert_eq!(alice.get(&app, "/chat/first").await.status(), StatusCode::OK);
    assert_eq!(alice.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    // Bob has his own quota; visiting alice's room is free for him.
    assert_eq!(bob.get(&app, "/chat/first").await.status(), StatusCode::OK);
    assert_eq!(bob.get(&app, "/chat/bobs").await.status(), StatusCode::OK);

    // The sidebar lists the rooms each opened, most recent first.
    let sidebar = |html: &str| -> Vec<String> {
        html.split(r#"href="/chat/"#).skip(1).map(|s| s.split('"').next().unwrap().to_owned()).collect()
    };
    let bobs = sidebar(&bob.get(&app, "/chat/lobby").await.text().await.unwrap());
    assert!(bobs.starts_with(&["lobby".to_string(), "bobs".into(), "first".into()]), "{bobs:?}");
    assert!(!bobs.contains(&"second".to_string()), "alice's rooms are not bob's: {bobs:?}");
    // Streams live as long as their room is used.
    let (mut socket, _) = alice.join(&app, "?room=first").await;
    socket.say("keeps it alive", "k1").await;
    let ttl: i64 = redis.command(&["PTTL", &room_key("first", "messages")]).unwrap().trim()[1..].parse().unwrap();
    assert!(ttl > 0 && ttl <= 30 * 24 * 3600 * 1000, "{ttl}");
}

#[tokio::test]
async fn a_room_nobody_uses_expires() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("ROOM_TTL_SECS", "1"), ("ROOMS_PER_USER_PER_HOUR", "5")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "?room=brief").await;
    socket.say("soon forgotten", "b1").await;
    drop(socket);
    let redis_ref = &redis;
    eventually("the unused room's stream to expire", || async move {
        redis_ref.command(&["EXISTS", &room_key("brief", "messages")]).unwrap().starts_with(":0")
    })
    .await;
    let lobby = alice.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(!lobby.contains(r#"href="/chat/brief""#), "gone from the sidebar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_store_does_not_confirm_says_so_and_its_resend_is_stored_once() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    // Redis hangs (writes paused) past the command timeout, then goes on.
    // Whether the first attempt lands later depends on whether its
    // connection survived; either way the outcome is unknown to palaver.
    assert!(redis.command(&["CLIENT", "PAUSE", "4000", "WRITE"]).unwrap().starts_with("+OK"));
    socket.send_json(json!({"type": "send", "body": "did it arrive?"})).await;
    let error = socket.next_of("error").await;
    assert_eq!(error["code"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("may or may not"), "{error}");
    let assigned = error["client_id"].as_str().expect("a client_id to resend with").to_owned();
    let redis_ref = &redis;
    eventually("writes to resume", || async move {
        redis_ref.command(&["SET", "probe", "1"]).is_some_and(|r| r.starts_with("+OK"))
    })
    .await;
    // The resend settles it: acknowledged with the stored id, not stored twice.
    let ack = socket.say("did it arrive?", &assigned).await;
    let stored = socket.next_of("message").await;
    assert_eq!(stored["id"], ack["id"]);
    assert_eq!(redis.command(&["XLEN", &room_key("lobby", "messages")]).unwrap().trim(), ":1");

    // Without trouble, a send without client_id is acknowledged with the one
    // the server assigned, and others do not see it.
    socket.send_json(json!({"type": "send", "body": "plain"})).await;
    let ack = socket.next_of("ack").await;
    assert!(ack["client_id"].as_str().is_some_and(|c| !c.is_empty()), "{ack}");
    let message = socket.next_of("message").await;
    assert_eq!(message["id"], ack["id"]);
    assert!(message.get("client_id").is_none(), "a server-assigned id is not shown to others: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_beyond_the_newest_message_replays_nothing_and_goes_on_live() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut talker, _) = alice.join(&app, "").await;
    talker.say("before", "b0").await;
    for after in ["99999999999999-0", "18446744073709551615-18446744073709551615"] {
        let (mut socket, _) = alice.join(&app, &format!("?after={after}")).await;
        let ack = talker.say(&format!("live after {after}"), &format!("l-{after}")).await;
        let live = socket.next_of("message").await;
        assert_eq!(live["id"], ack["id"], "after={after}: the next live message, nothing replayed");
    }
}

/// Completes a WebSocket handshake by hand and returns the raw stream.
async fn raw_socket(app: &TestApp, browser: &Browser) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {}\r\n\r\n",
        app.addr,
        browser.cookie_header(app).unwrap()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Reads server frames until a close frame; returns its code.
async fn close_code(stream: &mut TcpStream) -> u16 {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    within("a close frame", async {
        loop {
            // Skip the 101 response, then walk the (unmasked) frames.
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let mut at = end + 4;
                while at + 2 <= data.len() {
                    let (opcode, len) = (data[at] & 0x0f, (data[at + 1] & 0x7f) as usize);
                    let (len, header) = match len {
                        126 if at + 4 <= data.len() => (u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize, 4),
                        126 => break,
                        len => (len, 2),
                    };
                    if at + header + len > data.len() {
                        break;
                    }
                    if opcode == 0x8 {
                        return u16::from_be_bytes([data[at + header], data[at + header + 1]]);
                    }
                    at += header + len;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended without a close frame");
            data.extend_from_slice(&buf[..n]);
        }
    })
    .await
}

#[tokio::test]
async fn websocket_protocol_errors_close_with_1002_or_1007() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let mask = [1u8, 2, 3, 4];
    let masked = |first: u8, payload: &[u8]| {
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    };
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("invalid UTF-8 in a text frame", masked(0x81, &[0xff, 0xfe, 0xfd]), 1007),
        ("an unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("a reserved opcode", masked(0x83, b"x"), 1002),
    ];
    for (what, frame, code) in cases {
        let mut stream = raw_socket(&app, &alice).await;
        stream.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut stream).await, code, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_removes_its_users_from_presence_everywhere_at_once() {
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    let b = TestApp::spawn(&redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let (_bobs, _) = bob.join(&b, "").await;
    alices.presence_until(&["alice", "bob"]).await;
    b.shutdown().await.expect("graceful shutdown");
    // Well before the entries' own expiry (PRESENCE_TTL_SECS, 45 s).
    let gone = within_for(Duration::from_secs(3), "bob to leave alice's presence", alices.presence_until(&["alice"]));
    gone.await;
}
