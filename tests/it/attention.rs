//! Attention that is never lost (docs/protocol.md §3.8), against one Redis
//! and a Redis Cluster, on two instances: opening a room's page stores a
//! read marker at its newest message, so a mention that comes after counts
//! on every device and after a reload (the socket's `unread` frames and
//! `GET /api/rooms` agree); a mention in a public room the user never
//! opened reaches them through their mention inbox, live and after a
//! reload, and the room's page puts "new since your last visit" before it;
//! a mention in a private room they are not in, or in a conversation not
//! theirs, never does.

use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    helpers::*,
    rooms::{api, private_room},
};

on_both! {
    a_mention_after_a_room_was_opened_and_left_survives_a_reload_and_shows_on_another_device,
    a_mention_in_a_public_room_never_opened_reaches_the_user_live_and_after_a_reload,
}

/// The room's entry of `GET /api/rooms`, if listed.
async fn listed(who: &Browser, app: &TestApp, room: &str) -> Option<Value> {
    let (_, body) = api(who, app, Method::GET, "/api/rooms", None).await;
    body["rooms"].as_array().unwrap().iter().find(|r| r["name"] == room).cloned()
}

/// The `data-since` of a room's page: where its divider goes.
async fn since_on_page(who: &Browser, app: &TestApp, room: &str) -> String {
    let page = who.get(app, &format!("/chat/{room}")).await.text().await.unwrap();
    let at = page.find("data-since=\"").expect("the page says where its divider goes") + "data-since=\"".len();
    page[at..].split('"').next().unwrap().to_owned()
}

async fn a_mention_after_a_room_was_opened_and_left_survives_a_reload_and_shows_on_another_device(
    redis: &dyn TestRedis,
) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let alice = signed_up(&a, "alice").await;
    let carol = signed_up(&a, "carol").await;
    let (mut alices, _) = alice.join(&a, "?room=deploys").await;
    alices.say("earlier", "a0").await;
    // Carol opens #deploys and leaves it within a second: no `read` frame.
    assert_eq!(carol.get(&a, "/chat/deploys").await.status(), reqwest::StatusCode::OK);
    let (mut sidebar, _) = carol.join(&a, "?unread=1").await;
    let id = alices.say("@carol can you approve the release?", "a1").await["id"].as_str().unwrap().to_owned();
    let badge = json!({"type": "unread", "room": "deploys", "unread": 1, "mentions": 1});
    assert_eq!(sidebar.next_of("unread").await, badge);

    // A reload, on this instance and on the other (another device), counts
    // it from the marker the page stored.
    drop(sidebar);
    let (mut reloaded, _) = carol.join(&a, "?unread=1").await;
    assert_eq!(reloaded.next_of("unread").await, badge);
    let phone = Browser::new();
    phone.login(&b, "carol", PASSWORD).await;
    let (mut elsewhere, _) = phone.join(&b, "?unread=1").await;
    assert_eq!(elsewhere.next_of("unread").await, badge);
    let entry = listed(&phone, &b, "deploys").await.expect("#deploys is listed");
    assert_eq!((entry["unread"].clone(), entry["mentions"].clone()), (json!(1), json!(1)), "GET /api/rooms agrees");

    // Opening it again shows the divider at the marker, and moves it.
    let before_mention = since_on_page(&phone, &b, "deploys").await;
    assert!(before_mention.parse::<MessageIdForTest>().unwrap() < id.parse().unwrap(), "{before_mention} < {id}");
    let entry = listed(&carol, &a, "deploys").await.unwrap();
    assert_eq!((entry["unread"].clone(), entry["mentions"].clone()), (json!(0), json!(0)), "read on opening");
}

async fn a_mention_in_a_public_room_never_opened_reaches_the_user_live_and_after_a_reload(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let alice = signed_up(&a, "alice").await;
    signed_up(&a, "bob").await;
    let carol = signed_up(&a, "carol").await;
    // Carol's page is open, on the other instance.
    let phone = Browser::new();
    phone.login(&b, "carol", PASSWORD).await;
    let (mut sidebar, _) = phone.join(&b, "?unread=1").await;

    // Nobody tells her of a private room she is not in, nor of a
    // conversation that is not hers.
    private_room(&a, &alice, "secret", &["bob"]).await;
    let (mut secret, _) = alice.join(&a, "?room=secret").await;
    secret.say("@carol must not know", "s1").await;
    let (mut to_bob, _) = alice.join(&a, "?room=%40bob").await;
    to_bob.say("@carol must not know either", "d1").await;

    let (mut ops, _) = alice.join(&a, "?room=ops").await;
    ops.say("before anyone mentions her", "o0").await;
    let id = ops.say("@carol the deploy is blocked", "o1").await["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sidebar.next_of("room_added").await,
        json!({"type": "room_added", "room": "ops", "visibility": "public"})
    );
    assert_eq!(sidebar.next_of("unread").await, json!({"type": "unread", "room": "ops", "unread": 1, "mentions": 1}));
    ops.say("and one more", "o2").await;
    assert_eq!(sidebar.next_of("unread").await, json!({"type": "unread", "room": "ops", "unread": 2, "mentions": 1}));

    // After a reload, on either instance: listed, counted from the mention.
    for (who, app) in [(&carol, &a), (&phone, &b)] {
        let (mut reloaded, _) = who.join(app, "?unread=1").await;
        assert_eq!(
            reloaded.next_of("unread").await,
            json!({"type": "unread", "room": "ops", "unread": 2, "mentions": 1})
        );
        let entry = listed(who, app, "ops").await.expect("#ops is listed");
        assert_eq!((entry["unread"].clone(), entry["mentions"].clone()), (json!(2), json!(1)));
        assert_eq!(listed(who, app, "secret").await, None);
        assert_eq!(listed(who, app, "@alice").await, None, "no conversation of hers");
    }
    let key = format!("palaver:user:{{{}}}:mentions", user_id(redis, "carol"));
    let notes = redis.command(&["LRANGE", &key, "0", "-1"]).unwrap();
    assert_eq!(resp_lines(&notes).iter().filter(|l| l.contains(' ')).count(), 1, "one note, #ops's: {notes}");
    let bobs = format!("palaver:user:{{{}}}:mentions", user_id(redis, "bob"));
    assert_eq!(resp_lines(&redis.command(&["EXISTS", &bobs]).unwrap()), [":0"], "nobody mentioned bob");

    // Its page puts the divider just before the mention.
    let since: MessageIdForTest = since_on_page(&carol, &a, "ops").await.parse().unwrap();
    let mention: MessageIdForTest = id.parse().unwrap();
    assert!(since < mention, "{since:?} < {mention:?}");
}

/// A message id as `(ms, seq)`, compared as numbers.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
struct MessageIdForTest(u64, u64);

impl std::str::FromStr for MessageIdForTest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ms, seq) = s.split_once('-').ok_or(s.to_owned())?;
        Ok(Self(ms.parse().map_err(|_| s.to_owned())?, seq.parse().map_err(|_| s.to_owned())?))
    }
}

/// The stored user's id, from the user record.
fn user_id(redis: &dyn TestRedis, name: &str) -> String {
    let record = redis.command(&["GET", &format!("palaver:user:{name}")]).expect("the user is stored");
    let json = resp_lines(&record).into_iter().find(|l| l.starts_with('{')).expect("a JSON record");
    serde_json::from_str::<Value>(&json).unwrap()["id"].as_str().unwrap().to_owned()
}
