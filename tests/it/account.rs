//! Sessions and devices (docs/protocol.md §7): every sign-in describes its
//! session, a user lists and ends their own sessions (and nobody else's),
//! and an ended session's sockets close on every instance with 4401
//! `session revoked` while the user's other sessions go on; a password
//! change ends every other session, and the security log tells it all.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use crate::{helpers::*, rooms::api};

on_both! {
    ending_one_session_closes_its_sockets_everywhere_and_leaves_the_others,
    a_password_change_ends_every_other_session_everywhere_and_moves_this_one,
}

/// A password that passes the strength estimate.
pub const NEW_PASSWORD: &str = "a fresh new passphrase";

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

async fn a_password_change_ends_every_other_session_everywhere_and_moves_this_one(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let laptop = chrome(&a, "alice", true).await;
    let cafe = chrome(&b, "alice", false).await;
    let pair = token(&a, "alice", json!({"client": "bot"}), None).await;
    let (mut cafe_socket, _) = cafe.join(&b, "").await;
    let mut bot_socket = token_socket(&b, access(&pair)).await;
    let before = laptop.session_id(&a).unwrap();

    let body = json!({"current": PASSWORD, "new": NEW_PASSWORD});
    let (status, _) = api(&laptop, &a, Method::POST, "/api/password", Some(body)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for socket in [&mut cafe_socket, &mut bot_socket] {
        let closed = within_for(Duration::from_secs(3), "another session's socket to close", socket.closed()).await;
        assert_eq!(closed, (4401, "session revoked".to_string()));
    }
    assert_eq!(cafe.refresh(&b).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refresh_token(&a, &pair).await, StatusCode::UNAUTHORIZED);
    // This session lives on under a new id: the old cookie is worth nothing.
    let after = laptop.session_id(&a).unwrap();
    assert_ne!(after, before, "a new cookie");
    let left = sessions(&laptop, &a).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0]["current"].clone(), left[0]["client"].clone()), (json!(true), json!("Chrome on Linux")));
    let stale = Browser::new();
    stale.set_session_id(&a, &before);
    assert_eq!(stale.refresh(&a).await.status(), StatusCode::UNAUTHORIZED);
    // The old password signs nobody in; the new one does.
    assert_eq!(Browser::new().login(&b, "alice", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_redirect(&Browser::new().login(&b, "alice", NEW_PASSWORD).await, "/chat");
    // And the log says so.
    let (_, body) = api(&laptop, &a, Method::GET, "/api/security-events", None).await;
    let kinds: Vec<String> =
        body["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().into()).collect();
    assert_eq!(
        kinds[..5],
        ["signed_in", "sign_in_failed", "password_changed", "session_ended", "session_ended"],
        "{body}"
    );
    let ended: Vec<&Value> =
        body["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "session_ended").collect();
    assert!(ended.iter().all(|e| e["by"] == "password_change"), "{body}");
}

#[tokio::test]
async fn a_token_session_that_changes_the_password_stays_and_the_browsers_go() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = chrome(&app, "alice", true).await;
    let pair = token(&app, "alice", json!({"client": "cli"}), None).await;
    let body = json!({"current": PASSWORD, "new": NEW_PASSWORD});
    let (status, _) = bearer(&app, Method::POST, "/api/password", access(&pair), Some(body)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(browser.refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = bearer(&app, Method::GET, "/api/sessions", access(&pair), None).await;
    assert_eq!(status, StatusCode::OK, "the token still works");
    assert_eq!(body["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(refresh_token(&app, &pair).await, StatusCode::OK, "and so does its refresh token");
}

#[tokio::test]
async fn a_wrong_current_password_is_401_and_counts_against_the_login_throttle() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("LOGIN_MAX_FAILURES", "2")]).await;
    let alice = chrome(&app, "alice", true).await;
    let wrong = || json!({"current": "not my password", "new": NEW_PASSWORD});
    for _ in 0..2 {
        let (status, body) = api(&alice, &app, Method::POST, "/api/password", Some(wrong())).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_credentials")));
    }
    let (status, body) = api(&alice, &app, Method::POST, "/api/password", Some(wrong())).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_attempts")));
    // The sign-in form counts on the same throttle.
    assert_eq!(Browser::new().login(&app, "alice", PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(alice.refresh(&app).await.status(), StatusCode::OK, "nothing else changed");
}

#[tokio::test]
async fn a_guessable_password_is_refused_with_the_estimators_advice() {
    let app = TestApp::spawn_memory().await;
    let alice = chrome(&app, "alice", true).await;
    for (new, error) in [("password", "weak_password"), ("short", "invalid_password"), ("        ", "weak_password")] {
        let body = json!({"current": PASSWORD, "new": new});
        let (status, body) = api(&alice, &app, Method::POST, "/api/password", Some(body)).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(error)), "{new:?}");
    }
    let body = json!({"current": PASSWORD, "new": "password"});
    let (_, body) = api(&alice, &app, Method::POST, "/api/password", Some(body)).await;
    assert!(body["message"].as_str().unwrap().contains("top-10 common password"), "{body}");
    // The same rule at registration, the advice beside the field.
    let res = Browser::new().register(&app, "bob", "password").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"id="password-advice""#) && html.contains("top-10 common password"), "{html}");
    assert!(html.contains(r#"aria-describedby="form-error password-advice password-hint""#), "{html}");
    let res = Browser::new().register(&app, "bob", "        ").await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "eight spaces are no password");
    assert_eq!(Browser::new().login(&app, "bob", "password").await.status(), StatusCode::UNAUTHORIZED, "no bob");
}

#[tokio::test]
async fn the_security_log_tells_what_happened_newest_first() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("REFRESH_REUSE_GRACE_SECS", "1")]).await;
    let laptop = chrome(&app, "alice", true).await;
    for _ in 0..3 {
        assert_eq!(Browser::new().login(&app, "alice", "a wrong guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let phone = chrome(&app, "alice", false).await;
    let phone_id = sessions(&phone, &app).await.into_iter().find(|s| s["current"] == true).unwrap()["id"].clone();
    let path = format!("/api/sessions/{}", phone_id.as_str().unwrap());
    assert_eq!(api(&laptop, &app, Method::DELETE, &path, None).await.0, StatusCode::NO_CONTENT);
    // A spent refresh token presented again after the grace.
    let pair = token(&app, "alice", json!({"client": "bot"}), None).await;
    assert_eq!(refresh_token(&app, &pair).await, StatusCode::OK);
    let reused = poll(DEADLINE, || {
        let (app, pair) = (&app, &pair);
        async move { (refresh_token(app, pair).await == StatusCode::UNAUTHORIZED).then_some(()) }
    })
    .await;
    assert!(reused.is_some(), "the spent token is refused after the grace");

    let (status, body) = api(&laptop, &app, Method::GET, "/api/security-events", None).await;
    assert_eq!(status, StatusCode::OK);
    let events = body["events"].as_array().unwrap();
    let summary: Vec<String> = events
        .iter()
        .map(|e| {
            let by = e["by"].as_str().map(|by| format!(" by {by}")).unwrap_or_default();
            format!("{}{by} {}", e["kind"].as_str().unwrap(), e["client"].as_str().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        summary,
        [
            "session_ended by refresh_reuse bot",
            "refresh_reuse_detected bot",
            "signed_in bot",
            "session_ended by you Chrome on Linux",
            "signed_in Chrome on Linux",
            "sign_in_failed ",
            "signed_in Chrome on Linux",
        ],
        "{body}"
    );
    let failed = &events[5];
    assert_eq!((failed["count"].clone(), failed["address"].clone()), (json!(3), json!("127.0.0.1")), "one burst");
    let ats: Vec<i64> = events.iter().map(|e| e["at"].as_i64().unwrap()).collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "newest first: {ats:?}");
    assert_eq!(events[1]["address"], "127.0.0.1", "where the spent token came from");
    // Nobody else's log.
    let bob = chrome(&app, "bob", true).await;
    let (_, body) = api(&bob, &app, Method::GET, "/api/security-events", None).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
}

/// A form posted from the account page (its origin).
async fn page_form(who: &Browser, app: &TestApp, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    who.http.post(app.url(path)).header("origin", &app.origin).form(form).send().await.unwrap()
}

#[tokio::test]
async fn the_account_page_lists_the_sessions_and_ends_them() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    assert_redirect(&Browser::new().get(&app, "/account").await, "/login?next=%2Faccount");
    let laptop = chrome(&app, "alice", true).await;
    let phone = chrome(&app, "alice", false).await;
    token(&app, "alice", json!({"client": "deploy bot"}), None).await;
    let chat = laptop.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(chat.contains(r#"href="/account""#), "the sidebar leads to the account page");

    let res = laptop.get(&app, "/account").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let html = res.text().await.unwrap();
    for needed in ["deploy bot", "Chrome on Linux", "This session", "End all other sessions", "Change your password"] {
        assert!(html.contains(needed), "the page shows {needed:?}");
    }
    assert_eq!(html.matches(r#"class="session-end""#).count(), 2, "an End form for each other session");
    assert!(html.contains("Signed in: Chrome on Linux (127.0.0.1)."), "the log, in words");

    // End the phone's session from its form: back to the page, the phone is out.
    let phone_id = sessions(&phone, &app).await.into_iter().find(|s| s["current"] == true).unwrap()["id"].clone();
    let path = format!("/account/sessions/{}/end", phone_id.as_str().unwrap());
    assert_redirect(&page_form(&laptop, &app, &path, &[]).await, "/account?done=ended");
    assert_eq!(phone.refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
    let html = laptop.get(&app, "/account?done=ended").await.text().await.unwrap();
    assert!(html.contains("That session has ended."), "{html}");
    assert!(html.contains("You ended the session of Chrome on Linux (127.0.0.1)."));
    assert_eq!(page_form(&laptop, &app, &path, &[]).await.status(), StatusCode::NOT_FOUND, "gone now");
    // From another site: refused before anything happens.
    let res = laptop.http.post(app.url("/account/sessions/end-others")).header("origin", "https://evil.example").send();
    assert_eq!(res.await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(sessions(&laptop, &app).await.len(), 2);
    assert_redirect(&page_form(&laptop, &app, "/account/sessions/end-others", &[]).await, "/account?done=others");
    assert_eq!(sessions(&laptop, &app).await.len(), 1);
}

#[tokio::test]
async fn the_account_pages_password_form_says_what_is_wrong_and_changes_it() {
    let app = TestApp::spawn_memory().await;
    let alice = chrome(&app, "alice", true).await;
    let other = chrome(&app, "alice", false).await;
    let res = page_form(&alice, &app, "/account/password", &[("current", "nope nope"), ("new", NEW_PASSWORD)]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"id="password-error""#) && html.contains(r#"id="current" name="current""#), "{html}");
    let res = page_form(&alice, &app, "/account/password", &[("current", PASSWORD), ("new", "password1")]).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"id="new-advice""#), "the advice beside the field: {html}");
    assert!(html.contains(r#"aria-describedby="password-error new-advice new-hint""#), "{html}");
    assert_eq!(other.refresh(&app).await.status(), StatusCode::OK, "nothing changed yet");

    let before = alice.session_id(&app).unwrap();
    let res = page_form(&alice, &app, "/account/password", &[("current", PASSWORD), ("new", NEW_PASSWORD)]).await;
    assert_redirect(&res, "/account?done=password");
    assert_ne!(alice.session_id(&app).unwrap(), before, "a new cookie");
    assert_eq!(other.refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
    let html = alice.get(&app, "/account?done=password").await.text().await.unwrap();
    assert!(html.contains("Your password was changed."), "{html}");
}

/// Signs `username` in with "keep me signed in" ticked (or not).
async fn signed_in(app: &TestApp, username: &str, remember: bool) -> Browser {
    let browser = Browser::new();
    let mut form = vec![("username", username), ("password", PASSWORD)];
    if remember {
        form.push(("remember", "on"));
    }
    assert_redirect(&browser.post_form(app, "/login", &form).await, "/chat");
    browser
}

/// How far from now the session's expiry is, as `POST /session/refresh` says.
async fn expires_in(who: &Browser, app: &TestApp) -> Duration {
    let res = who.refresh(app).await;
    assert_eq!(res.status(), StatusCode::OK);
    let at = res.json::<Value>().await.unwrap()["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    Duration::from_millis(at.saturating_sub(now))
}

#[tokio::test]
async fn keep_me_signed_in_gives_the_session_the_long_lifetimes_and_the_page_says_so() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    let page = Browser::new().get(&app, "/login").await.text().await.unwrap();
    assert!(page.contains(r#"name="remember" type="checkbox""#), "{page}");

    let kept = signed_in(&app, "alice", true).await;
    let day = Duration::from_secs(24 * 3600);
    let left = expires_in(&kept, &app).await;
    assert!(left > 29 * day && left <= 30 * day, "{left:?}");
    let short = signed_in(&app, "alice", false).await;
    let left = expires_in(&short, &app).await;
    assert!(left > Duration::from_secs(1700) && left <= Duration::from_secs(1800), "{left:?}");

    let page = kept.get(&app, "/account").await.text().await.unwrap();
    let this = page.split(r#"id="this-session""#).nth(1).expect("this session marked");
    assert!(this.split("</li>").next().unwrap().contains("Kept signed in"), "{page}");
}

#[tokio::test]
async fn a_kept_session_outlives_the_idle_time_of_the_others() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("SESSION_TTL_SECS", "2")]).await;
    signed_up(&app, "alice").await;
    let kept = signed_in(&app, "alice", true).await;
    let short = signed_in(&app, "alice", false).await;
    // Away for longer than the ordinary idle time: what is measured here
    // is the store's expiry itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(kept.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    assert_redirect(&short.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    assert_eq!(short.refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
}
