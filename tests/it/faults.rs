//! Failing closed: while Redis does not answer, nothing is let in; when it
//! returns, everything recovers without a restart.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_everything_fails_closed_and_recovers_after() {
    let mut redis = RedisServer::start_persistent();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    assert_eq!(alice.get(&app, "/chat/lobby").await.status(), StatusCode::OK);

    redis.stop();
    let stranger = Browser::new();
    assert_eq!(stranger.get(&app, "/healthz").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        stranger.get(&app, "/healthz").await.text().await.unwrap(),
        r#"{"status":"unavailable","backend":"redis"}"#
    );
    // Not ready either: a load balancer stops sending it traffic.
    let ready = stranger.get(&app, "/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text().await.unwrap(), r#"{"status":"unavailable","backend":"redis"}"#);
    assert_eq!(stranger.login(&app, "alice", PASSWORD).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(stranger.register(&app, "bob", PASSWORD).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = alice.get(&app, "/chat/lobby").await;
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE, "a page needing a session is never served");
    assert!(!page.text().await.unwrap().contains("id=\"chat\""));
    assert_eq!(alice.get(&app, "/").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(alice.refresh(&app).await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(alice.open_socket(&app, "").await.err(), Some(StatusCode::SERVICE_UNAVAILABLE));
    // Pages without a session still render.
    assert_eq!(stranger.get(&app, "/login").await.status(), StatusCode::OK);

    redis.restart();
    let app_ref = &app;
    eventually("health to recover", || async move {
        Browser::new().get(app_ref, "/healthz").await.status() == StatusCode::OK
    })
    .await;
    // Each pooled connection comes back on its own: until the last has, a
    // request may still meet one that fails closed (503). Then the page is
    // served with the session from before: a redirect would mean it was lost.
    let alice_ref = &alice;
    eventually("the pool to reconnect", || async move {
        alice_ref.get(app_ref, "/chat/lobby").await.status() != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(alice.get(&app, "/chat/lobby").await.status(), StatusCode::OK, "the session survived");
    eventually("readiness to recover (store and subscription)", || async move {
        Browser::new().get(app_ref, "/readyz").await.status() == StatusCode::OK
    })
    .await;
    assert_redirect(&Browser::new().register(&app, "bob", PASSWORD).await, "/chat");
    alice.join(&app, "").await;
}
