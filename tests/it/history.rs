//! Paging back through a room (docs/protocol.md §2.1, `GET /chat/{room}/history`)
//! against a real Redis: pages strictly before an id, oldest first, down to
//! the room's first message and saying so; the page's own start; bounds on
//! the query; and that reading history needs a session, finds only rooms
//! that exist and never brings one into existence.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

/// Stores `n` messages `m000`, `m001`, … in `room` straight into its stream
/// (as the server would, but without 300 round trips of sends), the room
/// made to exist; returns their ids, oldest first.
fn seed(redis: &RedisServer, room: &str, n: usize) -> Vec<String> {
    let now = now_ms();
    let ids: Vec<String> =
        (0..n).map(|i| store_message(redis, room, "bob", &format!("m{i:03}"), now - (n - i) as i64, &[])).collect();
    redis.command(&["SET", &room_key(room, "active"), &now.to_string(), "PX", "3600000"]).unwrap();
    ids
}

async fn history(who: &Browser, app: &TestApp, path: &str) -> (StatusCode, Value) {
    let res = who.get(app, path).await;
    let status = res.status();
    (status, res.json().await.expect("a JSON body"))
}

fn bodies(page: &Value) -> Vec<String> {
    page["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect()
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i:03}")).collect()
}

#[tokio::test]
async fn history_pages_back_to_the_first_message_oldest_first_and_says_where_it_starts() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    let ids = seed(&redis, "lobby", 120);

    // The page shows the newest 50 and says older ones exist.
    let html = alice.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(html.contains(r#"data-history-url="/chat/lobby/history""#), "the page says where to page from");
    assert!(html.contains(r#"data-history-start="false""#));
    assert!(html.contains("m070<") && !html.contains("m069<"));

    let res = alice.get(&app, &format!("/chat/lobby/history?before={}&limit=50", ids[70])).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let page: Value = res.json().await.unwrap();
    assert_eq!(bodies(&page), names(20..70), "the 50 strictly before, oldest first");
    assert_eq!(page["start"], false);
    let first = &page["messages"][0];
    assert_eq!((first["id"].as_str(), first["user"].as_str()), (Some(ids[20].as_str()), Some("bob")));
    assert!(first["sent_at"].as_i64().unwrap() > 0);

    // The last page reaches the first message and says so.
    let (status, page) = history(&alice, &app, &format!("/chat/lobby/history?before={}&limit=50", ids[20])).await;
    assert_eq!((status, bodies(&page), page["start"].clone()), (StatusCode::OK, names(0..20), Value::Bool(true)));
    // Exactly a page's worth before is not the start yet; nothing before the first is.
    let (_, page) = history(&alice, &app, &format!("/chat/lobby/history?before={}&limit=20", ids[20])).await;
    assert_eq!((bodies(&page), page["start"].clone()), (names(0..20), Value::Bool(true)));
    let (_, page) = history(&alice, &app, &format!("/chat/lobby/history?before={}&limit=19", ids[20])).await;
    assert_eq!((bodies(&page), page["start"].clone()), (names(1..20), Value::Bool(false)));
    let (_, page) = history(&alice, &app, &format!("/chat/lobby/history?before={}", ids[0])).await;
    assert_eq!((bodies(&page).len(), page["start"].clone()), (0, Value::Bool(true)));

    // No `before`: the newest page; no `limit`: 50; at most HISTORY_PAGE_MAX (100).
    let (_, page) = history(&alice, &app, "/chat/lobby/history").await;
    assert_eq!((bodies(&page), page["start"].clone()), (names(70..120), Value::Bool(false)));
    let (_, page) = history(&alice, &app, "/chat/lobby/history?limit=100").await;
    assert_eq!(bodies(&page), names(20..120));
    // A bare `<ms>` is `<ms>-0`, as for `after`.
    let ms = ids[119].split('-').next().unwrap();
    let (status, _) = history(&alice, &app, &format!("/chat/lobby/history?before={ms}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_small_room_starts_on_its_page_and_bad_queries_get_400() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("HISTORY_PAGE_MAX", "30")]).await;
    let alice = signed_up(&app, "alice").await;
    seed(&redis, "lobby", 50);
    let html = alice.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(html.contains(r#"data-history-start="true""#), "all 50 are on the page");

    let (_, page) = history(&alice, &app, "/chat/lobby/history?limit=30").await;
    assert_eq!(bodies(&page), names(20..50), "HISTORY_PAGE_MAX is the largest page");
    for query in [
        "limit=31",
        "limit=0",
        "limit=-1",
        "limit=ten",
        "limit=",
        "before=yesterday",
        "before=1-2-3",
        "before=-1",
        "before=99999999999999999999999-0",
        "before=%zz",
    ] {
        let (status, body) = history(&alice, &app, &format!("/chat/lobby/history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"], "invalid_request", "{query}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn history_needs_a_session_and_a_room_that_exists_and_creates_none() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("ROOMS_PER_USER_PER_HOUR", "1")]).await;
    let alice = signed_up(&app, "alice").await;
    seed(&redis, "lobby", 3);

    // Signed out: 401 as JSON (the script sends the reader to sign in), whatever the query.
    for path in ["/chat/lobby/history", "/chat/lobby/history?limit=9999", "/chat/nowhere/history"] {
        let (status, body) = history(&Browser::new(), &app, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["error"], "unauthorized", "{path}");
    }
    // A name that is not a room's, and a room that does not exist: 404.
    for path in ["/chat/Not_A_Room/history", "/chat/nowhere/history", "/chat/nowhere/history?before=5-0"] {
        let (status, body) = history(&alice, &app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"], "not_found", "{path}");
    }
    // Nothing was created and nothing counted: alice's one new room is still hers to open.
    assert_eq!(redis.command(&["EXISTS", &room_key("nowhere", "active")]).unwrap().trim(), ":0");
    assert_eq!(redis.command(&["EXISTS", &room_key("nowhere", "messages")]).unwrap().trim(), ":0");
    assert_eq!(alice.get(&app, "/chat/first-room").await.status(), StatusCode::OK, "the quota is untouched");
    assert_eq!(alice.get(&app, "/chat/second-room").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // A room that exists (opened, still empty) pages to nothing, at its start.
    let (status, page) = history(&alice, &app, "/chat/first-room/history").await;
    assert_eq!((status, bodies(&page).len(), page["start"].clone()), (StatusCode::OK, 0, Value::Bool(true)));
}
