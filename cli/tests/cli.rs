//! The real `palaver-cli` binary against a stand-in server that follows the
//! token API, the WebSocket contract and the room routes (docs/protocol.md
//! §3, §5; SPEC §6): what each command prints and exits with on each answer,
//! what lands in the credentials file, how `chat` orders, resends,
//! reconnects, reauthenticates and stops, and how it stops for good when
//! the user is removed from the room. (The tests against the real server
//! live in the root package's tests/it.)

mod support;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use serde_json::json;
use support::{Home, RoomState, StandIn};

/// A message frame as the server sends it.
fn message(id: &str, user: &str, body: &str) -> serde_json::Value {
    // 1_700_000_000_000 ms is 22:13:20 UTC.
    json!({"type":"message","room":"lobby","id":id,"user":user,"body":body,"sent_at":1_700_000_000_000u64})
}

#[tokio::test]
async fn login_saves_private_credentials_and_says_who_signed_in() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let out = home.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "right password")]).finish().await;
    assert_eq!((out.code, out.out.as_slice()), (0, &["Signed in as alice".to_string()][..]), "{out:?}");
    let saved = home.saved();
    assert_eq!(saved["server"], server.url);
    assert_eq!(saved["username"], "alice");
    assert_eq!(saved["access_token"], "AT.secret.1");
    assert_eq!(saved["refresh_token"], "RT.secret.1");
    let mode = std::fs::metadata(home.credentials()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn login_names_the_client_so_the_account_page_can() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let out = home.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "right password")]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    let client = format!("palaver-cli/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(server.state().clients, [json!(client)]);
}

#[tokio::test]
async fn sessions_lists_one_a_line_with_this_one_marked_and_sessions_end_ends_one() {
    let (server, home) = StandIn::signed_in(300).await;
    server.state().sessions = vec![
        json!({"id":"tokA","kind":"token","created_at":1_700_000_000_000u64,"last_active_at":1_700_000_060_000u64,
               "client":"palaver-cli/0.3.0","address":"127.0.0.1","current":true}),
        json!({"id":"brB","kind":"browser","created_at":1_700_000_000_000u64,"last_active_at":null,
               "client":"Chrome on Linux","address":"192.0.2.7","current":false}),
    ];
    let out = home.cli(&["sessions"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.out,
        [
            "tokA  token    palaver-cli/0.3.0  127.0.0.1  active 2023-11-14 22:14 UTC  (this one)",
            "brB   browser  Chrome on Linux    192.0.2.7  active 2023-11-14 22:13 UTC",
        ]
    );
    let out = home.cli(&["sessions", "end", "brB"]).finish().await;
    assert_eq!((out.code, out.out.as_slice()), (0, &["Ended session brB".to_string()][..]), "{out:?}");
    assert!(server.state().requests.contains(&"DELETE /api/sessions/brB".to_string()));
    assert_eq!(server.state().sessions.len(), 1);

    let out = home.cli(&["sessions", "end", "brB"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("cannot end session brB") && out.err_has("You have no session with that id."), "{out:?}");
    let out = home.cli(&["sessions", "end", "a/b"]).finish().await;
    assert_eq!(out.code, 64, "{out:?}");
    server.state().end_session();
    server.state().refuse_tokens = true;
    assert_eq!(home.cli(&["sessions"]).finish().await.code, 4, "signed out");
}

#[tokio::test]
async fn login_reads_the_password_from_stdin_without_a_terminal() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let mut cli = home.cli(&["login", "alice"]);
    cli.type_line("right password");
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.err_has("Password:"), "no prompt on a pipe: {out:?}");
}

#[tokio::test]
async fn login_at_a_terminal_reads_the_password_without_echoing_it() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let mut term = home.terminal(&["login", "alice"], &[]);
    term.shows("Password: ").await;
    term.echo_off().await;
    term.type_text("right password\n");
    let shown = term.shows("Signed in as alice").await;
    assert_eq!(term.exit_code().await, 0, "{shown:?}");
    assert!(!term.shown().contains("right password"), "the password was shown: {:?}", term.shown());
    assert!(term.echoes(), "echo is back on after the password");
    assert_eq!(home.saved()["username"], "alice");
}

