//! What an answer promises survives a failover that loses what the replica
//! had not received (docs/cluster.md, "Durability"): a sign-in, a logout
//! and a member's removal are acknowledged only once a replica has them, so
//! "log out everywhere" still finds every acknowledged session, a logged
//! out session stays ended, and a removed member stays out. While no
//! replica can confirm them they are refused with 503, and so is the same
//! request asked again.
//!
//! Each test holds back the replica of the master that serves the key the
//! promise rests on, makes the request, and then fails that master over
//! to the replica as it was (`RedisCluster::hold_back`,
//! `RedisCluster::fail_over_losing`): the replica is killed, its
//! append-only file keeping what it had, and after the request the master
//! is killed and the replica started again from its file and made master.
//! What the master wrote in between is gone, as in a crash before its
//! replica received it: deterministically, not by racing the replication.

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use palaver::{backend::redis::keys, model::RoomName};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{
    helpers::*,
    rooms::{api, private_room},
};

/// How long a request may keep answering 503 while the cluster and the
/// instance's connections recover from the failover.
const RECOVERY: Duration = Duration::from_secs(30);

/// Sends a request until it is answered with something other than 503.
async fn until_answered<F, Fut>(what: &str, mut send: F) -> StatusCode
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StatusCode>,
{
    poll(RECOVERY, || {
        let sent = send();
        async move { Some(sent.await).filter(|status| *status != StatusCode::SERVICE_UNAVAILABLE) }
    })
    .await
    .unwrap_or_else(|| panic!("{what} was answered 503 for {RECOVERY:?} after the failover"))
}

/// A browser that presents session `id`, as one that kept the cookie.
fn holding(app: &TestApp, id: &str) -> Browser {
    let browser = Browser::new();
    browser.set_session_id(app, id);
    browser
}

/// The keys of the token session an access token names: its `sid`'s
/// pointer and the session record the pointer names.
fn token_session_keys(cluster: &RedisCluster, access: &str) -> [String; 2] {
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).unwrap();
    let pointer = keys::sid(claims["sid"].as_str().expect("a sid"));
    let reply = cluster.command(&["GET", &pointer]).expect("the pointer's master answers");
    let session = reply.lines().nth(1).unwrap_or_else(|| panic!("{pointer} names no session: {reply:?}")).to_owned();
    [pointer, session]
}

/// The only key of the store whose name starts with `prefix` and ends
/// with `suffix`.
fn the_key(cluster: &RedisCluster, prefix: &str, suffix: &str) -> String {
    let found: Vec<String> =
        cluster.all_keys().into_iter().filter(|k| k.starts_with(prefix) && k.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "keys {prefix}…{suffix}: {found:?}");
    found.into_iter().next().unwrap()
}

async fn token_sign_in(app: &TestApp, username: &str) -> reqwest::Response {
    let body = json!({"username": username, "password": PASSWORD});
    reqwest::Client::new().post(app.url("/api/token")).json(&body).send().await.expect("POST /api/token")
}

/// Whether an access token is still taken: `POST /api/ws-ticket` with it.
async fn ticket_status(app: &TestApp, access: &str) -> StatusCode {
    let res = reqwest::Client::new().post(app.url("/api/ws-ticket")).bearer_auth(access).json(&json!({})).send();
    res.await.expect("POST /api/ws-ticket").status()
}

