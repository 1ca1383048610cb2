//! Who may be where (docs/protocol.md §6), against one Redis and a Redis
//! Cluster: every surface that could reveal a room refuses a user who is
//! not a member and one just removed, and answers them exactly as it
//! answers a room that does not exist; the membership rules through HTTP;
//! direct conversations.
//!
//! The surfaces are enumerated, not listed here: the routes from the
//! instance's route table, the frame kinds from the protocol's list
//! (`palaver::SERVER_FRAMES`). A route or a frame kind this file does not
//! classify fails the test, saying what to add.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

on_both! {
    every_surface_refuses_a_non_member_and_a_just_removed_member,
    the_membership_rules_hold_through_http,
    a_direct_conversation_is_one_room_for_its_two_users_and_nobody_elses,
}

/// A JSON call as the chat page makes it: the session cookie, and the
/// page's `Origin`.
pub async fn api(who: &Browser, app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = who.http.request(method, app.url(path)).header("origin", &app.origin);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("an answer");
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The user's rooms, as `GET /api/rooms` names them.
pub async fn room_names(who: &Browser, app: &TestApp) -> Vec<String> {
    let (status, body) = api(who, app, Method::GET, "/api/rooms", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
}

/// Creates private room `name` owned by `owner`, with `members` added.
pub async fn private_room(app: &TestApp, owner: &Browser, name: &str, members: &[&str]) {
    let (status, body) = api(owner, app, Method::POST, "/api/rooms", Some(json!({"name": name}))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"name": name, "visibility": "private", "role": "owner"}));
    for member in members {
        let path = format!("/api/rooms/{name}/members/{member}");
        assert_eq!(api(owner, app, Method::PUT, &path, None).await.0, StatusCode::NO_CONTENT, "adding {member}");
    }
}

// ------------------------------------------------------------ surfaces --

/// What a route can reveal of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reveals {
    /// A room named in its path or query.
    ByParam,
    /// A list of the user's rooms.
    Lists,
    /// Nothing of any room (it acts on the caller alone, or is static).
    Nothing,
}

/// Every route of the table, classified. A route missing here fails the
/// surfaces test.
fn classify(method: &Method, pattern: &str) -> Option<&'static [Reveals]> {
    use Reveals::*;
    Some(match (method.as_str(), pattern) {
        // The room page names a room, and its sidebar lists the user's.
        ("GET", "/chat/{room}") => &[ByParam, Lists],
        ("GET", "/chat/{room}/history" | "/ws" | "/api/rooms/{name}/members") => &[ByParam],
        ("PUT" | "DELETE", "/api/rooms/{name}/members/{username}") => &[ByParam],
        ("GET", "/api/rooms") => &[Lists],
        ("GET", "/" | "/login" | "/register" | "/chat" | "/healthz" | "/readyz" | "/static/{file}") => &[Nothing],
        // A user's own sessions, password and security log: no room.
        ("GET", "/api/sessions" | "/api/security-events")
        | ("DELETE", "/api/sessions/{id}")
        | ("POST", "/api/sessions/end-others" | "/api/password") => &[Nothing],
        ("GET", "/account")
        | (
            "POST",
            "/account/sessions/{id}/end" | "/account/sessions/end-others" | "/account/password" | "/account/invites",
        ) => &[Nothing],
        (
            "POST",
            "/login"
            | "/register"
            | "/logout"
            | "/logout/everywhere"
            | "/session/refresh"
            | "/api/token"
            | "/api/token/refresh"
            | "/api/ws-ticket"
            | "/api/logout"
            | "/api/logout/everywhere"
            | "/api/direct",
        ) => &[Nothing],
        // Creating a room: its one answer about another room is that the
        // name is taken (409 name_taken, whatever the room's kind), which
        // the contract wants (one namespace).
        ("POST", "/api/rooms") => &[Nothing],
        _ => return None,
    })
}