#[tokio::test]
async fn login_goes_back_to_the_server_the_user_last_logged_in_to_and_nowhere_else() {
    let (a, b) = (StandIn::start(300).await, StandIn::start(300).await);
    // No PALAVER_SERVER: only --server and the credentials file say where.
    let logins = |s: &StandIn| s.state().requests.iter().filter(|r| *r == "POST /api/token").count();
    let home = Home::new("");
    let password = [("PALAVER_PASSWORD", "right password")];
    let out = home.cli_with(&["--server", &a.url, "login", "alice"], &password).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = home.cli_with(&["--server", &b.url, "login", "bob"], &password).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(home.saved()["server"], b.url);
    let (on_a, on_b) = (logins(&a), logins(&b));

    // alice logs in again as she is told to: to a, where she logged in.
    let out = home.cli_with(&["login", "alice"], &password).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(home.saved()["server"], a.url);
    assert_eq!((logins(&a), logins(&b)), (on_a + 1, on_b));

    // Her session on a ends; the hint names a, and works as it is.
    a.state().refuse_tokens = true;
    a.state().end_session();
    let mut cli = home.cli(&["chat", "lobby"]);
    let hint = cli.err_until("log in again with").await;
    let command = format!("palaver-cli --server {} login alice", a.url);
    assert!(hint.contains(&command), "{hint}");
    assert_eq!(cli.finish().await.code, 4);
    let words: Vec<&str> = command.split(' ').skip(1).collect();
    let out = home.cli_with(&words, &password).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!((logins(&a), logins(&b)), (on_a + 2, on_b));

    // bob, who logged in to b, still goes to b.
    let out = home.cli_with(&["login", "bob"], &password).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(home.saved()["server"], b.url);
    assert_eq!(logins(&b), on_b + 1);
}

#[tokio::test]
async fn login_failures_exit_2_for_bad_credentials_3_when_throttled_1_when_nobody_answers() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let out = home.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "wrong")]).finish().await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.err_has("invalid_credentials"), "{out:?}");
    let out = home.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "throttle me")]).finish().await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.err_has("Too many failed sign-ins.") && out.err_has("try again in 30 s"), "{out:?}");
    assert!(!home.credentials().exists());

    let nobody = Home::new("http://127.0.0.1:9");
    let out = nobody.cli_with(&["login", "alice"], &[("PALAVER_PASSWORD", "x")]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
}

#[tokio::test]
async fn chat_prints_messages_and_sends_lines_one_at_a_time_in_order() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    assert_eq!(socket.query, "room=lobby");
    assert_eq!(socket.bearer.as_deref(), Some("AT.secret.1"));
    socket.hello("alice", "lobby").await;
    socket.send(json!({"type":"presence","room":"lobby","online":["alice","bob"],"count":2})).await;
    cli.err_until("connected to lobby as alice").await;
    cli.err_until("2 online in lobby: alice, bob").await;
    socket.send(message("5-0", "bob", "hi \u{1b}[2J")).await;
    assert_eq!(cli.out_line().await, "22:13:20 bob: hi \\u{1b}[2J");

    cli.type_line("one");
    cli.type_line("two");
    let first = socket.recv().await.unwrap();
    assert_eq!((first["type"].as_str(), first["body"].as_str()), (Some("send"), Some("one")));
    let one_id = first["client_id"].as_str().unwrap().to_owned();
    assert_eq!(socket.quiet_for(Duration::from_millis(400)).await, Ok(()), "`two` waits for `one`'s ack");
    socket.send(json!({"type":"ack","client_id":one_id,"id":"6-0"})).await;
    let second = socket.recv().await.unwrap();
    assert_eq!(second["body"], "two");
    assert_ne!(second["client_id"], one_id.as_str());
    socket.send(json!({"type":"ack","client_id":second["client_id"],"id":"7-0"})).await;

    // End of input with everything acknowledged: a 1000 close, exit 0.
    cli.end_input();
    assert_eq!(socket.closed_with().await, Some(1000));
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test]
async fn a_send_the_store_could_not_take_or_that_was_rate_limited_goes_again_under_its_client_id() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    cli.type_line("precious");
    cli.type_line("after");
    let sent = socket.recv().await.unwrap();
    let id = sent["client_id"].clone();
    socket.send(json!({"type":"error","code":"unavailable","message":"try again","client_id":id})).await;
    let again = socket.recv().await.unwrap();
    assert_eq!((&again["body"], &again["client_id"]), (&json!("precious"), &id));
    socket.send(json!({"type":"error","code":"rate_limited","message":"slow down","client_id":id})).await;
    let started = std::time::Instant::now();
    let third = socket.recv().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "waited ~1 s: {:?}", started.elapsed());
    assert_eq!((&third["body"], &third["client_id"]), (&json!("precious"), &id));
    socket.send(json!({"type":"ack","client_id":id,"id":"9-0"})).await;
    assert_eq!(socket.recv().await.unwrap()["body"], "after");
    drop(cli);
}

