//! The account page in the browser (issue 19, SPEC §7): two browsers signed
//! in as one user, where the account page of one lists both and ending the
//! other sends that tab to the sign-in page saying why; a password change
//! in one doing the same to the other; "keep me signed in"; a session past
//! its lifetime landing on the sign-in page that says it expired; and the
//! page clean under axe in both colour schemes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{harness::*, two_instances, ux::axe, LOGOUT_DEADLINE};
use crate::{account::NEW_PASSWORD, helpers::*};

/// The "End" button of the session that is not this one.
const END_OTHER: &str = "#sessions li:not(.session-current) .session-end button";

/// Waits until the page at `/login` says `why` the browser is there.
async fn told(chrome: &Chrome, why: &str) -> Outcome {
    chrome.wait_path("/login", PAGE_DEADLINE).await?;
    let said = chrome.text("#sign-in-reason").await?;
    ensure!(said.starts_with(why), "{}: the sign-in page says {said:?}, not {why:?}", chrome.name);
    Ok(())
}

/// Opens the account page from the chat's sidebar; returns the clients of
/// the sessions listed, this one's first.
async fn account_page(chrome: &Chrome) -> Outcome<Vec<String>> {
    chrome.click("#account-link").await?;
    chrome.wait_path("/account", PAGE_DEADLINE).await?;
    let listed = chrome
        .js(
            "const rows = Array.from(document.querySelectorAll('#sessions li'));
             rows.sort((a, b) => b.classList.contains('session-current') - a.classList.contains('session-current'));
             return rows.map(li => li.querySelector('.session-client strong').textContent);",
            vec![],
        )
        .await?;
    serde_json::from_value(listed).ctx("reading the sessions listed")
}

