//! palaver's main journeys in real headless Chromium, driven over WebDriver
//! (chromedriver): registering and chatting across two instances, logout in
//! another tab, logout everywhere, staying signed in past the session TTL
//! (and not past a session ended on the server), reconnecting to a
//! restarted instance without losing or repeating messages, HTML in
//! messages staying text, and the login and register form errors.
//! `browser/ux.rs` holds the journeys of the chat page's details,
//! `browser/rooms.rs` those of private rooms and direct conversations,
//! `browser/words.rs` the page's words and the composer's limit.
//!
//! Each test starts its own chromedriver, browsers, `redis-server` and
//! instances; see `browser/harness.rs` for how failures leave a screenshot
//! and the page source under `target/browser-artifacts/`.

mod account;
mod harness;
mod proxy;
mod rooms;
mod ux;
mod words;

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use harness::*;

/// "Within two seconds" for a logout to reach another tab (docs/protocol.md §4: one second
/// while Redis is up; the test allows for a loaded machine).
const LOGOUT_DEADLINE: Duration = Duration::from_secs(2);
/// The chat client's reconnect backoff cap (30 s), plus a margin.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(35);

/// A Redis and two instances on it.
async fn two_instances() -> (RedisServer, TestApp, TestApp) {
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    let b = TestApp::spawn(&redis).await;
    (redis, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_on_two_instances_see_each_other_and_chat() {
    let j = Journey::start("chat").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.register(&a, "alice").await?;
        bob.register(&b, "bob").await?;

        for (chrome, other) in [(&alice, "bob"), (&bob, "alice")] {
            chrome
                .until_texts(&format!("{other} to be online"), "#online li", PAGE_DEADLINE, |names| {
                    names.iter().any(|n| n == other)
                })
                .await?;
        }

        alice.send("Hi bob, this is alice on instance A").await?;
        bob.wait_confirmed(&["Hi bob, this is alice on instance A"], PAGE_DEADLINE).await?;
        bob.send_with_enter("Hello alice, bob here on B").await?;
        alice.wait_confirmed(&["Hello alice, bob here on B"], PAGE_DEADLINE).await?;

        // Both pages show the same conversation, each message once, in order
        // (the sender's own message included, confirmed in place).
        let expected = ["Hi bob, this is alice on instance A", "Hello alice, bob here on B"];
        for chrome in [&alice, &bob] {
            chrome
                .until_texts("the whole conversation, once each", "#messages li.msg .msg-body", PAGE_DEADLINE, |b| {
                    b == expected
                })
                .await?;
            let confirmed = chrome.confirmed_bodies().await?;
            ensure!(confirmed == expected, "{}: confirmed messages {confirmed:?}", chrome.name);
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_in_one_tab_sends_the_other_tab_to_login() {
    let j = Journey::start("logout-tab").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let chrome = j.browser("alice").await?;
        chrome.register(&a, "alice").await?;
        let tab1 = chrome.client.window().await.ctx("the first tab")?;
        let tab2 = chrome.client.new_window(true).await.ctx("opening a second tab")?.handle;
        chrome.client.switch_to_window(tab2.clone()).await.ctx("switching to tab 2")?;
        // The second tab talks to the other instance (cookies are per host,
        // not per port, and sessions are shared through Redis).
        chrome.goto(&b.url("/chat/lobby")).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;
        chrome.js("window.__sameDocument = true;", vec![]).await?;

        chrome.client.switch_to_window(tab1).await.ctx("switching to tab 1")?;
        let clicked = Instant::now();
        chrome.click("#logout").await?;
        chrome.wait_path("/login", PAGE_DEADLINE).await?;

        chrome.client.switch_to_window(tab2).await.ctx("switching to tab 2")?;
        let left = LOGOUT_DEADLINE.saturating_sub(clicked.elapsed());
        chrome.wait_path("/login", left).await.map_err(|e| format!("tab 2 did not leave the chat in time: {e}"))?;
        let reloaded = chrome.js("return window.__sameDocument === undefined;", vec![]).await?;
        ensure!(reloaded == json!(true), "tab 2 is at /login but still the chat document");

        // And the session is really over: the chat sends the tab to sign in.
        chrome.goto(&b.url("/chat/lobby")).await?;
        chrome.wait_path("/login", PAGE_DEADLINE).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_sends_the_users_other_browser_to_login() {
    let j = Journey::start("logout-everywhere").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let laptop = j.browser("laptop").await?;
        let phone = j.browser("phone").await?;
        laptop.register(&a, "alice").await?;
        phone.login(&b, "alice").await?;
        ensure!(
            laptop.session_id().await? != phone.session_id().await?,
            "the two browsers should hold two different sessions"
        );

        // It asks first, in a dialog that explains what happens.
        laptop.click("#logout-everywhere").await?;
        let asked = laptop.text("#logout-everywhere-dialog").await?;
        ensure!(asked.contains("every other browser"), "the dialog reads {asked:?}");
        let clicked = Instant::now();
        laptop.click("#logout-everywhere-confirm").await?;
        laptop.wait_path("/login", PAGE_DEADLINE).await?;
        let left = LOGOUT_DEADLINE.saturating_sub(clicked.elapsed());
        phone.wait_path("/login", left).await.map_err(|e| format!("the other browser stayed in the chat: {e}"))?;

        // Its session is gone too, not only its socket.
        phone.goto(&b.url("/chat/lobby")).await?;
        phone.wait_path("/login", PAGE_DEADLINE).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_page_outlives_the_session_ttl_but_not_a_session_ended_on_the_server() {
    const TTL: Duration = Duration::from_secs(6);
    let j = Journey::start("session-ttl").await;
    let redis = RedisServer::start();
    let vars = [("SESSION_TTL_SECS", "6"), ("REAUTH_WARNING_SECS", "3")];
    let a = TestApp::spawn_with(Some(&redis), &vars).await;
    let b = TestApp::spawn_with(Some(&redis), &vars).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.register(&a, "alice").await?;
        let signed_in = Instant::now();
        alice.js("window.__sameDocument = true;", vec![]).await?;
        bob.register(&b, "bob").await?;

        // Alice's page, left alone, stays connected well past the expiry
        // of the session it was opened with: it refreshes and
        // re-authenticates in-band. Watched all along, while bob's sessions
        // are ended under his page.
        let until = signed_in + TTL * 5 / 2;
        let alice_stays = async {
            while Instant::now() < until {
                let state = alice.state().await?;
                ensure!(
                    state.as_deref() == Some("connected"),
                    "alice's page went {state:?} {:?} after signing in",
                    signed_in.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(())
        };
        let bob_is_sent_away = async {
            // Bob's session key is deleted from Redis behind his page's
            // back (no logout event is published).
            let session = bob.session_id().await?;
            let deleted = redis.command(&["DEL", &session]);
            ensure!(deleted.as_deref() == Some(":1\r\n"), "deleting bob's session key {session}: {deleted:?}");
            bob.wait_path("/login", TTL + Duration::from_secs(5)).await?;

            // Signed in again, his new session is logged out by another
            // client over HTTP with the same cookie.
            bob.login(&b, "bob").await?;
            let http = Browser::new();
            http.set_session_id(&b, &bob.session_id().await?);
            let res = http.logout(&b).await;
            ensure!(
                res.status() == reqwest::StatusCode::SEE_OTHER,
                "logging bob out over HTTP answered {}",
                res.status()
            );
            bob.wait_path("/login", LOGOUT_DEADLINE).await
        };
        tokio::try_join!(alice_stays, bob_is_sent_away)?;
        let same = alice.js("return window.__sameDocument === true;", vec![]).await?;
        ensure!(same == json!(true), "alice's chat page was reloaded or left");
        ensure!(alice.path().await? == "/chat/lobby", "alice left the chat");
        // One socket all along, kept alive by in-band re-authentication
        // (not by reconnecting, nor only by the server re-reading the
        // session): one hello on the wire, and answers to its reauths.
        let hellos = alice.frames_received("hello").await?.len();
        ensure!(hellos == 1, "alice's page opened {hellos} sockets");
        let reauthenticated = alice.frames_received("reauthenticated").await?.len();
        ensure!(reauthenticated >= 2, "alice's page re-authenticated {reauthenticated} times");

        let body = format!("still here after {:?}", signed_in.elapsed());
        alice.send(&body).await?;
        alice.wait_confirmed(&[&body], PAGE_DEADLINE).await?;
        ensure!(alice.path().await? == "/chat/lobby", "alice left the chat after sending");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reconnects_to_its_restarted_instance_and_gets_what_it_missed_once_in_order() {
    let j = Journey::start("restart").await;
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    let b_addr = format!("127.0.0.1:{}", free_port());
    let b_vars = [("LISTEN_ADDR", b_addr.as_str())];
    let mut b = Some(TestApp::spawn_with(Some(&redis), &b_vars).await);
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.register(&a, "alice").await?;
        bob.register(b.as_ref().unwrap(), "bob").await?;
        bob.js("window.__sameDocument = true;", vec![]).await?;

        bob.send("before the restart").await?;
        alice.wait_confirmed(&["before the restart"], PAGE_DEADLINE).await?;

        // Instance B goes away gracefully (close 1001) under bob's open page.
        b.take().unwrap().shutdown().await.ctx("stopping instance B")?;
        bob.wait_not_state("connected", PAGE_DEADLINE).await?;

        let missed = ["missed 1", "missed 2", "missed 3"];
        for body in missed {
            alice.send(body).await?;
            alice.wait_confirmed(&[body], PAGE_DEADLINE).await?;
        }

        b = Some(TestApp::spawn_with(Some(&redis), &b_vars).await);
        // The page retries with full-jitter exponential backoff capped at
        // 30 s, so after a few refused attempts its next try may be that far
        // off; allow the cap.
        bob.wait_state("connected", RECONNECT_DEADLINE).await?;
        alice.send("after the restart").await?;

        let expected = ["before the restart", "missed 1", "missed 2", "missed 3", "after the restart"];
        bob.until_texts("the missed messages and the next one", "#messages li.msg .msg-body", PAGE_DEADLINE, |b| {
            b.last().map(String::as_str) == Some("after the restart")
        })
        .await?;
        let shown = bob.texts("#messages li.msg .msg-body").await?;
        ensure!(shown == expected, "bob's page shows {shown:?}, expected {expected:?}");
        let same = bob.js("return window.__sameDocument === true;", vec![]).await?;
        ensure!(same == json!(true), "bob's page was reloaded instead of reconnecting");

        // And bob can talk again through the restarted instance.
        bob.send_with_enter("bob is back").await?;
        alice.wait_confirmed(&["bob is back"], PAGE_DEADLINE).await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_in_a_message_is_shown_as_text_and_never_runs() {
    const IMG: &str = r#"<img src=x onerror="window.__pwned=1">"#;
    const SCRIPT: &str = "<script>window.__pwned=2</script>";
    let j = Journey::start("html").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.register(&a, "alice").await?;
        bob.register(&b, "bob").await?;

        alice.send(IMG).await?;
        alice.send_with_enter(SCRIPT).await?;
        let check = |chrome: Chrome, how: &'static str| async move {
            chrome.wait_confirmed(&[IMG, SCRIPT], PAGE_DEADLINE).await?;
            let injected = chrome
                .js("return document.querySelectorAll('#messages img, #messages script').length;", vec![])
                .await?;
            ensure!(injected == json!(0), "{} ({how}): the message became {injected} element(s)", chrome.name);
            let pwned = chrome.js("return typeof window.__pwned;", vec![]).await?;
            ensure!(
                pwned == json!("undefined"),
                "{} ({how}): the message ran (window.__pwned is {pwned})",
                chrome.name
            );
            Ok::<_, String>(())
        };
        check(alice.clone(), "sent").await?;
        check(bob.clone(), "received live").await?;
        // Rendered on the server this time.
        bob.goto(&b.url("/chat/lobby")).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        check(bob.clone(), "rendered by the server").await?;
        // Whatever was going to fire (the image's error) has fired by now.
        alice.send("done").await?;
        bob.wait_confirmed(&["done"], PAGE_DEADLINE).await?;
        check(alice, "sent, later").await?;
        check(bob, "rendered by the server, later").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_taken_name_show_their_errors() {
    let j = Journey::start("form-errors").await;
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    signed_up(&a, "alice").await;
    j.run(async {
        let chrome = j.browser("visitor").await?;

        chrome.goto(&a.url("/login")).await?;
        chrome.fill("#username", "alice").await?;
        chrome.fill("#password", "not the password").await?;
        chrome.click("#login-submit").await?;
        let error = chrome.text("#form-error").await?;
        ensure!(error.contains("Wrong username or password"), "login error reads {error:?}");
        ensure!(chrome.path().await? == "/login", "a failed login left the login page");

        chrome.goto(&a.url("/register")).await?;
        chrome.fill("#username", "Alice").await?;
        chrome.fill("#password", PASSWORD).await?;
        chrome.click("#register-submit").await?;
        let error = chrome.text("#form-error").await?;
        ensure!(error.contains("taken"), "register error reads {error:?}");
        ensure!(chrome.path().await? == "/register", "registering a taken name left the register page");

        // The right password still works after all that.
        chrome.login(&a, "alice").await
    })
    .await;
}
