//! docs/protocol.md §2 against a real Redis: accounts, sessions, cookies, redirects,
//! cross-origin protection, throttling, health and assets.

use std::{
    io::{Read, Write},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn root_redirects_by_sign_in_state() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = Browser::new();
    assert_redirect(&browser.get(&app, "/").await, "/login");
    browser.register(&app, "alice", PASSWORD).await;
    assert_redirect(&browser.get(&app, "/").await, "/chat");
    assert_redirect(&browser.get(&app, "/chat").await, "/chat/lobby");
}

#[tokio::test]
async fn login_and_register_pages_have_the_forms_the_spec_names() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    for path in ["/login", "/register"] {
        let res = Browser::new().get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let html = res.text().await.unwrap();
        assert!(html.contains(&format!(r#"method="post" action="{path}""#)), "{path} form: {html}");
        assert!(html.contains(r#"name="username""#) && html.contains(r#"name="password""#));
    }
}

#[tokio::test]
async fn registering_signs_in_with_a_hardened_opaque_cookie() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = Browser::new();
    let res = browser.register(&app, "alice", PASSWORD).await;
    assert_redirect(&res, "/chat");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert_eq!(palaver::auth::session::SESSION_COOKIE, COOKIE);
    for attribute in [&format!("{COOKIE}="), "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: no Secure by default ({cookie})");
    let id = browser.session_id(&app).unwrap();
    assert!(!id.to_lowercase().contains("alice") && id.len() >= 22, "opaque random id: {id}");
    assert_eq!(browser.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn invalid_accounts_are_refused_with_422_and_nothing_is_created() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let cases = [
        ("al", PASSWORD),
        ("a-name-that-is-far-too-long-for-us", PASSWORD),
        ("bad name", PASSWORD),
        ("bad/name", PASSWORD),
        ("alice", "short"),
    ];
    for (username, password) in cases {
        let browser = Browser::new();
        let res = browser.register(&app, username, password).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{username:?}/{password:?}");
        assert!(res.headers().get("set-cookie").is_none(), "no session for a refused registration");
        let html = res.text().await.unwrap();
        assert!(html.contains(r#"id="form-error""#), "the page explains: {html}");
    }
    let long = "x".repeat(257);
    let res = Browser::new().register(&app, "alice", &long).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The name is still free.
    assert_redirect(&Browser::new().register(&app, "alice", PASSWORD).await, "/chat");
}

#[tokio::test]
async fn missing_form_fields_get_422() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = Browser::new();
    for path in ["/login", "/register"] {
        let res = browser.post_form(&app, path, &[("username", "alice")]).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        let res = browser
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("not a form at all")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{path}");
    }
}

#[tokio::test]
async fn a_taken_name_gets_409_ignoring_case() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    assert_redirect(&Browser::new().register(&app, "Alice", PASSWORD).await, "/chat");
    let res = Browser::new().register(&app, "aLICE", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(res.text().await.unwrap().contains(r#"id="form-error""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_name_have_exactly_one_winner() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let names = ["racer", "RACER", "Racer", "rAcEr", "racer", "RaceR"];
    let attempts = names.iter().map(|name| {
        let app = &app;
        async move { Browser::new().register(app, name, PASSWORD).await.status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::SEE_OTHER).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), names.len() - 1, "{statuses:?}");
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_401_page() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    let wrong = Browser::new().login(&app, "alice", "not the password").await;
    let unknown = Browser::new().login(&app, "nobody", "not the password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let (wrong, unknown) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    // The same page, but for the name typed back into the form.
    assert_eq!(wrong.replace("alice", "NAME"), unknown.replace("nobody", "NAME"));
    assert_eq!(wrong.matches(r#"id="form-error""#).count(), 1);
}

#[tokio::test]
async fn login_issues_a_new_session_id_and_the_old_one_stops_working() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    signed_up(&app, "mallory").await;

    // An id planted before login (session fixation) is useless after it.
    let victim = Browser::new();
    let planted = signed_up(&app, "planter").await.session_id(&app).unwrap();
    victim.set_session_id(&app, &planted);
    assert_redirect(&victim.login(&app, "alice", PASSWORD).await, "/chat");
    let fresh = victim.session_id(&app).unwrap();
    assert_ne!(fresh, planted);
    let attacker = Browser::new();
    attacker.set_session_id(&app, &planted);
    assert_redirect(&attacker.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");

    // Signing in again as someone else also replaces the id.
    assert_redirect(&victim.login(&app, "mallory", PASSWORD).await, "/chat");
    let replaced = Browser::new();
    replaced.set_session_id(&app, &fresh);
    assert_redirect(&replaced.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = signed_up(&app, "alice").await;
    let id = browser.session_id(&app).unwrap();
    let res = browser.logout(&app).await;
    assert_redirect(&res, "/login");
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains(&format!("{COOKIE}=")) && cleared.contains("Max-Age=0"), "{cleared}");
    let replay = Browser::new();
    replay.set_session_id(&app, &id);
    assert_redirect(&replay.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    assert_eq!(replay.refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user_and_no_other() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let laptop = signed_up(&app, "alice").await;
    let phone = Browser::new();
    assert_redirect(&phone.login(&app, "alice", PASSWORD).await, "/chat");
    let bob = signed_up(&app, "bob").await;
    assert_redirect(&laptop.post(&app, "/logout/everywhere").await, "/login");
    assert_redirect(&phone.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    assert_redirect(&laptop.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    assert_eq!(bob.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn refresh_slides_the_session_and_reports_its_expiry() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("SESSION_TTL_SECS", "600")]).await;
    assert_eq!(Browser::new().refresh(&app).await.status(), StatusCode::UNAUTHORIZED);
    let browser = signed_up(&app, "alice").await;
    let res = browser.refresh(&app).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let expires_at = body["expires_at"].as_i64().unwrap();
    let now = palaver::clock::UnixMillis::now().as_millis();
    assert!((now + 598_000..=now + 600_000).contains(&expires_at), "{expires_at} vs now {now}");
    // The store agrees: the session key expires exactly then.
    let id = browser.session_id(&app).unwrap();
    let reply = redis.command(&["PEXPIRETIME", &id]).unwrap();
    assert_eq!(reply.trim(), format!(":{expires_at}"));
}

#[tokio::test]
async fn a_session_ends_after_its_inactivity_ttl() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("SESSION_TTL_SECS", "2"), ("REAUTH_WARNING_SECS", "1")]).await;
    let browser = signed_up(&app, "alice").await;
    assert_eq!(browser.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    // Watched in the store: any request would slide the session.
    let id = browser.session_id(&app).unwrap();
    let redis = &redis;
    eventually("the idle session to expire", || {
        let gone = redis.command(&["EXISTS", &id]).unwrap().starts_with(":0");
        async move { gone }
    })
    .await;
    assert_redirect(&browser.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
}

#[tokio::test]
async fn refresh_cannot_pass_the_absolute_lifetime() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(
        Some(&redis),
        &[("SESSION_TTL_SECS", "60"), ("SESSION_MAX_LIFETIME_SECS", "3"), ("REAUTH_WARNING_SECS", "1")],
    )
    .await;
    let browser = signed_up(&app, "alice").await;
    // The session began before this, however long the sign-up's password
    // hash took on a busy machine: the cap is at most 3 s from here.
    let signed_in_at = palaver::clock::UnixMillis::now().as_millis();
    let first: Value = browser.refresh(&app).await.json().await.unwrap();
    assert!(first["expires_at"].as_i64().unwrap() <= signed_in_at + 3_000, "capped by the lifetime: {first}");
    let app_ref = &app;
    let b = browser.clone();
    eventually("refresh to be refused past the lifetime", || {
        let b = b.clone();
        async move {
            let res = b.refresh(app_ref).await;
            match res.status() {
                StatusCode::OK => {
                    let body: Value = res.json().await.unwrap();
                    assert!(body["expires_at"].as_i64().unwrap() <= signed_in_at + 3_000, "never past the cap");
                    false
                }
                status => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED);
                    true
                }
            }
        }
    })
    .await;
    assert_redirect(&browser.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
}

#[tokio::test]
async fn chat_pages_need_a_session_and_a_valid_room() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let stranger = Browser::new();
    assert_redirect(&stranger.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    let browser = signed_up(&app, "alice").await;
    let page = browser.get(&app, "/chat/rust-lang").await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("alice") && html.contains("rust-lang"));
    assert!(html.contains(r#"action="/logout""#));
    assert_eq!(browser.get(&app, "/chat/Not_A_Room").await.status(), StatusCode::NOT_FOUND);
    assert_redirect(&browser.get(&app, "/chat?room=Rust-Lang").await, "/chat/rust-lang");
    assert_eq!(browser.get(&app, "/chat?room=no%20spaces").await.status(), StatusCode::BAD_REQUEST);
    // A room exists once someone opens it: it is listed from then on.
    let lobby = browser.get(&app, "/chat/lobby").await.text().await.unwrap();
    assert!(lobby.contains(r#"href="/chat/rust-lang""#), "{lobby}");
}

#[tokio::test]
async fn repeated_failures_are_throttled_with_429_and_retry_after() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_SECS", "600")]).await;
    signed_up(&app, "alice").await;
    signed_up(&app, "bob").await;
    for _ in 0..3 {
        assert_eq!(Browser::new().login(&app, "alice", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused for the rest of the window.
    let res = Browser::new().login(&app, "alice", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    // Another name from the same address is not blocked yet...
    assert_redirect(&Browser::new().login(&app, "bob", PASSWORD).await, "/chat");
    // ...until the address has failed 5x the limit in all.
    for i in 0..12 {
        Browser::new().login(&app, &format!("guess{i}"), "wrong password").await;
    }
    assert_eq!(Browser::new().login(&app, "bob", PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn health_reports_the_backend() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let res = Browser::new().get(&app, "/healthz").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok","backend":"redis"}"#);
    let memory = TestApp::spawn_memory().await;
    let res = Browser::new().get(&memory, "/healthz").await;
    assert_eq!(res.text().await.unwrap(), r#"{"status":"ok","backend":"memory"}"#);
}

#[tokio::test]
async fn static_assets_are_served_with_types_and_revalidated() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let browser = Browser::new();
    for (path, kind) in [
        ("/static/style.css", "text/css"),
        ("/static/chat.js", "text/javascript"),
        ("/static/favicon.svg", "image/svg+xml"),
    ] {
        let res = browser.get(&app, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        assert!(!res.bytes().await.unwrap().is_empty());
        let again = browser.http.get(app.url(path)).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
    }
    assert_eq!(browser.get(&app, "/static/nope.js").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(browser.get(&app, "/static/../Cargo.toml").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_carry_strict_security_headers() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let res = Browser::new().get(&app, "/login").await;
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert!(res.headers().contains_key("referrer-policy"));
    assert!(!res.headers().contains_key("strict-transport-security"), "HSTS only over TLS");
    let html = res.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
}

#[tokio::test]
async fn passwords_are_stored_only_as_argon2id_hashes() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "Alice").await;
    let record = redis.command(&["GET", "palaver:user:alice"]).unwrap();
    assert!(record.contains("$argon2id$v=19$m=19456,t=2,p=1$"), "{record}");
    assert!(!record.contains(PASSWORD));
}

#[tokio::test]
async fn the_memory_backend_serves_the_same_account_flows() {
    let app = TestApp::spawn_memory().await;
    let browser = signed_up(&app, "alice").await;
    assert_eq!(Browser::new().register(&app, "ALICE", PASSWORD).await.status(), StatusCode::CONFLICT);
    assert_eq!(browser.refresh(&app).await.status(), StatusCode::OK);
    let id = browser.session_id(&app).unwrap();
    assert_redirect(&browser.logout(&app).await, "/login");
    let replay = Browser::new();
    replay.set_session_id(&app, &id);
    assert_redirect(&replay.get(&app, "/chat/lobby").await, "/login?next=%2Fchat%2Flobby");
    assert_redirect(&replay.login(&app, "alice", PASSWORD).await, "/chat");
    assert_ne!(replay.session_id(&app).unwrap(), id);
    assert_eq!(Browser::new().login(&app, "alice", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::ZERO).await;
}

/// Fails logins for `name` from `forwarded_for` until refused; returns how
/// many 401s came first.
async fn failures_until_429(app: &TestApp, name: &str, forwarded_for: &str) -> usize {
    let browser = Browser::new();
    for failures in 0..10 {
        let res = browser
            .http
            .post(app.url("/login"))
            .header("x-forwarded-for", forwarded_for)
            .form(&[("username", name), ("password", "wrong password")])
            .send()
            .await
            .unwrap();
        match res.status() {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => return failures,
            other => panic!("unexpected {other}"),
        }
    }
    panic!("never throttled");
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_is_throttled_on_its_own() {
    let redis = RedisServer::start();
    let limit = ("LOGIN_MAX_FAILURES", "2");
    let proxied = TestApp::spawn_with(Some(&redis), &[limit, ("TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    // Each client address gets its own budget for the same name...
    assert_eq!(failures_until_429(&proxied, "alice", "198.51.100.1").await, 2);
    assert_eq!(failures_until_429(&proxied, "alice", "198.51.100.2").await, 2);

    // ...while from an untrusted peer the header is ignored: one budget.
    let direct = TestApp::spawn_with(Some(&redis), &[limit]).await;
    assert_eq!(failures_until_429(&direct, "bob", "198.51.100.3").await, 2);
    assert_eq!(failures_until_429(&direct, "bob", "198.51.100.4").await, 0, "a spoofed header is no new budget");
}

/// How many keys the store holds: a refused request must not change it.
fn keys_in(redis: &RedisServer) -> String {
    redis.command(&["DBSIZE"]).unwrap().trim().to_owned()
}

/// Sends `request` as raw bytes over a fresh connection (which it closes)
/// and returns the status code and the whole answer.
async fn raw_request(app: &TestApp, request: String) -> (u16, String) {
    let addr = app.addr;
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{answer}"));
        (status, answer)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_post_that_is_not_a_form_gets_415_and_changes_nothing() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    let body = format!("username=bob&password={}", PASSWORD.replace(' ', "+"));
    let login = format!("username=alice&password={}", PASSWORD.replace(' ', "+"));
    let before = keys_in(&redis);
    for content_type in [
        Some("text/plain"),
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded-but-not"),
        Some("x-www-form-urlencoded"),
        None,
    ] {
        for (path, body) in [("/register", &body), ("/login", &login)] {
            let browser = Browser::new();
            let mut req = browser.http.post(app.url(path)).body(body.clone());
            if let Some(content_type) = content_type {
                req = req.header("content-type", content_type);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path} as {content_type:?}");
            assert!(res.headers().get("set-cookie").is_none(), "{path} as {content_type:?}: no session");
            let html = res.text().await.unwrap();
            assert!(html.contains("application/x-www-form-urlencoded"), "the page says what to send: {html}");
        }
    }
    assert_eq!(keys_in(&redis), before, "no user, session or throttle counter was written");
    assert!(redis.command(&["GET", "palaver:user:bob"]).unwrap().starts_with("$-1"), "bob was not created");

    // The form type, in any case and with parameters, is a form.
    let browser = Browser::new();
    for (path, body) in [("/register", &body), ("/login", &login)] {
        let res = browser
            .http
            .post(app.url(path))
            .header("content-type", "Application/X-WWW-Form-URLEncoded ; charset=UTF-8")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_redirect(&res, "/chat");
    }
}

#[tokio::test]
async fn an_oversized_form_gets_413_and_a_chunked_one_411_and_neither_changes_anything() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let form = |name: &str, size: usize| {
        let head = format!("username={name}&password={}&pad=", PASSWORD.replace(' ', "+"));
        format!("{head}{}", "x".repeat(size - head.len()))
    };
    let post = |path: &str, body: String| {
        Browser::new()
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let before = keys_in(&redis);
    for path in ["/register", "/login"] {
        let res = post(path, form("alice", 16 * 1024 + 1)).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(res.headers().get("set-cookie").is_none());
        assert!(res.text().await.unwrap().contains("too large"));

        let body = form("alice", 100);
        let chunked = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            app.addr,
            body.len()
        );
        let (status, answer) = raw_request(&app, chunked).await;
        assert_eq!(status, 411, "{path}: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("set-cookie"), "{answer}");
        assert!(answer.contains("Content-Length"), "the page says what to send: {answer}");
    }
    assert_eq!(keys_in(&redis), before, "nothing was written");
    // Exactly 16 KiB is still a form.
    assert_redirect(&post("/register", form("alice", 16 * 1024)).await.unwrap(), "/chat");
}

#[tokio::test]
async fn the_longest_session_ttl_signs_in_and_a_longer_one_is_refused_at_start() {
    let redis = RedisServer::start();
    // What used to start and then fail every sign-in: Redis refused the
    // expiry (503), the in-process store sent a negative cookie Max-Age.
    for name in ["SESSION_TTL_SECS", "SESSION_MAX_LIFETIME_SECS"] {
        let mut vars = base_vars(Some(&redis));
        vars.insert(name.into(), "999999999999".into());
        let err = palaver::Config::from_map(&vars).unwrap_err();
        assert_eq!(err.name, name);
    }

    let year = "31536000";
    let app =
        TestApp::spawn_with(Some(&redis), &[("SESSION_TTL_SECS", year), ("SESSION_MAX_LIFETIME_SECS", year)]).await;
    let browser = signed_up(&app, "alice").await;
    assert_eq!(browser.get(&app, "/chat/lobby").await.status(), StatusCode::OK);
    let again = Browser::new();
    let res = again.login(&app, "alice", PASSWORD).await;
    assert_redirect(&res, "/chat");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    let max_age: i64 = cookie.split("Max-Age=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();
    assert!((31_535_990..=31_536_000).contains(&max_age), "{cookie}");
    let body: Value = again.refresh(&app).await.json().await.unwrap();
    let now = palaver::clock::UnixMillis::now().as_millis();
    let expires_at = body["expires_at"].as_i64().unwrap();
    assert!((now + 31_535_998_000..=now + 31_536_000_000).contains(&expires_at), "{expires_at} vs {now}");
    let (_socket, hello) = again.join(&app, "").await;
    assert!(hello["expires_at"].as_i64().unwrap() >= expires_at, "{hello}");
}

#[tokio::test]
async fn signing_in_returns_to_the_page_that_asked_and_never_off_the_site() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    // A room's page, signed out, sends to sign in with the way back.
    assert_redirect(&Browser::new().get(&app, "/chat/some-room").await, "/login?next=%2Fchat%2Fsome-room");
    // An invalid room name is not carried.
    assert_redirect(&Browser::new().get(&app, "/chat/No%20Room").await, "/login");

    let cases = [
        ("/chat/some-room", "/chat/some-room"),
        ("/chat/x?y=1", "/chat/x?y=1"),
        ("//evil.example", "/chat"),
        ("https://evil.example", "/chat"),
        ("/\\evil.example", "/chat"),
        ("//evil.example/chat", "/chat"),
        ("/\t/evil.example", "/chat"),
        ("/ /x", "/chat"),
        ("chat/lobby", "/chat"),
        ("", "/chat"),
    ];
    for (i, (next, to)) in cases.into_iter().enumerate() {
        let browser = Browser::new();
        let form = [("username", "alice"), ("password", PASSWORD), ("next", next)];
        assert_redirect(&browser.post_form(&app, "/login", &form).await, to);
        // Signed in, the sign-in page goes straight on, by the same rule.
        let query = serde_urlencoded::to_string([("next", next)]).unwrap();
        assert_redirect(&browser.get(&app, &format!("/login?{query}")).await, to);
        // Registering follows it too (a few: registrations are throttled).
        if i < 5 {
            let name = format!("newcomer{i}");
            let form = [("username", name.as_str()), ("password", PASSWORD), ("next", next)];
            assert_redirect(&Browser::new().post_form(&app, "/register", &form).await, to);
        }
    }

    // The form carries a good `next` (escaped) and drops a bad one.
    let page = Browser::new().get(&app, "/login?next=%2Fchat%2Fa-b").await.text().await.unwrap();
    assert!(
        page.contains(r#"name="next" value="/chat/a-b""#) || page.contains(r#"name="next" value="&#x2f;chat"#),
        "{page}"
    );
    assert!(page.contains(r#"href="/register?next=%2Fchat%2Fa-b""#), "{page}");
    let page = Browser::new().get(&app, "/login?next=%2F%2Fevil.example").await.text().await.unwrap();
    assert!(!page.contains(r#"name="next""#) && !page.contains("evil"), "{page}");
    // A failed sign-in keeps it.
    let form = [("username", "alice"), ("password", "wrong password"), ("next", "/chat/a-b")];
    let page = Browser::new().post_form(&app, "/login", &form).await.text().await.unwrap();
    assert!(page.contains(r#"name="next""#), "{page}");

    // Why the visitor is there: a fixed set of codes; others say nothing.
    for (reason, sentence) in [
        ("logged_out", Some("You were signed out on another device or tab.")),
        ("expired", Some("Your session expired.")),
        ("revoked", Some("Your session was ended.")),
        ("hacked", None),
        ("", None),
    ] {
        let page = Browser::new().get(&app, &format!("/login?reason={reason}")).await.text().await.unwrap();
        match sentence {
            Some(s) => assert!(page.contains(s), "reason={reason}: {page}"),
            None => assert!(!page.contains("sign-in-reason"), "reason={reason}: {page}"),
        }
    }
    // A query that does not parse is no query.
    assert_eq!(Browser::new().get(&app, "/login?next=%zz&&=").await.status(), StatusCode::OK);
}
