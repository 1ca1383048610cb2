//! Access taken away while connected (docs/protocol.md §6): a member
//! removed on one instance loses exactly their sockets in that room, on
//! every instance, with 4403 `access revoked`; a removal whose event never
//! arrives is caught by the revalidation sweep; and a removed member's
//! reconnect is refused before anything is replayed.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{
    helpers::*,
    rooms::{api, private_room},
};

on_both! {
    a_removal_on_one_instance_closes_that_users_sockets_in_the_room_on_another_and_nothing_else,
    a_removal_whose_event_never_arrives_is_caught_by_the_sweep,
}

/// A removal reaches every instance as a logout does; allow for a slow CI.
const REVOCATION_DEADLINE: Duration = Duration::from_secs(3);

/// The same browser (cookie) on another instance: instances share sessions.
fn on(app: &TestApp, browser: &Browser, source: &TestApp) -> Browser {
    let other = Browser::new();
    other.set_session_id(app, &browser.session_id(source).unwrap());
    other
}

/// The socket is still open: it answers a `reauth`.
async fn still_open(socket: &mut Socket) {
    socket.send_json(json!({"type": "reauth"})).await;
    socket.next_of("reauthenticated").await;
}

async fn a_removal_on_one_instance_closes_that_users_sockets_in_the_room_on_another_and_nothing_else(
    redis: &dyn TestRedis,
) {
    let (a, b) = TestApp::spawn_group(redis, &[("REVALIDATE_INTERVAL_SECS", "300")]).await;
    let alice = signed_up(&a, "alice").await;
    let bob = signed_up(&a, "bob").await;
    private_room(&a, &alice, "team", &["bob"]).await;
    let (alice_b, bob_b) = (on(&b, &alice, &a), on(&b, &bob, &a));
    let (mut alice_team, _) = alice_b.join(&b, "?room=team").await;
    let (mut bob_team_b, _) = bob_b.join(&b, "?room=team").await;
    let (mut bob_team_a, _) = bob.join(&a, "?room=team").await;
    let (mut bob_lobby_b, _) = bob_b.join(&b, "?room=lobby&unread=1").await;
    let (mut bob_dev_b, _) = bob_b.join(&b, "?room=dev").await;

    let removed = api(&alice, &a, Method::DELETE, "/api/rooms/team/members/bob", None).await;
    assert_eq!(removed.0, StatusCode::NO_CONTENT);
    for socket in [&mut bob_team_b, &mut bob_team_a] {
        let closed = within_for(REVOCATION_DEADLINE, "bob's socket in the room to close", socket.closed()).await;
        assert_eq!(closed, (4403, "access revoked".to_string()));
    }
    assert_eq!(bob_lobby_b.next_of("room_removed").await, json!({"type": "room_removed", "room": "team"}));
    // Nothing else of bob's closes, and the room goes on for alice.
    still_open(&mut bob_lobby_b).await;
    still_open(&mut bob_dev_b).await;
    alice_team.say("still here", "c1").await;
    assert_eq!(alice_team.next_of("message").await["body"], "still here");
    // His reconnect, with the last id he saw, is refused on both: nothing is replayed.
    for (app, who) in [(&a, &bob), (&b, &bob_b)] {
        assert_eq!(who.open_socket(app, "?room=team&after=0-0").await.err(), Some(StatusCode::FORBIDDEN));
    }
}

async fn a_removal_whose_event_never_arrives_is_caught_by_the_sweep(redis: &dyn TestRedis) {
    let app = TestApp::spawn_with(Some(redis), &[("REVALIDATE_INTERVAL_SECS", "1")]).await;
    let alice = signed_up(&app, "alice").await;
    let bob = signed_up(&app, "bob").await;
    private_room(&app, &alice, "team", &["bob"]).await;
    let (mut bob_team, _) = bob.join(&app, "?room=team").await;
    let (mut bob_lobby, _) = bob.join(&app, "?room=lobby").await;

    // Removed in the store by someone who announces nothing (as if the
    // event were published while this instance's subscriber was away).
    let config = palaver::Config::from_map(&base_vars(Some(redis))).unwrap();
    let store = palaver::backend::Backend::connect(&config, "elsewhere", &Default::default()).await.unwrap();
    let user = |name: &'static str| {
        let users = store.users.clone();
        async move { users.find(name).await.unwrap().unwrap().user.id }
    };
    let team = palaver::model::RoomName::parse("team").unwrap();
    let removed = store.rooms.remove_member(&team, user("alice").await, user("bob").await).await.unwrap();
    assert!(matches!(removed, palaver::backend::Removed::Removed { .. }), "{removed:?}");

    let closed = within("the sweep to close bob's socket in the room", bob_team.closed()).await;
    assert_eq!(closed, (4403, "access revoked".to_string()));
    assert_eq!(bob_lobby.next_of("room_removed").await["room"], "team");
    still_open(&mut bob_lobby).await;
    assert_eq!(bob.open_socket(&app, "?room=team").await.err(), Some(StatusCode::FORBIDDEN), "the cache was refreshed");
}