/// How each server frame kind is kept from a user who may not see a room.
/// A kind missing here fails the surfaces test.
const FRAME_CHECKS: &[(&str, &str)] = &[
    ("hello", "the upgrade into the room is refused with 403 before any 101"),
    ("message", "no socket of theirs is in the room: none of its messages on their other sockets"),
    ("ack", "acknowledges their own sends, on a socket they cannot open"),
    ("presence", "goes to the room's sockets only: none on their other sockets"),
    ("presence_diff", "as presence"),
    ("reauthenticate", "about their session, never a room"),
    ("reauthenticated", "about their session, never a room"),
    ("unread", "counts only listed rooms: none of the room, no mention badge, on their other sockets"),
    ("room_added", "said to the user added only"),
    ("room_removed", "said to the user removed only (once, when removed)"),
    ("error", "answers their own frames, on their own sockets"),
];

/// The room kept secret, and what is said in it.
const SECRET_ROOM: &str = "team";
const SECRET: &str = "launch codes";

/// Asserts that nothing in `frames` names the secret room or says what is
/// said in it.
fn assert_nothing_of_the_room(who: &str, frames: &[Value]) {
    for frame in frames {
        let text = frame.to_string();
        assert!(
            frame["room"] != SECRET_ROOM && !text.contains(SECRET),
            "{who} was sent a frame of #{SECRET_ROOM}: {frame}"
        );
    }
}

