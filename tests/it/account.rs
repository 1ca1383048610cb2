//! Sessions and devices (docs/protocol.md §7): every sign-in describes its
//! session, a user lists and ends their own sessions (and nobody else's),
//! and an ended session's sockets close on every instance with 4401
//! `session revoked` while the user's other sessions go on.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use crate::{helpers::*, rooms::api};

on_both! {
    ending_one_session_closes_its_sockets_everywhere_and_leaves_the_others,
}

pub const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// A browser that says it is Chrome on Linux, signed in as `username`
/// (registered when `register`).
pub async fn chrome(app: &TestApp, username: &str, register: bool) -> Browser {
    let browser = Browser::new();
    let path = if register { "/register" } else { "/login" };
    let res = browser
        .http
        .post(app.url(path))
        .header("user-agent", CHROME)
        .form(&[("username", username), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{path} as {username}");
    browser
}

/// Signs in over the token API with `body`'s extra fields and `user_agent`.
pub async fn token(app: &TestApp, username: &str, extra: Value, user_agent: Option<&str>) -> Value {
    let mut body = json!({"username": username, "password": PASSWORD});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let mut req = reqwest::Client::new().post(app.url("/api/token")).json(&body);
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "token for {username}");
    res.json().await.unwrap()
}

/// A JSON call with a Bearer token.
pub async fn bearer(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

pub fn access(pair: &Value) -> &str {
    pair["access_token"].as_str().unwrap()
}

/// Opens a socket with a Bearer token and reads its hello.
pub async fn token_socket(app: &TestApp, token: &str) -> Socket {
    let mut request = app.ws_url("").into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    let mut socket = connect(request).await.expect("upgrade accepted");
    socket.next_of("hello").await;
    socket
}

/// The caller's sessions, as `GET /api/sessions` lists them (the cookie,
/// from the page).
pub async fn sessions(who: &Browser, app: &TestApp) -> Vec<Value> {
    let (status, body) = api(who, app, Method::GET, "/api/sessions", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["sessions"].as_array().unwrap().clone()
}

pub async fn refresh_token(app: &TestApp, pair: &Value) -> StatusCode {
    let res = reqwest::Client::new()
        .post(app.url("/api/token/refresh"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    res.status()
}

#[tokio::test]
async fn every_sign_in_is_listed_with_its_kind_client_and_address_and_this_one_marked() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let laptop = chrome(&app, "alice", true).await;
    let phone = chrome(&app, "alice", false).await;
    token(&app, "alice", json!({"client": "deploy bot"}), None).await;
    token(&app, "alice", json!({}), Some("palaver-cli/0.3 (linux)")).await;
    chrome(&app, "bob", true).await;

    let listed = sessions(&laptop, &app).await;
    assert_eq!(listed.len(), 4, "alice's four, none of bob's: {listed:?}");
    let clients: Vec<&str> = listed.iter().map(|s| s["client"].as_str().unwrap()).collect();
    assert_eq!(clients, ["palaver-cli/0.3", "deploy bot", "Chrome on Linux", "Chrome on Linux"], "newest first");
    let kinds: Vec<&str> = listed.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["token", "token", "browser", "browser"]);
    for session in &listed {
        let keys: Vec<&str> = session.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["address", "client", "created_at", "current", "id", "kind", "last_active_at"], "{session}");
        assert_eq!(session["address"], "127.0.0.1");
        assert!(session["created_at"].as_i64().unwrap() <= now_ms());
        assert_eq!(session["last_active_at"], session["created_at"], "not used since");
    }
    // This one is marked, and seen from the phone, the phone is.
    let current = |listed: &[Value]| listed.iter().position(|s| s["current"] == true);
    assert_eq!(current(&listed), Some(3), "the laptop signed in first");
    assert_eq!(current(&sessions(&phone, &app).await), Some(2));
    // No id is a cookie value.
    for who in [&laptop, &phone] {
        let cookie = who.session_id(&app).unwrap();
        assert!(listed.iter().all(|s| !cookie.contains(s["id"].as_str().unwrap())), "an id leaks a cookie");
    }
    // A Bearer caller sees the same list, its own session marked.
    let pair = token(&app, "alice", json!({"client": "me"}), None).await;
    let (status, body) = bearer(&app, Method::GET, "/api/sessions", access(&pair), None).await;
    assert_eq!(status, StatusCode::OK);
    let mine: Vec<&Value> = body["sessions"].as_array().unwrap().iter().filter(|s| s["current"] == true).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["client"], "me");
}

#[tokio::test]
async fn a_client_name_over_64_characters_is_refused_with_422() {
    let app = TestApp::spawn_memory().await;
    signed_up(&app, "alice").await;
    let body = json!({"username": "alice", "password": PASSWORD, "client": "x".repeat(65)});
    let res = reqwest::Client::new().post(app.url("/api/token")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    token(&app, "alice", json!({"client": "é".repeat(64)}), None).await;
}

async fn ending_one_session_closes_its_sockets_everywhere_and_leaves_the_others(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let laptop = chrome(&a, "alice", true).await;
    let cafe = chrome(&b, "alice", false).await;
    let pair = token(&a, "alice", json!({"client": "bot"}), None).await;
    let (mut laptop_socket, _) = laptop.join(&a, "").await;
    let (mut cafe_socket, _) = cafe.join(&b, "").await;
    let mut bot_socket = token_socket(&b, access(&pair)).await;

    // The laptop ends the café's session: its socket on the other instance
    // closes, and its cookie signs nothing in any more.
    let listed = sessions(&laptop, &a).await;
    let cafe_id = listed.iter().find(|s| s["kind"] == "browser" && s["current"] == false).unwrap()["id"].clone();
    let path = format!("/api/sessions/{}", cafe_id.as_str().unwrap());
    let (status, _) = api(&laptop, &a, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        within_for(Duration::from_secs(3), "the café's socket to close", cafe_socket.closed()).await,
        (4401, "session revoked".to_string())
    );
    assert_eq!(cafe.refresh(&b).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sessions(&laptop, &a).await.len(), 2, "the laptop and the bot are left");
    laptop_socket.say("still here", "c1").await;
    bot_socket.say("me too", "c2").await;
    // Again: that session is gone.
    assert_eq!(api(&laptop, &a, Method::DELETE, &path, None).await.0, StatusCode::NOT_FOUND);

    // Ending the token session: its refresh token dies with it.
    let bot_id = pair_id(&laptop, &a, "bot").await;
    let (status, _) = api(&laptop, &a, Method::DELETE, &format!("/api/sessions/{bot_id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        within_for(Duration::from_secs(3), "the bot's socket to close", bot_socket.closed()).await,
        (4401, "session revoked".to_string())
    );
    assert_eq!(refresh_token(&a, &pair).await, StatusCode::UNAUTHORIZED);
    laptop_socket.say("and still here", "c3").await;
}

/// The listed id of the session whose client is `client`.
async fn pair_id(who: &Browser, app: &TestApp, client: &str) -> String {
    let listed = sessions(who, app).await;
    listed.iter().find(|s| s["client"] == client).unwrap()["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn another_users_session_or_an_unknown_id_is_404_and_ends_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = chrome(&app, "alice", true).await;
    let bob = chrome(&app, "bob", true).await;
    let bobs = sessions(&bob, &app).await[0]["id"].as_str().unwrap().to_owned();
    for id in [bobs.as_str(), "nope", &"a".repeat(22)] {
        let (status, body) = api(&alice, &app, Method::DELETE, &format!("/api/sessions/{id}"), None).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{id}");
    }
    assert_eq!(sessions(&bob, &app).await.len(), 1, "bob's session lives");
    // Without a credential, or with the cookie but no page origin: refused.
    let anonymous = reqwest::Client::new().get(app.url("/api/sessions")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let path = format!("/api/sessions/{bobs}");
    let no_origin = bob.http.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(no_origin.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ending_the_other_sessions_leaves_only_this_one() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let laptop = chrome(&app, "alice", true).await;
    let phone = chrome(&app, "alice", false).await;
    let pair = token(&app, "alice", json!({"client": "bot"}), None).await;
    let (mut phone_socket, _) = phone.join(&app, "").await;
    let (mut laptop_socket, _) = laptop.join(&app, "").await;
    let (status, _) = api(&laptop, &app, Method::POST, "/api/sessions/end-others", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(phone_socket.closed().await, (4401, "session revoked".to_string()));
    let left = sessions(&laptop, &app).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["current"], true);
    assert_eq!(refresh_token(&app, &pair).await, StatusCode::UNAUTHORIZED);
    laptop_socket.say("alone now", "e1").await;
}
