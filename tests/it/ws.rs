//! `GET /ws` (docs/protocol.md §3): who may open a socket, what it is told first, and
//! the per-socket limits (frame size, liveness, the connection cap).

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

use crate::helpers::*;

#[tokio::test]
async fn an_upgrade_without_a_cookie_is_refused_with_401() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    assert_eq!(Browser::new().open_socket(&app, "").await.err(), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn an_upgrade_with_an_unknown_or_ended_session_is_refused_with_401() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let forged = Browser::new();
    forged.set_session_id(&app, "AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(forged.open_socket(&app, "").await.err(), Some(StatusCode::UNAUTHORIZED));
    let garbage = Browser::new();
    garbage.set_session_id(&app, "not-an-id");
    assert_eq!(garbage.open_socket(&app, "").await.err(), Some(StatusCode::UNAUTHORIZED));

    let alice = signed_up(&app, "alice").await;
    let id = alice.session_id(&app).unwrap();
    alice.logout(&app).await;
    let replay = Browser::new();
    replay.set_session_id(&app, &id);
    assert_eq!(replay.open_socket(&app, "").await.err(), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn an_upgrade_from_a_foreign_origin_is_refused_with_403() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let mut request = app.ws_url("").into_client_request().unwrap();
    let cookie = alice.cookie_header(&app).unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_static("https://evil.example"));
    assert_eq!(connect(request).await.err(), Some(StatusCode::FORBIDDEN));
    // Scripts send no Origin at all and pass.
    let mut request = app.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    assert!(connect(request).await.is_ok());
}

#[tokio::test]
async fn an_upgrade_with_a_bad_room_after_or_unread_is_refused_with_400() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    for query in
        ["?room=Lobby", "?room=", "?room=a%20b", "?room=x_y", "?after=yesterday", "?after=1-2-3", "?unread=yes"]
    {
        assert_eq!(alice.open_socket(&app, query).await.err(), Some(StatusCode::BAD_REQUEST), "{query}");
    }
    assert!(alice.open_socket(&app, "?room=rust-lang&after=0-0").await.is_ok());
    assert!(alice.open_socket(&app, "?room=rust-lang&unread=1").await.is_ok());
}

#[tokio::test]
async fn a_plain_get_is_not_upgraded() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    assert_eq!(alice.get(&app, "/ws").await.status(), StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test]
async fn hello_comes_first_with_the_user_the_room_and_the_sessions_real_expiry() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let mut socket = alice.open_socket(&app, "?room=rust-lang").await.unwrap();
    let Frame::Json(hello) = socket.next_frame().await else { panic!("hello first") };
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["user"], "alice");
    assert_eq!(hello["room"], "rust-lang");
    // The store expires the session exactly then (the upgrade slid it).
    let id = alice.session_id(&app).unwrap();
    let expiry = redis.command(&["PEXPIRETIME", &id]).unwrap();
    assert_eq!(expiry.trim(), format!(":{}", hello["expires_at"]));
    let presence = socket.next_of("presence").await;
    assert_eq!(presence["room"], "rust-lang");
    assert_eq!(presence["online"], serde_json::json!(["alice"]));
    assert_eq!(presence["count"], 1);
}

#[tokio::test]
async fn hello_announces_the_pace_to_send_at_the_lower_of_the_sockets_and_the_users() {
    let redis = RedisServer::start();
    for (vars, want) in [
        (vec![], serde_json::json!({"per_sec": 10.0, "burst": 20})),
        (
            vec![("USER_MESSAGE_RATE_PER_SEC", "2.5"), ("USER_MESSAGE_BURST", "5")],
            serde_json::json!({"per_sec": 2.5, "burst": 5}),
        ),
        (
            vec![("MESSAGE_RATE_PER_SEC", "3"), ("USER_MESSAGE_BURST", "8")],
            serde_json::json!({"per_sec": 3.0, "burst": 8}),
        ),
    ] {
        let app = TestApp::spawn_with(Some(&redis), &vars).await;
        let alice = Browser::new();
        let res = alice.register(&app, &format!("alice{}", app.addr.port()), PASSWORD).await;
        assert_eq!(res.status(), reqwest::StatusCode::SEE_OTHER);
        let (_socket, hello) = alice.join(&app, "").await;
        assert_eq!(hello["rate"], want, "with {vars:?}");
    }
}

