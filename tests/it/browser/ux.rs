//! The chat page as a person meets it: dates and grouping in their time
//! zone, fast sending in order, reconnecting in sight, deep links through
//! sign-in, the keyboard alone, an automated accessibility check in both
//! colour schemes, and the screenshots in `docs/screenshots/`.

use std::{path::Path, time::Duration};

use super::harness::*;
use crate::helpers::*;

/// Stores a message in `room` as the server would have, with its own
/// `sent_at` (unix ms): for history that reaches back days.
pub fn seed(redis: &RedisServer, room: &str, user: &str, body: &str, sent_at: i64) {
    let key = format!("palaver:room:{room}:messages");
    let sent_at = sent_at.to_string();
    let reply = redis.command(&["XADD", &key, "*", "user", user, "body", body, "sent_at", &sent_at]);
    assert!(reply.as_deref().is_some_and(|r| r.starts_with('$')), "XADD into {key}: {reply:?}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;

/// A conversation over two days: runs from one person, a link, code, a
/// mention, indentation.
fn seed_conversation(redis: &RedisServer) {
    let now = now_ms();
    let y = now - DAY;
    seed(redis, "lobby", "bob", "Morning! Is the deploy still planned for today?", y - 30 * MINUTE);
    seed(redis, "lobby", "alice", "Yes, after lunch. Notes are at https://example.com/deploy-notes.", y - 28 * MINUTE);
    seed(redis, "lobby", "alice", "I'll ping you when it starts.", y - 27 * MINUTE);
    seed(redis, "lobby", "bob", "It went fine: `cargo test` was green on all runners.", now - 12 * MINUTE);
    seed(redis, "lobby", "bob", "Config I used:\n```\n[server]\n    listen = \"0.0.0.0:8080\"\n    workers = 2\n```", now - 11 * MINUTE);
    seed(redis, "lobby", "bob", "@alice can you check the graphs?", now - 10 * MINUTE);
}

/// Writes `docs/screenshots/{SCREENSHOTS or "after"}-{desktop,phone}[-dark].png`:
/// the chat page of alice, with a conversation with bob, at desktop
/// (1366×850) and phone (390×844) sizes, light and dark.
/// `SCREENSHOTS=before cargo test --test it screenshots -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/screenshots/; run it with --ignored"]
async fn screenshots() {
    let prefix = std::env::var("SCREENSHOTS").unwrap_or_else(|_| "after".to_owned());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let j = Journey::start("screenshots").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    seed_conversation(&redis);
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.time_zone("Europe/Berlin").await?;
        alice.register(&app, "alice").await?;
        bob.register(&app, "bob").await?;
        alice.until_texts("bob online", "#online li", PAGE_DEADLINE, |n| n.iter().any(|n| n == "bob")).await?;
        alice.send_with_enter("Looking now. Latency is flat since the deploy").await?;
        alice.wait_confirmed(&["Looking now. Latency is flat since the deploy"], PAGE_DEADLINE).await?;
        bob.send_with_enter("Great, thanks!").await?;
        alice.wait_confirmed(&["Great, thanks!"], PAGE_DEADLINE).await?;
        let shots: &[(&str, u32, u32, bool, &str)] = &[
            ("desktop", 1366, 850, false, "light"),
            ("phone", 390, 844, true, "light"),
            ("desktop-dark", 1366, 850, false, "dark"),
            ("phone-dark", 390, 844, true, "dark"),
        ];
        for &(name, width, height, mobile, scheme) in shots {
            alice.color_scheme(scheme).await?;
            alice.viewport(width, height, mobile).await?;
            alice.js("document.activeElement && document.activeElement.blur();", vec![]).await?;
            tokio::time::sleep(Duration::from_millis(600)).await;
            alice.screenshot_to(&dir.join(format!("{prefix}-{name}.png"))).await?;
        }
        Ok(())
    })
    .await;
}
