//! Who may be where, in the browser (issue 18, SPEC §6): the room
//! controls' unit tests, what the lobby says after the page left a room,
//! and the sidebar's forms from the keyboard, accessible in both schemes.

use fantoccini::key::Key;
use serde_json::{json, Value};

use super::{harness::*, ux::axe};
use crate::helpers::*;

/// The room controls' unit tests (tests/it/browser/js/rooms.js).
const UNIT: &str = include_str!("js/rooms.js");

/// Makes `prefers-color-scheme` match `scheme`, without transitions: axe
/// then measures the colours of the scheme, not a moment between two.
async fn scheme(chrome: &Chrome, scheme: &str) -> Outcome {
    let features = json!([
        { "name": "prefers-color-scheme", "value": scheme },
        { "name": "prefers-reduced-motion", "value": "reduce" },
    ]);
    chrome.cdp("Emulation.setEmulatedMedia", json!({ "features": features })).await.map(drop)
}

/// Fails on any serious or critical axe violation in `report`.
fn no_serious(report: &[Value]) -> Outcome {
    for v in report {
        println!("axe {}: {} ({}) {}", v["page"], v["id"], v["impact"], v["nodes"]);
    }
    let serious: Vec<&Value> = report.iter().filter(|v| v["serious"] == json!(true)).collect();
    ensure!(serious.is_empty(), "serious or critical accessibility violations: {serious:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_controls_pass_their_unit_tests() {
    let j = Journey::start("rooms-unit").await;
    let app = TestApp::spawn_memory().await;
    j.run(async {
        let chrome = j.browser("unit").await?;
        chrome.goto(&app.url("/login")).await?;
        chrome.unit_tests("the room controls' unit tests (rooms.js)", UNIT, 60).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_says_why_the_page_left_a_room_and_the_sidebar_forms_work_from_the_keyboard() {
    let j = Journey::start("rooms-lobby").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&app, "alice").await?;
        let mut report = Vec::new();

        // Arriving from a room the page had to leave: said once, as text,
        // and gone from the address (a reload says nothing more).
        alice.goto(&app.url("/chat/lobby?removed=secret")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let said = alice.text("#page-notice p").await?;
        ensure!(said == "You were removed from #secret.", "the lobby says {said:?}");
        let url = alice.client.current_url().await.ctx("the URL")?;
        ensure!(url.path() == "/chat/lobby" && url.query().is_none(), "the address stays {url}");
        ensure!(alice.focused().await? == "message-input", "the notice took the focus");
        report.extend(axe(&alice, "/chat/lobby, removed from a room").await?);
        alice.click("#page-notice-dismiss").await?;
        let after = alice.js("return document.getElementById('page-notice').childElementCount;", vec![]).await?;
        ensure!(after == json!(0), "the notice stayed after Dismiss");
        ensure!(alice.focused().await? == "message-input", "after Dismiss, focus is on {:?}", alice.focused().await?);
        for query in ["?removed=%3Cb%3Ex%3C%2Fb%3E", "?removed=Secret", "?other=secret"] {
            alice.goto(&app.url(&format!("/chat/lobby{query}"))).await?;
            alice.wait_state("connected", PAGE_DEADLINE).await?;
            let shown = alice.js("return document.getElementById('page-notice').textContent;", vec![]).await?;
            ensure!(shown == json!(""), "{query} showed {shown}");
        }

        // Empty sections keep their headings and say so.
        let empty = alice
            .js(
                "return ['private', 'direct'].map(s => [document.getElementById(s + '-heading').textContent,
                   document.getElementById(s + '-empty').hidden]);",
                vec![],
            )
            .await?;
        ensure!(empty == json!([["Private rooms", false], ["Direct messages", false]]), "the empty sections: {empty}");

        // "New room…": a disclosure the keyboard opens, whose refusal is
        // said in the form, and which Escape closes.
        alice.js("document.getElementById('new-room-toggle').focus();", vec![]).await?;
        alice.keys(&Key::Enter.to_string()).await?;
        let open = alice
            .js("return [document.getElementById('new-room-toggle').getAttribute('aria-expanded'), document.activeElement.id,
                 document.querySelector('#new-room input[value=private]').checked];", vec![])
            .await?;
        ensure!(open == json!(["true", "new-room-name", true]), "the form after Enter: {open}");
        alice.keys(&format!("no spaces{}", Key::Enter)).await?;
        let refused = alice
            .js("const f = document.getElementById('new-room-name');
                 return [document.getElementById('new-room-error').textContent, f.getAttribute('aria-invalid'), document.activeElement.id];", vec![])
            .await?;
        ensure!(
            refused[0].as_str().is_some_and(|t| t.starts_with("Room names are")) && refused[1] == "true" && refused[2] == "new-room-name",
            "a wrong name: {refused}"
        );
        // "Message someone…" too, open beside it.
        alice.click("#new-direct-toggle").await?;
        alice.keys(&format!("alice{}", Key::Enter)).await?;
        let error = alice.text("#new-direct-error").await?;
        ensure!(error == "That is you: write to someone else.", "writing to oneself: {error:?}");
        for colours in ["light", "dark"] {
            scheme(&alice, colours).await?;
            report.extend(axe(&alice, &format!("/chat/lobby, both sidebar forms refusing ({colours})")).await?);
        }
        scheme(&alice, "light").await?;
        alice.keys(&Key::Escape.to_string()).await?;
        let closed = alice
            .js("return [document.getElementById('new-direct').hidden, document.activeElement.id,
                 document.getElementById('new-room').hidden];", vec![])
            .await?;
        ensure!(closed == json!([true, "new-direct-toggle", false]), "Escape closed {closed}");
        ensure!(alice.path().await? == "/chat/lobby", "the forms left the lobby");
        no_serious(&report)
    })
    .await;
}