#[tokio::test]
async fn a_dropped_socket_comes_back_with_after_and_nothing_is_printed_twice_or_lost() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    socket.send(message("9-0", "bob", "nine")).await;
    socket.send(message("10-0", "bob", "ten")).await;
    assert!(cli.out_line().await.ends_with("bob: nine"));
    assert!(cli.out_line().await.ends_with("bob: ten"));
    // A line in flight when the socket goes: sent again on the next one, same id.
    cli.type_line("in flight");
    let sent = socket.recv().await.unwrap();
    socket.close(1001, "server shutting down").await;
    cli.err_until("server shutting down").await;

    let mut socket = server.socket().await;
    assert_eq!(socket.query, "room=lobby&after=10-0", "ids compare as numbers: 10-0 is after 9-0");
    socket.hello("alice", "lobby").await;
    socket.send(message("10-0", "bob", "ten")).await;
    socket.send(message("11-0", "bob", "eleven")).await;
    assert!(cli.out_line().await.ends_with("bob: eleven"), "10-0 is not printed again");
    let resent = socket.recv().await.unwrap();
    assert_eq!((&resent["body"], &resent["client_id"]), (&sent["body"], &sent["client_id"]));
    socket.send(json!({"type":"ack","client_id":sent["client_id"],"id":"12-0"})).await;

    // An abrupt drop (no close frame) is a reconnect too.
    drop(socket);
    let mut socket = server.socket().await;
    assert_eq!(socket.query, "room=lobby&after=11-0");
    socket.hello("alice", "lobby").await;
    cli.end_input();
    assert_eq!(socket.closed_with().await, Some(1000));
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.out.len(), 3, "{out:?}");
}

#[tokio::test]
async fn reauthenticate_refreshes_saves_the_new_refresh_token_and_reauths_in_band() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let (mut cli, mut socket) = server.chat(&home, &["chat", "lobby"], "lobby").await;
    socket.send(json!({"type":"reauthenticate","expires_at":4_000_000_000_000u64})).await;
    let reauth = socket.recv().await.unwrap();
    assert_eq!(reauth, json!({"type":"reauth","token":"AT.secret.2"}));
    assert_eq!(server.state().refreshes, 1);
    assert_eq!(home.saved()["refresh_token"], "RT.secret.2", "saved before it was used");
    socket.send(json!({"type":"reauthenticated","expires_at":4_000_000_000_000u64})).await;
    cli.err_until("reauthenticated").await;
    drop(cli);
}

#[tokio::test]
async fn two_clients_sharing_a_file_never_present_a_spent_refresh_token() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut a = home.cli(&["chat", "lobby"]);
    let mut socket_a = server.socket().await;
    socket_a.hello("alice", "lobby").await;
    a.err_until("connected to lobby").await;
    let mut b = home.cli(&["chat", "lobby"]);
    let mut socket_b = server.socket().await;
    socket_b.hello("alice", "lobby").await;
    b.err_until("connected to lobby").await;

    // B rotates RT.secret.1 into RT.secret.2 and saves it...
    socket_b.send(json!({"type":"reauthenticate","expires_at":4_000_000_000_000u64})).await;
    assert_eq!(socket_b.recv().await.unwrap()["token"], "AT.secret.2");
    // ...so A, which read RT.secret.1 at its start, takes RT.secret.2 from the
    // file (the stand-in refuses a spent token, as the real server does after
    // its grace window).
    socket_a.send(json!({"type":"reauthenticate","expires_at":4_000_000_000_000u64})).await;
    assert_eq!(socket_a.recv().await.unwrap()["token"], "AT.secret.3");
    assert_eq!(home.saved()["refresh_token"], "RT.secret.3");
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_connecting() {
    // Access tokens that live 30 s: under the one-minute margin from the start.
    let (mut server, home) = StandIn::signed_in(30).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    assert_eq!(socket.bearer.as_deref(), Some("AT.secret.2"));
    assert_eq!(home.saved()["refresh_token"], "RT.secret.2");
    socket.hello("alice", "lobby").await;
    cli.err_until("connected to lobby").await;
    drop(cli);
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_an_ended_session_signs_out_with_4() {
    let (mut server, home) = StandIn::signed_in(300).await;
    // The access token stops working (a rotated key, say); the refresh token still works.
    server.state().live_access.clear();
    let cli = home.cli(&["chat", "lobby"]);
    let socket = server.socket().await;
    assert_eq!(socket.bearer.as_deref(), Some("AT.secret.2"));
    drop(socket);
    drop(cli);

    // The session is over: the refresh is refused too.
    server.state().end_session();
    let out = home.cli(&["chat", "lobby"]).finish().await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.err.iter().any(|l| l == "signed out: the session has ended"), "{out:?}");
    assert!(home.credentials().exists(), "nothing is deleted");
}

#[tokio::test]
async fn a_4401_close_signs_out_with_4_and_keeps_the_credentials() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let (cli, socket) = server.chat(&home, &["chat", "lobby"], "lobby").await;
    socket.close(4401, "logged out").await;
    let out = cli.finish().await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.err.iter().any(|l| l == "signed out: logged out"), "{out:?}");
    assert!(home.credentials().exists());
    assert_eq!(server.upgrades("GET /ws"), 1, "no reconnect after 4401");
}

#[tokio::test]
async fn a_policy_close_is_reported_and_not_retried() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    socket.close(1008, "policy violation").await;
    let out = cli.finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("1008 (policy violation)"), "{out:?}");
}

