//! Chat that loses nothing (docs/protocol.md §3 frames, §4 guarantees): fan-out across
//! instances, replay, reconnects, a Redis restart, bad input, floods,
//! presence, and escaping on the server-rendered page.

use std::collections::HashSet;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

on_both! {
    two_users_on_two_instances_get_the_same_message_and_rooms_do_not_leak,
    replay_after_an_id_returns_exactly_the_missed_messages_in_order,
    messages_sent_while_a_client_reconnects_are_neither_lost_nor_duplicated,
    bad_frames_get_invalid_without_closing_the_socket,
    a_message_keeps_the_indentation_of_its_first_line,
    more_than_twenty_invalid_frames_in_a_minute_close_with_1008,
    a_flood_is_rate_limited_then_closed_with_1008,
    a_resend_with_the_same_client_id_is_stored_once,
    sends_that_arrive_together_are_answered_in_order_each_as_if_alone,
    html_in_a_message_is_escaped_on_the_page,
    the_page_renders_recent_history_and_the_last_id,
    presence_spans_instances_and_follows_departures,
}

/// Tests that send many messages quickly lift the per-socket rate limit.
const NO_RATE_LIMIT: [(&str, &str); 4] = [
    ("MESSAGE_RATE_PER_SEC", "10000"),
    ("MESSAGE_BURST", "10000"),
    ("USER_MESSAGE_RATE_PER_SEC", "10000"),
    ("USER_MESSAGE_BURST", "10000"),
];

async fn two_instances(redis: &dyn TestRedis) -> (TestApp, TestApp) {
    (TestApp::spawn_with(Some(redis), &NO_RATE_LIMIT).await, TestApp::spawn_with(Some(redis), &NO_RATE_LIMIT).await)
}

/// Reads `n` message frames, skipping everything else.
async fn messages(socket: &mut Socket, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(socket.next_of("message").await);
    }
    out
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect()
}

async fn two_users_on_two_instances_get_the_same_message_and_rooms_do_not_leak(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let (mut bobs, _) = bob.join(&b, "").await;
    let (mut elsewhere, _) = bob.join(&b, "?room=elsewhere").await;

    let ack = alices.say("hello bob", "c-1").await;
    let id = ack["id"].as_str().unwrap().to_owned();
    for socket in [&mut alices, &mut bobs] {
        let m = socket.next_of("message").await;
        assert_eq!(m["id"], id.as_str());
        assert_eq!(
            (m["room"].as_str(), m["user"].as_str(), m["body"].as_str()),
            (Some("lobby"), Some("alice"), Some("hello bob"))
        );
        assert_eq!(m["client_id"], "c-1");
        assert!(m["sent_at"].as_i64().unwrap() > 0);
    }
    // The other room hears its own message, and never the lobby's.
    let other = elsewhere.say("meanwhile", "c-2").await;
    let m = elsewhere.next_of("message").await;
    assert_eq!(m["id"], other["id"]);
    assert_eq!(m["body"], "meanwhile");
}