#[tokio::test]
async fn the_upgrade_slides_the_session() {
    let redis = RedisServer::start();
    // A 20 s TTL slides in steps of a second.
    let app = TestApp::spawn_with(Some(&redis), &[("SESSION_TTL_SECS", "20"), ("REAUTH_WARNING_SECS", "5")]).await;
    let alice = signed_up(&app, "alice").await;
    let id = alice.session_id(&app).unwrap();
    let before: i64 = redis.command(&["PEXPIRETIME", &id]).unwrap().trim()[1..].parse().unwrap();
    let expected_later = before + 1000;
    let redis_ref = &redis;
    let id_ref = &id;
    let app_ref = &app;
    let alice_ref = &alice;
    // Expiry has whole-second precision: upgrade until a second has passed.
    eventually("an upgrade to move the expiry", || async move {
        let (_socket, hello) = alice_ref.join(app_ref, "").await;
        let now: i64 = redis_ref.command(&["PEXPIRETIME", id_ref]).unwrap().trim()[1..].parse().unwrap();
        assert_eq!(now, hello["expires_at"].as_i64().unwrap());
        now >= expected_later
    })
    .await;
}

/// How many times Redis has run `command` so far.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]).unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_upgrade_into_a_followed_room_is_one_store_read() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    // The room is followed here, and the session was just written.
    let (_first, _) = alice.join(&app, "").await;
    let counted = ["get", "set", "xrevrange", "xadd", "evalsha", "eval", "publish", "hgetall"];
    let before: Vec<u64> = counted.iter().map(|c| calls(&redis, c)).collect();
    let (mut second, _) = alice.join(&app, "").await;
    second.next_of("presence").await;
    let after: Vec<u64> = counted.iter().map(|c| calls(&redis, c)).collect();
    let spent: Vec<(&str, u64)> =
        counted.iter().zip(before.iter().zip(&after)).map(|(c, (b, a))| (*c, a - b)).collect();
    // One GET of the session: no rewrite, no room lookup, no tail wake-up,
    // no presence read. (The socket's arrival costs presence one batched
    // write by the presence task, and its event, which may land in the
    // window: a script call and a publish, off the upgrade's path. A socket
    // that does not ask for unread counts reads nothing more.)
    assert_eq!(spent[..4], [("get", 1), ("set", 0), ("xrevrange", 0), ("xadd", 0)], "{spent:?}");
    assert!(spent[4].1 <= 1 && spent[5].1 == 0 && spent[6].1 <= 1 && spent[7].1 == 0, "{spent:?}");
}

#[tokio::test]
async fn frames_over_16_kib_close_the_socket_with_1009() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let huge = format!(r#"{{"type":"send","body":"{}"}}"#, "x".repeat(17 * 1024));
    socket.send_text(&huge).await;
    assert_eq!(socket.closed().await, (1009, "message too big".to_string()));
}

#[tokio::test]
async fn the_connection_cap_answers_503_beyond_it() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("MAX_CONNECTIONS", "2")]).await;
    let alice = signed_up(&app, "alice").await;
    let (first, _) = alice.join(&app, "").await;
    let (_second, _) = alice.join(&app, "").await;
    assert_eq!(alice.open_socket(&app, "").await.err(), Some(StatusCode::SERVICE_UNAVAILABLE));
    drop(first);
    let alice = &alice;
    let app = &app;
    eventually("a place to free up", || async move { alice.open_socket(app, "").await.is_ok() }).await;
}

/// A WebSocket client that completes the handshake and then never reads or
/// answers anything: a vanished peer.
async fn silent_client(app: &TestApp, cookie: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn the_server_pings_and_drops_a_socket_that_stops_answering() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("WS_PING_INTERVAL_SECS", "1"), ("WS_IDLE_TIMEOUT_SECS", "2")]).await;
    let alice = signed_up(&app, "alice").await;

    // A live client answers pings (tungstenite does, while it reads).
    let (mut live, _) = alice.join(&app, "").await;
    let mut silent = silent_client(&app, &alice.cookie_header(&app).unwrap()).await;
    let mut received = Vec::new();
    let silent_dropped = async {
        let mut buf = [0u8; 4096];
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let live_pings = async {
        let mut pings = 0;
        while let Some(Ok(message)) = live.ws.next().await {
            if let Message::Ping(_) = message {
                pings += 1;
            }
        }
        pings
    };
    tokio::select! {
        _ = within("the silent socket to be dropped", silent_dropped) => {}
        pings = live_pings => panic!("the answering socket was dropped after {pings} pings"),
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // 0x89: an unmasked ping frame from the server.
    assert!(received.contains(&0x89), "the server pinged before giving up");

    // The answering one outlived the idle limit and is still served.
    live.send_json(serde_json::json!({"type": "send", "body": "still here", "client_id": "c1"})).await;
    assert_eq!(live.next_of("ack").await["client_id"], "c1");
}
