//! Who may be where, in the browser (issue 18, SPEC §6): a private room
//! made, shared and chatted in across two instances; a removed member's
//! open page leaving the room within two seconds and saying why; a direct
//! conversation between two browsers, started from a name; a deep link to a
//! private room by a non-member getting the same 404 page as a name that
//! cannot be opened; and the room controls' unit tests and accessibility.
//!
//! The journeys marked `needs the i18 server` drive the server side of
//! issue 18 (the `/api/rooms` and `/api/direct` routes, private and direct
//! pages, 4403, `room_added`/`room_removed`); run them with
//! `cargo test --test it browser::rooms:: -- --include-ignored`.

use std::time::{Duration, Instant};

use fantoccini::key::Key;
use serde_json::{json, Value};

use super::{harness::*, two_instances, ux::axe};
use crate::helpers::*;

/// The room controls' unit tests (tests/it/browser/js/rooms.js).
const UNIT: &str = include_str!("js/rooms.js");
/// How soon a removed member's open page must have left the room.
const REMOVAL_DEADLINE: Duration = Duration::from_secs(2);

/// The link to `label` in the sidebar section `list` (`rooms`,
/// `private-rooms`, `direct-rooms`).
fn side_link(list: &str, label: &str) -> String {
    format!("#{list} a[data-room=\"{label}\"]")
}

/// The rows of the members dialog, as "name role".
const MEMBER_ROWS: &str = "return Array.from(document.querySelectorAll('#members-list li'),
    li => li.querySelector('.member-name').textContent + ' ' + li.querySelector('.member-role').textContent);";

/// An HTTP client signed in as the user of `chrome` on `app`.
async fn same_session(chrome: &Chrome, app: &TestApp) -> Outcome<Browser> {
    let http = Browser::new();
    http.set_session_id(app, &chrome.session_id().await?);
    Ok(http)
}