async fn replay_after_an_id_returns_exactly_the_missed_messages_in_order(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(alices.say(&format!("m{i}"), &format!("c{i}")).await["id"].as_str().unwrap().to_owned());
    }
    // Bob saw up to m4; he gets m5..m11, in order, then live ones.
    let (mut bobs, _) = bob.join(&b, &format!("?after={}", ids[4])).await;
    let replayed = messages(&mut bobs, 7).await;
    assert_eq!(bodies(&replayed), (5..12).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(
        replayed.iter().map(|m| m["id"].as_str().unwrap()).collect::<Vec<_>>(),
        ids[5..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    alices.say("live", "c-live").await;
    let live = bobs.next_of("message").await;
    assert_eq!(live["body"], "live", "nothing repeated between replay and live");
    // after=0-0 replays the whole room.
    let (mut fresh, _) = bob.join(&a, "?after=0-0").await;
    assert_eq!(messages(&mut fresh, 13).await.len(), 13);
}

async fn messages_sent_while_a_client_reconnects_are_neither_lost_nor_duplicated(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut bobs, _) = bob.join(&b, "").await;

    // Alice sends steadily from another task while Bob drops and comes back.
    let (alice_ref, a_ref) = (&alice, &a);
    let sender = async move {
        let (mut socket, _) = alice_ref.join(a_ref, "").await;
        for i in 0..60 {
            socket.say(&format!("m{i}"), &format!("c{i}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
    };
    let receiver = async {
        let mut seen: Vec<Value> = messages(&mut bobs, 10).await;
        let last = seen.last().unwrap()["id"].as_str().unwrap().to_owned();
        drop(bobs);
        // Reconnect on the other instance, from the last id seen.
        let (mut again, _) = bob.join(&a, &format!("?after={last}")).await;
        while seen.len() < 60 {
            seen.push(again.next_of("message").await);
        }
        seen
    };
    let ((), seen) = tokio::join!(sender, receiver);
    assert_eq!(bodies(&seen), (0..60).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let unique: HashSet<&str> = seen.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_survives_a_redis_restart_with_persistence() {
    let mut redis = RedisServer::start_persistent();
    let (a, b) = two_instances(&redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let (mut bobs, _) = bob.join(&b, "").await;
    alices.say("before", "c0").await;
    assert_eq!(bobs.next_of("message").await["body"], "before");

    redis.restart();
    // Sending works again once the store answers; every acked message then
    // reaches the sockets on both instances, once, in order.
    let mut acked: Vec<String> = Vec::new();
    let mut alice_seen: Vec<Value> = Vec::new();
    let mut attempt = 0;
    while acked.len() < 5 {
        attempt += 1;
        assert!(attempt < 500, "sending never recovered");
        alices
            .send_json(
                json!({"type": "send", "body": format!("after{}", acked.len()), "client_id": format!("r{attempt}")}),
            )
            .await;
        loop {
            match alices.next_frame().await {
                Frame::Json(v) if v["type"] == "ack" => {
                    acked.push(v["id"].as_str().unwrap().to_owned());
                    break;
                }
                Frame::Json(v) if v["type"] == "error" => {
                    assert_eq!(v["code"], "unavailable");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    break;
                }
                Frame::Json(v) if v["type"] == "message" => alice_seen.push(v),
                Frame::Json(_) => continue,
                other => panic!("alice's socket ended: {other:?}"),
            }
        }
    }
    let ids = |seen: &[Value]| -> Vec<String> { seen.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect() };
    while alice_seen.len() < 6 {
        alice_seen.push(alices.next_of("message").await);
    }
    assert_eq!(ids(&alice_seen[1..]), acked, "alice: the acked messages, once, in order");
    assert_eq!(ids(&messages(&mut bobs, 5).await), acked, "bob: the acked messages, once, in order");
    // And the history survived the restart.
    let (mut late, _) = bob.join(&b, "?after=0-0").await;
    assert_eq!(bodies(&messages(&mut late, 6).await), ["before", "after0", "after1", "after2", "after3", "after4"]);
}

async fn bad_frames_get_invalid_without_closing_the_socket(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let bad = [
        "not json".to_string(),
        json!({"type": "shout", "body": "hi"}).to_string(),
        json!({"body": "no type"}).to_string(),
        json!({"type": "send", "body": 42}).to_string(),
        json!({"type": "send", "body": "   "}).to_string(),
        json!({"type": "send", "body": "x".repeat(2001)}).to_string(),
        json!({"type": "send", "body": "ok", "client_id": "c".repeat(65)}).to_string(),
    ];
    for frame in &bad {
        socket.send_text(frame).await;
        let error = socket.next_of("error").await;
        assert_eq!(error["code"], "invalid", "{frame}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    socket.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(socket.next_of("error").await["code"], "invalid");
    // Exactly 2000 characters after cleaning is fine, and it is stored
    // without the blank line before it and the space after it.
    let body = "é".repeat(2000);
    socket.send_json(json!({"type": "send", "body": format!(" \n{body} \n"), "client_id": "long"})).await;
    socket.next_of("ack").await;
    assert_eq!(socket.next_of("message").await["body"], body.as_str());
    // Nothing invalid was stored.
    let (mut replay, _) = alice.join(&app, "?after=0-0").await;
    socket.say("end", "end").await;
    assert_eq!(bodies(&messages(&mut replay, 2).await), [body.clone(), "end".into()]);
}

async fn a_message_keeps_the_indentation_of_its_first_line(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    socket
        .say(
            "
  
    let x = 1;
    let y = 2;  

",
            "code",
        )
        .await;
    assert_eq!(
        socket.next_of("message").await["body"],
        "    let x = 1;
    let y = 2;"
    );
}

async fn more_than_twenty_invalid_frames_in_a_minute_close_with_1008(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    for _ in 0..20 {
        socket.send_text("{").await;
        assert_eq!(socket.next_of("error").await["code"], "invalid");
    }
    socket.send_text("{").await;
    assert_eq!(socket.closed().await, (1008, "policy violation".to_string()));
}

async fn a_flood_is_rate_limited_then_closed_with_1008(redis: &dyn TestRedis) {
    // A token a minute: none comes back during the run, so the five of the
    // burst are the only accepted frames and the ten refusals are a run.
    let app = TestApp::spawn_with(Some(redis), &[("MESSAGE_RATE_PER_SEC", "0.02"), ("MESSAGE_BURST", "5")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    for i in 0..40 {
        socket.send_json(json!({"type": "send", "body": format!("spam {i}"), "client_id": format!("s{i}")})).await;
    }
    let (mut acks, mut limited) = (0, 0);
    let close = loop {
        match socket.next_frame().await {
            Frame::Json(v) if v["type"] == "ack" => acks += 1,
            Frame::Json(v) if v["type"] == "error" => {
                assert_eq!(v["code"], "rate_limited");
                assert!(v["client_id"].as_str().unwrap().starts_with('s'));
                limited += 1;
            }
            Frame::Json(_) => {}
            Frame::Close(code, reason) => break (code, reason),
            Frame::Ended => panic!("ended without a close frame"),
        }
    };
    assert_eq!(close, (1008, "policy violation".to_string()));
    assert_eq!(acks, 5, "the burst passes");
    assert_eq!(limited, 10, "rate_limited ten times, then closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_send_gets_unavailable_and_nothing_half_stored() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    socket.say("stored", "c0").await;
    redis.stop();
    socket.send_json(json!({"type": "send", "body": "lost?", "client_id": "c1"})).await;
    let error = socket.next_of("error").await;
    assert_eq!((error["code"].as_str(), error["client_id"].as_str()), (Some("unavailable"), Some("c1")));
    redis.restart();
    let stream = redis.command(&["XLEN", &room_key("lobby", "messages")]).unwrap();
    assert_eq!(stream.trim(), ":1", "only the acked message is stored");
}

async fn a_resend_with_the_same_client_id_is_stored_once(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let first = socket.say("once", "same").await;
    let again = socket.say("once", "same").await;
    assert_eq!(first["id"], again["id"]);
    assert_eq!(redis.command(&["XLEN", &room_key("lobby", "messages")]).unwrap().trim(), ":1");
}

/// Frames that arrive in one read are stored in one round trip; each is
/// still answered in its place: a refusal between two runs of sends, a
/// resend of a message of the same run acknowledged with its first id,
/// and the user's rate charged in order.
async fn sends_that_arrive_together_are_answered_in_order_each_as_if_alone(redis: &dyn TestRedis) {
    let limits = [
        ("MESSAGE_RATE_PER_SEC", "1000"),
        ("MESSAGE_BURST", "1000"),
        ("USER_MESSAGE_RATE_PER_SEC", "0.01"),
        ("USER_MESSAGE_BURST", "7"),
    ];
    let app = TestApp::spawn_with(Some(redis), &limits).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let send = |body: &str, client_id: &str| json!({"type": "send", "body": body, "client_id": client_id});
    let mut frames: Vec<Value> = (1..=5).map(|i| send(&format!("m{i}"), &format!("c{i}"))).collect();
    frames.push(send("   ", "blank"));
    frames.push(send("m2", "c2"));
    frames.extend((6..=8).map(|i| send(&format!("m{i}"), &format!("c{i}"))));
    // One write: the server reads them together.
    for frame in &frames {
        socket.ws.feed(Message::Text(frame.to_string().into())).await.unwrap();
    }
    socket.ws.flush().await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < frames.len() {
        answers.push(socket.next_of_any(&["ack", "error"]).await);
    }
    let said: Vec<(String, String)> = answers
        .iter()
        .map(|a| {
            let kind = if a["type"] == "ack" { "ack".to_owned() } else { a["code"].as_str().unwrap().to_owned() };
            (kind, a["client_id"].as_str().unwrap().to_owned())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ack", "c1"),
        ("ack", "c2"),
        ("ack", "c3"),
        ("ack", "c4"),
        ("ack", "c5"),
        ("invalid", "blank"),
        ("ack", "c2"),
        ("ack", "c6"),
        ("ack", "c7"),
        ("rate_limited", "c8"),
    ]
    .iter()
    .map(|(k, c)| (k.to_string(), c.to_string()))
    .collect();
    assert_eq!(said, want);
    assert_eq!(answers[6]["id"], answers[1]["id"], "the resend is acknowledged with the first copy's id");
    let ids: Vec<&str> = [0, 1, 2, 3, 4, 7, 8].iter().map(|&i| answers[i]["id"].as_str().unwrap()).collect();
    let (mut replay, _) = alice.join(&app, "?after=0-0").await;
    let stored = messages(&mut replay, 7).await;
    assert_eq!(bodies(&stored), ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
    let stored_ids: Vec<&str> = stored.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(stored_ids, ids, "stored in the order sent, under the ids acknowledged");
    assert_eq!(redis.command(&["XLEN", &room_key("lobby", "messages")]).unwrap().trim(), ":7");
}

async fn html_in_a_message_is_escaped_on_the_page(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let evil = r#"<img src=x onerror="alert(1)"><script>alert(2)</script>"#;
    socket.say(evil, "x").await;
    let html = alice.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(!html.contains("<img src=x") && !html.contains("<script>alert"), "raw HTML on the page");
    // Escaped, in whichever entity style the template engine picks.
    let normalized = html.replace("&#60;", "&lt;").replace("&#62;", "&gt;").replace("&#34;", "&quot;");
    assert!(
        normalized.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"),
        "{html}"
    );
}

async fn the_page_renders_recent_history_and_the_last_id(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &NO_RATE_LIMIT).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    let mut last = Value::Null;
    for i in 0..55 {
        last = socket.say(&format!("msg-{i:02}"), &format!("c{i}")).await;
    }
    let html = alice.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert_eq!(html.matches(r#"<li class="msg"#).count(), 50, "the last 50");
    assert!(!html.contains("msg-04<") && html.contains("msg-05<") && html.contains("msg-54<"));
    assert!(html.contains(&format!(r#"data-last-id="{}""#, last["id"].as_str().unwrap())));
}

async fn presence_spans_instances_and_follows_departures(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let (mut alices, _) = alice.join(&a, "").await;
    let first = alices.next_of("presence").await;
    assert_eq!(
        (first["online"].clone(), first["count"].clone(), first["room"].clone()),
        (json!(["alice"]), json!(1), json!("lobby"))
    );
    alices.online = ["alice".to_string()].into();
    let (mut bobs, _) = bob.join(&b, "").await;
    bobs.presence_until(&["alice", "bob"]).await;
    // Alice hears of bob as a diff: the change, not the list.
    let diff = alices.next_of("presence_diff").await;
    assert_eq!(
        (diff["joined"].clone(), diff["left"].clone(), diff["count"].clone()),
        (json!(["bob"]), json!([]), json!(2))
    );
    alices.online.insert("bob".into());
    // A second tab of bob's changes nothing; closing one of two neither.
    let (tab, _) = bob.join(&a, "").await;
    drop(tab);
    drop(bobs);
    alices.presence_until(&["alice"]).await;
}

#[tokio::test]
async fn the_memory_backend_chats_replays_and_shows_presence() {
    let app = TestApp::spawn_memory().await;
    let alice = signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    let (mut alices, _) = alice.join(&app, "").await;
    alices.presence_until(&["alice"]).await;
    let ack = alices.say("hi", "c1").await;
    let (mut bobs, _) = bob.join(&app, "?after=0-0").await;
    let replayed = bobs.next_of("message").await;
    assert_eq!(replayed["id"], ack["id"]);
    alices.say("live", "c2").await;
    assert_eq!(bobs.next_of("message").await["body"], "live");
    alices.presence_until(&["alice", "bob"]).await;
}

/// Sends a read marker, then a frame that is refused: once its error is
/// back, the marker before it was handled.
async fn mark_read(socket: &mut Socket, up_to: &str) {
    socket.send_json(json!({"type": "read", "up_to": up_to})).await;
    socket.send_json(json!({"type": "read", "up_to": "not an id"})).await;
    let err = socket.next_of("error").await;
    assert_eq!(err["code"], "invalid");
    assert!(err["message"].as_str().unwrap().contains("message id"), "the marker was refused: {err}");
}

#[tokio::test]
async fn a_read_marker_must_be_a_message_id_of_the_room_and_bad_ones_change_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, hello) = alice.join(&app, "").await;
    assert_eq!(hello["read_markers"], true);
    let id = socket.say("one", "c1").await["id"].as_str().unwrap().to_owned();
    for bad in [json!({"type": "read"}), json!({"type": "read", "up_to": 5}), json!({"type": "read", "up_to": "x-1"})] {
        socket.send_json(bad.clone()).await;
        assert_eq!(socket.next_of("error").await["code"], "invalid", "{bad}");
    }
    // Beyond the newest message of the room: refused, not clamped.
    socket.send_json(json!({"type": "read", "up_to": "99999999999999-0"})).await;
    let err = socket.next_of("error").await;
    assert_eq!(err["code"], "invalid");
    assert!(err["message"].as_str().unwrap().contains("newest"), "{err}");
    let key = format!("palaver:user:{{{}}}:read", user_id(&redis, "alice"));
    assert_eq!(resp_value(redis.command(&["EXISTS", &key])).as_deref(), Some("0"), "nothing stored");
    mark_read(&mut socket, &id).await;
    assert_eq!(resp_value(redis.command(&["HGET", &key, "lobby"])).as_deref(), Some(id.as_str()));
    assert!(resp_value(redis.command(&["PTTL", &key])).unwrap().parse::<i64>().unwrap() > 0, "it expires");
}

/// The value of a one-value RESP reply (a bulk string or an integer).
fn resp_value(reply: Option<String>) -> Option<String> {
    let reply = reply?;
    let line = reply.split("\r\n").find(|l| !l.is_empty() && !l.starts_with('$'))?;
    Some(line.trim_start_matches(':').to_owned())
}

/// The stored user's id, from the user record.
fn user_id(redis: &RedisServer, name: &str) -> String {
    let record = resp_value(redis.command(&["GET", &format!("palaver:user:{name}")])).expect("the user is stored");
    serde_json::from_str::<Value>(&record).unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn unread_counts_and_mentions_of_the_users_other_rooms_come_live_and_from_the_read_marker() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &NO_RATE_LIMIT).await;
    let alice = signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    // Alice has opened #dev (it is in her sidebar) and read it to "first".
    assert_eq!(alice.get(&app, "/chat/dev").await.status(), reqwest::StatusCode::OK);
    let (mut bob_dev, _) = bob.join(&app, "?room=dev").await;
    let first = bob_dev.say("first", "b1").await["id"].as_str().unwrap().to_owned();
    let (mut alice_dev, _) = alice.join(&app, "?room=dev").await;
    mark_read(&mut alice_dev, &first).await;

    // On a page of the lobby, #dev's new messages count; those naming her
    // count as mentions too (not in code, and not her own).
    let (mut lobby, _) = alice.join(&app, "?unread=1").await;
    // A socket that did not ask for unread counts gets none.
    let (mut plain, _) = alice.join(&app, "").await;
    bob_dev.say("hello @Alice", "b2").await;
    assert_eq!(lobby.next_of("unread").await, json!({"type": "unread", "room": "dev", "unread": 1, "mentions": 1}));
    alice_dev.say("my own", "a1").await;
    let newest = bob_dev.say("`@alice` in code", "b3").await["id"].as_str().unwrap().to_owned();
    assert_eq!(lobby.next_of("unread").await, json!({"type": "unread", "room": "dev", "unread": 2, "mentions": 1}));

    // A page opened later counts from her read marker in the store.
    let (mut later, _) = alice.join(&app, "?unread=1").await;
    assert_eq!(later.next_of("unread").await, json!({"type": "unread", "room": "dev", "unread": 2, "mentions": 1}));

    // Reading #dev to its newest message clears both pages' counts.
    mark_read(&mut alice_dev, &newest).await;
    for page in [&mut lobby, &mut later] {
        assert_eq!(page.next_of("unread").await, json!({"type": "unread", "room": "dev", "unread": 0, "mentions": 0}));
    }
    // Bob, who never opened #dev's page, hears nothing of it in the lobby.
    let (mut bob_lobby, _) = bob.join(&app, "?unread=1").await;
    bob_dev.say("more", "b4").await;
    assert_eq!(lobby.next_of("unread").await["unread"], 1);
    // By now every #dev message reached the lobby's watchers; the plain
    // socket's next frame of either kind is the lobby's own message.
    bob_lobby.say("in the lobby", "b5").await;
    assert_eq!(plain.next_of_any(&["unread", "message"]).await["body"], "in the lobby");
    bob_lobby.send_json(json!({"type": "read", "up_to": "not an id"})).await;
    assert_eq!(bob_lobby.next_of_any(&["unread", "error"]).await["type"], "error");
}