#[tokio::test]
async fn lines_unacknowledged_at_the_end_of_input_are_waited_for_then_given_up_on() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    cli.type_line("never acked");
    cli.end_input();
    assert_eq!(socket.recv().await.unwrap()["body"], "never acked");
    let started = std::time::Instant::now();
    assert_eq!(socket.closed_with().await, Some(1000));
    assert!(started.elapsed() >= Duration::from_secs(9), "{:?}", started.elapsed());
    let out = cli.finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("1 line(s) not confirmed"), "{out:?}");
}

#[tokio::test]
async fn ctrl_c_closes_the_socket_and_exits_0() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let (cli, mut socket) = server.chat(&home, &["chat", "lobby"], "lobby").await;
    let status = std::process::Command::new("kill").args(["-INT", &cli.pid().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(socket.closed_with().await, Some(1000));
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test]
async fn logout_ends_the_session_and_deletes_the_credentials() {
    let (server, home) = StandIn::signed_in(300).await;
    let out = home.cli(&["logout"]).finish().await;
    assert_eq!((out.code, out.out.as_slice()), (0, &["Signed out".to_string()][..]), "{out:?}");
    assert_eq!(server.state().logouts, 1);
    assert!(!home.credentials().exists());
    // Again: nothing to do.
    let out = home.cli(&["logout"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.err_has("not signed in"));
}

#[tokio::test]
async fn logout_of_a_session_already_gone_still_deletes_and_says_so() {
    let (server, home) = StandIn::signed_in(300).await;
    server.state().end_session();
    let out = home.cli(&["logout"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.err_has("already ended"), "{out:?}");
    assert!(!home.credentials().exists());
}

#[tokio::test]
async fn tokens_never_go_to_a_server_other_than_the_one_that_issued_them() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let out = home.cli(&["--server", "http://127.0.0.1:9", "chat", "lobby"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("the saved credentials are for"), "{out:?}");
    // Without PALAVER_SERVER, the saved server is used.
    let mut cli = home.cli_with(&["chat", "lobby"], &[("PALAVER_SERVER", "")]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    cli.err_until("connected to lobby").await;
}

#[tokio::test]
async fn chat_without_credentials_says_to_log_in_and_exits_4() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    let out = home.cli(&["chat", "lobby"]).finish().await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.err_has("palaver-cli login"), "{out:?}");
}

#[tokio::test]
async fn usage_errors_exit_64_and_help_exits_0() {
    let home = Home::new("http://127.0.0.1:9");
    let out = home.cli(&["chat", "Not A Room"]).finish().await;
    assert_eq!(out.code, 64, "{out:?}");
    let out = home.cli(&["--help"]).finish().await;
    assert_eq!(out.code, 0);
    assert!(out.out.iter().any(|l| l.contains("palaver-cli [--server URL] chat ROOM")));
}

/// A stand-in with alice signed in, who owns `deploys` (bob is in it too),
/// is a member of carol's `hiring`, talks with bob directly, and sees the
/// public `lobby`; `payroll` is carol's, and alice is not in it.
async fn rooms_fixture() -> (StandIn, Home) {
    let (server, home) = StandIn::signed_in(300).await;
    {
        let mut st = server.state();
        st.rooms.insert("lobby".into(), RoomState::public(Some(3)));
        st.rooms.insert("deploys".into(), RoomState::private(&[("alice", "owner"), ("bob", "member")]));
        st.rooms.insert("hiring".into(), RoomState::private(&[("carol", "owner"), ("alice", "member")]));
        st.rooms.insert("payroll".into(), RoomState::private(&[("carol", "owner")]));
        st.rooms.insert("@bob".into(), RoomState { unread: Some(1), ..RoomState::direct("bob") });
    }
    (server, home)
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn rooms_prints_one_room_a_line_with_visibility_role_and_unread_and_direct_ones_as_at_names() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["rooms"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.out,
        lines(&[
            "@bob     direct           1 unread",
            "deploys  private  owner",
            "hiring   private  member",
            "lobby    public           3 unread",
        ]),
        "payroll is not alice's"
    );
    assert!(server.state().requests.contains(&"GET /api/rooms".to_string()));
}

#[tokio::test]
async fn create_makes_a_private_room_owned_by_the_caller_or_with_public_a_public_one() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["create", "incident-42"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["Created incident-42 (private, owner)"])), "{out:?}");
    assert_eq!(server.state().rooms["incident-42"], RoomState::private(&[("alice", "owner")]));
    let out = home.cli(&["create", "town", "--public"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["Created town (public)"])), "{out:?}");
    assert_eq!(server.state().rooms["town"].visibility, "public");
}

