//! The chat page as a person meets it: dates and grouping in their time
//! zone, fast sending in order, reconnecting in sight, deep links through
//! sign-in, the keyboard alone, unread counts and mentions of other rooms,
//! an automated accessibility check in both
//! colour schemes, and the screenshots in `docs/screenshots/`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use fantoccini::key::Key;
use serde_json::{json, Value};

use super::harness::*;
use crate::helpers::*;

/// axe-core, vendored from the npm registry (MPL-2.0, LICENSE beside it).
const AXE: &str = include_str!("axe/axe.min.js");
/// The client's unit tests (tests/it/browser/js/unit.js).
const UNIT: &str = include_str!("js/unit.js");

/// Stores a message in `room` as the server would have, with its own
/// `sent_at` (unix ms): for history that reaches back days.
fn seed(redis: &RedisServer, room: &str, user: &str, body: &str, sent_at: i64) {
    store_message(redis, room, user, body, sent_at, &[]);
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
    seed(
        redis,
        "lobby",
        "bob",
        "Config I used:\n```\n[server]\n    listen = \"0.0.0.0:8080\"\n    workers = 2\n```",
        now - 11 * MINUTE,
    );
    seed(redis, "lobby", "bob", "@alice can you check the graphs?", now - 10 * MINUTE);
}

/// Writes `docs/screenshots/{SCREENSHOTS or "after"}-{desktop,phone}[-dark].png`:
/// the chat page of alice, with a conversation with bob and unread news in
/// two other rooms (one mentioning her), at desktop
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
    let mut app = Some(TestApp::spawn(&redis).await);
    seed_conversation(&redis);
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.time_zone("Europe/Berlin").await?;
        alice.register(app.as_ref().unwrap(), "alice").await?;
        bob.register(app.as_ref().unwrap(), "bob").await?;
        // Two more rooms in alice's sidebar, with news she has not read.
        for room in ["deploys", "random", "lobby"] {
            alice.goto(&app.as_ref().unwrap().url(&format!("/chat/{room}"))).await?;
            alice.wait_state("connected", PAGE_DEADLINE).await?;
        }
        let now = now_ms();
        seed(&redis, "deploys", "bob", "Staging is on the new build.", now);
        seed(&redis, "deploys", "bob", "@alice the rollback switch is yours.", now);
        for i in 0..4 {
            seed(&redis, "random", "bob", &format!("lunch option {i}"), now);
        }
        for (room, badge) in [("deploys", "@1"), ("random", "4")] {
            alice
                .until_js(
                    &format!("the {room} badge"),
                    PAGE_DEADLINE,
                    "const b = document.querySelector('#rooms a[data-room=\"' + arguments[0] + '\"] [aria-hidden]');
                     return !!b && b.textContent === arguments[1];",
                    vec![json!(room), json!(badge)],
                )
                .await?;
        }
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
        if std::env::var_os("SCREENSHOTS_STATES").is_some() {
            // The states a person rarely sees, for a look (not committed):
            // a message not sent, with the one waiting behind it, and the
            // reconnect banner.
            alice.color_scheme("light").await?;
            alice.viewport(1366, 850, false).await?;
            alice
                .js(
                    "const done = arguments[arguments.length - 1];
                     import('/static/render.js').then(({ Renderer }) => {
                       const r = new Renderer(document.getElementById('messages'), 'alice');
                       const a = r.message({ user: 'alice', body: 'This one was refused', sentAt: Date.now() });
                       const b = r.message({ user: 'alice', body: 'and this one waits behind it', sentAt: Date.now() });
                       r.place(a); r.place(b); r.setStatus(a, 'failed', 'Not sent: the server refused it.');
                       r.setStatus(b, 'held');
                       document.getElementById('outbox-text').textContent = '1 message was not sent. 1 more waiting behind.';
                       document.getElementById('outbox-bar').hidden = false; done(true); });",
                    vec![],
                )
                .await?;
            alice.screenshot_to(&dir.join(format!("{prefix}-state-failed.png"))).await?;
            app.take().expect("running").shutdown().await.ctx("stopping")?;
            alice.until_js("the banner", PAGE_DEADLINE, "return !document.getElementById('conn-banner').hidden;", vec![]).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            alice.screenshot_to(&dir.join(format!("{prefix}-state-reconnecting.png"))).await?;
            alice.viewport(390, 844, true).await?;
            alice.click("#nav-toggle").await?;
            alice.screenshot_to(&dir.join(format!("{prefix}-state-phone-menu.png"))).await?;
        }
        Ok(())
    })
    .await;
}

// ------------------------------------------------------------- journeys --

