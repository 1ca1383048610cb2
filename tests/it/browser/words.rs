//! The chat page's words and small manners (issue 22, defects 2 and 5): a
//! greeting that knows a first visit, a room name typed with capitals
//! landing on the room, a refused room name answered with the rule,
//! message times read aloud short, no keyboard popping up on a phone at
//! every room switch, and a paste too long for one message; and the
//! sidebar (defects 3 and 4): rooms in name order that a visit never
//! moves, and an online list that says it is the room's.

use serde_json::json;

use super::harness::*;
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_greets_rules_and_times_in_plain_words() {
    let j = Journey::start("words").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        // A first visit is welcomed, not welcomed back.
        alice.goto(&app.url("/login")).await?;
        let first = alice.text("#welcome").await?;
        ensure!(first.starts_with("Welcome.") && !first.contains("back"), "a first visit reads {first:?}");
        alice.register(&app, "alice").await?;
        alice.click("#logout").await?;
        alice.wait_path("/login", PAGE_DEADLINE).await?;
        let again = alice.text("#welcome").await?;
        ensure!(again.starts_with("Welcome back"), "a return reads {again:?}");
        alice.login(&app, "alice").await?;

        // A capital in the address is the room, not a new one.
        alice.goto(&app.url("/chat/Deploys")).await?;
        alice.wait_path("/chat/deploys", PAGE_DEADLINE).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let answer = Browser::new().get(&app, "/chat/Deploys").await;
        ensure!(answer.status().as_u16() == 308, "/chat/Deploys answers {}", answer.status());

        // A name the field refuses is refused with the rule.
        alice.fill("#open-room-name", "no way!").await?;
        alice.click("#open-room button[type=submit]").await?;
        let said = alice
            .js("const i = document.getElementById('open-room-name'); return [i.validationMessage, i.title];", vec![])
            .await?;
        let rule = "Room names are 1 to 32 characters: a to z, 0 to 9 and -.";
        ensure!(said == json!([rule, rule]), "the refusal reads {said}");
        ensure!(alice.path().await? == "/chat/deploys", "a refused name left the page");

        // A message's time is read short; the whole moment is its title.
        alice.send_with_enter("what time is it?").await?;
        alice.wait_confirmed(&["what time is it?"], PAGE_DEADLINE).await?;
        let time = alice
            .js(
                "const t = document.querySelector('#messages li.msg .msg-time');
                 return [t.querySelector('.visually-hidden').textContent, t.querySelector('[aria-hidden]').textContent,
                         t.title, t.getAttribute('datetime')];",
                vec![],
            )
            .await?;
        ensure!(time[0] == time[1] && time[0].as_str().is_some_and(|t| t.len() <= 8), "read aloud: {time}");
        let year = time[3].as_str().unwrap_or_default().get(..4).unwrap_or("?").to_owned();
        ensure!(time[2].as_str().is_some_and(|t| t.contains(&year)), "the full moment is the title: {time}");

        // On a touch screen a room switch leaves the message box alone
        // (focus there brings up the keyboard).
        alice.cdp("Emulation.setTouchEmulationEnabled", json!({ "enabled": true, "maxTouchPoints": 1 })).await?;
        alice
            .cdp("Emulation.setEmulatedMedia", json!({ "features": [{ "name": "pointer", "value": "coarse" }] }))
            .await?;
        alice.goto(&app.url("/chat/lobby")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let coarse = alice.js("return matchMedia('(pointer: coarse)').matches;", vec![]).await?;
        ensure!(coarse == json!(true), "the touch screen is not emulated");
        let focused = alice.focused().await?;
        ensure!(focused != "message-input", "the message box took focus on a touch screen");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_over_the_limit_is_counted_and_sent_as_several_messages_in_order_never_cut() {
    let j = Journey::start("long-paste").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&app, "alice").await?;
        let paste = |text: String| {
            let alice = alice.clone();
            async move {
                alice
                    .js("const i = document.getElementById('message-input'); i.value = ''; i.focus();", vec![])
                    .await?;
                // As a paste arrives: one insertion, which a maxlength would cut.
                alice.cdp("Input.insertText", json!({ "text": text })).await.map(drop)
            }
        };
        let hidden = |css: &'static str| {
            let alice = alice.clone();
            async move { alice.js("return document.querySelector(arguments[0]).hidden;", vec![json!(css)]).await }
        };

        // Near the limit, a counter.
        ensure!(hidden("#composer-count").await? == json!(true), "a counter for an empty box");
        paste("x".repeat(1900)).await?;
        let count = alice.text("#composer-count").await?;
        ensure!(count.starts_with("1,900 / 2,000"), "the counter reads {count:?}");
        ensure!(hidden("#too-long").await? == json!(true), "1,900 characters fit in one message");

        // An 80-line stack trace: over the limit, the page asks.
        let trace: Vec<String> =
            (0..80).map(|i| format!("    at palaver::frame_{i:02} (src/deep/module/path.rs:{i}:17)")).collect();
        let trace = trace.join("\n");
        paste(trace.clone()).await?;
        let kept = alice.js("return document.getElementById('message-input').value;", vec![]).await?;
        ensure!(kept == json!(trace), "the paste was cut to {} characters", kept.as_str().map_or(0, str::len));
        ensure!(hidden("#too-long").await? == json!(false), "no choice offered for {} characters", trace.len());
        let offer = alice.text("#too-long-split").await?;
        let parts: usize = offer
            .strip_prefix("Send as ")
            .and_then(|rest| rest.strip_suffix(" messages"))
            .and_then(|n| n.parse().ok())
            .ok_or(format!("the offer reads {offer:?}"))?;
        ensure!(
            parts == trace.len().div_ceil(2000) && parts >= 2,
            "{parts} parts offered for {} characters",
            trace.len()
        );
        alice.keys(&fantoccini::key::Key::Enter.to_string()).await?;
        ensure!(alice.focused().await? == "too-long-split", "Enter over the limit should lead to the choice");
        ensure!(alice.texts("#messages li.msg").await?.is_empty(), "Enter sent something");
        alice.click("#too-long-edit").await?;
        ensure!(alice.focused().await? == "message-input", "keep editing goes back to the text");

        alice.click("#send").await?;
        alice.click("#too-long-split").await?;
        let sent = alice
            .until_texts(
                "the parts confirmed",
                "#messages li.msg[data-id]:not(.pending) .msg-body",
                PAGE_DEADLINE,
                |b| b.len() == parts,
            )
            .await?;
        ensure!(sent.join("\n") == trace, "the parts, joined at the line end cut, are not the paste: {sent:?}");
        ensure!(sent.iter().all(|p| p.chars().count() <= 2000), "a part is over the limit");
        ensure!(sent.iter().all(|p| p.ends_with(')') && p.starts_with("    at")), "cut mid-line: {sent:?}");
        ensure!(
            hidden("#too-long").await? == json!(true) && hidden("#composer-count").await? == json!(true),
            "left over"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidebar_keeps_its_rooms_in_name_order_and_says_whose_online_list_it_shows() {
    let j = Journey::start("sidebar-order").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&app, "alice").await?;
        for room in ["zeta", "alpha", "mid"] {
            alice.goto(&app.url(&format!("/chat/{room}"))).await?;
            alice.wait_state("connected", PAGE_DEADLINE).await?;
        }
        let order = || async {
            alice
                .js("return Array.from(document.querySelectorAll('#rooms a[data-room]'), a => a.dataset.room);", vec![])
                .await
        };
        let want = json!(["alpha", "lobby", "mid", "zeta"]);
        ensure!(order().await? == want, "after opening zeta, alpha, mid: {}", order().await?);
        alice.goto(&app.url("/chat/zeta")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        ensure!(order().await? == want, "a visit to zeta moved it: {}", order().await?);
        let heading = alice.js("return document.getElementById('online-heading').textContent.trim();", vec![]).await?;
        ensure!(
            heading.as_str().is_some_and(|h| h.starts_with("Online in #zeta")),
            "the online list is headed {heading}"
        );
        Ok(())
    })
    .await;
}