#[tokio::test]
async fn create_says_why_it_was_refused_exit_1_for_a_taken_or_refused_name_and_3_past_the_quota() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["create", "payroll"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.err_has("cannot create payroll: the server answered 409 Conflict: That name is taken. (name_taken)"),
        "{out:?}"
    );
    assert_eq!(server.state().rooms["payroll"], RoomState::private(&[("carol", "owner")]), "untouched");
    let out = home.cli(&["create", "reserved"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("422 Unprocessable Entity: That name cannot be used."), "{out:?}");
    server.state().room_quota_spent = true;
    let out = home.cli(&["create", "another"]).finish().await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.err_has("Too many new rooms. (rate_limited); try again in 30 s"), "{out:?}");
    assert!(out.out.is_empty());
}

#[tokio::test]
async fn members_lists_one_member_a_line_with_roles_for_a_private_room_and_a_direct_one() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["members", "deploys"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["alice  owner", "bob    member"])), "{out:?}");
    let out = home.cli(&["members", "@bob"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["alice  member", "bob    member"])), "{out:?}");
    assert!(server.state().requests.contains(&"GET /api/rooms/@bob/members".to_string()));
}

#[tokio::test]
async fn a_room_the_user_cannot_see_exits_5_in_the_servers_words_whatever_the_command() {
    let (server, home) = rooms_fixture().await;
    for (args, says) in [
        (&["members", "payroll"][..], "cannot list the members of payroll"),
        (&["members", "lobby"], "cannot list the members of lobby"),
        (&["members", "nowhere"], "cannot list the members of nowhere"),
        (&["invite", "payroll", "bob"], "cannot add bob to payroll"),
        (&["remove", "payroll", "carol"], "cannot remove carol from payroll"),
        (&["leave", "payroll"], "cannot leave payroll"),
    ] {
        let out = home.cli(args).finish().await;
        assert_eq!(out.code, 5, "{args:?}: {out:?}");
        let line =
            format!("{says}: the server answered 404 Not Found: No such room, or you are not a member. (not_found)");
        assert_eq!(out.err, [line], "{args:?}");
    }
    assert_eq!(server.state().rooms["payroll"], RoomState::private(&[("carol", "owner")]), "untouched");
}