/// A zone 14 hours ahead of UTC: a message at 01:00 there is on the
/// previous UTC day, so dates taken in UTC would be visibly wrong.
const ZONE: &str = "Pacific/Kiritimati";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_are_separated_and_runs_grouped_in_the_readers_time_zone() {
    let j = Journey::start("days").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.time_zone(ZONE).await?;
        alice.goto(&app.url("/login")).await?;
        // Local times in the zone, worked out by the browser: 01:00 three
        // days ago, 01:00, 01:02 and 01:12 yesterday, and early today
        // (not after now).
        let times = alice
            .js(
                "const now = Date.now();
                 const day = (back, h, m) => { const d = new Date(now); d.setHours(0, 0, 0, 0);
                   d.setDate(d.getDate() - back); d.setHours(h, m); return d.getTime(); };
                 const today = day(0, 0, 0) + Math.min(3600000, Math.floor((now - day(0, 0, 0)) / 2));
                 return [day(3, 1, 0), day(1, 1, 0), day(1, 1, 2), day(1, 1, 12), today];",
                vec![],
            )
            .await?;
        let t: Vec<i64> = serde_json::from_value(times).ctx("the seed times")?;
        seed(&redis, "lobby", "bob", "three days ago", t[0]);
        seed(&redis, "lobby", "bob", "yesterday, first", t[1]);
        seed(&redis, "lobby", "bob", "yesterday, two minutes on", t[2]);
        seed(&redis, "lobby", "bob", "yesterday, ten minutes on", t[3]);
        seed(&redis, "lobby", "carol", "today", t[4]);

        alice.login(&app, "alice").await?;
        let separators = alice.texts("#messages li.day").await?;
        let expected = alice
            .js(
                "const o = { weekday: 'long', month: 'long', day: 'numeric', timeZone: arguments[1] };
                 const d = new Date(arguments[0]);
                 if (d.toLocaleDateString('en', { year: 'numeric', timeZone: arguments[1] })
                     !== new Date().toLocaleDateString('en', { year: 'numeric', timeZone: arguments[1] })) o.year = 'numeric';
                 return [d.toLocaleDateString(undefined, o), 'Yesterday', 'Today'];",
                vec![json!(t[0]), json!(ZONE)],
            )
            .await?;
        let expected: Vec<String> = serde_json::from_value(expected).ctx("the expected labels")?;
        ensure!(separators == expected, "day separators {separators:?}, expected {expected:?}");
        // In UTC these fall on other days: the labels really are local.
        let utc_days = alice
            .js(
                "return arguments[0].map(ms => new Date(ms).toLocaleDateString('en', { timeZone: 'UTC' })
                   !== new Date(ms).toLocaleDateString('en', { timeZone: arguments[1] }));",
                vec![json!(t), json!(ZONE)],
            )
            .await?;
        ensure!(utc_days == json!([true, true, true, true, true]), "a seed time is on the same day in UTC: {utc_days}");

        // Each separator comes right before the first message of its day.
        let order = alice
            .js(
                "return Array.from(document.querySelectorAll('#messages > li'), li =>
                   li.classList.contains('day') ? 'day' : li.querySelector('.msg-body').textContent);",
                vec![],
            )
            .await?;
        let want = json!([
            "day", "three days ago",
            "day", "yesterday, first", "yesterday, two minutes on", "yesterday, ten minutes on",
            "day", "today"
        ]);
        ensure!(order == want, "the list reads {order}");

        // A run from one person within five minutes shares one header.
        let groups = alice
            .js("return Array.from(document.querySelectorAll('#messages li.msg'), li => li.classList.contains('cont'));", vec![])
            .await?;
        ensure!(groups == json!([false, false, true, false, false]), "grouping {groups}");

        // Times are local too, read aloud as the short time (the separator
        // says the day), and the full moment is reachable by keyboard: a
        // focusable <time> with the whole date as its title.
        let time = alice
            .js(
                "const t = document.querySelector('#messages li.msg .msg-time');
                 return { shown: t.querySelector('[aria-hidden]').textContent,
                          said: t.querySelector('.visually-hidden').textContent,
                          title: t.title,
                          datetime: t.getAttribute('datetime'),
                          focusable: t.tabIndex >= -1 && t.hasAttribute('tabindex'),
                          want: new Date(arguments[0]).toLocaleTimeString(undefined,
                            { hour: '2-digit', minute: '2-digit', timeZone: arguments[1] }) };",
                vec![json!(t[0]), json!(ZONE)],
            )
            .await?;
        ensure!(time["shown"] == time["want"], "the first message's time reads {time}");
        ensure!(time["focusable"] == json!(true), "the time cannot take focus: {time}");
        ensure!(time["said"] == time["want"], "read aloud as {time}");
        let title = time["title"].as_str().unwrap_or_default();
        ensure!(title.contains(&expected[0]) || title.contains("202"), "its title is {title:?}");
        let tab_stops = alice.js("return document.querySelectorAll('#messages .msg-time[tabindex=\"0\"]').length;", vec![]).await?;
        ensure!(tab_stops == json!(1), "the list should be one tab stop, has {tab_stops}");
        Ok(())
    })
    .await;
}