/// A JSON call as a page makes it (the cookie and the page's `Origin`);
/// returns the status.
async fn call(http: &Browser, app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> u16 {
    let mut request = http.http.request(method, app.url(path)).header("origin", &app.origin);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("an API call").status().as_u16()
}

/// Alice registered on `a` and bob on `b`, each in the lobby.
async fn alice_and_bob(j: &Journey, a: &TestApp, b: &TestApp) -> Outcome<(Chrome, Chrome)> {
    let alice = j.browser("alice").await?;
    let bob = j.browser("bob").await?;
    alice.register(a, "alice").await?;
    bob.register(b, "bob").await?;
    Ok((alice, bob))
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_is_made_shared_and_chatted_in_across_two_instances() {
    let j = Journey::start("rooms-private").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let (alice, bob) = alice_and_bob(&j, &a, &b).await?;

        // Alice makes #secret from the sidebar: private unless she says otherwise.
        alice.click("#new-room-toggle").await?;
        alice.fill("#new-room-name", "secret").await?;
        alice.click("#new-room-create").await?;
        alice.wait_path("/chat/secret", PAGE_DEADLINE).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let title = alice.text("h1.room-title").await?;
        ensure!(title == "#secret", "the header reads {title:?}");
        let listed =
            alice.js(&format!("return !!document.querySelector('{}[aria-current=\"page\"]');", side_link("private-rooms", "secret")), vec![]).await?;
        ensure!(listed == json!(true), "#secret is not the current private room in the sidebar");

        // Its members, from the header: alice alone, its owner; she adds bob.
        alice.click("#members-open").await?;
        let rows = alice
            .until_js(
                "the members listed",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {MEMBER_ROWS} }})(); return r.length ? r : null;"),
                vec![],
            )
            .await?;
        ensure!(rows == json!(["alice (you) Owner"]), "the members: {rows}");
        ensure!(alice.focused().await? == "members-add-name", "the dialog opened on {:?}", alice.focused().await?);
        let mut report = Vec::new();
        for colours in ["light", "dark"] {
            scheme(&alice, colours).await?;
            report.extend(axe(&alice, &format!("/chat/secret, members open ({colours})")).await?);
        }
        scheme(&alice, "light").await?;
        alice.keys(&format!("bob{}", Key::Enter)).await?;
        alice
            .until_js(
                "bob among the members",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {MEMBER_ROWS} }})(); return r.includes('bob Member') ? r : null;"),
                vec![],
            )
            .await?;

        // Bob's open lobby, on the other instance, lists the room at once.
        bob.wait_for(&side_link("private-rooms", "secret")).await?;
        bob.until_js(
            "the change said",
            PAGE_DEADLINE,
            "return document.getElementById('rooms-live').textContent === '#secret is now in your private rooms.';",
            vec![],
        )
        .await?;
        alice.keys(&Key::Escape.to_string()).await?;
        let back = alice.js("return [document.getElementById('members-dialog').open, document.activeElement.id];", vec![]).await?;
        ensure!(back == json!([false, "members-open"]), "after Escape: {back}");

        bob.click(&side_link("private-rooms", "secret")).await?;
        bob.wait_path("/chat/secret", PAGE_DEADLINE).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        alice.send("welcome to the secret room").await?;
        bob.wait_confirmed(&["welcome to the secret room"], PAGE_DEADLINE).await?;
        bob.send_with_enter("glad to be here").await?;
        alice.wait_confirmed(&["glad to be here"], PAGE_DEADLINE).await?;
        report.extend(axe(&bob, "/chat/secret, a member").await?);

        // Unread and mention badges for a private room.
        bob.goto(&b.url("/chat/lobby")).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        alice.send("@bob one more thing").await?;
        let badge = bob
            .until_js(
                "a mention badge on #secret",
                PAGE_DEADLINE,
                &format!(
                    "const b = document.querySelector('{} .room-badge'); return b && b.classList.contains('room-badge-mention')
                       ? b.querySelector('[aria-hidden]').textContent : null;",
                    side_link("private-rooms", "secret")
                ),
                vec![],
            )
            .await?;
        ensure!(badge == json!("@1"), "the badge reads {badge}");
        no_serious(&report)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_open_page_leaves_the_room_within_two_seconds_and_says_why() {
    let j = Journey::start("rooms-removed").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let (alice, bob) = alice_and_bob(&j, &a, &b).await?;
        let http = same_session(&alice, &a).await?;
        let made = call(
            &http,
            &a,
            reqwest::Method::POST,
            "/api/rooms",
            Some(json!({ "name": "secret", "visibility": "private" })),
        )
        .await;
        ensure!(made == 201, "creating #secret answered {made}");
        let added = call(&http, &a, reqwest::Method::PUT, "/api/rooms/secret/members/bob", None).await;
        ensure!(added == 204, "adding bob answered {added}");

        // Bob: the lobby in one tab (instance B), #secret in another (instance A).
        let lobby_tab = bob.client.window().await.ctx("bob's first tab")?;
        bob.wait_for(&side_link("private-rooms", "secret")).await?;
        let room_tab = bob.client.new_window(true).await.ctx("a second tab")?.handle;
        bob.client.switch_to_window(room_tab).await.ctx("switching to the room's tab")?;
        bob.goto(&a.url("/chat/secret")).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;

        alice.goto(&a.url("/chat/secret")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        alice.click("#members-open").await?;
        alice
            .until_js(
                "bob's row",
                PAGE_DEADLINE,
                "return !!document.querySelector('#members-list button[data-user=\"bob\"]');",
                vec![],
            )
            .await?;
        alice.click("#members-list button[data-user=\"bob\"]").await?;
        let clicked = Instant::now();

        let left = REMOVAL_DEADLINE.saturating_sub(clicked.elapsed());
        bob.wait_path("/chat/lobby", left).await.map_err(|e| format!("bob's page stayed in #secret: {e}"))?;
        println!("bob's page left #secret {:?} after the click", clicked.elapsed());
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        let said = bob.text("#page-notice p").await?;
        ensure!(said == "You were removed from #secret.", "the lobby says {said:?}");
        let gone = bob
            .js(&format!("return document.querySelector('{}');", side_link("private-rooms", "secret")), vec![])
            .await?;
        ensure!(gone.is_null(), "#secret is still in the sidebar");
        let removed = alice
            .until_js(
                "bob gone from the members",
                PAGE_DEADLINE,
                &format!("const r = (() => {{ {MEMBER_ROWS} }})(); return r.length === 1 ? r : null;"),
                vec![],
            )
            .await?;
        ensure!(removed == json!(["alice (you) Owner"]), "the members: {removed}");

        // His other tab, on the other instance, drops the room from its sidebar.
        bob.client.switch_to_window(lobby_tab).await.ctx("switching to the lobby's tab")?;
        bob.until_js(
            "#secret gone from the other tab",
            PAGE_DEADLINE,
            &format!("return !document.querySelector('{}');", side_link("private-rooms", "secret")),
            vec![],
        )
        .await?;
        // And the room is not his any more: the same page as a room that is no one's.
        bob.goto(&b.url("/chat/secret")).await?;
        let page = bob.text(".card-error").await?;
        ensure!(page.contains("not a member"), "#secret, after the removal: {page:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_hold_a_direct_conversation_started_from_a_name() {
    let j = Journey::start("rooms-direct").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let (alice, bob) = alice_and_bob(&j, &a, &b).await?;
        alice.wait_for("#online a[href=\"/chat/@bob\"]").await?;

        // From the presence list.
        alice.click("#online a[href=\"/chat/@bob\"]").await?;
        alice.wait_path("/chat/@bob", PAGE_DEADLINE).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        let header = alice
            .js("return [document.querySelector('h1.room-title').textContent, document.title,
                 !!document.querySelector('.room-hash'), document.getElementById('message-input').placeholder];", vec![])
            .await?;
        ensure!(header == json!(["@bob", "@bob · palaver", false, "Message @bob"]), "the page of @bob: {header}");
        let current = alice
            .js(&format!("return !!document.querySelector('{}[aria-current=\"page\"]');", side_link("direct-rooms", "@bob")), vec![])
            .await?;
        ensure!(current == json!(true), "@bob is not the current conversation in the sidebar");
        alice.send("hi bob, just us").await?;

        // Bob's lobby learns of the conversation, with its count.
        let badge = bob
            .until_js(
                "a count on @alice",
                PAGE_DEADLINE,
                &format!(
                    "const b = document.querySelector('{} .room-badge [aria-hidden]'); return b ? b.textContent : null;",
                    side_link("direct-rooms", "@alice")
                ),
                vec![],
            )
            .await?;
        ensure!(badge == json!("1"), "the badge reads {badge}");
        bob.click(&side_link("direct-rooms", "@alice")).await?;
        bob.wait_path("/chat/@alice", PAGE_DEADLINE).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        bob.wait_confirmed(&["hi bob, just us"], PAGE_DEADLINE).await?;
        bob.send_with_enter("hi alice").await?;
        alice.wait_confirmed(&["hi alice"], PAGE_DEADLINE).await?;
        let mut report = Vec::new();
        for colours in ["light", "dark"] {
            scheme(&bob, colours).await?;
            report.extend(axe(&bob, &format!("/chat/@alice ({colours})")).await?);
        }

        // From a message's author, and from "Message someone…".
        let carol = j.browser("carol").await?;
        carol.register(&a, "carol").await?;
        bob.goto(&b.url("/chat/lobby")).await?;
        bob.wait_state("connected", PAGE_DEADLINE).await?;
        bob.send("carol, write to me").await?;
        carol.wait_confirmed(&["carol, write to me"], PAGE_DEADLINE).await?;
        carol.click("#messages a.msg-user[href=\"/chat/@bob\"]").await?;
        carol.wait_path("/chat/@bob", PAGE_DEADLINE).await?;
        carol.wait_state("connected", PAGE_DEADLINE).await?;
        carol.click("#new-direct-toggle").await?;
        carol.fill("#new-direct-name", "alice").await?;
        carol.click("#new-direct-start").await?;
        carol.wait_path("/chat/@alice", PAGE_DEADLINE).await?;
        carol.wait_state("connected", PAGE_DEADLINE).await?;
        let history = carol.texts("#messages li.msg .msg-body").await?;
        ensure!(history.is_empty(), "carol sees another conversation's messages: {history:?}");
        report.extend(axe(&carol, "/chat/@alice, new").await?);

        // Nobody of that name: said in the form.
        carol.click("#new-direct-toggle").await?;
        carol.fill("#new-direct-name", "nobody-here").await?;
        carol.click("#new-direct-start").await?;
        carol
            .until_js("the refusal", PAGE_DEADLINE, "return document.getElementById('new-direct-error').textContent || null;", vec![])
            .await?;
        ensure!(carol.path().await? == "/chat/@alice", "a refused name left the page");
        no_serious(&report)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_link_to_a_private_room_by_a_non_member_gets_the_404_page() {
    let j = Journey::start("rooms-deep-link").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn(&redis).await;
    let alice = signed_up(&app, "alice").await;
    signed_up(&app, "carol").await;
    let made = call(
        &alice,
        &app,
        reqwest::Method::POST,
        "/api/rooms",
        Some(json!({ "name": "secret", "visibility": "private" })),
    )
    .await;
    assert_eq!(made, 201, "creating #secret");
    j.run(async {
        let carol = j.browser("carol").await?;
        carol.goto(&app.url("/chat/secret")).await?;
        carol.wait_path("/login", PAGE_DEADLINE).await?;
        carol.fill("#username", "carol").await?;
        carol.fill("#password", PASSWORD).await?;
        carol.click("#login-submit").await?;
        carol.wait_path("/chat/secret", PAGE_DEADLINE).await?;
        let page = carol.text(".card-error").await?;
        ensure!(page.contains("No such room, or you are not a member."), "the page reads {page:?}");
        ensure!(page.contains("404"), "the page reads {page:?}");
        let report = axe(&carol, "/chat/secret, not a member").await?;
        let leaked = carol.js("return document.body.textContent.includes('alice');", vec![]).await?;
        ensure!(leaked == json!(false), "the page names a member");
        // The same page as a name that cannot be opened, or nobody's conversation.
        for other in ["/chat/Not_A_Room", "/chat/@nobody-here"] {
            carol.goto(&app.url(other)).await?;
            let same = carol.text(".card-error").await?;
            ensure!(same == page, "{other} reads {same:?}, #secret {page:?}");
        }
        no_serious(&report)
    })
    .await;
}