/// The chaos run's violation (seed 804709): a token session accepted a
/// socket after "log out everywhere" had answered, following a failover.
/// Its sign-in had been acknowledged before its index entry was on a
/// replica, and the failover lost the entry, so the logout, which ends
/// what the index lists, missed the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_after_a_failover_ends_every_session_whose_sign_in_was_acknowledged() {
    let mut cluster = RedisCluster::start_persistent();
    let app = TestApp::spawn(&cluster).await;
    let alice = signed_up(&app, "alice").await;
    let index = the_key(&cluster, "palaver:user:{", "}:sessions");
    let master = cluster.master_of(&index).expect("a master for alice's index");
    let replica = cluster.replica_of(master).expect("a replica of it");
    tokio::task::block_in_place(|| cluster.hold_back(master, replica));

    // Token sign-ins while no replica can receive alice's index: until one
    // is refused, or one is acknowledged whose session and pointer are
    // stored on other masters (so that the failover loses only its index
    // entry, not the session).
    let mut acknowledged = Vec::new();
    let refused = loop {
        let res = token_sign_in(&app, "alice").await;
        match res.status() {
            StatusCode::SERVICE_UNAVAILABLE => break true,
            StatusCode::OK => {
                let access = res.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
                let elsewhere =
                    token_session_keys(&cluster, &access).iter().all(|key| cluster.master_of(key) != Some(master));
                acknowledged.push(access);
                if elsewhere {
                    break false;
                }
            }
            other => panic!("a token sign-in answered {other}"),
        }
        assert!(acknowledged.len() < 30, "every acknowledged session landed on alice's index's master");
    };

    tokio::task::block_in_place(|| cluster.fail_over_losing(master, replica));
    let everywhere =
        until_answered("/logout/everywhere", || async { alice.post(&app, "/logout/everywhere").await.status() }).await;
    assert_eq!(everywhere, StatusCode::SEE_OTHER);
    for (n, access) in acknowledged.iter().enumerate() {
        let status = until_answered("/api/ws-ticket", || ticket_status(&app, access)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "token session #{n}, whose sign-in was acknowledged before the failover, outlived logout everywhere"
        );
    }
    assert!(refused, "a sign-in whose index entry no replica could confirm was acknowledged");
}

/// A logout deletes the session on its master: acknowledged before a
/// replica has the deletion, a failover brings the session back. So it is
/// refused (503) until a replica confirms it, and a logout asked again
/// with the same cookie (the session gone from the master already)
/// confirms that deletion before it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_stays_done_through_a_failover_and_is_refused_while_no_replica_confirms_it() {
    let mut cluster = RedisCluster::start_persistent();
    let app = TestApp::spawn(&cluster).await;
    let session = signed_up(&app, "alice").await.session_id(&app).expect("a session cookie");
    let master = cluster.master_of(&session).expect("a master for the session");
    let replica = cluster.replica_of(master).expect("a replica of it");
    tokio::task::block_in_place(|| cluster.hold_back(master, replica));

    let first = holding(&app, &session).logout(&app).await.status();
    let again = holding(&app, &session).logout(&app).await.status();

    tokio::task::block_in_place(|| cluster.fail_over_losing(master, replica));
    if first != StatusCode::SEE_OTHER && again != StatusCode::SEE_OTHER {
        // Neither was acknowledged: the client asks until one is.
        let last = until_answered("/logout", || async { holding(&app, &session).logout(&app).await.status() }).await;
        assert_eq!(last, StatusCode::SEE_OTHER);
    }
    let refreshed =
        until_answered("/session/refresh", || async { holding(&app, &session).refresh(&app).await.status() });
    assert_eq!(
        refreshed.await,
        StatusCode::UNAUTHORIZED,
        "the session came back after its logout was acknowledged (first {first}, again {again})"
    );
    assert_eq!(
        (first, again),
        (StatusCode::SERVICE_UNAVAILABLE, StatusCode::SERVICE_UNAVAILABLE),
        "a logout no replica could confirm was acknowledged"
    );
}

/// A member's removal, acknowledged before a replica has it, would be
/// undone by a failover: the removed member could open the room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stays_out_through_a_failover_and_a_removal_no_replica_confirms_is_refused() {
    let mut cluster = RedisCluster::start_persistent();
    // Bob opens the room on the other instance, which has never decided
    // his access to it, so its answer is the store's.
    let (a, b) = TestApp::spawn_group(&cluster, &[]).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&b, "bob").await;
    private_room(&a, &alice, "team", &["bob"]).await;
    let members = keys::members(&RoomName::parse("team").unwrap());
    let master = cluster.master_of(&members).expect("a master for the room");
    let replica = cluster.replica_of(master).expect("a replica of it");
    tokio::task::block_in_place(|| cluster.hold_back(master, replica));

    let remove = || async { api(&alice, &a, Method::DELETE, "/api/rooms/team/members/bob", None).await.0 };
    let first = remove().await;

    tokio::task::block_in_place(|| cluster.fail_over_losing(master, replica));
    if first != StatusCode::NO_CONTENT {
        assert_eq!(until_answered("the removal", remove).await, StatusCode::NO_CONTENT);
    }
    let opened = until_answered("bob's upgrade", || async {
        bob.open_socket(&b, "?room=team").await.err().unwrap_or(StatusCode::SWITCHING_PROTOCOLS)
    })
    .await;
    assert_eq!(opened, StatusCode::FORBIDDEN, "bob opened the room after his removal was acknowledged");
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE, "a removal no replica could confirm was acknowledged");
}