/// Where the first message on the page sits in the log, in CSS px from
/// the log's top, with its id.
const FIRST_SHOWN: &str = "
    const log = document.getElementById('log');
    const li = document.querySelector('#messages li.msg[data-id]');
    return { id: li.dataset.id, top: li.getBoundingClientRect().top - log.getBoundingClientRect().top,
             count: document.querySelectorAll('#messages li.msg').length };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_back_reaches_the_first_of_300_messages_keeping_the_place_while_pages_load() {
    const N: usize = 300;
    let j = Journey::start("history").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    // Two people taking turns, so that every message keeps its header
    // whatever is loaded above it (a run's header would move).
    let start = now_ms() - 2 * MINUTE;
    for i in 0..N {
        let who = if i % 2 == 0 { "bob" } else { "carol" };
        seed(&redis, "lobby", who, &format!("m{i:03}"), start + i as i64);
    }
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.viewport(1366, 850, false).await?;
        alice.register(&app, "alice").await?;
        let shown = alice.js(FIRST_SHOWN, vec![]).await?;
        ensure!(shown["count"] == json!(50), "the page starts with the newest 50: {shown}");
        let marker = alice.js("return document.getElementById('history-start').hidden;", vec![]).await?;
        ensure!(marker == json!(true), "the start line shows before the start");

        let started = Instant::now();
        let mut loads = 0;
        loop {
            // The reader scrolls to the top (the page then asks for the page
            // before); where the first message sits is measured right there,
            // before anything loads.
            let before =
                alice.js(&format!("document.getElementById('log').scrollTop = 0;\n{FIRST_SHOWN}"), vec![]).await?;
            let after = alice
                .until_js(
                    "the page before to load",
                    PAGE_DEADLINE,
                    "const n = document.querySelectorAll('#messages li.msg').length;
                     const log = document.getElementById('log');
                     return n > arguments[0] && log.getAttribute('aria-busy') === null ? n : null;",
                    vec![before["count"].clone()],
                )
                .await?;
            loads += 1;
            // What the reader was looking at has not moved.
            let moved = alice
                .js(
                    "const log = document.getElementById('log');
                     const li = document.querySelector('#messages li.msg[data-id=\"' + arguments[0] + '\"]');
                     return li.getBoundingClientRect().top - log.getBoundingClientRect().top - arguments[1];",
                    vec![before["id"].clone(), before["top"].clone()],
                )
                .await?;
            let moved = moved.as_f64().unwrap_or(f64::MAX);
            let kept = moved.abs() <= 2.0;
            ensure!(kept, "load {loads}: the message read before the load moved by {moved} px");
            if after == json!(N) {
                break;
            }
            ensure!(loads < 10, "still loading after {loads} pages ({after} messages)");
        }
        let took = started.elapsed();
        // The start of the room, right above its first message, and nothing more to load.
        let end = alice
            .until_js(
                "the start of #lobby",
                PAGE_DEADLINE,
                "const m = document.getElementById('history-start');
                 const older = document.getElementById('load-older');
                 return m.hidden || !older.hidden ? null : m.textContent;",
                vec![],
            )
            .await?;
        ensure!(end == json!("This is the start of #lobby."), "the marker reads {end}");
        let order = alice
            .js(
                "return Array.from(document.querySelectorAll('#messages li.msg .msg-body'), b => b.textContent);",
                vec![],
            )
            .await?;
        let want: Vec<String> = (0..N).map(|i| format!("m{i:03}")).collect();
        ensure!(order == json!(want), "the page holds every message once, in order: {order}");
        let at_top = alice
            .js(
                "document.getElementById('log').scrollTop = 0;
                 const log = document.getElementById('log').getBoundingClientRect();
                 const m = document.getElementById('history-start').getBoundingClientRect();
                 return m.top >= log.top && m.bottom <= log.bottom;",
                vec![],
            )
            .await?;
        ensure!(at_top == json!(true), "the start line is in view at the top");
        println!("{N} messages: back to the first in {loads} loads, {took:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_quick_sends_arrive_in_order_and_none_is_refused() {
    const N: usize = 40;
    let j = Journey::start("forty").await;
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    let b = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        let bob = j.browser("bob").await?;
        alice.register(&a, "alice").await?;
        bob.register(&b, "bob").await?;
        let lines: Vec<String> = (1..=N).map(|i| format!("quick {i:02}")).collect();
        // All forty typed in one go, Enter after each: far faster than the
        // server's 10 per second (burst 20) that the client paces itself to.
        let typed: String = lines.iter().map(|l| format!("{l}{}", Key::Enter)).collect();
        let started = Instant::now();
        alice.fill("#message-input", &typed).await?;
        let typing = started.elapsed();
        let want: Vec<&str> = lines.iter().map(String::as_str).collect();
        alice
            .until_texts(
                "all forty confirmed, in order",
                "#messages li.msg[data-id]:not(.pending) .msg-body",
                PAGE_DEADLINE,
                |b| b == want,
            )
            .await?;
        let confirmed = started.elapsed();
        bob.until_texts("all forty, in order", "#messages li.msg .msg-body", PAGE_DEADLINE, |b| b == want).await?;
        let delivered = started.elapsed();
        // On the wire every message acknowledged and nothing refused; on
        // the page nothing left unconfirmed (a line without an id) or failed.
        let acks = alice.frames_received("ack").await?.len();
        ensure!(acks >= N, "alice's page received {acks} acks for {N} messages");
        let refusals = alice.frames_received("error").await?;
        ensure!(refusals.is_empty(), "the server refused: {refusals:?}");
        let counts = alice
            .js(
                "return [document.querySelectorAll('#messages li.msg:not([data-id])').length,
                         document.querySelectorAll('#messages li.msg.failed').length];",
                vec![],
            )
            .await?;
        ensure!(counts == json!([0, 0]), "pending, failed: {counts}");
        // Bob's page holds them in id order too (the server's order).
        let ids = bob
            .js("return Array.from(document.querySelectorAll('#messages li.msg'), li => li.dataset.id);", vec![])
            .await?;
        let ids: Vec<String> = serde_json::from_value(ids).ctx("ids")?;
        let key = |id: &String| {
            let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
            (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
        };
        ensure!(ids.windows(2).all(|w| key(&w[0]) < key(&w[1])), "ids out of order: {ids:?}");
        println!(
            "forty sends: typed in {typing:?}, all confirmed after {confirmed:?}, all shown to bob after {delivered:?}"
        );
        Ok(())
    })
    .await;
}

