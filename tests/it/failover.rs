//! Redis Cluster failover (docs/cluster.md): with three masters and three
//! replicas, the master of a busy room's slot is killed while messages are
//! being sent. After a replica takes over, every acknowledged message is in
//! the room's history and reached every socket in the room on both
//! instances, in order, once; sessions survive; and a logout closes the
//! user's sockets on both instances.
//!
//! The master is killed with SIGKILL: a crash, the case durability is for.
//! (`CLUSTER FAILOVER` hands over gracefully, replica caught up first, so it
//! could lose nothing even without `WAIT`.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A logout reaches every instance "within one second"; allow for a slow CI.
const LOGOUT_DEADLINE: Duration = Duration::from_secs(3);
/// Acked messages before the kill, and in all.
const BEFORE_KILL: usize = 15;
const MESSAGES: usize = 40;

/// A socket's message ids up to and including the one with body `end`.
async fn ids_until_end(socket: &mut Socket) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let m = within_for(Duration::from_secs(30), "the next message", socket.next_of("message")).await;
        ids.push(m["id"].as_str().unwrap().to_owned());
        if m["body"] == "end" {
            return ids;
        }
    }
}

/// Sends `body` until it is acknowledged, as the browser client does: an
/// `unavailable` answer (outcome unknown) is sent again with the same
/// `client_id` after a pause (`on_refusal` runs in it). Messages that arrive
/// meanwhile are kept in `seen`.
async fn send_until_acked(
    socket: &mut Socket,
    body: &str,
    client_id: &str,
    seen: &mut Vec<String>,
    on_refusal: &mut dyn FnMut(),
) -> (String, u32) {
    let mut refusals = 0;
    loop {
        socket.send_json(json!({"type": "send", "body": body, "client_id": client_id})).await;
        loop {
            match within_for(Duration::from_secs(30), "an answer to a send", socket.next_frame()).await {
                Frame::Json(v) if v["type"] == "ack" => return (v["id"].as_str().unwrap().to_owned(), refusals),
                Frame::Json(v) if v["type"] == "error" => {
                    assert_eq!(v["code"], "unavailable", "{v}");
                    refusals += 1;
                    assert!(refusals < 200, "{body} was never acknowledged");
                    on_refusal();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Frame::Json(v) if v["type"] == "message" => seen.push(v["id"].as_str().unwrap().to_owned()),
                Frame::Json(_) => continue,
                other => panic!("the sender's socket ended: {other:?}"),
            }
        }
    }
}

/// The killed master of the room's slot.
struct Failover<'a> {
    cluster: &'a mut RedisCluster,
    master: usize,
    stream: String,
    restarted: bool,
}

impl Failover<'_> {
    /// Acks need a replica (`WAIT 1`): once a replica has taken over, the
    /// killed node is started again, and rejoins as its replica.
    fn restart_once_promoted(&mut self) {
        if !self.restarted && self.cluster.master_of(&self.stream).is_some_and(|m| m != self.master) {
            self.cluster.restart(self.master);
            self.restarted = true;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_loses_no_acked_message_keeps_sessions_and_logouts_still_reach_every_instance() {
    let mut cluster = RedisCluster::start();
    // A busy room on the same master as the events channel, so that the
    // failover moves the logout channel's shard too.
    let events_master = cluster.master_of("palaver:events").expect("a master for the events channel");
    let room = (0..)
        .map(|n| format!("busy-{n}"))
        .find(|r| cluster.master_of(&room_key(r, "messages")) == Some(events_master))
        .expect("a room on that master");
    let vars = [
        ("REVALIDATE_INTERVAL_SECS", "300"),
        ("MESSAGE_RATE_PER_SEC", "1000"),
        ("MESSAGE_BURST", "1000"),
        ("USER_MESSAGE_RATE_PER_SEC", "1000"),
        ("USER_MESSAGE_BURST", "1000"),
    ];
    let (a, b) = TestApp::spawn_group(&cluster, &vars).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    let query = format!("?room={room}");
    let (mut sender, _) = alice.join(&a, &query).await;
    let (mut alice_on_b, _) = alice.join(&b, &query).await;
    let (mut bob_on_b, _) = bob.join(&b, &query).await;
    let (mut bob_on_a, _) = bob.join(&a, &query).await;

    let receivers = async {
        let (x, y, z) =
            tokio::join!(ids_until_end(&mut alice_on_b), ids_until_end(&mut bob_on_b), ids_until_end(&mut bob_on_a));
        [x, y, z]
    };
    let mut failover = Failover {
        cluster: &mut cluster,
        master: events_master,
        stream: room_key(&room, "messages"),
        restarted: false,
    };
    let sending = async {
        let (mut acked, mut seen, mut refused) = (Vec::new(), Vec::new(), 0);
        for i in 0..MESSAGES {
            if i == BEFORE_KILL {
                failover.cluster.kill(failover.master);
            }
            let body = if i + 1 == MESSAGES { "end".to_owned() } else { format!("m{i}") };
            let mut heal = || failover.restart_once_promoted();
            let (id, refusals) = send_until_acked(&mut sender, &body, &format!("c{i}"), &mut seen, &mut heal).await;
            acked.push(id);
            refused += refusals;
        }
        (acked, seen, refused)
    };
    let ((acked, mut seen, refused), received) = tokio::join!(sending, receivers);
    eprintln!("{} messages acked, {refused} answered unavailable during the failover", acked.len());
    while seen.last() != acked.last() {
        seen.push(sender.next_of("message").await["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, acked, "the sender's socket: every acked message, in order, once");
    for (who, ids) in ["alice on b", "bob on b", "bob on a"].iter().zip(received) {
        assert_eq!(ids, acked, "{who}: every acked message, in order, once");
    }
    assert!(failover.restarted, "a replica took over");
    assert!(refused > 0, "the kill happened mid-send");
    failover.cluster.wait_healthy();

    // History: a late joiner replaying the whole room gets exactly the acked
    // messages (nothing lost on the promoted replica, nothing doubled by the
    // resends after `unavailable`).
    let (mut late, _) = bob.join(&b, &format!("{query}&after=0-0")).await;
    assert_eq!(ids_until_end(&mut late).await, acked, "the room's history after the failover");

    // Sessions made before the kill still sign in on both instances.
    for (who, browser) in [("alice", &alice), ("bob", &bob)] {
        for app in [&a, &b] {
            let page = browser.get(app, &format!("/chat/{room}")).await;
            assert_eq!(page.status(), StatusCode::OK, "{who}'s session after the failover");
        }
    }

    // The events channel's shard moved with the killed master: once both
    // instances say they are subscribed again, a logout on one closes the
    // user's sockets on both.
    for app in [&a, &b] {
        let probe = Browser::new();
        eventually("/readyz to be 200 after the failover", || {
            let probe = &probe;
            async move { probe.get(app, "/readyz").await.status() == StatusCode::OK }
        })
        .await;
    }
    assert_redirect(&alice.logout(&a).await, "/login");
    for (who, socket) in [("alice on a", &mut sender), ("alice on b", &mut alice_on_b)] {
        let closed = within_for(LOGOUT_DEADLINE, "the logout to close the socket", socket.closed()).await;
        assert_eq!(closed, (4401, "logged out".to_owned()), "{who}");
    }
    // Bob's sockets stay: his next message reaches both of them.
    bob_on_a.say("still here", "after").await;
    assert_eq!(bob_on_b.next_of("message").await["body"], "still here");
}
