//! The main journey through a real TLS proxy (nginx, started as
//! `proxy.rs` starts it, from the shipped configuration) to two instances
//! on one Redis: pages and WebSockets over `https://` and `wss://` at a
//! name, one user's socket on each instance, chat across them, and a logout
//! that closes sockets on both.
//!
//! Chromium maps the name to the proxy itself (`--host-resolver-rules`)
//! and accepts the proxy's self-signed certificate by its public key
//! (`--ignore-certificate-errors-spki-list`): any other certificate
//! error still fails.

use std::time::Instant;

use super::{harness::*, LOGOUT_DEADLINE};
use crate::{helpers::*, proxy::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_users_on_two_instances_chat_and_a_logout_closes_sockets_on_both() {
    let j = Journey::start("proxy").await;
    // One socket per instance, so that where each socket goes is certain:
    // nginx's least_conn offers a new socket to the instance holding
    // fewer, and one that is full answers 503, which nginx takes to the
    // other (proxy_next_upstream).
    let (_redis, proxy, instances) = site(2, &[("MAX_CONNECTIONS", "1")]).await;
    let (a, b) = (&instances[0], &instances[1]);
    let held = || async { (a.sockets_open().await, b.sockets_open().await) };
    // Waits until the instances hold sockets as `want` says.
    let until_held = |want: fn((u64, u64)) -> bool, what: &'static str| async move {
        match poll(PAGE_DEADLINE, || async { want(held().await).then_some(()) }).await {
            Some(()) => Ok(()),
            None => Err(format!("{what}: the instances hold {:?} sockets", held().await)),
        }
    };
    j.run(async {
        let switches = proxy.chromium_args();
        let alice = j.browser_with("alice", &switches).await?;
        let bob = j.browser_with("bob", &switches).await?;
        alice.register_at(&proxy.origin, "alice").await?;
        let url = alice.client.current_url().await.ctx("reading alice's URL")?;
        ensure!(url.as_str().starts_with(&proxy.origin), "alice is at {url}");
        bob.register_at(&proxy.origin, "bob").await?;
        until_held(|held| held == (1, 1), "a socket on each instance").await?;

        alice.send("Hi bob, through the proxy").await?;
        bob.wait_confirmed(&["Hi bob, through the proxy"], PAGE_DEADLINE).await?;
        bob.send_with_enter("Hello alice, on the other instance").await?;
        alice.wait_confirmed(&["Hello alice, on the other instance"], PAGE_DEADLINE).await?;

        // Bob signs out with the button: a form post through the proxy.
        bob.click("#logout").await?;
        bob.wait_path("/login", PAGE_DEADLINE).await?;
        until_held(|(a, b)| a + b == 1, "bob's socket closed").await?;

        // Alice's second tab: its socket goes to the instance with room.
        let tab1 = alice.client.window().await.ctx("the first tab")?;
        let tab2 = alice.client.new_window(true).await.ctx("opening a second tab")?.handle;
        alice.client.switch_to_window(tab2.clone()).await.ctx("switching to tab 2")?;
        alice.goto(&proxy.url("/chat/lobby")).await?;
        alice.wait_state("connected", PAGE_DEADLINE).await?;
        until_held(|held| held == (1, 1), "one of alice's tabs on each instance").await?;

        // Alice signs out everywhere from another device, a client of the
        // proxy with a session of its own and no socket. Whichever instance
        // takes that request, one of her tabs is on the other one.
        let phone = proxy.visitor(loopback(2));
        assert_redirect(&phone.login("alice", PASSWORD).await, "/chat");
        let signed_out = Instant::now();
        assert_redirect(&phone.post("/logout/everywhere").await, "/login");
        for (tab, name) in [(tab1, "tab 1"), (tab2, "tab 2")] {
            alice.client.switch_to_window(tab).await.ctx(format!("switching to {name}"))?;
            let left = LOGOUT_DEADLINE.saturating_sub(signed_out.elapsed());
            alice.wait_path("/login", left).await.map_err(|e| format!("alice's {name} stayed in the chat: {e}"))?;
        }
        until_held(|held| held == (0, 0), "every socket closed").await
    })
    .await;
}
