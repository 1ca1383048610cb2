//! Sockets never outlive their session (docs/protocol.md §3, §4): logout on any
//! instance, logout everywhere, expiry with in-band re-authentication,
//! revalidation against the store, and what a Redis restart changes.
//!
//! Instances here revalidate rarely (`REVALIDATE_INTERVAL_SECS=300`) unless a
//! test is about revalidation, so a socket closing quickly proves the event
//! path (or the resync sweep), not the periodic sweep.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

on_both! {
    logout_closes_every_socket_of_that_session_on_every_instance_and_no_other,
    logout_everywhere_closes_every_socket_of_the_user_on_every_instance,
    signing_in_over_a_live_session_ends_that_sessions_sockets,
    revalidation_closes_sockets_whose_session_vanished,
    a_socket_is_warned_then_closed_at_its_deadline_without_reauth,
    reauth_after_refresh_moves_the_deadline_and_keeps_the_socket,
    activity_over_http_elsewhere_keeps_the_socket_without_a_close,
    reauth_for_an_ended_session_closes_4401,
    graceful_shutdown_closes_sockets_with_1001,
}

const SLOW_SWEEP: (&str, &str) = ("REVALIDATE_INTERVAL_SECS", "300");
/// A logout reaches every instance "within one second"; allow for a slow CI.
const LOGOUT_DEADLINE: Duration = Duration::from_secs(3);

async fn two_instances(redis: &dyn TestRedis, extra: &[(&str, &str)]) -> (TestApp, TestApp) {
    let mut vars = vec![SLOW_SWEEP];
    vars.extend_from_slice(extra);
    (TestApp::spawn_with(Some(redis), &vars).await, TestApp::spawn_with(Some(redis), &vars).await)
}

/// The same browser (cookie) on another instance: instances share sessions.
fn on(app: &TestApp, browser: &Browser, source: &TestApp) -> Browser {
    let other = Browser::new();
    other.set_session_id(app, &browser.session_id(source).unwrap());
    other
}

async fn logout_closes_every_socket_of_that_session_on_every_instance_and_no_other(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis, &[]).await;
    let laptop = signed_up(&a, "alice").await;
    let phone = Browser::new();
    assert_redirect(&phone.login(&a, "alice", PASSWORD).await, "/chat");

    let (mut laptop_a, _) = laptop.join(&a, "").await;
    let (mut laptop_b, _) = on(&b, &laptop, &a).join(&b, "?room=other").await;
    let (mut phone_b, _) = on(&b, &phone, &a).join(&b, "").await;

    assert_redirect(&laptop.logout(&a).await, "/login");
    for socket in [&mut laptop_a, &mut laptop_b] {
        let closed = within_for(LOGOUT_DEADLINE, "the logged-out socket to close", socket.closed()).await;
        assert_eq!(closed, (4401, "logged out".to_string()));
    }
    // The other session of the same user is untouched.
    assert_eq!(phone_b.say("still here", "p1").await["type"], "ack");
}

async fn logout_everywhere_closes_every_socket_of_the_user_on_every_instance(redis: &dyn TestRedis) {
    let (a, b) = two_instances(redis, &[]).await;
    let laptop = signed_up(&a, "alice").await;
    let phone = Browser::new();
    phone.login(&b, "alice", PASSWORD).await;
    let bob = signed_up(&b, "bob").await;

    let (mut s1, _) = laptop.join(&a, "").await;
    let (mut s2, _) = phone.join(&b, "").await;
    let (mut s3, _) = on(&a, &phone, &b).join(&a, "?room=other").await;
    let (mut bobs, _) = bob.join(&b, "").await;

    assert_redirect(&laptop.post(&a, "/logout/everywhere").await, "/login");
    for socket in [&mut s1, &mut s2, &mut s3] {
        let closed = within_for(LOGOUT_DEADLINE, "every socket of the user to close", socket.closed()).await;
        assert_eq!(closed, (4401, "logged out".to_string()));
    }
    assert_eq!(bobs.say("unaffected", "b1").await["type"], "ack");
    assert_eq!(phone.open_socket(&b, "").await.err(), Some(StatusCode::UNAUTHORIZED));
}

