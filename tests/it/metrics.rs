//! `/metrics` (README "Metrics"): served only on `METRICS_ADDR`, never on
//! the public listener, and after a scripted scenario on two instances the
//! counters say exactly what the scenario did.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// Scrapes an instance's `/metrics`.
async fn scrape(app: &TestApp) -> String {
    let addr = app.metrics_addr.expect("METRICS_ADDR is set");
    let res = reqwest::get(format!("http://{addr}/metrics")).await.expect("GET /metrics");
    assert_eq!(res.status(), StatusCode::OK);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    res.text().await.unwrap()
}

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[track_caller]
fn assert_series(text: &str, series: &str, want: f64) {
    assert_eq!(value(text, series), Some(want), "{series} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_match_a_scripted_scenario_on_both_instances() {
    let redis = RedisServer::start();
    let (a, b) = TestApp::spawn_group(&redis, &[("METRICS_ADDR", "127.0.0.1:0")]).await;
    assert_ne!(a.metrics_addr, Some(a.addr), "a listener of its own");
    let public = Browser::new().get(&a, "/metrics").await;
    assert_eq!(public.status(), StatusCode::NOT_FOUND, "never on the public listener");

    // Register, one failed and one successful sign-in: three Argon2 runs and
    // the registration's strength estimate, all on the password threads.
    let alice = Browser::new();
    assert_redirect(&alice.register(&a, "alice", PASSWORD).await, "/chat");
    assert_eq!(alice.login(&a, "alice", "not the password").await.status(), StatusCode::UNAUTHORIZED);
    assert_redirect(&alice.login(&a, "alice", PASSWORD).await, "/chat");

    // A socket on each instance; two refused upgrades on a (no cookie, a
    // token that is not one).
    let (mut on_a, _) = alice.join(&a, "").await;
    let (mut on_b, _) = alice.join(&b, "").await;
    assert_eq!(Browser::new().open_socket(&a, "").await.err(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(Browser::new().open_socket(&a, "?token=not-a-token").await.err(), Some(StatusCode::UNAUTHORIZED));

    // One message: acked on a, delivered to both sockets.
    on_a.send_json(json!({"type": "send", "body": "hello", "client_id": "c1"})).await;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let frame = on_a.next_of_any(&["ack", "message"]).await;
        acked |= frame["type"] == "ack";
        delivered |= frame["type"] == "message";
    }
    assert_eq!(on_b.next_of("message").await["body"], "hello");

    // Logout on a closes both.
    assert_redirect(&alice.logout(&a).await, "/login");
    assert_eq!(on_a.closed().await, (4401, "logged out".to_owned()));
    assert_eq!(on_b.closed().await, (4401, "logged out".to_owned()));

    // The gauge falls as each socket's task ends, just after its close.
    for app in [&a, &b] {
        eventually("the open sockets gauge to reach 0", || async move {
            value(&scrape(app).await, "palaver_sockets_open") == Some(0.0)
        })
        .await;
    }

    let text = scrape(&a).await;
    assert_series(&text, r#"palaver_logins_total{via="form",outcome="unauthorized"}"#, 1.0);
    assert_series(&text, r#"palaver_logins_total{via="form",outcome="success"}"#, 1.0);
    assert_series(&text, "palaver_password_hash_wait_seconds_count", 4.0);
    assert_series(&text, r#"palaver_upgrades_total{outcome="accepted"}"#, 1.0);
    assert_series(&text, r#"palaver_upgrades_total{outcome="unauthorized"}"#, 2.0);
    assert_series(&text, "palaver_upgrade_seconds_count", 3.0);
    assert_series(&text, r#"palaver_token_checks_total{outcome="invalid"}"#, 1.0);
    assert_series(&text, r#"palaver_socket_closes_total{reason="logged out"}"#, 1.0);
    assert_series(&text, "palaver_fanout_lag_seconds_count", 1.0);
    assert!(text.contains("palaver_store_command_seconds_bucket{command="), "store latency by command:\n{text}");
    assert!(!text.contains("palaver_store_errors_total"), "no store errors:\n{text}");

    let text = scrape(&b).await;
    assert_series(&text, r#"palaver_upgrades_total{outcome="accepted"}"#, 1.0);
    assert_series(&text, "palaver_upgrade_seconds_count", 1.0);
    assert_series(&text, r#"palaver_socket_closes_total{reason="logged out"}"#, 1.0);
    // b heard the logout from a: one event that closed sockets here.
    assert_series(&text, "palaver_logout_close_seconds_count", 1.0);
    assert_series(&text, "palaver_fanout_lag_seconds_count", 1.0);
    assert_eq!(value(&text, r#"palaver_logins_total{via="form",outcome="success"}"#), None, "no sign-in on b");
}

#[tokio::test]
async fn metrics_are_off_unless_metrics_addr_is_set() {
    let app = TestApp::spawn_memory().await;
    assert_eq!(app.metrics_addr, None);
    assert_eq!(Browser::new().get(&app, "/metrics").await.status(), StatusCode::NOT_FOUND);
}