/// Alice registered in one browser on `a` and signed in in another on `b`,
/// each in the lobby.
async fn alice_twice(j: &Journey, a: &TestApp, b: &TestApp) -> Outcome<(Chrome, Chrome)> {
    let laptop = j.browser("laptop").await?;
    let phone = j.browser("phone").await?;
    laptop.register(a, "alice").await?;
    phone.login(b, "alice").await?;
    Ok((laptop, phone))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_other_browsers_session_sends_it_to_the_sign_in_page_saying_so() {
    let j = Journey::start("account-end").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let (laptop, phone) = alice_twice(&j, &a, &b).await?;

        let listed = account_page(&laptop).await?;
        ensure!(listed.len() == 2, "the account page lists {listed:?}");
        ensure!(listed.iter().all(|c| c.contains(" on ")), "browser and OS read from the User-Agent: {listed:?}");
        let marked = laptop.texts("#sessions li.session-current #this-session").await?;
        ensure!(marked == ["This session"], "this session is marked: {marked:?}");

        let clicked = Instant::now();
        laptop.click(END_OTHER).await?;
        laptop.wait_path("/account", PAGE_DEADLINE).await?;
        let notice = laptop.text("#account-notice").await?;
        ensure!(notice == "That session has ended.", "the page says {notice:?}");
        let left = laptop.texts("#sessions li").await?.len();
        ensure!(left == 1, "{left} sessions listed after ending the other");
        phone
            .wait_path("/login", LOGOUT_DEADLINE.saturating_sub(clicked.elapsed()))
            .await
            .map_err(|e| format!("the ended browser stayed in the chat: {e}"))?;
        told(&phone, "Your session was ended.").await?;

        // The one that ended it goes on.
        laptop.goto(&a.url("/chat/lobby")).await?;
        laptop.wait_state("connected", PAGE_DEADLINE).await?;
        laptop.send("still here").await?;
        laptop.wait_confirmed(&["still here"], PAGE_DEADLINE).await.map(drop)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_in_one_browser_sends_the_other_to_the_sign_in_page() {
    let j = Journey::start("account-password").await;
    let (_redis, a, b) = two_instances().await;
    j.run(async {
        let (laptop, phone) = alice_twice(&j, &a, &b).await?;
        account_page(&laptop).await?;

        // A guessable one first: refused with the estimator's advice beside the field.
        laptop.fill("#current", PASSWORD).await?;
        laptop.fill("#new", "password").await?;
        laptop.click("#change-password").await?;
        laptop.wait_for("#password-error").await?;
        let described =
            laptop.js("return document.getElementById('new').getAttribute('aria-describedby');", vec![]).await?;
        ensure!(described.as_str().is_some_and(|d| d.contains("new-advice")), "the advice is the field's: {described}");
        ensure!(phone.path().await? == "/chat/lobby", "a refused change ended the other session");

        laptop.fill("#current", PASSWORD).await?;
        laptop.fill("#new", NEW_PASSWORD).await?;
        let clicked = Instant::now();
        laptop.click("#change-password").await?;
        laptop.wait_path("/account", PAGE_DEADLINE).await?;
        let notice = laptop.text("#account-notice").await?;
        ensure!(notice.starts_with("Your password was changed."), "the page says {notice:?}");
        phone
            .wait_path("/login", LOGOUT_DEADLINE.saturating_sub(clicked.elapsed()))
            .await
            .map_err(|e| format!("the other browser stayed in the chat: {e}"))?;
        told(&phone, "Your session was ended.").await?;

        // This browser is still signed in, under a new cookie; the new
        // password is the one that works.
        laptop.goto(&a.url("/chat/lobby")).await?;
        laptop.wait_state("connected", PAGE_DEADLINE).await?;
        phone.fill("#username", "alice").await?;
        phone.fill("#password", NEW_PASSWORD).await?;
        phone.click("#login-submit").await?;
        phone.wait_path("/chat/lobby", PAGE_DEADLINE).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_in_one_tab_keeps_the_chat_of_another_tab_of_the_same_browser() {
    let j = Journey::start("account-password-tabs").await;
    let redis = RedisServer::start();
    // The change moves this browser's session to a new id; the sweep is
    // what closes the sockets opened under the old one, so it runs often.
    let app = TestApp::spawn_with(Some(&redis), &[("REVALIDATE_INTERVAL_SECS", "1")]).await;
    j.run(async {
        let laptop = j.browser("laptop").await?;
        laptop.register(&app, "alice").await?;
        laptop.wait_state("connected", PAGE_DEADLINE).await?;
        let chat_tab = laptop.client.window().await.ctx("the chat tab")?;
        let hellos = laptop.frames_received("hello").await?.len();

        let account_tab = laptop.client.new_window(true).await.ctx("a second tab")?.handle;
        laptop.client.switch_to_window(account_tab).await.ctx("switching to the second tab")?;
        laptop.goto(&app.url("/account")).await?;
        laptop.fill("#current", PASSWORD).await?;
        laptop.fill("#new", NEW_PASSWORD).await?;
        laptop.click("#change-password").await?;
        laptop.wait_path("/account", PAGE_DEADLINE).await?;
        let notice = laptop.text("#account-notice").await?;
        ensure!(notice.starts_with("Your password was changed."), "the page says {notice:?}");

        // The chat tab's socket, opened under the old id, is closed and
        // opened again under the new one: the tab stays in the chat.
        laptop.client.switch_to_window(chat_tab).await.ctx("back to the chat tab")?;
        let deadline = Instant::now() + Duration::from_secs(1) + PAGE_DEADLINE;
        while laptop.frames_received("hello").await?.len() <= hellos {
            ensure!(Instant::now() < deadline, "the chat tab never connected again (at {})", laptop.path().await?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(laptop.path().await? == "/chat/lobby", "the chat tab left the chat for {}", laptop.path().await?);
        laptop.wait_state("connected", PAGE_DEADLINE).await?;
        laptop.send("still signed in").await?;
        laptop.wait_confirmed(&["still signed in"], PAGE_DEADLINE).await.map(drop)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_past_its_lifetime_lands_on_the_sign_in_page_that_says_it_expired() {
    let j = Journey::start("account-expired").await;
    let redis = RedisServer::start();
    let app =
        TestApp::spawn_with(Some(&redis), &[("SESSION_MAX_LIFETIME_SECS", "6"), ("REAUTH_WARNING_SECS", "2")]).await;
    j.run(async {
        let alice = j.browser("alice").await?;
        alice.register(&app, "alice").await?;
        alice.wait_path("/login", Duration::from_secs(6) + PAGE_DEADLINE).await?;
        let query = alice.js("return location.search;", vec![]).await?;
        ensure!(query.as_str().is_some_and(|q| q.contains("reason=expired")), "at /login{query}");
        told(&alice, "Your session expired.").await?;

        // "Keep me signed in" is a box to tick, by keyboard as by mouse.
        let kept = alice
            .js(
                "const box = document.getElementById('remember');
                 return [box.type, box.labels[0].textContent, box.checked];",
                vec![],
            )
            .await?;
        ensure!(kept == json!(["checkbox", "Keep me signed in on this device", false]), "the box: {kept}");
        alice.fill("#username", "alice").await?;
        alice.fill("#password", PASSWORD).await?;
        alice.click("#remember").await?;
        alice.click("#login-submit").await?;
        alice.wait_path("/chat/lobby", PAGE_DEADLINE).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        account_page(&alice).await?;
        let badge = alice.text("#sessions li.session-current .badge-quiet").await?;
        ensure!(badge == "Kept signed in", "this session's badge: {badge:?}");
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_has_no_serious_accessibility_violations_in_either_colour_scheme() {
    let j = Journey::start("account-axe").await;
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("REGISTRATION", "invite")]).await;
    j.run(async {
        let chrome = j.browser("alice").await?;
        let ran = crate::admin::admin(&redis, &["invite"]).await;
        ensure!(ran.code == 0, "palaver admin invite: {}", ran.stderr);
        let link = ran.stdout.trim().rsplit(' ').next().unwrap_or_default().to_owned();
        let code = link.rsplit_once("invite=").map(|(_, c)| c.to_owned()).unwrap_or_default();
        chrome.goto(&app.url(&format!("/register?invite={code}"))).await?;
        chrome.fill("#username", "alice").await?;
        chrome.fill("#password", PASSWORD).await?;
        chrome.click("#register-submit").await?;
        chrome.wait_path("/chat/lobby", PAGE_DEADLINE).await?;
        // A second session to list, with an End button.
        let other = Browser::new();
        assert_redirect(&other.login(&app, "alice", PASSWORD).await, "/chat");

        let mut report: Vec<Value> = Vec::new();
        for scheme in ["light", "dark"] {
            chrome.color_scheme(scheme).await?;
            chrome.goto(&app.url("/account")).await?;
            let dark = chrome.js("return matchMedia('(prefers-color-scheme: dark)').matches;", vec![]).await?;
            ensure!(dark == json!(scheme == "dark"), "the {scheme} scheme is not in effect");
            report.extend(axe(&chrome, &format!("/account ({scheme})")).await?);
            // With an invite link made, and with the password form's errors.
            chrome.click("#make-invite").await?;
            chrome.wait_for("#invite-link").await?;
            report.extend(axe(&chrome, &format!("/account, invite made ({scheme})")).await?);
            chrome.fill("#current", PASSWORD).await?;
            chrome.fill("#new", "password").await?;
            chrome.click("#change-password").await?;
            chrome.wait_for("#password-error").await?;
            report.extend(axe(&chrome, &format!("/account, a weak password ({scheme})")).await?);
        }
        for v in &report {
            println!("axe {}: {} ({}) {}", v["page"], v["id"], v["impact"], v["nodes"]);
        }
        let serious: Vec<&Value> = report.iter().filter(|v| v["serious"] == json!(true)).collect();
        ensure!(serious.is_empty(), "serious or critical accessibility violations: {serious:#?}");

        // The keyboard reaches every control of the page, in order.
        chrome.goto(&app.url("/account")).await?;
        let mut reached = Vec::new();
        for _ in 0..12 {
            chrome.keys(&fantoccini::key::Key::Tab.to_string()).await?;
            reached.push(chrome.focused().await?);
        }
        for control in ["end-others", "current", "new", "change-password", "make-invite"] {
            ensure!(reached.iter().any(|r| r == control), "Tab never reached #{control}: {reached:?}");
        }
        Ok(())
    })
    .await;
}