#[tokio::test]
async fn invite_adds_a_member_and_refusals_name_the_cause() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["invite", "hiring", "bob"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["bob is a member of hiring"])), "{out:?}");
    assert!(server.state().rooms["hiring"].has("bob"));
    assert!(server.state().requests.contains(&"PUT /api/rooms/hiring/members/bob".to_string()));
    // Again: already a member, the same answer.
    let out = home.cli(&["invite", "hiring", "@bob"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");

    let out = home.cli(&["invite", "hiring", "nobody"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.err_has("cannot add nobody to hiring: the server answered 404 Not Found: No such user. (no_such_user)"),
        "{out:?}"
    );
    let out = home.cli(&["invite", "@bob", "carol"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("409 Conflict: A direct conversation's members never change. (direct_room)"), "{out:?}");
    assert!(!server.state().rooms["@bob"].has("carol"));
}

#[tokio::test]
async fn the_owner_removes_a_member_and_a_member_who_is_not_the_owner_is_refused_with_1() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["remove", "deploys", "bob"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["Removed bob from deploys"])), "{out:?}");
    assert!(!server.state().rooms["deploys"].has("bob"));
    let out = home.cli(&["remove", "hiring", "carol"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.err_has(
            "cannot remove carol from hiring: the server answered 403 Forbidden: Only the room's owner removes others."
        ),
        "{out:?}"
    );
    assert!(server.state().rooms["hiring"].has("carol"));
}

#[tokio::test]
async fn leave_removes_the_users_own_membership() {
    let (server, home) = rooms_fixture().await;
    let out = home.cli(&["leave", "deploys"]).finish().await;
    assert_eq!((out.code, out.out.clone()), (0, lines(&["Left deploys"])), "{out:?}");
    assert!(server.state().requests.contains(&"DELETE /api/rooms/deploys/members/alice".to_string()));
    assert_eq!(server.state().rooms["deploys"], RoomState::private(&[("bob", "owner")]), "bob owns it now");
    let out = home.cli(&["rooms"]).finish().await;
    assert!(!out.out.iter().any(|l| l.starts_with("deploys")), "{out:?}");
}

#[tokio::test]
async fn a_room_request_with_a_refused_token_is_refreshed_once_and_an_ended_session_exits_4() {
    let (server, home) = rooms_fixture().await;
    server.state().live_access.clear();
    let out = home.cli(&["members", "deploys"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(server.state().refreshes, 1);
    assert_eq!(home.saved()["refresh_token"], "RT.secret.2", "the rotation is saved");
    let asked = server.state().requests.iter().filter(|r| r.ends_with("/api/rooms/deploys/members")).count();
    assert_eq!(asked, 2, "asked again once with the new token");

    server.state().end_session();
    let out = home.cli(&["invite", "deploys", "carol"]).finish().await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.err.iter().any(|l| l == "signed out: the session has ended"), "{out:?}");
    assert!(out.err_has(&format!("palaver-cli --server {} login alice", server.url)), "{out:?}");
    assert!(!server.state().rooms["deploys"].has("carol"));
    assert!(home.credentials().exists(), "nothing is deleted");
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_a_room_request() {
    // Access tokens that live 30 s: under the one-minute margin from the start.
    let (server, home) = StandIn::signed_in(30).await;
    let out = home.cli(&["rooms"]).finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(server.state().refreshes, 1);
    assert_eq!(home.saved()["refresh_token"], "RT.secret.2");
    assert_eq!(server.state().requests, ["POST /api/token", "POST /api/token/refresh", "GET /api/rooms"]);
}

#[tokio::test]
async fn a_token_refused_again_right_after_its_refresh_signs_out_with_4_without_a_loop() {
    let (server, home) = StandIn::signed_in(300).await;
    // Refreshes work, and every access token is refused.
    server.state().refuse_tokens = true;
    let out = home.cli(&["rooms"]).finish().await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.err.iter().any(|l| l == "signed out: sign in again"), "{out:?}");
    assert_eq!(
        server.state().requests,
        ["POST /api/token", "GET /api/rooms", "POST /api/token/refresh", "GET /api/rooms"],
        "one refresh, one more try"
    );
}

#[tokio::test]
async fn room_commands_without_credentials_say_to_log_in_and_exit_4() {
    let server = StandIn::start(300).await;
    let home = Home::new(&server.url);
    for args in [&["rooms"][..], &["members", "x"], &["invite", "x", "bob"], &["leave", "x"], &["create", "x"]] {
        let out = home.cli(args).finish().await;
        assert_eq!(out.code, 4, "{args:?}: {out:?}");
        assert!(out.err_has("palaver-cli login"), "{out:?}");
    }
    assert!(server.state().requests.is_empty());
}

#[tokio::test]
async fn chat_at_user_is_the_direct_conversation_and_dm_says_the_same() {
    let (mut server, home) = StandIn::signed_in(300).await;
    for args in [&["chat", "@bob"][..], &["dm", "bob"]] {
        let mut cli = home.cli(args);
        let mut socket = server.socket().await;
        assert_eq!(socket.query, "room=%40bob", "{args:?}");
        socket.hello("alice", "@bob").await;
        cli.err_until("connected to @bob as alice").await;
        socket.send(json!({"type":"message","room":"@bob","id":"3-0","user":"bob","body":"psst","sent_at":1_700_000_000_000u64})).await;
        assert_eq!(cli.out_line().await, "22:13:20 bob: psst");
        cli.type_line("hi bob");
        let sent = socket.recv().await.unwrap();
        assert_eq!((sent["type"].as_str(), sent["body"].as_str()), (Some("send"), Some("hi bob")));
        socket.send(json!({"type":"ack","client_id":sent["client_id"],"id":"4-0"})).await;
        cli.end_input();
        assert_eq!(socket.closed_with().await, Some(1000));
        assert_eq!(cli.finish().await.code, 0);
    }
}

#[tokio::test]
async fn a_4403_close_says_removed_from_the_room_exits_5_and_never_reconnects() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let (cli, socket) = server.chat(&home, &["chat", "deploys"], "deploys").await;
    socket.close(4403, "access revoked").await;
    let out = cli.finish().await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.err.iter().any(|l| l == "removed from deploys"), "{out:?}");
    assert!(home.credentials().exists(), "still signed in");
    assert_eq!(server.upgrades("GET /ws"), 1, "no reconnect after 4403");
}

#[tokio::test]
async fn a_direct_conversation_closed_with_4403_says_so_in_its_own_name() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let cli = home.cli(&["dm", "bob"]);
    // Refused as the socket registers, before any hello.
    server.socket().await.close(4403, "access revoked").await;
    let out = cli.finish().await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.err.iter().any(|l| l == "removed from @bob"), "{out:?}");
}

#[tokio::test]
async fn an_upgrade_refused_with_403_exits_5_and_after_a_hello_reads_as_a_removal() {
    let (mut server, home) = StandIn::signed_in(300).await;
    server.state().forbidden.insert("payroll".into());
    let out = home.cli(&["chat", "payroll"]).finish().await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.err
            .iter()
            .any(|l| l
                == "no access to payroll: the server answered 403 Forbidden: No such room, or you are not a member."),
        "{out:?}"
    );

    // In the room, then dropped; removed meanwhile: the way back is refused.
    let (mut cli, socket) = server.chat(&home, &["chat", "deploys"], "deploys").await;
    server.state().forbidden.insert("deploys".into());
    socket.close(1001, "server shutting down").await;
    // stdin stays open: its end with nothing to send would end the chat.
    cli.err_until("removed from deploys").await;
    let out = cli.finish().await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.err_has("removed from deploys (the server answered 403 Forbidden"), "{out:?}");
    assert_eq!(server.upgrades("GET /ws?room=deploys"), 2, "one try, not a retry loop");
}

