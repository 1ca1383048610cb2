//! `palaver admin …` as an operator runs it: the real binary, with the
//! server's configuration (`REDIS_URL`), acting on a running instance's
//! users and sessions; one line said, exit 0 done, 1 unknown user, 2 store
//! unreachable. A disabled account cannot sign in, by any door.

use std::{process::Command, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{
    account::{access, chrome, refresh_token, token, token_socket},
    helpers::*,
    rooms::api,
};

on_both! {
    disabling_an_account_ends_its_sessions_everywhere_and_refuses_every_sign_in,
}

const BINARY: &str = env!("CARGO_BIN_EXE_palaver");

/// What a command did: its exit code, standard output and error.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `palaver <args>` with only `env` (and PATH) in its environment, in
/// an empty directory (no `.env`).
pub async fn palaver(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BINARY)
            .args(&args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .envs(env)
            .output()
            .expect("the binary runs");
        Ran {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `palaver admin <args>` against `redis`.
pub async fn admin(redis: &dyn TestRedis, args: &[&str]) -> Ran {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    palaver(&all, &[("REDIS_URL", &redis.url()), ("PALAVER_BACKEND", "redis")]).await
}

async fn disabling_an_account_ends_its_sessions_everywhere_and_refuses_every_sign_in(redis: &dyn TestRedis) {
    let (a, b) = TestApp::spawn_group(redis, &[]).await;
    let laptop = chrome(&a, "alice", true).await;
    let pair = token(&b, "alice", json!({"client": "bot"}), None).await;
    let (mut browser_socket, _) = laptop.join(&a, "").await;
    let mut bot_socket = token_socket(&b, access(&pair)).await;
    let bob = chrome(&a, "bob", true).await;
    let (mut bob_socket, _) = bob.join(&b, "").await;

    let ran = admin(redis, &["disable", "ALICE"]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "disabled alice and ended 2 sessions\n"), "{}", ran.stderr);
    for socket in [&mut browser_socket, &mut bot_socket] {
        let closed = within_for(Duration::from_secs(3), "alice's socket to close", socket.closed()).await;
        assert_eq!(closed, (4401, "session revoked".to_string()));
    }
    bob_socket.say("bob is untouched", "d1").await;
    assert_eq!(laptop.refresh(&a).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refresh_token(&b, &pair).await, StatusCode::UNAUTHORIZED);

    // The right password is refused by every door, and says why; a wrong
    // one is refused as any wrong password is.
    let res = Browser::new().login(&b, "alice", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.text().await.unwrap().contains("This account is disabled."));
    let wrong = Browser::new().login(&b, "alice", "not the password").await.text().await.unwrap();
    assert!(!wrong.contains("disabled") && wrong.contains("Wrong username or password."), "{wrong}");
    let body = json!({"username": "alice", "password": PASSWORD});
    let res = reqwest::Client::new().post(a.url("/api/token")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["error"], "account_disabled");

    // Enabled again: alice signs in, and her log says what the operator did.
    let ran = admin(redis, &["enable", "alice"]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "enabled alice: they may sign in again\n"));
    let back = chrome(&b, "alice", false).await;
    let (_, events) = api(&back, &b, Method::GET, "/api/security-events", None).await;
    let by_operator = events["events"].as_array().unwrap().iter().filter(|e| e["by"] == "operator").count();
    assert_eq!(by_operator, 2, "{events}");
}

#[tokio::test]
async fn ending_a_users_sessions_ends_them_and_nothing_more() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let laptop = chrome(&app, "alice", true).await;
    let (mut socket, _) = laptop.join(&app, "").await;
    let ran = admin(&redis, &["end-sessions", "alice"]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, "ended 1 session of alice\n"), "{}", ran.stderr);
    assert_eq!(socket.closed().await, (4401, "session revoked".to_string()));
    assert_redirect(&Browser::new().login(&app, "alice", PASSWORD).await, "/chat");
}

#[tokio::test]
async fn an_unknown_user_exits_1_and_an_unreachable_store_exits_2_each_with_one_clear_line() {
    let redis = RedisServer::start();
    let _app = TestApp::spawn(&redis).await;
    for command in ["disable", "enable", "end-sessions"] {
        let ran = admin(&redis, &[command, "nobody"]).await;
        assert_eq!(ran.code, 1, "{command}: {}", ran.stderr);
        assert_eq!(ran.stderr, "palaver admin: no user is named \"nobody\"\n");
        assert!(ran.stdout.is_empty());
    }
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let ran = palaver(&["admin", "disable", "alice"], &[("REDIS_URL", &dead)]).await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.starts_with("palaver admin: ") && ran.stderr.contains(&dead), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    // Without a shared store there is nothing to act on.
    let ran = palaver(&["admin", "disable", "alice"], &[("PALAVER_BACKEND", "memory")]).await;
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("REDIS_URL"), "{}", ran.stderr);
}