/// How many subscribers Redis counts on the events channel.
fn subscribers(redis: &RedisServer) -> Option<usize> {
    let reply = redis.command(&["PUBSUB", "NUMSUB", "palaver:events"])?;
    reply.lines().last()?.strip_prefix(':')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_every_instance_subscribes_again_and_hears_logouts() {
    let mut redis = RedisServer::start_persistent();
    let (a, b) = two_instances(&redis, &[]).await;
    assert_eq!(subscribers(&redis), Some(2));
    let alice = signed_up(&a, "alice").await;

    // A restarted Redis starts with no subscriptions: reaching two again
    // proves both instances subscribed anew (they may already have).
    redis.restart();
    let redis_ref = &redis;
    eventually("both instances to subscribe again", || async move { subscribers(redis_ref) == Some(2) }).await;

    let (mut socket_b, _) = on(&b, &alice, &a).join(&b, "").await;
    assert_redirect(&alice.logout(&a).await, "/login");
    let closed = within_for(LOGOUT_DEADLINE, "the event to reach the other instance", socket_b.closed()).await;
    assert_eq!(closed, (4401, "logged out".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_missed_during_a_reconnect_is_caught_by_the_resync_sweep() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::spawn_with(Some(&redis), &[SLOW_SWEEP]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    // The session ends in the store with no event anyone could hear (as if
    // published while this instance's subscriber was away)...
    let id = alice.session_id(&app).unwrap();
    assert!(redis.command(&["DEL", &id]).unwrap().starts_with(":1"));
    // ...and the reconnect after a Redis restart triggers the sweep. Two
    // waits, each with its own deadline, so that a slow run says which
    // step was slow: the subscriber's reconnect (fred's backoff, at most
    // 2 s between attempts) and resubscribe, which /readyz reports; then
    // the sweep it starts (retried at most 2 s apart while the command
    // pool reconnects) closing the socket.
    redis.restart();
    let probe = Browser::new();
    eventually("the subscriber to reconnect and resubscribe (/readyz 200)", || {
        let (probe, app) = (&probe, &app);
        async move { probe.get(app, "/readyz").await.status() == StatusCode::OK }
    })
    .await;
    let closed = within("the resync sweep to close the socket", socket.closed()).await;
    assert_eq!(closed, (4401, "session revoked".to_string()));
}

async fn signing_in_over_a_live_session_ends_that_sessions_sockets(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[SLOW_SWEEP]).await;
    let shared_computer = signed_up(&app, "alice").await;
    signed_up(&app, "bob").await;
    let (mut alices, _) = shared_computer.join(&app, "").await;
    assert_redirect(&shared_computer.login(&app, "bob", PASSWORD).await, "/chat");
    let closed = within_for(LOGOUT_DEADLINE, "the replaced session's socket to close", alices.closed()).await;
    assert_eq!(closed, (4401, "logged out".to_string()));
}

async fn revalidation_closes_sockets_whose_session_vanished(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[("REVALIDATE_INTERVAL_SECS", "1")]).await;
    let alice = signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    let (mut alices, _) = alice.join(&app, "").await;
    let (mut bobs, _) = bob.join(&app, "").await;
    redis.command(&["DEL", &alice.session_id(&app).unwrap()]);
    assert_eq!(alices.closed().await, (4401, "session revoked".to_string()));
    assert_eq!(bobs.say("fine", "b1").await["type"], "ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sockets_stay_open_while_redis_is_down() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::spawn_with(Some(&redis), &[("REVALIDATE_INTERVAL_SECS", "1")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    redis.stop();
    // Sweeps run meanwhile and fail; the socket was verified and stays. A
    // reauth cannot be checked and says so, without closing.
    for _ in 0..3 {
        socket.send_json(json!({"type": "reauth"})).await;
        let error = socket.next_of("error").await;
        assert_eq!(error["code"], "unavailable");
    }
    redis.restart();
    let socket = &mut socket;
    within("the socket to work again", async {
        loop {
            socket.send_json(json!({"type": "reauth"})).await;
            match socket.next_frame().await {
                Frame::Json(v) if v["type"] == "reauthenticated" => break,
                Frame::Json(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await;
}

async fn a_socket_is_warned_then_closed_at_its_deadline_without_reauth(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[("SESSION_TTL_SECS", "3"), ("REAUTH_WARNING_SECS", "2")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, hello) = alice.join(&app, "").await;
    let warning = socket.next_of("reauthenticate").await;
    assert_eq!(warning["expires_at"], hello["expires_at"]);
    assert!(
        palaver::clock::UnixMillis::now().as_millis() < hello["expires_at"].as_i64().unwrap(),
        "warned before the deadline"
    );
    assert_eq!(socket.closed().await, (4401, "session expired".to_string()));
    assert!(palaver::clock::UnixMillis::now().as_millis() >= hello["expires_at"].as_i64().unwrap(), "not closed early");
}

async fn reauth_after_refresh_moves_the_deadline_and_keeps_the_socket(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[("SESSION_TTL_SECS", "3"), ("REAUTH_WARNING_SECS", "2")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, hello) = alice.join(&app, "").await;
    let first_deadline = hello["expires_at"].as_i64().unwrap();
    let mut deadline = first_deadline;
    // Do what the browser client does, three times over: past the first
    // deadline by several seconds, the socket is still served.
    for round in 0..3 {
        let warning = socket.next_of("reauthenticate").await;
        assert_eq!(warning["expires_at"].as_i64().unwrap(), deadline, "round {round}");
        let refreshed: serde_json::Value = alice.refresh(&app).await.json().await.unwrap();
        socket.send_json(json!({"type": "reauth"})).await;
        let answer = socket.next_of("reauthenticated").await;
        assert_eq!(answer["expires_at"], refreshed["expires_at"]);
        assert!(answer["expires_at"].as_i64().unwrap() >= deadline);
        deadline = answer["expires_at"].as_i64().unwrap();
    }
    assert!(palaver::clock::UnixMillis::now().as_millis() > first_deadline);
    assert_eq!(socket.say("still here", "c1").await["type"], "ack");
}

async fn activity_over_http_elsewhere_keeps_the_socket_without_a_close(redis: &dyn TestRedis) {
    // The session lives 6 s past each request: long enough that one slow
    // request on a loaded cluster (a 3 s lifetime once saw a 303) does not
    // let it lapse between two, short enough to pass its first deadline.
    let app = TestApp::spawn_with(Some(redis), &[("SESSION_TTL_SECS", "6"), ("REAUTH_WARNING_SECS", "1")]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, hello) = alice.join(&app, "").await;
    let first_deadline = hello["expires_at"].as_i64().unwrap();
    // Another tab keeps using the site (each request slides the session),
    // while this socket never sends `reauth`.
    let tab = alice.clone();
    let app_ref = &app;
    let browsing = async move {
        while palaver::clock::UnixMillis::now().as_millis() < first_deadline + 2_500 {
            assert_eq!(tab.get(app_ref, "/chat/lobby").await.status(), StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let watching = async {
        loop {
            match socket.next_frame().await {
                Frame::Json(_) => continue,
                other => panic!("the socket closed although the session was alive: {other:?}"),
            }
        }
    };
    tokio::select! {
        _ = browsing => {}
        _ = watching => unreachable!(),
    }
    assert_eq!(socket.say("still here", "c1").await["type"], "ack");
}

async fn reauth_for_an_ended_session_closes_4401(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[SLOW_SWEEP]).await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    redis.command(&["DEL", &alice.session_id(&app).unwrap()]);
    socket.send_json(json!({"type": "reauth"})).await;
    let (code, _) = socket.closed().await;
    assert_eq!(code, 4401);
}

async fn graceful_shutdown_closes_sockets_with_1001(redis: &dyn TestRedis) {
    let app = TestApp::spawn(redis).await;
    let alice = signed_up(&app, "alice").await;
    let (mut s1, _) = alice.join(&app, "").await;
    let (mut s2, _) = alice.join(&app, "?room=other").await;
    let (stopped, c1, c2) = tokio::join!(app.shutdown(), s1.closed(), s2.closed());
    stopped.expect("clean shutdown");
    assert_eq!(c1, (1001, "server shutting down".to_string()));
    assert_eq!(c2, (1001, "server shutting down".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_says_it_is_not_ready_before_it_closes_any_socket() {
    let redis = RedisServer::start();
    let mut app = TestApp::spawn_with(Some(&redis), &[("SHUTDOWN_DRAIN_SECS", "2")]).await;
    let alice = signed_up(&app, "alice").await;
    let probe = Browser::new();
    let ready = probe.get(&app, "/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.text().await.unwrap(), r#"{"status":"ok","backend":"redis"}"#);
    let (mut socket, _) = alice.join(&app, "").await;

    app.begin_shutdown();
    let (probe_ref, app_ref) = (&probe, &app);
    eventually("/readyz to say draining", || async move {
        let res = probe_ref.get(app_ref, "/readyz").await;
        res.status() == StatusCode::SERVICE_UNAVAILABLE
            && res.text().await.unwrap() == r#"{"status":"draining","backend":"redis"}"#
    })
    .await;
    // Draining: the open socket is still served, new ones are refused.
    assert_eq!(socket.say("still served", "d1").await["type"], "ack");
    assert_eq!(alice.open_socket(&app, "").await.err(), Some(StatusCode::SERVICE_UNAVAILABLE));
    // Then the shutdown goes on as ever.
    assert_eq!(socket.closed().await, (1001, "server shutting down".to_string()));
}

#[tokio::test]
async fn the_memory_backend_closes_sockets_on_logout_too() {
    let app = TestApp::spawn_memory().await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;
    alice.logout(&app).await;
    assert_eq!(socket.closed().await, (4401, "logged out".to_string()));
}