#[tokio::test]
async fn membership_changes_elsewhere_are_noted_on_stderr_and_the_chat_goes_on() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    socket.send(json!({"type":"room_added","room":"deploys","visibility":"private"})).await;
    cli.err_until("now a member of deploys (private)").await;
    socket.send(json!({"type":"room_removed","room":"deploys"})).await;
    cli.err_until("no longer a member of deploys").await;
    socket.send(message("5-0", "bob", "still here")).await;
    assert!(cli.out_line().await.ends_with("bob: still here"));
    cli.end_input();
    assert_eq!(socket.closed_with().await, Some(1000));
    assert_eq!(cli.finish().await.code, 0);
}

#[tokio::test]
async fn the_room_commands_usage_errors_exit_64_before_any_request() {
    let (server, home) = StandIn::signed_in(300).await;
    for args in [
        &["chat", "@b"][..],
        &["dm", "no/such"],
        &["create", "@bob"],
        &["create", "deploys", "extra"],
        &["members"],
        &["invite", "deploys"],
        &["leave", "Deploys"],
        &["rooms", "--public"],
    ] {
        let out = home.cli(args).finish().await;
        assert_eq!(out.code, 64, "{args:?}: {out:?}");
    }
    assert_eq!(server.state().requests, ["POST /api/token"], "nothing but the login");
    let out = home.cli(&["--help"]).finish().await;
    for usage in [
        "palaver-cli [--server URL] chat @USER [--last N]",
        "palaver-cli [--server URL] dm USER [--last N]",
        "palaver-cli [--server URL] rooms",
        "palaver-cli [--server URL] create ROOM [--public]",
        "palaver-cli [--server URL] members ROOM",
        "palaver-cli [--server URL] invite ROOM USER",
        "palaver-cli [--server URL] remove ROOM USER",
        "palaver-cli [--server URL] leave ROOM",
    ] {
        assert!(out.out.iter().any(|l| l.trim() == usage), "{usage}: {out:?}");
    }
    assert!(out.out.iter().any(|l| l.contains("5 no access to the")), "{out:?}");
}

#[tokio::test]
async fn a_room_command_with_nobody_answering_says_so_and_exits_1() {
    let home = Home::new("http://127.0.0.1:9");
    let saved = json!({"server":"http://127.0.0.1:9","username":"alice","access_token":"AT.secret.1",
        "access_expires_at":4_000_000_000_000u64,"refresh_token":"RT.secret.1"});
    std::fs::create_dir_all(home.credentials().parent().unwrap()).unwrap();
    std::fs::write(home.credentials(), saved.to_string()).unwrap();
    let out = home.cli(&["rooms"]).finish().await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.err_has("cannot list the rooms: no answer from the server"), "{out:?}");
}

#[tokio::test]
async fn a_lost_connection_is_told_once_and_its_return_once_not_every_attempt() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let (mut cli, socket) = server.chat(&home, &["chat", "lobby"], "lobby").await;
    server.state().unavailable = 2;
    socket.close(1012, "service restart").await;
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    cli.err_until("reconnected after").await;
    cli.end_input();
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
    let lost: Vec<_> = out.err.iter().filter(|l| l.contains("connection lost")).collect();
    assert_eq!(lost, ["connection lost (closed with 1012 (service restart)), reconnecting…"], "{out:?}");
    assert!(out.err_has("2 attempts failed"), "{out:?}");
    assert!(!out.err_has("reconnecting in") && !out.err_has("cannot connect"), "one line per outage: {out:?}");
}

#[tokio::test]
async fn piped_lines_go_at_the_hellos_pace_after_its_burst_and_all_are_acknowledged() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut cli = home.cli(&["chat", "lobby"]);
    let mut socket = server.socket().await;
    socket
        .send(json!({"type":"hello","user":"alice","room":"lobby","expires_at":4_000_000_000_000u64,
                     "rate":{"per_sec":10.0,"burst":3}}))
        .await;
    cli.err_until("connected to lobby as alice").await;
    for n in 0..8 {
        cli.type_line(&format!("line {n}"));
    }
    cli.end_input();
    let mut arrived = Vec::new();
    for n in 0..8 {
        let send = socket.recv().await.unwrap();
        arrived.push(std::time::Instant::now());
        assert_eq!(send["body"], format!("line {n}"), "in order");
        socket.send(json!({"type":"ack","client_id":send["client_id"],"id":format!("{}-0", 10 + n)})).await;
    }
    // Three at once (the burst), then one every 100 ms: five steps take at
    // least 400 ms whatever the timing of the first.
    let paced = arrived[7] - arrived[2];
    assert!(paced >= Duration::from_millis(400), "not paced: the last five took {paced:?}");
    assert_eq!(socket.closed_with().await, Some(1000));
    let out = cli.finish().await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test]