/// Every frame on `socket` until it answers a `reauth` (a frame the
/// socket's task answers after writing everything queued for it before).
async fn frames_so_far(socket: &mut Socket) -> Vec<Value> {
    socket.send_json(json!({"type": "reauth"})).await;
    let mut frames = Vec::new();
    loop {
        match socket.next_frame().await {
            Frame::Json(v) if v["type"] == "reauthenticated" => return frames,
            Frame::Json(v) => frames.push(v),
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

/// The path of a route for `room` (and `user`, where it names one).
fn path(pattern: &str, room: &str, user: &str) -> String {
    pattern.replace("{room}", room).replace("{name}", room).replace("{username}", user).replace("{file}", "chat.js")
}

/// Asks the route about `room` as `who`: its status and body.
async fn ask(app: &TestApp, who: &Browser, method: &Method, pattern: &str, room: &str) -> (StatusCode, String) {
    if pattern == "/ws" {
        let refused = who.open_socket(app, &format!("?room={room}")).await.err();
        return (refused.unwrap_or(StatusCode::SWITCHING_PROTOCOLS), String::new());
    }
    let url = app.url(&path(pattern, room, "carol"));
    let res = who.http.request(method.clone(), url).header("origin", &app.origin).send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

/// A route that names a room answers `who` for the secret room exactly as
/// for a room that does not exist (`@nobody`), and with a refusal.
async fn refuses_by_param(app: &TestApp, who: (&str, &Browser), method: &Method, pattern: &str) {
    let (name, browser) = who;
    let hidden = ask(app, browser, method, pattern, SECRET_ROOM).await;
    let unknown = ask(app, browser, method, pattern, "@nobody").await;
    let expected = match pattern {
        "/ws" => StatusCode::FORBIDDEN,
        "/chat/{room}"
        | "/chat/{room}/history"
        | "/api/rooms/{name}/members"
        | "/api/rooms/{name}/members/{username}" => StatusCode::NOT_FOUND,
        _ => panic!("{method} {pattern} names a room: add what it answers for a room that cannot be seen"),
    };
    assert_eq!(hidden.0, expected, "{method} {pattern} for {name}: {}", hidden.1);
    assert_eq!(hidden, unknown, "{method} {pattern} tells {name} a hidden room from one that does not exist");
    assert!(!hidden.1.contains(SECRET), "{method} {pattern} shows {name} the room's messages");
}

/// A route that lists the user's rooms does not list the secret room.
async fn does_not_list(app: &TestApp, who: (&str, &Browser), method: &Method, pattern: &str) {
    let (name, browser) = who;
    match (method.as_str(), pattern) {
        ("GET", "/api/rooms") => {
            assert!(!room_names(browser, app).await.contains(&SECRET_ROOM.to_owned()), "listed for {name}");
        }
        ("GET", "/chat/{room}") => {
            let page = browser.get(app, "/chat/lobby").await.text().await.unwrap();
            assert!(!page.contains(&format!("data-room=\"{SECRET_ROOM}\"")), "in {name}'s sidebar");
        }
        _ => panic!("{method} {pattern} lists rooms: add how its list is read"),
    }
}

/// A route that reveals nothing of rooms shows nothing of this one.
async fn shows_nothing(app: &TestApp, who: (&str, &Browser), method: &Method, pattern: &str) {
    if *method == Method::GET {
        let body = who.1.get(app, &path(pattern, "lobby", "carol")).await.text().await.unwrap();
        assert!(!body.contains(SECRET), "GET {pattern} shows {} the room's messages", who.0);
    }
}

async fn every_surface_refuses_a_non_member_and_a_just_removed_member(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    for kind in palaver::SERVER_FRAMES {
        assert!(
            FRAME_CHECKS.iter().any(|(k, _)| k == kind),
            "server frame {kind:?} has no check here: say in FRAME_CHECKS how it is kept from a user who may \
             not see a room, and prove it below"
        );
    }
    for (method, pattern) in &app.routes {
        assert!(
            classify(method, pattern).is_some(),
            "route {method} {pattern} is not classified here: say in classify() whether it reveals a room by a \
             parameter, lists rooms, or reveals nothing, and add its check"
        );
    }
    let [alice, bob, carol, dave] = [
        signed_up(&app, "alice").await,
        signed_up(&app, "bob").await,
        signed_up(&app, "carol").await,
        signed_up(&app, "dave").await,
    ];
    // Carol never is a member; bob is, until alice removes him. Each has a
    // socket in the lobby that follows their rooms' unread counts.
    let (mut carol_lobby, _) = carol.join(&app, "?room=lobby&unread=1").await;
    private_room(&app, &alice, SECRET_ROOM, &["bob"]).await;
    let (mut alice_team, _) = alice.join(&app, "?room=team").await;
    alice_team.presence_until(&["alice"]).await;
    let (mut bob_team, _) = bob.join(&app, "?room=team").await;
    let (mut bob_lobby, _) = bob.join(&app, "?room=lobby&unread=1").await;
    // Once a socket answers, it follows the counts of every room listed.
    frames_so_far(&mut bob_lobby).await;
    frames_so_far(&mut carol_lobby).await;
    alice_team.say("before: the launch codes, @bob @carol", "c0").await;
    assert_eq!(bob_team.next_of("message").await["room"], SECRET_ROOM);
    // A member's badge: counted from here, with the mention.
    assert_eq!(
        bob_lobby.next_of("unread").await,
        json!({"type": "unread", "room": SECRET_ROOM, "unread": 1, "mentions": 1})
    );

    let removed = api(&alice, &app, Method::DELETE, "/api/rooms/team/members/bob", None).await;
    assert_eq!(removed.0, StatusCode::NO_CONTENT);
    assert_eq!(bob_team.closed().await, (4403, "access revoked".into()));
    assert_eq!(bob_lobby.next_of("room_removed").await["room"], SECRET_ROOM);

    // The room goes on: messages naming them, someone joining and leaving.
    alice_team.say("after: the launch codes, @bob @carol", "c1").await;
    assert_eq!(api(&alice, &app, Method::PUT, "/api/rooms/team/members/dave", None).await.0, StatusCode::NO_CONTENT);
    let (mut dave_team, _) = dave.join(&app, "?room=team").await;
    alice_team.presence_until(&["alice", "dave"]).await;
    let _ = dave_team.ws.close(None).await;
    assert_eq!(api(&dave, &app, Method::DELETE, "/api/rooms/team/members/dave", None).await.0, StatusCode::NO_CONTENT);
    // A room's fan-outs go one after the other: once alice has this one,
    // every earlier one has reached every socket it was for.
    alice_team.say("barrier", "c2").await;
    while alice_team.next_of("message").await["body"] != "barrier" {}
    assert_nothing_of_the_room("carol", &frames_so_far(&mut carol_lobby).await);
    assert_nothing_of_the_room("bob, removed", &frames_so_far(&mut bob_lobby).await);

    for who in [("carol", &carol), ("bob, removed", &bob)] {
        for (method, pattern) in &app.routes {
            for reveals in classify(method, pattern).unwrap() {
                match reveals {
                    Reveals::ByParam => refuses_by_param(&app, who, method, pattern).await,
                    Reveals::Lists => does_not_list(&app, who, method, pattern).await,
                    Reveals::Nothing => shows_nothing(&app, who, method, pattern).await,
                }
            }
        }
    }
    // Replay never hands the removed member anything: his reconnect with
    // the last id he saw is refused before the 101.
    assert_eq!(bob.open_socket(&app, "?room=team&after=0-0").await.err(), Some(StatusCode::FORBIDDEN));
    // The members still see it all.
    assert!(room_names(&alice, &app).await.contains(&SECRET_ROOM.to_owned()));
    let (status, history) = api(&alice, &app, Method::GET, "/chat/team/history", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["messages"].as_array().unwrap().len(), 3);
}

// ------------------------------------------------------------ the rules --

async fn the_membership_rules_hold_through_http(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(
        Some(redis),
        &[("MAX_ROOM_MEMBERS", "3"), ("MAX_PRIVATE_ROOMS_PER_USER", "2"), ("ROOMS_PER_USER_PER_HOUR", "3")],
    )
    .await;
    let [alice, bob, carol, dave] = [
        signed_up(&app, "alice").await,
        signed_up(&app, "bob").await,
        signed_up(&app, "carol").await,
        signed_up(&app, "dave").await,
    ];
    let code = |(status, body): (StatusCode, Value)| (status, body["error"].as_str().unwrap_or_default().to_owned());

    // Signed out, or a cookie without the page's origin: refused.
    assert_eq!(code(api(&Browser::new(), &app, Method::GET, "/api/rooms", None).await).0, StatusCode::UNAUTHORIZED);
    let bare = alice.http.get(app.url("/api/rooms")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::FORBIDDEN, "a cookie alone");
    let same_origin = alice.http.get(app.url("/api/rooms")).header("sec-fetch-site", "same-origin").send().await;
    assert_eq!(same_origin.unwrap().status(), StatusCode::OK, "a GET from this site's page");

    // Two creators of one name: one wins.
    let create =
        |who| api(who, &app, Method::POST, "/api/rooms", Some(json!({"name": "ops", "visibility": "private"})));
    let (first, second) = tokio::join!(create(&alice), create(&bob));
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let (owner, other) = if first.0 == StatusCode::CREATED { (&alice, &bob) } else { (&bob, &alice) };
    assert_eq!(code(if first.0 == StatusCode::CONFLICT { first } else { second }).1, "name_taken");
    let public_name = api(other, &app, Method::POST, "/api/rooms", Some(json!({"name": "lobby"}))).await;
    assert_eq!(code(public_name), (StatusCode::CONFLICT, "name_taken".into()), "a public room's name is taken too");
    let invalid = api(other, &app, Method::POST, "/api/rooms", Some(json!({"name": "Not A Name"}))).await;
    assert_eq!(code(invalid), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_name".into()));

    // Members: anyone in it adds; a member removes only themselves.
    let other_name = if std::ptr::eq(other, &alice) { "alice" } else { "bob" };
    let owner_name = if other_name == "alice" { "bob" } else { "alice" };
    let member = |name: &str| format!("/api/rooms/ops/members/{name}");
    assert_eq!(api(owner, &app, Method::PUT, &member(other_name), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api(other, &app, Method::PUT, &member(other_name), None).await.0, StatusCode::NO_CONTENT, "already one");
    assert_eq!(
        code(api(other, &app, Method::PUT, &member("nobody"), None).await),
        (StatusCode::NOT_FOUND, "no_such_user".into())
    );
    assert_eq!(api(other, &app, Method::PUT, &member("carol"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        code(api(other, &app, Method::PUT, &member("dave"), None).await),
        (StatusCode::CONFLICT, "room_full".into())
    );
    assert_eq!(
        code(api(other, &app, Method::DELETE, &member(owner_name), None).await),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    assert_eq!(
        code(api(&dave, &app, Method::PUT, &member("dave"), None).await),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let (status, members) = api(&carol, &app, Method::GET, "/api/rooms/ops/members", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        members,
        json!({"members": [
            {"user": owner_name, "role": "owner"}, {"user": other_name, "role": "member"}, {"user": "carol", "role": "member"}
        ]}),
        "longest-standing first"
    );
    // The owner leaves: the longest-standing member owns it.
    assert_eq!(api(owner, &app, Method::DELETE, &member(owner_name), None).await.0, StatusCode::NO_CONTENT);
    let (_, members) = api(&carol, &app, Method::GET, "/api/rooms/ops/members", None).await;
    assert_eq!(members["members"][0], json!({"user": other_name, "role": "owner"}));
    assert_eq!(
        api(other, &app, Method::DELETE, &member("carol"), None).await.0,
        StatusCode::NO_CONTENT,
        "the owner removes"
    );
    // The last member leaves: the room and its history are gone.
    let (mut socket, _) = other.join(&app, "?room=ops").await;
    socket.say("the last word", "c1").await;
    assert_eq!(api(other, &app, Method::DELETE, &member(other_name), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(socket.closed().await, (4403, "access revoked".into()));
    let opened =
        api(&dave, &app, Method::POST, "/api/rooms", Some(json!({"name": "ops", "visibility": "public"}))).await;
    assert_eq!(opened.0, StatusCode::CREATED, "the name is free again: {}", opened.1);
    let (_, history) = api(&dave, &app, Method::GET, "/chat/ops/history", None).await;
    assert_eq!(history["messages"], json!([]), "its history went with it");

    // Bounds: private rooms per user, and the new-room quota.
    for name in ["d1", "d2"] {
        assert_eq!(
            api(&dave, &app, Method::POST, "/api/rooms", Some(json!({"name": name}))).await.0,
            StatusCode::CREATED
        );
    }
    let third = api(&dave, &app, Method::POST, "/api/rooms", Some(json!({"name": "d3"}))).await;
    assert_eq!(code(third), (StatusCode::CONFLICT, "too_many_rooms".into()));
    for name in ["c1", "c2", "c3"] {
        assert_eq!(
            api(&carol, &app, Method::POST, "/api/rooms", Some(json!({"name": name, "visibility": "public"}))).await.0,
            StatusCode::CREATED
        );
    }
    let res = carol.http.post(app.url("/api/rooms")).header("origin", &app.origin).json(&json!({"name": "c4"})).send();
    let res = res.await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "room_quota");

    // Direct: with oneself, with nobody; and its members never change.
    assert_eq!(
        code(api(&carol, &app, Method::POST, "/api/direct", Some(json!({"user": "CAROL"}))).await),
        (StatusCode::UNPROCESSABLE_ENTITY, "yourself".into())
    );
    assert_eq!(
        code(api(&carol, &app, Method::POST, "/api/direct", Some(json!({"user": "nobody"}))).await),
        (StatusCode::NOT_FOUND, "no_such_user".into())
    );
    assert_eq!(
        code(api(&carol, &app, Method::PUT, "/api/rooms/@dave/members/alice", None).await),
        (StatusCode::CONFLICT, "direct_room".into())
    );
    assert_eq!(
        code(api(&carol, &app, Method::DELETE, "/api/rooms/%40dave/members/dave", None).await),
        (StatusCode::CONFLICT, "direct_room".into())
    );
    // A Bearer token works as the cookie does.
    let token =
        Browser::new().http.post(app.url("/api/token")).json(&json!({"username": "dave", "password": PASSWORD}));
    let token = token.send().await.unwrap().json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let listed = Browser::new().http.get(app.url("/api/rooms")).bearer_auth(&token).send().await.unwrap();
    let listed: Value = listed.json().await.unwrap();
    let names: Vec<&str> = listed["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ops", "lobby", "d1", "d2"]);
    assert_eq!(
        listed["rooms"][2],
        json!({"name": "d1", "visibility": "private", "role": "owner", "unread": 0, "mentions": 0})
    );
}

// -------------------------------------------------------------- direct --

async fn a_direct_conversation_is_one_room_for_its_two_users_and_nobody_elses(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let [alice, bob, carol] =
        [signed_up(&app, "Alice").await, signed_up(&app, "bob").await, signed_up(&app, "carol").await];
    let (status, started) = api(&alice, &app, Method::POST, "/api/direct", Some(json!({"user": "BOB"}))).await;
    assert_eq!((status, started), (StatusCode::OK, json!({"room": "@bob"})));
    // Before its first message it is empty, not missing, for both.
    let (status, history) = api(&bob, &app, Method::GET, "/chat/@Alice/history", None).await;
    assert_eq!((status, history["messages"].clone()), (StatusCode::OK, json!([])));
    assert!(!room_names(&bob, &app).await.contains(&"@Alice".to_owned()), "listed from its first message on");

    let (mut alices, hello) = alice.join(&app, "?room=@bob").await;
    assert_eq!(hello["room"], "@bob");
    let (mut bobs, hello) = bob.join(&app, "?room=%40alice").await;
    assert_eq!(hello["room"], "@Alice", "each sees the other's name, as registered");
    bobs.presence_until(&["Alice", "bob"]).await;
    alices.say("hi bob, the launch codes", "d1").await;
    assert_eq!(alices.next_of("message").await["room"], "@bob");
    assert_eq!(bobs.next_of("message").await["room"], "@Alice");

    // Both list it, under the other's name; its members are the two.
    assert!(room_names(&alice, &app).await.contains(&"@bob".to_owned()));
    assert!(room_names(&bob, &app).await.contains(&"@Alice".to_owned()));
    let (status, members) = api(&bob, &app, Method::GET, "/api/rooms/@alice/members", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(members, json!({"members": [{"user": "bob", "role": "member"}, {"user": "Alice", "role": "member"}]}));
    let page = bob.get(&app, "/chat/@alice").await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("data-room=\"@Alice\"") && page.contains("data-kind=\"direct\"") && page.contains(SECRET));

    // Carol reaches it by no path: "@alice" and "@bob" are her own
    // conversations with them, "@carol" none, and the key (what the store
    // calls it) is no name at all.
    let key = palaver::model::RoomName::direct(palaver::model::UserId::new_v4(), palaver::model::UserId::new_v4());
    for (name, status) in [
        ("@alice", StatusCode::OK),
        ("@bob", StatusCode::OK),
        ("@carol", StatusCode::NOT_FOUND),
        (key.as_str(), StatusCode::NOT_FOUND),
    ] {
        let page = carol.get(&app, &format!("/chat/{name}")).await;
        assert_eq!(page.status(), status, "{name}");
        assert!(!page.text().await.unwrap().contains(SECRET), "{name}");
    }
    assert_eq!(carol.open_socket(&app, "?room=@carol").await.err(), Some(StatusCode::FORBIDDEN), "with herself");
    let (mut carol_alice, hello) = carol.join(&app, "?room=@alice").await;
    assert_eq!(hello["room"], "@Alice", "her own conversation with alice, another room");
    let (_, history) = api(&carol, &app, Method::GET, "/chat/@alice/history", None).await;
    assert_eq!(history["messages"], json!([]), "nothing of alice and bob's");
    carol_alice.say("hello alice", "c1").await;
    let (_, history) = api(&bob, &app, Method::GET, "/chat/@alice/history", None).await;
    let bodies: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["hi bob, the launch codes"], "two conversations, apart");
    assert!(!room_names(&carol, &app).await.contains(&"@bob".to_owned()));
}
