//! Upgrading palaver on a Redis that holds an earlier version's data
//! (before keys were tagged for the cluster): the first instance to start
//! moves it to today's names, so rooms, their history, the users' room
//! lists and, above all, the session index that "log out everywhere"
//! relies on are all still found.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn an_instance_moves_an_earlier_versions_keys_and_nothing_is_lost() {
    let redis = RedisServer::start();
    let first = TestApp::spawn(&redis).await;
    let laptop = signed_up(&first, "alice").await;
    let phone = Browser::new();
    assert_redirect(&phone.login(&first, "alice", PASSWORD).await, "/chat");
    let index = redis.command(&["KEYS", "palaver:user:{*}:sessions"]).expect("the session index");
    let index = resp_lines(&index).into_iter().find(|l| l.starts_with("palaver:")).expect("one index key");
    let id = index.trim_start_matches("palaver:user:{").trim_end_matches("}:sessions").to_owned();
    first.shutdown().await.unwrap();

    // The earlier layout: untagged per-user keys, one global set of rooms
    // by last activity, untagged streams; no schema key.
    let now = now_ms();
    let (now, long_ago) = (now.to_string(), (now - 40 * 24 * 3600 * 1000).to_string());
    let old_index = format!("palaver:user:{id}:sessions");
    for command in [
        vec!["RENAME", index.as_str(), old_index.as_str()],
        vec!["DEL", "palaver:schema"],
        vec!["XADD", "palaver:room:old-times:messages", "*", "user", "alice", "body", "from before", "sent_at", &now],
        vec!["XADD", "palaver:room:gone:messages", "*", "user", "alice", "body", "long ago", "sent_at", &long_ago],
        vec!["ZADD", "palaver:rooms", &now, "old-times", &long_ago, "gone"],
    ] {
        redis.command(&command).expect("an earlier version's key");
    }
    let old_rooms = format!("palaver:user:{id}:rooms");
    redis.command(&["ZADD", &old_rooms, &now, "old-times"]).unwrap();

    let app = TestApp::spawn(&redis).await;
    assert_eq!(redis.command(&["GET", "palaver:schema"]).as_deref().map(resp_lines), Some(vec!["2".to_owned()]));
    for gone in ["palaver:rooms", old_index.as_str(), old_rooms.as_str(), "palaver:room:old-times:messages"] {
        assert_eq!(redis.command(&["EXISTS", gone]).as_deref().map(resp_lines), Some(vec![":0".to_owned()]), "{gone}");
    }
    // The room and its history are there; the expired room is not.
    let page: serde_json::Value = laptop.get(&app, "/chat/old-times/history").await.json().await.unwrap();
    assert_eq!(page["messages"][0]["body"], "from before", "{page}");
    assert_eq!(laptop.get(&app, "/chat/gone/history").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        redis.command(&["EXISTS", "palaver:room:gone:messages"]).as_deref().map(resp_lines),
        Some(vec![":0".to_owned()])
    );
    // Her room list moved with her.
    let chat = laptop.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(chat.contains("/chat/old-times"), "the sidebar lists #old-times");
    // A session made before the upgrade is still in her index: logging out
    // everywhere ends it.
    assert_eq!(phone.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    assert_redirect(&laptop.post(&app, "/logout/everywhere").await, "/login");
    assert_redirect(&phone.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
}