async fn times_are_shown_in_the_users_time_zone() {
    let (mut server, home) = StandIn::signed_in(300).await;
    // India: UTC+5:30 all year, written as POSIX TZ says.
    let mut cli = home.cli_with(&["chat", "lobby"], &[("TZ", "IST-5:30")]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    socket.send(message("5-0", "bob", "chai?")).await;
    assert_eq!(cli.out_line().await, "03:43:20 bob: chai?", "22:13:20 UTC");
    cli.end_input();
    assert_eq!(cli.finish().await.code, 0);
}

#[tokio::test]
async fn at_a_terminal_a_message_arriving_leaves_the_line_being_typed_whole() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut term = home.terminal(&["chat", "lobby"], &[]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    term.shows("connected to lobby as alice").await;
    term.type_text("hel");
    term.shows("hel").await;
    socket.send(message("5-0", "bob", "hi there")).await;
    let redrawn = term
        .until("the line being typed, again below the message", |s| {
            s.rsplit_once("bob: hi there").is_some_and(|(_, after)| after.contains("hel"))
        })
        .await;
    assert!(!redrawn.contains("hel22:13:20"), "the message split the line: {redrawn:?}");
    term.type_text("lo\r");
    let sent = socket.recv().await.unwrap();
    assert_eq!(sent["body"], "hello", "the line as typed, whole");
    socket.send(json!({"type":"ack","client_id":sent["client_id"],"id":"6-0"})).await;

    // Ctrl-D ends the input; the terminal is given back as it was.
    term.type_text("\u{4}");
    assert_eq!(socket.closed_with().await, Some(1000));
    assert_eq!(term.exit_code().await, 0, "{:?}", term.shown());
    assert!(term.echoes(), "echo is back on");
}

#[tokio::test]
async fn a_message_of_several_lines_is_shown_as_lines_and_a_trailing_backslash_types_one() {
    let (mut server, home) = StandIn::signed_in(300).await;
    let mut term = home.terminal(&["chat", "lobby"], &[]);
    let mut socket = server.socket().await;
    socket.hello("alice", "lobby").await;
    term.shows("connected to lobby as alice").await;
    socket.send(message("5-0", "bob", "two\nlines")).await;
    term.shows("22:13:20 bob: two\r\n         lines\r\n").await;

    term.type_text("first\\\r");
    term.shows("… ").await;
    term.type_text("second\r");
    let sent = socket.recv().await.unwrap();
    assert_eq!(sent["body"], "first\nsecond", "one message of two lines");

    // From a pipe, every line is a message, and what arrives is lines on stdout.
    let (mut cli, mut socket) = server.chat(&home, &["chat", "lobby"], "lobby").await;
    socket.send(message("7-0", "bob", "three\nmore\nlines")).await;
    assert_eq!(cli.out_line().await, "22:13:20 bob: three");
    assert_eq!(cli.out_line().await, "         more");
    assert_eq!(cli.out_line().await, "         lines");
    cli.type_line("ends in \\");
    assert_eq!(socket.recv().await.unwrap()["body"], "ends in \\");
}

#[tokio::test]
async fn joining_shows_the_last_messages_first_and_goes_live_after_the_newest_of_them() {
    let (mut server, home) = StandIn::signed_in(300).await;
    server.state().history = (1..=3)
        .map(|n| json!({"id":format!("{n}-0"),"user":"bob","body":format!("earlier {n}"),"sent_at":1_700_000_000_000u64}))
        .collect();
    let mut cli = home.cli(&["chat", "lobby", "--last", "2"]);
    let mut socket = server.socket().await;
    assert_eq!(socket.query, "room=lobby&after=3-0", "live from after the newest shown");
    assert!(server.state().requests.iter().any(|r| r == "GET /chat/lobby/history?limit=2"));
    assert_eq!(cli.out_line().await, "22:13:20 bob: earlier 2");
    assert_eq!(cli.out_line().await, "22:13:20 bob: earlier 3");
    socket.hello("alice", "lobby").await;
    // A replay that overlaps what was shown is not shown twice.
    socket.send(message("3-0", "bob", "earlier 3")).await;
    socket.send(message("4-0", "bob", "live")).await;
    assert_eq!(cli.out_line().await, "22:13:20 bob: live");

    // --last 0: nothing earlier, and no request for it.
    let asked = server.state().requests.len();
    let mut quiet = home.cli(&["chat", "lobby", "--last", "0"]);
    let socket = server.socket().await;
    assert_eq!(socket.query, "room=lobby");
    assert!(!server.state().requests[asked..].iter().any(|r| r.contains("/history")));
    quiet.end_input();
    cli.end_input();
}