/// A message shown live and then lost by the store (a master that crashed
/// before its replica had it) is resent by its sender under the same
/// `client_id` and stored again under a new id: the page shows it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_twice_under_one_client_id_is_shown_once() {
    let j = Journey::start("twice").await;
    let redis = RedisServer::start();
    let a = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&a, "alice").await?;
        // Two copies of bob's message, as the tail delivers them after a
        // failover, then one more message.
        for (body, cid) in [("said once", "bob-1"), ("said once", "bob-1"), ("and then", "bob-2")] {
            store_message(&redis, "lobby", "bob", body, now_ms(), &["client_id", cid]);
        }
        // "and then" comes after both copies: once it shows, the second
        // copy has been handled.
        alice
            .until_texts("bob's messages", "#messages li.msg .msg-body", PAGE_DEADLINE, |b| {
                b.last().is_some_and(|l| l == "and then")
            })
            .await?;
        let shown = alice.texts("#messages li.msg .msg-body").await?;
        ensure!(shown == ["said once", "and then"], "the page shows {shown:?}");
        Ok(())
    })
    .await;
}

/// The badge of `room` in the sidebar: its shown text and whether it is
/// the mention kind (`null` when there is none).
const BADGE: &str = "const b = document.querySelector('#rooms a[data-room=\"' + arguments[0] + '\"] .room-badge');
     return b ? [b.querySelector('[aria-hidden]').textContent, b.classList.contains('room-badge-mention'),
                 b.textContent] : null;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_rooms_unread_count_and_mention_show_in_the_sidebar_and_reading_it_clears_them() {
    let j = Journey::start("unread").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&app, "alice").await?;
        // Alice has been to #dev (so it is in her sidebar) and is back in the lobby.
        alice.goto(&app.url("/chat/dev")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        alice.goto(&app.url("/chat/lobby")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        ensure!(alice.js(BADGE, vec![json!("dev")]).await?.is_null(), "no badge before anything happens");

        let bob = signed_up(&app, "bob").await;
        let (mut dev, _) = bob.join(&app, "?room=dev").await;
        dev.say("anyone around?", "b1").await;
        let badge = alice
            .until_js(
                "a count of 1 on #dev",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {BADGE} }})(); return r && r[0] === '1' ? r : null;"),
                vec![json!("dev")],
            )
            .await?;
        ensure!(badge[1] == false, "a plain count, not a mention: {badge}");
        dev.say("@alice can you look at this?", "b2").await;
        let badge = alice
            .until_js(
                "a mention on #dev",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {BADGE} }})(); return r && r[1] ? r : null;"),
                vec![json!("dev")],
            )
            .await?;
        ensure!(badge[0] == "@1", "the mention badge says @1: {badge}");
        ensure!(
            badge[2].as_str().is_some_and(|t| t.contains("1 mention, 2 unread")),
            "screen readers hear both: {badge}"
        );
        ensure!(alice.js(BADGE, vec![json!("lobby")]).await?.is_null(), "the room being read has none");

        // Reading #dev moves her marker; back in the lobby, #dev has no badge.
        alice.click("#rooms a[data-room=\"dev\"]").await?;
        alice.wait_path("/chat/dev", PAGE_DEADLINE).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let record = redis.command(&["GET", "palaver:user:alice"]).unwrap_or_default();
        let id = record.split("\"id\":\"").nth(1).and_then(|r| r.split('"').next()).ok_or("alice's id")?.to_owned();
        let key = format!("palaver:user:{{{id}}}:read");
        poll(PAGE_DEADLINE, || async {
            redis.command(&["HGET", &key, "dev"]).filter(|r| r.starts_with("$") && !r.starts_with("$-1"))
        })
        .await
        .ok_or("the page did not send its read marker")?;
        alice.goto(&app.url("/chat/lobby")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        dev.say("thanks!", "b3").await;
        alice
            .until_js(
                "a count of 1 again, counted from the marker",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {BADGE} }})(); return r && r[0] === '1' && !r[1] ? r : null;"),
                vec![json!("dev")],
            )
            .await?;
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visible_page_reconnects_within_two_seconds_of_the_servers_return() {
    let j = Journey::start("reconnect").await;
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let vars = [("LISTEN_ADDR", addr.as_str())];
    let mut app = Some(TestApp::spawn_with(Some(&redis), &vars).await);
    j.run(async {
        let bob = j.browser("bob").await?;
        bob.register(app.as_ref().unwrap(), "bob").await?;
        bob.until_texts("bob online", "#online li", PAGE_DEADLINE, |n| n.iter().any(|n| n == "bob")).await?;
        let visible = bob.js("return document.visibilityState;", vec![]).await?;
        ensure!(visible == json!("visible"), "the tab is {visible}");

        app.take().unwrap().shutdown().await.ctx("stopping the instance")?;
        bob.wait_not_state("connected", PAGE_DEADLINE).await?;
        // What a person sees meanwhile: a banner with a countdown and a
        // button, and the online list marked as last known.
        let banner = bob
            .until_js(
                "the reconnect banner with a countdown",
                PAGE_DEADLINE,
                "const b = document.getElementById('conn-banner');
                 const t = document.getElementById('conn-banner-text').textContent;
                 return !b.hidden && /Reconnecting in \\d+ s/.test(t) ? t : null;",
                vec![],
            )
            .await?;
        let retry = bob.text("#reconnect-now").await?;
        ensure!(retry == "Retry now", "the banner's button reads {retry:?}");
        let stale = bob
            .js("return [document.getElementById('online').classList.contains('stale'), document.getElementById('conn-live').textContent];", vec![])
            .await?;
        ensure!(stale == json!([true, "Connection lost. Reconnecting."]), "presence and announcement: {stale}");

        // Down for a while: several attempts fail meanwhile.
        tokio::time::sleep(Duration::from_secs(5)).await;
        app = Some(TestApp::spawn_with(Some(&redis), &vars).await);
        let back = Instant::now();
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        let took = back.elapsed();
        println!("reconnected {took:?} after the server's return (banner read {banner:?})");
        ensure!(took <= Duration::from_secs(2), "the page took {took:?} to reconnect");
        let after = bob
            .until_js(
                "the page to say it is back",
                PAGE_DEADLINE,
                "return document.getElementById('conn-banner').hidden
                   && !document.getElementById('online').classList.contains('stale')
                   && document.getElementById('conn-live').textContent === 'Reconnected.';",
                vec![],
            )
            .await;
        after.map(drop)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_link_survives_signing_in_and_next_never_leaves_the_site() {
    let j = Journey::start("deep-link").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    j.run(async {
        let chrome = j.browser("visitor").await?;
        chrome.goto(&app.url("/chat/some-room")).await?;
        chrome.wait_path("/login", PAGE_DEADLINE).await?;
        let url = chrome.client.current_url().await.ctx("the URL")?;
        ensure!(url.query() == Some("next=%2Fchat%2Fsome-room"), "sent to sign in at {url}");
        sign_in(&chrome, "alice").await?;
        chrome.wait_path("/chat/some-room", PAGE_DEADLINE).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;

        // Signed out elsewhere, the page goes to sign in saying why, and
        // comes back here afterwards.
        let http = Browser::new();
        http.set_session_id(&app, &chrome.session_id().await?);
        assert_redirect(&http.post(&app, "/logout/everywhere").await, "/login");
        chrome.wait_path("/login", PAGE_DEADLINE).await?;
        let why = chrome.text("#sign-in-reason").await?;
        ensure!(why.starts_with("You were signed out on another device or tab."), "the page says {why:?}");
        sign_in(&chrome, "alice").await?;
        chrome.wait_path("/chat/some-room", PAGE_DEADLINE).await?;

        // A draft stays with its room while the tab lives.
        chrome.fill("#message-input", "half a thought").await?;
        chrome.goto(&app.url("/chat/lobby")).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;
        let lobby = chrome.js("return document.getElementById('message-input').value;", vec![]).await?;
        ensure!(lobby == json!(""), "the lobby got another room's draft: {lobby}");
        chrome.goto(&app.url("/chat/some-room")).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;
        let kept = chrome
            .js("return [document.getElementById('message-input').value, document.activeElement.id];", vec![])
            .await?;
        ensure!(kept == json!(["half a thought", "message-input"]), "back in the room: {kept}");

        // The other reasons, and one that is not a reason.
        chrome.client.delete_all_cookies().await.ctx("signing out")?;
        for (code, sentence) in [
            ("expired", Some("Your session expired.")),
            ("revoked", Some("Your session was ended.")),
            ("<b>x</b>", None),
        ] {
            chrome.goto(&app.url(&format!("/login?reason={code}"))).await?;
            let shown = chrome
                .js("const e = document.getElementById('sign-in-reason'); return e && e.textContent;", vec![])
                .await?;
            match sentence {
                Some(s) => ensure!(shown.as_str().is_some_and(|t| t.starts_with(s)), "reason {code}: {shown}"),
                None => ensure!(shown.is_null(), "reason {code} showed {shown}"),
            }
        }

        // `next` leading off the site is ignored: the chat it is.
        for next in
            ["//evil.example", "https://evil.example", "/\\evil.example", "%2F%2Fevil.example", "/%09/evil.example"]
        {
            chrome.client.delete_all_cookies().await.ctx("signing out")?;
            chrome.goto(&app.url(&format!("/login?next={next}"))).await?;
            let carried = chrome.js("return document.querySelectorAll('input[name=next]').length;", vec![]).await?;
            ensure!(carried == json!(0), "next={next} was put in the form");
            sign_in(&chrome, "alice").await?;
            chrome.wait_path("/chat/lobby", PAGE_DEADLINE).await.map_err(|e| format!("next={next}: {e}"))?;
        }

        // Registering from the sign-in page keeps the way back too.
        chrome.client.delete_all_cookies().await.ctx("signing out")?;
        chrome.goto(&app.url("/chat/other-room")).await?;
        chrome.wait_path("/login", PAGE_DEADLINE).await?;
        chrome.click("#to-register").await?;
        chrome.wait_path("/register", PAGE_DEADLINE).await?;
        chrome.fill("#username", "carol").await?;
        chrome.fill("#password", PASSWORD).await?;
        chrome.click("#register-submit").await?;
        chrome.wait_path("/chat/other-room", PAGE_DEADLINE).await
    })
    .await;
}

async fn sign_in(chrome: &Chrome, username: &str) -> Outcome {
    chrome.fill("#username", username).await?;
    chrome.fill("#password", PASSWORD).await?;
    chrome.click("#login-submit").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyboard_alone_signs_in_opens_a_room_and_sends() {
    let j = Journey::start("keyboard").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    j.run(async {
        let chrome = j.browser("alice").await?;
        chrome.goto(&app.url("/login")).await?;
        ensure!(chrome.focused().await? == "username", "the sign-in page starts on {:?}", chrome.focused().await?);
        // A wrong password first: the page comes back on the password field.
        chrome.keys(&format!("alice{}wrong password{}", Key::Tab, Key::Enter)).await?;
        chrome.wait_for("#form-error").await?;
        let field = chrome
            .js("const p = document.getElementById('password');
                 return [document.activeElement.id, p.getAttribute('aria-invalid'), p.getAttribute('aria-describedby')];", vec![])
            .await?;
        ensure!(field == json!(["password", "true", "form-error"]), "after a wrong password: {field}");
        chrome.keys(&format!("{PASSWORD}{}", Key::Enter)).await?;
        chrome.wait_path("/chat/lobby", PAGE_DEADLINE).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;
        ensure!(chrome.focused().await? == "message-input", "the chat starts on {:?}", chrome.focused().await?);
        chrome.keys(&format!("typed, not clicked{}", Key::Enter)).await?;
        chrome.wait_confirmed(&["typed, not clicked"], PAGE_DEADLINE).await?;

        // Back through the page to the room box, each stop visibly focused.
        let mut path = Vec::new();
        for _ in 0..30 {
            chrome.chord(Key::Shift, Key::Tab).await?;
            let (id, ring) = focus_ring(&chrome).await?;
            ensure!(ring, "{id:?} has no visible focus ring");
            path.push(id.clone());
            if id == "open-room-name" {
                break;
            }
        }
        ensure!(path.last().map(String::as_str) == Some("open-room-name"), "Shift+Tab went {path:?}");
        chrome.keys(&format!("by-keys{}", Key::Enter)).await?;
        chrome.wait_path("/chat/by-keys", PAGE_DEADLINE).await?;
        chrome.wait_state("connected", PAGE_DEADLINE).await?;
        ensure!(chrome.focused().await? == "message-input", "the new room starts on {:?}", chrome.focused().await?);
        chrome.keys(&format!("hello, room{}", Key::Enter)).await?;
        chrome.wait_confirmed(&["hello, room"], PAGE_DEADLINE).await?;

        // The message list is one tab stop; arrows walk its times.
        chrome.chord(Key::Shift, Key::Tab).await?;
        let on = chrome.js("return document.activeElement.className;", vec![]).await?;
        ensure!(on == json!("msg-time"), "Shift+Tab from the composer landed on {on}");
        // "Log out everywhere" asks in a dialog that the keyboard can leave.
        for _ in 0..30 {
            if chrome.focused().await? == "logout-everywhere" {
                break;
            }
            chrome.chord(Key::Shift, Key::Tab).await?;
        }
        ensure!(chrome.focused().await? == "logout-everywhere", "never reached the button");
        chrome.keys(&Key::Enter.to_string()).await?;
        let open = chrome.js("return [document.getElementById('logout-everywhere-dialog').open, document.activeElement.id];", vec![]).await?;
        ensure!(open == json!([true, "logout-everywhere-cancel"]), "the dialog: {open}");
        chrome.keys(&Key::Escape.to_string()).await?;
        let closed = chrome.js("return [document.getElementById('logout-everywhere-dialog').open, document.activeElement.id];", vec![]).await?;
        ensure!(closed == json!([false, "logout-everywhere"]), "after Escape: {closed}");
        ensure!(chrome.path().await? == "/chat/by-keys", "Escape logged out");
        Ok(())
    })
    .await;
}

/// The focused element's id, and whether it shows a focus indicator at
/// least 2 px wide (its own outline, or the composer's around it).
async fn focus_ring(chrome: &Chrome) -> Outcome<(String, bool)> {
    let v = chrome
        .js(
            "const e = document.activeElement;
             const ring = (el) => { const s = getComputedStyle(el);
               return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2; };
             const host = e.closest('.composer') || e;
             return [e.id || e.className || e.tagName, ring(e) || ring(host)];",
            vec![],
        )
        .await?;
    Ok((v[0].as_str().unwrap_or_default().to_owned(), v[1] == json!(true)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_has_serious_accessibility_violations_in_either_colour_scheme() {
    let j = Journey::start("axe").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    seed_conversation(&redis);
    signed_up(&app, "bob").await;
    j.run(async {
        let chrome = j.browser("alice").await?;
        // First, that axe sees what it should: text too faint to read.
        chrome.goto(&app.url("/login")).await?;
        chrome
            .js("const p = document.createElement('p'); p.textContent = 'faint';
                 p.className = 'lead'; p.id = 'canary'; document.querySelector('.card').append(p);
                 document.getElementById('canary').style.color = '#eeeeee';", vec![])
            .await?;
        let canary = axe(&chrome, "canary").await?;
        ensure!(
            canary.iter().any(|v| v["id"] == json!("color-contrast") && v["serious"] == json!(true)),
            "axe did not flag #eeeeee text: {canary:?}"
        );
        let mut report = Vec::new();
        for scheme in ["light", "dark"] {
            chrome.color_scheme(scheme).await?;
            let dark = chrome.js("return matchMedia('(prefers-color-scheme: dark)').matches;", vec![]).await?;
            ensure!(dark == json!(scheme == "dark"), "the {scheme} scheme is not in effect");
            chrome.client.delete_all_cookies().await.ctx("signing out")?;
            for path in ["/login", "/login?reason=expired&next=/chat/lobby", "/register"] {
                chrome.goto(&app.url(path)).await?;
                report.extend(axe(&chrome, &format!("{path} ({scheme})")).await?);
            }
            // The forms with their errors.
            chrome.goto(&app.url("/login")).await?;
            sign_in(&chrome, "bob-not").await?;
            chrome.wait_for("#form-error").await?;
            report.extend(axe(&chrome, &format!("/login with an error ({scheme})")).await?);
            chrome.goto(&app.url("/register")).await?;
            chrome.fill("#username", "bob").await?;
            chrome.fill("#password", PASSWORD).await?;
            chrome.click("#register-submit").await?;
            chrome.wait_for("#form-error").await?;
            report.extend(axe(&chrome, &format!("/register with an error ({scheme})")).await?);

            chrome.login(&app, "bob").await?;
            chrome.viewport(1366, 850, false).await?;
            report.extend(axe(&chrome, &format!("/chat/lobby ({scheme})")).await?);
            chrome.send_with_enter("a line of mine").await?;
            chrome.wait_confirmed(&["a line of mine"], PAGE_DEADLINE).await?;
            // The pairs the issue measured below AA, measured again.
            let measured = chrome.js(CONTRASTS, vec![]).await?;
            println!("contrast ({scheme}): {measured}");
            for (what, min) in [("field border", 3.0), ("own-message marker", 3.0), ("sending… label", 4.5), ("send button text", 4.5), ("time", 4.5)] {
                let ratio = measured[what].as_f64().unwrap_or(0.0);
                let enough = ratio >= min;
                ensure!(enough, "{what} in {scheme}: {ratio}:1, below {min}:1 ({measured})");
            }
            chrome.click("#logout-everywhere").await?;
            report.extend(axe(&chrome, &format!("/chat/lobby, dialog open ({scheme})")).await?);
            chrome.keys(&Key::Escape.to_string()).await?;

            // The phone menu: a real button, Escape and a tap outside close it.
            chrome.viewport(390, 844, true).await?;
            chrome.click("#nav-toggle").await?;
            let open = chrome
                .js("return [document.getElementById('nav-toggle').getAttribute('aria-expanded'),
                             getComputedStyle(document.getElementById('sidebar')).display];", vec![])
                .await?;
            ensure!(open == json!(["true", "flex"]), "the menu after a tap: {open}");
            report.extend(axe(&chrome, &format!("/chat/lobby, phone menu open ({scheme})")).await?);
            chrome.keys(&Key::Escape.to_string()).await?;
            let closed = chrome
                .js("return [document.getElementById('nav-toggle').getAttribute('aria-expanded'), document.activeElement.id];", vec![])
                .await?;
            ensure!(closed == json!(["false", "nav-toggle"]), "the menu after Escape: {closed}");
            chrome.click("#nav-toggle").await?;
            chrome.click(".room-title").await?;
            let outside = chrome.js("return document.getElementById('nav-toggle').getAttribute('aria-expanded');", vec![]).await?;
            ensure!(outside == json!("false"), "a tap outside left the menu open");
            // 400 % zoom of a 1280 px window is 320 CSS px: nothing needs
            // scrolling sideways (WCAG 1.4.10), long names end in "…".
            chrome.viewport(320, 640, false).await?;
            let reflow = chrome
                .js("const li = document.querySelector('#online li');
                     return [document.documentElement.scrollWidth <= innerWidth,
                             getComputedStyle(li).textOverflow, getComputedStyle(li).overflow];", vec![])
                .await?;
            ensure!(reflow == json!([true, "ellipsis", "hidden"]), "at 320 px: {reflow}");
            chrome.viewport(1366, 850, false).await?;
        }
        let serious: Vec<&Value> = report.iter().filter(|v| v["serious"] == json!(true)).collect();
        for v in &report {
            println!("axe {}: {} ({}) {}", v["page"], v["id"], v["impact"], v["nodes"]);
        }
        ensure!(serious.is_empty(), "serious or critical accessibility violations: {serious:#?}");
        Ok(())
    })
    .await;
}

/// Contrast ratios (WCAG 2.1) of the pairs the issue found below AA, from
/// computed styles of the chat page.
const CONTRASTS: &str = "
    const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const lum = (c) => { const a = rgb(c).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
      return 0.2126 * a[0] + 0.7152 * a[1] + 0.0722 * a[2]; };
    const ratio = (f, b) => { const [x, y] = [lum(f), lum(b)].sort((p, q) => q - p); return Math.round((x + 0.05) / (y + 0.05) * 100) / 100; };
    const css = (sel) => getComputedStyle(document.querySelector(sel));
    const surface = css('.chat').backgroundColor;
    return {
      'field border': ratio(css('.composer').borderTopColor, surface),
      'own-message marker': ratio(css('#messages li.msg.mine').borderLeftColor, surface),
      'sending… label': ratio(css('#messages li.msg .msg-state').color, surface),
      'send button text': ratio(css('#send').color, css('#send').backgroundColor),
      'time': ratio(css('#messages li.msg .msg-time').color, surface),
    };";

/// Runs axe-core on the current page; returns every violation as
/// `{page, id, impact, serious, nodes}`.
pub(super) async fn axe(chrome: &Chrome, page: &str) -> Outcome<Vec<Value>> {
    let loaded = chrome.js("return typeof window.axe;", vec![]).await?;
    if loaded != json!("object") {
        chrome.js(&format!("{AXE}\nreturn typeof window.axe;"), vec![]).await?;
    }
    let result = chrome
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             window.axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact,
                 nodes: v.nodes.map(n => n.target.join(' ') + ': ' + n.failureSummary).slice(0, 5) }))))
               .catch(e => done([{ id: 'axe-error', impact: 'critical', nodes: [String(e)] }]));",
            vec![],
        )
        .await
        .ctx(format!("running axe on {page}"))?;
    let list = result.as_array().cloned().unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|v| {
            let serious = matches!(v["impact"].as_str(), Some("serious" | "critical"));
            json!({ "page": page, "id": v["id"], "impact": v["impact"], "serious": serious, "nodes": v["nodes"] })
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_logic_passes_its_unit_tests() {
    let j = Journey::start("js-unit").await;
    let app = TestApp::spawn_memory().await;
    j.run(async {
        let chrome = j.browser("unit").await?;
        chrome.time_zone("Europe/London").await?;
        chrome.goto(&app.url("/login")).await?;
        chrome.unit_tests("client unit tests (unit.js)", UNIT, 31).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_javascript_the_page_says_so_and_sends_nothing() {
    let j = Journey::start("no-js").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    signed_up(&app, "alice").await;
    j.run(async {
        let chrome = j.browser("alice").await?;
        chrome.cdp("Emulation.setScriptExecutionDisabled", json!({ "value": true })).await?;
        // Signing in is plain HTML forms.
        chrome.goto(&app.url("/login")).await?;
        sign_in(&chrome, "alice").await?;
        chrome.wait_path("/chat/lobby", PAGE_DEADLINE).await?;
        let said = chrome.text(".noscript").await?;
        ensure!(said.contains("needs JavaScript"), "the page says {said:?}");
        let input = chrome.wait_for("#message-input").await?;
        ensure!(
            !input.is_enabled().await.ctx("reading the message box")?,
            "the message box takes text without JavaScript"
        );
        let send = chrome.wait_for("#send").await?;
        ensure!(!send.is_enabled().await.ctx("reading Send")?, "Send works without JavaScript");
        let method = chrome.wait_for("#composer").await?.attr("method").await.ctx("the form's method")?;
        ensure!(
            method.as_deref() == Some("post"),
            "the composer's method is {method:?}: a GET puts the text in the URL"
        );
        let state = chrome.wait_for("#conn-state").await?;
        ensure!(!state.is_displayed().await.ctx("the state pill")?, "the page still says it is connecting");
        let url = chrome.client.current_url().await.ctx("the URL")?;
        ensure!(url.query().is_none(), "the address bar holds {url}");
        Ok(())
    })
    .await;
}
