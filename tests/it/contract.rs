//! The backend contract: what every implementation of the storage traits in
//! `palaver::backend` must do, written once and run against both the Redis
//! backend (a real `redis-server` per test) and the in-process one.
//!
//! It pins down: usernames unique ignoring case, also under concurrent
//! registration; the resend dedupe window of `(room, user, client_id)`;
//! read markers (forward only, a direct room's too, bounded to the rooms of
//! the user's list) and the mention inbox (the newest notes, newest first,
//! gone a room lifetime after the newest);
//! history ids increasing in append order, `recent`, `last_id`, the cap that
//! keeps at least the newest messages, and exact round trips of stored
//! messages; `after` replay from any id; `tail` following only the rooms it
//! is given and never losing a `wake_tail`; the per-user session index, its
//! expiry and `exist`; presence entries per instance with their deadlines;
//! fixed-window counters; event delivery on the bus; and health. For
//! private rooms: one namespace of names whatever their kind, also under
//! concurrent creation and opening; members added, removed and leaving by
//! the rules; the owner's hand-over to the longest-standing member; the
//! last member taking the room and its history along; the bounds on
//! members and on rooms per user (also under concurrency, and against an
//! add racing a removal) and the new-room quota, with nothing written when
//! refused; `states` for many pairs; appends refused where the sender may
//! not write; private and direct rooms that never expire; the quota of new
//! direct conversations; and the lists of direct conversations. For
//! accounts: a password change and the disabled flag, each leaving the
//! other as it was; the sessions a user has, listed with what each says of
//! itself (newest first, bounded, token and cookie sessions alike), those
//! found gone dropped with their descriptors, a descriptor following its
//! session to a new id and dropped once its session is no longer indexed;
//! `last_active_at` rewritten at most once per granularity, also under
//! concurrent touches; the security log (the newest fifty, newest first,
//! gone after its idle time, which each write renews) and its failed
//! sign-ins counted one entry per burst, also concurrently; and invite
//! codes spent exactly as many times as they have uses, also concurrently,
//! given back, and telling expired and used-up codes apart.
//!
//! Each rule is one generic test body taking a [`Backend`]; the [`contract`]
//! macro runs it as `contract::memory::<rule>`, `contract::redis::<rule>` and
//! `contract::cluster::<rule>` (a real Redis Cluster: three masters, three
//! replicas). What only a shared store can do is in `contract::redis_only`,
//! with the check that the Redis backend's list of scripts loads every
//! script its code calls, the keys of private and direct rooms seen to
//! carry no expiry, stale entries of a user's index of private rooms
//! dropped, nothing left of a deleted private room, user records written
//! before accounts could be disabled read and changed as before, and the
//! lifetimes the account keys are seen to carry.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palaver::{
    backend::{
        rules::{NewRooms, RoomLimits, SECURITY_EVENTS_KEPT},
        AccessChange, Added, Backend, BackendKind, Created, EndReason, Event, Notice, Removed, RoomOpened, RoomState,
        Spend,
    },
    clock::UnixMillis,
    model::{
        Appended, EndedBy, Invite, Message, MessageId, NewMessage, RefreshState, Role, RoomName, SecurityEvent,
        SecurityEventKind, SessionDescriptor, SessionKind, TokenRecord, User, UserId,
    },
    Config,
};
use tokio::sync::{broadcast, Barrier};
use tower_sessions::{
    session::{Id, Record},
    SessionStore,
};

use crate::helpers::{base_vars, eventually, within, within_for, RedisCluster, RedisServer, TestRedis};

/// Runs each rule on both backends. A rule may name configuration it needs:
/// `rule => [("HISTORY_MAX_LEN", "3")]`.
macro_rules! contract {
    (@vars) => { &[] };
    (@vars $vars:expr) => { &$vars };
    ($($rule:ident $(=> $vars:expr)?),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    super::$rule(super::memory(contract!(@vars $($vars)?))).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    let server = crate::helpers::RedisServer::start();
                    super::$rule(super::redis(&server, "instance-1", contract!(@vars $($vars)?)).await).await;
                    drop(server); // alive until the rule is done
                }
            )*
        }
        /// Every rule on a Redis Cluster too: a script or a multi-key
        /// command whose keys are in two slots fails there (CROSSSLOT).
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    let cluster = crate::helpers::RedisCluster::start();
                    super::$rule(super::redis(&cluster, "instance-1", contract!(@vars $($vars)?)).await).await;
                    drop(cluster); // alive until the rule is done
                }
            )*
        }
    };
}

contract! {
    usernames_are_unique_ignoring_case_even_when_registered_concurrently,
    a_resend_within_the_window_gets_the_first_id_and_is_stored_once,
    a_resend_after_the_window_is_stored_anew => [("SEND_DEDUPE_SECS", "1")],
    ids_increase_in_append_order_even_within_one_millisecond,
    a_room_keeps_at_least_its_cap_and_always_the_newest => [("HISTORY_MAX_LEN", "3")],
    a_stored_message_round_trips_exactly,
    after_replays_exactly_the_messages_strictly_after_an_id,
    before_pages_back_through_the_messages_strictly_before_an_id,
    tail_returns_what_is_appended_after_the_cursor_and_only_for_followed_rooms,
    wake_tail_ends_a_pending_tail_early_and_is_not_lost_when_it_comes_first,
    the_session_index_tracks_removes_takes_and_expires_entries,
    exist_reports_which_sessions_are_in_the_session_store,
    presence_lists_every_instances_live_entries_per_room,
    counters_count_within_a_fixed_window_that_starts_at_the_first_increment,
    each_user_lists_the_rooms_they_opened_most_recent_first,
    a_room_nobody_uses_expires_with_its_history => [("ROOM_TTL_SECS", "1")],
    read_markers_move_only_forward_per_user_and_room_and_stay_bounded,
    the_mention_inbox_keeps_the_newest_notes_newest_first_per_user => [("MENTION_INBOX_LEN", "3")],
    the_mention_inbox_goes_a_room_lifetime_after_its_newest_note => [("ROOM_TTL_SECS", "1")],
    a_senders_rate_counts_every_message_they_send => [("USER_MESSAGE_RATE_PER_SEC", "1"), ("USER_MESSAGE_BURST", "3")],
    a_client_id_the_server_assigned_drops_resends_but_is_not_shown,
    resends_and_the_rate_are_counted_per_sender_id_not_per_name => [("USER_MESSAGE_BURST", "2"), ("USER_MESSAGE_RATE_PER_SEC", "0.001")],
    a_first_message_into_a_new_room_counts_against_the_senders_quota => [("ROOMS_PER_USER_PER_HOUR", "2")],
    opening_a_new_room_counts_against_the_users_quota_and_a_refusal_writes_nothing => [("ROOMS_PER_USER_PER_HOUR", "2")],
    a_name_is_one_room_whatever_its_kind_even_under_concurrency,
    members_are_added_and_removed_by_the_rules,
    the_owner_leaving_hands_the_room_to_the_longest_standing_member,
    the_last_member_leaving_deletes_the_room_and_its_history,
    private_rooms_lists_a_users_memberships_in_the_order_they_joined,
    the_bounds_refuse_and_a_refusal_writes_nothing => [("MAX_ROOM_MEMBERS", "3"), ("MAX_PRIVATE_ROOMS_PER_USER", "2")],
    creating_a_private_room_counts_on_the_new_room_quota_only_when_made => [("ROOMS_PER_USER_PER_HOUR", "2")],
    the_bounds_hold_under_concurrency => [("MAX_ROOM_MEMBERS", "3"), ("MAX_PRIVATE_ROOMS_PER_USER", "2")],
    an_add_racing_a_removal_never_lets_a_user_past_their_bound => [("MAX_PRIVATE_ROOMS_PER_USER", "1")],
    states_answer_for_many_pairs_at_once,
    an_append_stores_nothing_where_the_sender_may_not_write => [("ROOM_TTL_SECS", "1")],
    private_and_direct_rooms_never_expire => [("ROOM_TTL_SECS", "1")],
    a_first_message_into_a_direct_room_counts_on_the_senders_direct_quota => [("DIRECT_PER_USER_PER_HOUR", "2"), ("ROOMS_PER_USER_PER_HOUR", "1")],
    direct_lists_hold_each_conversation_once_most_recent_first,
    a_password_change_keeps_the_account_and_its_disabled_flag,
    sessions_are_listed_with_what_they_say_newest_first,
    a_listing_drops_sessions_that_are_gone_and_what_they_said,
    a_listing_is_bounded_to_the_sessions_that_end_last,
    last_active_moves_forward_once_per_granularity_even_under_concurrent_touches,
    a_descriptor_follows_its_session_to_a_new_id_and_goes_when_removed,
    a_new_descriptor_drops_those_of_sessions_no_longer_indexed,
    the_security_log_keeps_the_newest_fifty_newest_first,
    failed_sign_ins_from_one_address_are_one_entry_per_burst_even_concurrently,
    the_security_log_goes_after_its_idle_time_and_each_write_renews_it,
    an_invite_is_spent_exactly_as_many_times_as_it_has_uses_even_concurrently,
    an_expired_invite_says_so_and_a_spend_just_before_its_expiry_counts,
    published_events_reach_subscribers_as_published,
    health_answers,
}

// ------------------------------------------------------------ backends --

fn config(redis: Option<&dyn TestRedis>, vars: &[(&str, &str)]) -> Config {
    let mut map = base_vars(redis);
    // Rules other than the sender's rate append in bursts.
    map.insert("USER_MESSAGE_RATE_PER_SEC".into(), "100000".into());
    map.insert("USER_MESSAGE_BURST".into(), "100000".into());
    map.insert("ROOMS_PER_USER_PER_HOUR".into(), "100000".into());
    map.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_map(&map).expect("test config is valid")
}

fn memory(vars: &[(&str, &str)]) -> Backend {
    let backend = Backend::memory(&config(None, vars).chat);
    assert_eq!(backend.kind, BackendKind::Memory);
    backend
}

async fn redis(server: &dyn TestRedis, instance: &str, vars: &[(&str, &str)]) -> Backend {
    let backend = Backend::connect(&config(Some(server), vars), instance, &Default::default())
        .await
        .expect("connects to the test Redis");
    assert_eq!(backend.kind, BackendKind::Redis);
    backend
}

// ------------------------------------------------------------- helpers --

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("valid room name")
}

/// A room named `<prefix>-<n>` that is tailed together with `with` (one
/// tail follows the rooms of one group).
fn room_beside(b: &Backend, with: &RoomName, prefix: &str) -> RoomName {
    (0..)
        .map(|n| room(&format!("{prefix}-{n}")))
        .find(|r| b.history.tail_group(r) == b.history.tail_group(with))
        .expect("some name is in every group")
}

fn said(user: &str, body: &str, client_id: Option<&str>) -> NewMessage {
    said_at(user, body, client_id, UnixMillis::now())
}

fn said_at(user: &str, body: &str, client_id: Option<&str>, sent_at: UnixMillis) -> NewMessage {
    NewMessage {
        sender: sender(user),
        user: user.into(),
        body: body.into(),
        client_id: client_id.map(Into::into),
        client_id_shown: client_id.is_some(),
        sent_at,
    }
}

/// A stable id per test user name.
fn sender(name: &str) -> UserId {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    UserId::from_u128(u128::from(hasher.finish()))
}

/// Appends a message that must be stored (not taken for a resend).
async fn append_new(b: &Backend, room: &RoomName, message: NewMessage) -> Message {
    match b.history.append(room, message).await.expect("append") {
        Appended::New(stored) => stored,
        other => panic!("expected a new message, got {other:?}"),
    }
}

async fn all(b: &Backend, room: &RoomName) -> Vec<Message> {
    b.history.recent(room, 10_000).await.expect("recent")
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn who_said(messages: &[Message]) -> Vec<(&str, &str)> {
    messages.iter().map(|m| (m.user.as_str(), m.body.as_str())).collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Session ids in a comparable order.
fn session_ids(ids: Vec<Id>) -> Vec<i128> {
    sorted(ids.into_iter().map(|id| id.0).collect())
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// A session record as the session layer creates one.
async fn create_session(b: &Backend) -> Id {
    let mut record = Record {
        id: Id::default(),
        data: Default::default(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(5),
    };
    b.sessions.create(&mut record).await.expect("create session");
    record.id // the store may have picked another id
}

/// The next event a subscriber hears (a resync notice is not one).
async fn next_event(rx: &mut broadcast::Receiver<Notice>) -> Event {
    within("an event on the bus", async {
        loop {
            match rx.recv().await {
                Ok(Notice::Event(event)) => return event,
                Ok(Notice::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("the bus closed"),
            }
        }
    })
    .await
}

// --------------------------------------------------------------- users --

async fn usernames_are_unique_ignoring_case_even_when_registered_concurrently(b: Backend) {
    const RACERS: usize = 16;
    // alice, Alice, aLice, ALice, ... : 16 spellings of one name.
    let spellings = (0..RACERS).map(|mask| {
        "alice"
            .chars()
            .enumerate()
            .map(|(i, c)| if (mask >> i) & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect::<String>()
    });
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = spellings
        .enumerate()
        .map(|(i, name)| {
            let (b, start) = (b.clone(), start.clone());
            let user = User { id: UserId::new_v4(), name };
            let hash = format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${i}+/=");
            tokio::spawn(async move {
                start.wait().await;
                let created = b.users.create(&user, &hash).await.expect("create");
                (user, hash, created)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (user, hash, created) = within("a registration", racer).await.expect("racer");
        if created {
            winners.push((user, hash));
        }
    }
    assert_eq!(winners.len(), 1, "exactly one registration of a name wins: {winners:?}");
    let (winner, hash) = &winners[0];

    for spelling in ["alice", "ALICE", "aLiCe", winner.name.as_str()] {
        let found = b.users.find(spelling).await.expect("find").expect("the user is found by any case");
        assert_eq!(&found.user, winner, "the first user's id and spelling, found as {spelling}");
        assert_eq!(&found.password_hash, hash, "the hash as stored");
    }
    let late = User { id: UserId::new_v4(), name: "ALICE".into() };
    assert!(!b.users.create(&late, "h").await.expect("create"), "a later registration in another case is refused");
    assert!(b.users.find("alicia").await.expect("find").is_none());
    let bob = User { id: UserId::new_v4(), name: "bob".into() };
    assert!(b.users.create(&bob, "h").await.expect("create"), "another name is free");
    assert_eq!(b.users.find("Bob").await.expect("find").expect("bob").user, bob);
}

// ------------------------------------------------------------- history --

async fn a_resend_within_the_window_gets_the_first_id_and_is_stored_once(b: Backend) {
    let (lobby, other) = (room("lobby"), room("other"));
    let first = append_new(&b, &lobby, said("al", "hi", Some("c1"))).await;
    let resend = b.history.append(&lobby, said("al", "hi (resent)", Some("c1"))).await.expect("append");
    assert_eq!(resend, Appended::Duplicate(first.id));
    assert_eq!(who_said(&all(&b, &lobby).await), [("al", "hi")], "a resend is stored once");

    // The same client_id from another user, or in another room, is another message.
    let bo = append_new(&b, &lobby, said("bo", "hi", Some("c1"))).await;
    assert!(bo.id > first.id);
    let elsewhere = append_new(&b, &other, said("al", "hi", Some("c1"))).await;
    assert_eq!(
        b.history.append(&other, said("al", "hi", Some("c1"))).await.expect("append"),
        Appended::Duplicate(elsewhere.id)
    );
    assert_eq!(
        b.history.append(&lobby, said("bo", "hi", Some("c1"))).await.expect("append"),
        Appended::Duplicate(bo.id)
    );

    // Without a client_id nothing is taken for a resend.
    let once = append_new(&b, &lobby, said("al", "same", None)).await;
    let twice = append_new(&b, &lobby, said("al", "same", None)).await;
    assert!(twice.id > once.id);

    assert_eq!(who_said(&all(&b, &lobby).await), [("al", "hi"), ("bo", "hi"), ("al", "same"), ("al", "same")]);
    assert_eq!(who_said(&all(&b, &other).await), [("al", "hi")]);
}

async fn a_resend_after_the_window_is_stored_anew(b: Backend) {
    // SEND_DEDUPE_SECS=1
    let lobby = room("lobby");
    let started = Instant::now();
    let first = append_new(&b, &lobby, said("al", "hi", Some("c1"))).await;
    assert_eq!(
        b.history.append(&lobby, said("al", "hi", Some("c1"))).await.expect("append"),
        Appended::Duplicate(first.id)
    );

    let anew: Mutex<Option<Message>> = Mutex::new(None);
    let (backend, lobby_ref, anew_ref) = (&b, &lobby, &anew);
    eventually("a resend after the window to be stored anew", || async move {
        match backend.history.append(lobby_ref, said("al", "hi", Some("c1"))).await.expect("append") {
            Appended::New(stored) => {
                *anew_ref.lock().unwrap() = Some(stored);
                true
            }
            Appended::Duplicate(id) => {
                assert_eq!(id, first.id, "within the window a resend is the first message");
                false
            }
            other => panic!("only the dedupe window is the rule here: {other:?}"),
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "the window lasts its second; it ended after {elapsed:?}");
    let anew = anew.into_inner().unwrap().expect("stored anew");
    assert!(anew.id > first.id);
    assert_eq!(ids(&all(&b, &lobby).await), [first.id, anew.id]);
}

async fn ids_increase_in_append_order_even_within_one_millisecond(b: Backend) {
    let lobby = room("lobby");
    assert_eq!(b.history.last_id(&lobby).await.expect("last_id"), MessageId::ZERO, "an empty room");
    assert!(all(&b, &lobby).await.is_empty());

    // One after the other: ids follow the order of appends.
    let mut appended = Vec::new();
    for i in 0..20 {
        appended.push(append_new(&b, &lobby, said("al", &format!("m{i}"), None)).await.id);
    }
    assert!(appended.windows(2).all(|w| w[0] < w[1]), "ids increase in append order: {appended:?}");

    // A burst, all at once (and all sent in one millisecond): every id distinct.
    let start = Arc::new(Barrier::new(32));
    let sent_at = UnixMillis::now();
    let burst: Vec<_> = (0..32)
        .map(|i| {
            let (b, start, lobby) = (b.clone(), start.clone(), lobby.clone());
            tokio::spawn(async move {
                start.wait().await;
                append_new(&b, &lobby, said_at("bo", &format!("b{i}"), None, sent_at)).await.id
            })
        })
        .collect();
    let mut burst_ids = Vec::new();
    for task in burst {
        burst_ids.push(within("an append", task).await.expect("append task"));
    }
    let burst_ids = sorted(burst_ids);
    assert!(burst_ids.windows(2).all(|w| w[0] < w[1]), "no two appends share an id: {burst_ids:?}");
    assert!(burst_ids[0] > *appended.last().unwrap(), "a later append has a larger id");
    assert!(
        burst_ids.windows(2).any(|w| w[0].ms == w[1].ms),
        "some appends fell in one millisecond (this test is about them): {burst_ids:?}"
    );
    appended.extend(&burst_ids);

    // Oldest first, and the last n.
    assert_eq!(ids(&all(&b, &lobby).await), appended);
    assert_eq!(ids(&b.history.recent(&lobby, 5).await.expect("recent")), appended[appended.len() - 5..]);
    assert_eq!(ids(&b.history.recent(&lobby, 1).await.expect("recent")), [*appended.last().unwrap()]);
    assert!(b.history.recent(&lobby, 0).await.expect("recent").is_empty());
    assert_eq!(b.history.last_id(&lobby).await.expect("last_id"), *appended.last().unwrap());
    assert_eq!(b.history.last_id(&room("empty")).await.expect("last_id"), MessageId::ZERO);
}

async fn a_room_keeps_at_least_its_cap_and_always_the_newest(b: Backend) {
    // HISTORY_MAX_LEN=3. Redis trims approximately (`MAXLEN ~`, whole nodes
    // of up to 100 entries), so enough messages that it must trim some.
    let lobby = room("lobby");
    let mut appended = Vec::new();
    for i in 0..250 {
        appended.push(append_new(&b, &lobby, said("al", &format!("m{i}"), None)).await.id);
    }
    let kept = ids(&all(&b, &lobby).await);
    assert!(kept.len() >= 3, "at least the cap is kept: {}", kept.len());
    assert!(kept.len() < appended.len(), "the oldest are dropped");
    assert_eq!(kept, appended[appended.len() - kept.len()..], "what is kept is the newest, in order");
    assert_eq!(ids(&b.history.recent(&lobby, 3).await.expect("recent")), appended[appended.len() - 3..]);
    assert_eq!(ids(&b.history.after(&lobby, MessageId::ZERO, 10_000).await.expect("after")), kept);
    assert_eq!(b.history.last_id(&lobby).await.expect("last_id"), *appended.last().unwrap());
}

async fn a_stored_message_round_trips_exactly(b: Backend) {
    let lobby = room("lobby");
    let sent = [
        said_at(
            "Al.ice_-9",
            "héllo 👋 — 你好, ½ ∑ \u{200d}",
            Some("c-ü-1"),
            UnixMillis::from_millis(1_700_000_000_123),
        ),
        said_at("bo", "line one\nline two\r\n\ttabbed \"quoted\" \\ | : {json}", None, UnixMillis::from_millis(1)),
        said_at("cy", &"x".repeat(2000), Some(&"k".repeat(64)), UnixMillis::now()),
    ];
    let mut stored = Vec::new();
    for message in sent.iter().cloned() {
        let id = match b.history.append(&lobby, message.clone()).await.expect("append") {
            Appended::New(m) => {
                assert_eq!(m, message.clone().stored(m.id), "append returns what it stored");
                m.id
            }
            other => panic!("not a resend: {other:?}"),
        };
        stored.push(message.stored(id));
    }
    assert_eq!(all(&b, &lobby).await, stored, "recent");
    assert_eq!(b.history.after(&lobby, MessageId::ZERO, 10).await.expect("after"), stored, "after");
    let tailed = b.history.tail(&[(lobby.clone(), MessageId::ZERO)], Duration::from_secs(1)).await.expect("tail");
    assert_eq!(tailed, [(lobby, stored)], "tail");
}

async fn after_replays_exactly_the_messages_strictly_after_an_id(b: Backend) {
    let lobby = room("lobby");
    assert!(b.history.after(&lobby, MessageId::ZERO, 10).await.expect("after").is_empty(), "an empty room");

    // Two batches, in two different milliseconds; several messages share one.
    let first_ms = UnixMillis::now();
    for i in 0..6 {
        append_new(&b, &lobby, said_at("al", &format!("a{i}"), None, first_ms)).await;
    }
    eventually("the clock to move on", || async move { UnixMillis::now() > first_ms + Duration::from_millis(1) }).await;
    let second_ms = UnixMillis::now();
    for i in 0..6 {
        append_new(&b, &lobby, said_at("al", &format!("b{i}"), None, second_ms)).await;
    }
    let stored = all(&b, &lobby).await;
    assert_eq!(stored.len(), 12);
    let (first, last) = (stored[0].id, stored[11].id);

    let after = |id: MessageId, limit: usize| {
        let b = b.clone();
        let lobby = lobby.clone();
        async move { ids(&b.history.after(&lobby, id, limit).await.expect("after")) }
    };
    assert_eq!(after(MessageId::ZERO, 100).await, ids(&stored), "from the start");
    assert_eq!(after(MessageId::ZERO, 4).await, ids(&stored[..4]), "at most limit, oldest first");
    assert_eq!(after(first, 3).await, ids(&stored[1..4]), "strictly after");
    assert!(after(last, 100).await.is_empty(), "nothing after the newest");
    assert!(
        after(MessageId { ms: last.ms + 1, seq: 0 }, 100).await.is_empty(),
        "nothing after an id beyond the newest"
    );
    assert!(after(first, 0).await.is_empty(), "limit 0");

    // Every id, every id's millisecond alone (`<ms>`, as a client may send
    // it), and the ids just after each (between two messages or not).
    let mut probes = BTreeSet::new();
    for m in &stored {
        probes.extend([m.id, MessageId { ms: m.id.ms, seq: 0 }, MessageId { ms: m.id.ms, seq: m.id.seq + 1 }]);
    }
    assert!(
        probes.iter().any(|p| !stored.iter().any(|m| m.id == *p) && *p > first && *p < last),
        "some probe lies strictly between two messages"
    );
    for probe in probes {
        let expected: Vec<MessageId> = stored.iter().map(|m| m.id).filter(|id| *id > probe).collect();
        for limit in [1, 3, 100] {
            let want = &expected[..expected.len().min(limit)];
            assert_eq!(after(probe, limit).await, want, "after {probe}, limit {limit}");
        }
    }
}

async fn before_pages_back_through_the_messages_strictly_before_an_id(b: Backend) {
    let lobby = room("lobby");
    let far = MessageId { ms: u64::from(u32::MAX) * 1000, seq: 0 };
    assert!(b.history.before(&lobby, far, 10).await.expect("before").is_empty(), "an empty room");
    // Several messages in one millisecond, then others.
    let first_ms = UnixMillis::now();
    for i in 0..4 {
        append_new(&b, &lobby, said_at("al", &format!("a{i}"), None, first_ms)).await;
    }
    eventually("the clock to move on", || async move { UnixMillis::now() > first_ms + Duration::from_millis(1) }).await;
    for i in 0..5 {
        append_new(&b, &lobby, said("al", &format!("b{i}"), None)).await;
    }
    let stored = all(&b, &lobby).await;
    assert_eq!(stored.len(), 9);
    let before = |id: MessageId, limit: usize| {
        let b = b.clone();
        let lobby = lobby.clone();
        async move { ids(&b.history.before(&lobby, id, limit).await.expect("before")) }
    };
    assert_eq!(before(far, 100).await, ids(&stored), "everything, oldest first");
    assert_eq!(before(far, 3).await, ids(&stored[6..]), "the newest `limit`, oldest first");
    assert_eq!(before(stored[6].id, 4).await, ids(&stored[2..6]), "strictly before");
    assert_eq!(before(stored[2].id, 50).await, ids(&stored[..2]), "to the first");
    assert!(before(stored[0].id, 50).await.is_empty(), "nothing before the first");
    assert!(before(MessageId::ZERO, 50).await.is_empty(), "nothing before 0-0");
    assert!(before(far, 0).await.is_empty(), "limit 0");
    // Paging back from the newest, page by page, meets every message once.
    let mut paged = Vec::new();
    let mut cursor = far;
    loop {
        let page = b.history.before(&lobby, cursor, 2).await.expect("before");
        let Some(first) = page.first() else { break };
        cursor = first.id;
        paged.splice(0..0, page);
    }
    assert_eq!(paged, stored, "every message, once, in order, exactly as stored");
    // Ids between two messages page the same way.
    let between = MessageId { ms: stored[3].id.ms, seq: stored[3].id.seq + 1 };
    assert_eq!(before(between, 100).await, ids(&stored[..4]));
    assert!(before(stored[0].id, 5).await.is_empty());
    assert!(b.history.before(&room("elsewhere"), far, 5).await.expect("before").is_empty(), "rooms do not leak");
}

// ---------------------------------------------------------------- tail --

/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(150);

async fn tail_returns_what_is_appended_after_the_cursor_and_only_for_followed_rooms(b: Backend) {
    let lobby = room("lobby");
    let (quiet, elsewhere) = (room_beside(&b, &lobby, "quiet"), room_beside(&b, &lobby, "elsewhere"));
    append_new(&b, &lobby, said("al", "old", None)).await;
    append_new(&b, &quiet, said("al", "old", None)).await;
    let cursors = vec![
        (lobby.clone(), b.history.last_id(&lobby).await.expect("last_id")),
        (quiet.clone(), b.history.last_id(&quiet).await.expect("last_id")),
    ];

    let mut waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.history.tail(&cursors, Duration::from_secs(30)).await.expect("tail") })
    };
    assert!(tokio::time::timeout(QUIET, &mut waiter).await.is_err(), "with nothing new, tail waits");
    append_new(&b, &elsewhere, said("al", "not followed", None)).await;
    assert!(tokio::time::timeout(QUIET, &mut waiter).await.is_err(), "a room not followed does not end the wait");

    let new = append_new(&b, &lobby, said("bo", "new", Some("c1"))).await;
    let got = within("tail to return the new message", waiter).await.expect("tail task");
    assert_eq!(got, [(lobby.clone(), vec![new.clone()])], "only the followed room with news, only the news");

    // With news already there, tail answers at once, per room, oldest first.
    let also = append_new(&b, &quiet, said("cy", "also", None)).await;
    let old_lobby = b.history.after(&lobby, MessageId::ZERO, 1).await.expect("after")[0].id;
    let got = within_for(
        Duration::from_secs(3),
        "tail with news waiting",
        b.history.tail(
            &[(quiet.clone(), also.id), (lobby.clone(), old_lobby), (elsewhere, new.id)],
            Duration::from_secs(30),
        ),
    )
    .await
    .expect("tail");
    assert_eq!(got, [(lobby, vec![new])], "nothing after the cursors of the others");
}

async fn wake_tail_ends_a_pending_tail_early_and_is_not_lost_when_it_comes_first(b: Backend) {
    let lobby = room("lobby");
    append_new(&b, &lobby, said("al", "old", None)).await;
    let cursor = b.history.last_id(&lobby).await.expect("last_id");
    let long = Duration::from_secs(30);
    let tail = |b: Backend, lobby: RoomName| async move { b.history.tail(&[(lobby, cursor)], long).await };

    // A tail that is waiting returns early, with nothing new.
    let mut waiter = tokio::spawn(tail(b.clone(), lobby.clone()));
    assert!(tokio::time::timeout(QUIET, &mut waiter).await.is_err(), "with nothing new, tail waits");
    b.history.wake_tail(&lobby).await.expect("wake_tail");
    let got = within_for(Duration::from_secs(3), "a woken tail to return", waiter).await.expect("tail task");
    assert!(got.expect("tail").is_empty());

    // A wake that comes before the tail waits (a room joined just after the
    // tail read its room set) ends the next tail instead of being lost.
    b.history.wake_tail(&lobby).await.expect("wake_tail");
    let got = within_for(Duration::from_secs(3), "the next tail to return", tail(b.clone(), lobby.clone())).await;
    assert!(got.expect("tail").is_empty());

    // Once used, a wake does not end later tails.
    let mut waiter = tokio::spawn(tail(b.clone(), lobby.clone()));
    assert!(tokio::time::timeout(QUIET, &mut waiter).await.is_err(), "a wake ends one tail, not every later one");
    waiter.abort();
}

// ------------------------------------------------------------ sessions --

async fn the_session_index_tracks_removes_takes_and_expires_entries(b: Backend) {
    let (al, bo) = (UserId::new_v4(), UserId::new_v4());
    let later = UnixMillis::now() + Duration::from_secs(3600);
    let [one, two, three, theirs] = [Id::default(), Id::default(), Id::default(), Id::default()];
    let index = &b.session_index;
    for id in [one, two, three] {
        index.add(al, id, later).await.expect("add");
    }
    index.add(bo, theirs, later).await.expect("add");
    index.remove(al, two).await.expect("remove");
    index.remove(al, Id::default()).await.expect("removing an unknown id is a no-op");
    assert_eq!(session_ids(index.take_all(al).await.expect("take_all")), session_ids(vec![one, three]));
    assert!(index.take_all(al).await.expect("take_all").is_empty(), "take_all leaves nothing");
    assert!(index.take_all(UserId::new_v4()).await.expect("take_all").is_empty(), "an unknown user");

    // An entry past its end is dropped on the next add.
    let (kept, ended, fresh) = (Id::default(), Id::default(), Id::default());
    index.add(al, kept, later).await.expect("add");
    let ends = UnixMillis::now() + Duration::from_millis(200);
    index.add(al, ended, ends).await.expect("add");
    eventually("the entry's end to pass", || async move { UnixMillis::now() > ends }).await;
    index.add(al, fresh, later).await.expect("add");
    assert_eq!(session_ids(index.take_all(al).await.expect("take_all")), session_ids(vec![kept, fresh]));

    // Also one added already ended.
    let stale = Id::default();
    index.add(al, stale, UnixMillis::now() - Duration::from_secs(1)).await.expect("add");
    index.add(al, fresh, later).await.expect("add");
    assert_eq!(index.take_all(al).await.expect("take_all"), [fresh]);

    assert_eq!(index.take_all(bo).await.expect("take_all"), [theirs], "other users' entries are their own");
}

async fn exist_reports_which_sessions_are_in_the_session_store(b: Backend) {
    let (live, deleted, other) = (create_session(&b).await, create_session(&b).await, create_session(&b).await);
    b.sessions.delete(&deleted).await.expect("delete");
    let never = Id::default();
    let exist = b.session_index.exist(&[live, deleted, never, other, live]).await.expect("exist");
    assert_eq!(exist, [true, false, false, true, true]);
    assert!(b.session_index.exist(&[]).await.expect("exist").is_empty());
    assert!(b.sessions.load(&live).await.expect("load").is_some(), "the store agrees");
    assert!(b.sessions.load(&deleted).await.expect("load").is_none(), "the store agrees");
}

// ------------------------------------------------------------ presence --

async fn presence_lists_every_instances_live_entries_per_room(b: Backend) {
    let (lobby, other, empty) = (room("lobby"), room("other"), room("empty"));
    let minute = Duration::from_secs(60);
    let online = |rooms: Vec<RoomName>| {
        let b = b.clone();
        async move { b.presence.online(&rooms).await.expect("online").into_iter().map(sorted).collect::<Vec<_>>() }
    };
    let at = |room: &RoomName, user: &str| (room.clone(), user.to_owned());

    b.presence
        .update("i1", &[at(&lobby, "al"), at(&lobby, "bo"), at(&other, "al")], &[], minute)
        .await
        .expect("update");
    b.presence.update("i2", &[at(&lobby, "al"), at(&lobby, "cy")], &[], minute).await.expect("update");
    assert_eq!(
        online(vec![lobby.clone(), empty.clone(), other.clone()]).await,
        [strings(&[("i1", "al"), ("i1", "bo"), ("i2", "al"), ("i2", "cy")]), vec![], strings(&[("i1", "al")])],
        "one list per room, in the order asked, with every instance's entries"
    );
    assert_eq!(online(vec![other.clone(), lobby.clone()]).await[0], strings(&[("i1", "al")]));
    assert!(online(vec![]).await.is_empty());

    // Offline removes that instance's entry for that user, nothing else.
    b.presence.update("i1", &[], &[at(&lobby, "al")], minute).await.expect("update");
    let after_offline = strings(&[("i1", "bo"), ("i2", "al"), ("i2", "cy")]);
    assert_eq!(online(vec![lobby.clone(), other.clone()]).await, [after_offline.clone(), strings(&[("i1", "al")])]);

    // An entry lives until its deadline; others in the room live on.
    b.presence.update("i3", &[at(&lobby, "zed")], &[], Duration::ZERO).await.expect("update");
    assert_eq!(online(vec![lobby.clone()]).await, vec![after_offline.clone()], "an entry already past its deadline");
    b.presence.update("i3", &[at(&lobby, "zed")], &[], Duration::from_millis(300)).await.expect("update");
    assert!(online(vec![lobby.clone()]).await[0].contains(&("i3".to_owned(), "zed".to_owned())));
    let lobby_ref = &lobby;
    eventually("the short-lived entry to expire", || async move {
        !online(vec![lobby_ref.clone()]).await[0].contains(&("i3".to_owned(), "zed".to_owned()))
    })
    .await;
    assert_eq!(online(vec![lobby.clone()]).await, [after_offline], "the other entries outlive it");
}

// ------------------------------------------------------------ counters --

async fn counters_count_within_a_fixed_window_that_starts_at_the_first_increment(b: Backend) {
    let window = Duration::from_millis(800);
    let keys = ["ip:127.0.0.1".to_owned(), "user:alice".to_owned()];
    let counters = &b.counters;
    assert_eq!(counters.get(&keys).await.expect("get"), [(0, Duration::ZERO), (0, Duration::ZERO)], "unknown keys");

    counters.incr(&keys, window).await.expect("incr");
    counters.incr(&keys, window).await.expect("incr");
    for (n, left) in counters.get(&keys).await.expect("get") {
        assert_eq!(n, 2);
        assert!(!left.is_zero() && left <= window, "time left {left:?} within the window");
    }

    // A later increment does not extend the window.
    let first = std::slice::from_ref(&keys[0]);
    eventually("the window to run down", || async move {
        counters.get(first).await.expect("get")[0].1 <= Duration::from_millis(500)
    })
    .await;
    counters.incr(first, window).await.expect("incr");
    let (n, left) = counters.get(first).await.expect("get")[0];
    assert_eq!(n, 3);
    assert!(left <= Duration::from_millis(500), "the window still ends where it began: {left:?} left");

    // Reset clears one key, not the other.
    counters.reset(&keys[1]).await.expect("reset");
    let got = counters.get(&keys).await.expect("get");
    assert_eq!(got[0].0, 3);
    assert_eq!(got[1], (0, Duration::ZERO));

    // After the window the count starts over.
    eventually(
        "the window to end",
        || async move { counters.get(first).await.expect("get")[0] == (0, Duration::ZERO) },
    )
    .await;
    counters.incr(first, window).await.expect("incr");
    let (n, left) = counters.get(first).await.expect("get")[0];
    assert_eq!(n, 1);
    assert!(left > Duration::from_millis(500), "a new window: {left:?} left");
}

// --------------------------------------------------------------- rooms --

async fn each_user_lists_the_rooms_they_opened_most_recent_first(b: Backend) {
    let (al, bo) = (UserId::new_v4(), UserId::new_v4());
    assert!(b.history.user_rooms(al, 10).await.expect("user_rooms").is_empty());
    assert!(!b.history.room_exists(&room("old")).await.expect("room_exists"));
    for name in ["old", "middle", "busy"] {
        b.history.open_room(&room(name), al).await.expect("open_room");
        assert!(b.history.room_exists(&room(name)).await.expect("room_exists"), "{name} exists once opened");
    }
    b.history.open_room(&room("theirs"), bo).await.expect("open_room");
    // A room only written to exists too, but is in nobody's list.
    append_new(&b, &room("written"), said("cy", "x", None)).await;
    assert!(b.history.room_exists(&room("written")).await.expect("room_exists"));
    let names = |rooms: Vec<RoomName>| rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    // A later visit moves a room up (visits in one millisecond would tie).
    let last_visit = UnixMillis::now();
    eventually("the clock to move on", || async move { UnixMillis::now() > last_visit }).await;
    b.history.open_room(&room("old"), al).await.expect("open_room");
    let mine = names(b.history.user_rooms(al, 10).await.expect("user_rooms"));
    assert_eq!(mine.first().map(String::as_str), Some("old"), "{mine:?}");
    assert_eq!(mine.len(), 3, "only the rooms al opened: {mine:?}");
    assert_eq!(names(b.history.user_rooms(al, 2).await.expect("user_rooms")).len(), 2);
    assert_eq!(names(b.history.user_rooms(bo, 10).await.expect("user_rooms")), ["theirs"]);
}

async fn a_room_nobody_uses_expires_with_its_history(b: Backend) {
    let al = UserId::new_v4();
    let quiet = room("quiet");
    b.history.open_room(&quiet, al).await.expect("open_room");
    append_new(&b, &quiet, said("al", "soon gone", None)).await;
    let (backend, quiet_ref) = (&b, &quiet);
    eventually("the unused room to expire", || async move {
        !backend.history.room_exists(quiet_ref).await.expect("room_exists")
    })
    .await;
    assert!(b.history.recent(&quiet, 10).await.expect("recent").is_empty(), "its history went with it");
    assert!(b.history.user_rooms(al, 10).await.expect("user_rooms").is_empty(), "and out of the user's list");
    // Opened again, it starts afresh.
    b.history.open_room(&quiet, al).await.expect("open_room");
    assert!(b.history.room_exists(&quiet).await.expect("room_exists"));
}

async fn read_markers_move_only_forward_per_user_and_room_and_stay_bounded(b: Backend) {
    let (al, bo) = (UserId::new_v4(), UserId::new_v4());
    let id = |s: &str| s.parse::<MessageId>().expect("an id");
    assert!(b.history.read_markers(al).await.expect("read_markers").is_empty());
    assert!(b.history.mark_read(al, &room("lobby"), id("10-1")).await.expect("mark_read"));
    assert!(b.history.mark_read(al, &room("other"), id("5-0")).await.expect("mark_read"));
    // Never back, and the same id again changes nothing.
    for older in ["10-0", "9-9", "10-1"] {
        assert!(!b.history.mark_read(al, &room("lobby"), id(older)).await.expect("mark_read"), "{older}");
    }
    // 10-2 is after 10-1, and 11-0 after both (ids compare as numbers, not text).
    assert!(b.history.mark_read(al, &room("lobby"), id("10-2")).await.expect("mark_read"));
    assert!(b.history.mark_read(al, &room("lobby"), id("100-0")).await.expect("mark_read"));
    assert!(!b.history.mark_read(al, &room("lobby"), id("99-99")).await.expect("mark_read"));
    b.history.mark_read(bo, &room("lobby"), id("1-0")).await.expect("mark_read");
    let mine = b.history.read_markers(al).await.expect("read_markers");
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[&room("lobby")], id("100-0"));
    assert_eq!(mine[&room("other")], id("5-0"));
    assert_eq!(b.history.read_markers(bo).await.expect("read_markers")[&room("lobby")], id("1-0"));

    // A direct conversation's marker reads back under the room's key.
    let direct = RoomName::direct(al, bo);
    b.history.mark_read(al, &direct, id("0-0")).await.expect("mark_read");
    assert_eq!(b.history.read_markers(al).await.expect("read_markers").get(&direct), Some(&id("0-0")));

    // Bounded: past the cap, only the rooms in the user's list (opened,
    // private, direct with a message) keep theirs.
    let kept = palaver::backend::rules::USER_ROOMS_KEPT;
    let al_user = User { id: al, name: "al".into() };
    b.history.open_room(&room("listed"), al).await.expect("open_room");
    b.history.mark_read(al, &room("listed"), id("1-0")).await.expect("mark_read");
    assert_eq!(b.rooms.create_private(&room("team"), &al_user).await.expect("create_private"), Created::Created);
    b.history.mark_read(al, &room("team"), id("2-0")).await.expect("mark_read");
    let talk = RoomName::direct(al, sender("cy"));
    append_new(&b, &talk, NewMessage { sender: al, ..said("al", "hi cy", None) }).await;
    b.rooms.note_direct(&talk, &al_user, &user("cy"), UnixMillis::now()).await.expect("note_direct");
    b.history.mark_read(al, &talk, id("3-0")).await.expect("mark_read");
    for n in 0..kept {
        b.history.mark_read(al, &room(&format!("r{n}")), id("1-0")).await.expect("mark_read");
    }
    let mine = b.history.read_markers(al).await.expect("read_markers");
    assert!(mine.len() <= kept + 1, "{} markers", mine.len());
    assert_eq!(mine.get(&room("listed")), Some(&id("1-0")), "a room in the user's list keeps its marker");
    assert_eq!(mine.get(&room("team")), Some(&id("2-0")), "so does a private room of theirs");
    assert_eq!(mine.get(&talk), Some(&id("3-0")), "and a conversation of theirs");
}

async fn the_mention_inbox_keeps_the_newest_notes_newest_first_per_user(b: Backend) {
    let (al, bo) = (sender("al"), sender("bo"));
    let id = |s: &str| s.parse::<MessageId>().expect("an id");
    assert!(b.history.mentions(al).await.expect("mentions").is_empty());
    for (name, at) in [("ops", "1-0"), ("dev", "2-0"), ("ops", "3-0"), ("qa", "4-5")] {
        b.history.note_mention(al, &room(name), id(at)).await.expect("note_mention");
    }
    b.history.note_mention(bo, &room("dev"), id("9-0")).await.expect("note_mention");
    // MENTION_INBOX_LEN=3: the oldest went.
    let notes: Vec<(String, MessageId)> = b
        .history
        .mentions(al)
        .await
        .expect("mentions")
        .into_iter()
        .map(|note| (note.room.to_string(), note.id))
        .collect();
    assert_eq!(notes, [("qa".into(), id("4-5")), ("ops".into(), id("3-0")), ("dev".into(), id("2-0"))]);
    let bos = b.history.mentions(bo).await.expect("mentions");
    assert_eq!((bos.len(), bos[0].id), (1, id("9-0")), "each user has their own");
}

async fn the_mention_inbox_goes_a_room_lifetime_after_its_newest_note(b: Backend) {
    let al = sender("al");
    let first = UnixMillis::now();
    b.history.note_mention(al, &room("ops"), "1-0".parse().expect("an id")).await.expect("note_mention");
    assert_eq!(b.history.mentions(al).await.expect("mentions").len(), 1);
    eventually("the inbox to go", || async { b.history.mentions(al).await.expect("mentions").is_empty() }).await;
    assert!(UnixMillis::now() >= first + Duration::from_millis(900), "not before its lifetime");
}

async fn a_senders_rate_counts_every_message_they_send(b: Backend) {
    let lobby = RoomName::lobby();
    // USER_MESSAGE_BURST=3: three at once, then one per second.
    for i in 0..3 {
        append_new(&b, &lobby, said("al", &format!("m{i}"), Some(&format!("c{i}")))).await;
    }
    let over = b.history.append(&room("other"), said("al", "elsewhere", Some("c3"))).await.expect("append");
    assert_eq!(over, Appended::Throttled, "across rooms (and so across sockets)");
    // A resend of a stored message is not a new message.
    let again = b.history.append(&lobby, said("al", "m0", Some("c0"))).await.expect("append");
    assert!(matches!(again, Appended::Duplicate(_)), "{again:?}");
    // Others are not limited by al, and al gets a token back in a second.
    append_new(&b, &lobby, said("bo", "hi", None)).await;
    assert_eq!(b.history.recent(&lobby, 10).await.expect("recent").len(), 4, "nothing stored for the refused one");
    let (backend, lobby_ref) = (&b, &lobby);
    eventually("al's bucket to refill", || async move {
        backend.history.append(lobby_ref, said("al", "later", Some("c4"))).await.expect("append") != Appended::Throttled
    })
    .await;
}

async fn a_first_message_into_a_new_room_counts_against_the_senders_quota(b: Backend) {
    // ROOMS_PER_USER_PER_HOUR=2: two new rooms by messages, then none.
    append_new(&b, &room("one"), said("al", "x", None)).await;
    append_new(&b, &room("one"), said("al", "again", None)).await;
    append_new(&b, &room("two"), said("al", "x", None)).await;
    assert_eq!(
        b.history.append(&room("three"), said("al", "x", None)).await.expect("append"),
        Appended::NewRoomRefused
    );
    assert!(!b.history.room_exists(&room("three")).await.expect("room_exists"), "not created");
    // The lobby always exists, even in a store that never saw it.
    append_new(&b, &RoomName::lobby(), said("al", "lobby is free", None)).await;
    // Rooms that exist are free, whoever made them; others have their own quota.
    append_new(&b, &room("two"), said("al", "more", None)).await;
    b.history.open_room(&room("theirs"), sender("bo")).await.expect("open_room");
    append_new(&b, &room("theirs"), said("al", "visiting", None)).await;
    append_new(&b, &room("three"), said("bo", "mine", None)).await;
    // Opening pages counts on the same counter.
    let counted = b.counters.get(&[NewRooms::counter(sender("al"))]).await.expect("get");
    assert_eq!(counted[0].0, 3, "two rooms made and one refused; the lobby not counted");
}

async fn opening_a_new_room_counts_against_the_users_quota_and_a_refusal_writes_nothing(b: Backend) {
    // ROOMS_PER_USER_PER_HOUR=2, on the counter first messages count on too.
    let (al, bo, cy) = (sender("al"), sender("bo"), sender("cy"));
    let open = |name: &str, user: UserId| {
        let (b, room) = (b.clone(), room(name));
        async move { b.history.open_room(&room, user).await.expect("open_room") }
    };
    let counted = |user: UserId| {
        let b = b.clone();
        async move { b.counters.get(&[NewRooms::counter(user)]).await.expect("get")[0].0 }
    };
    assert_eq!(open("one", al).await, RoomOpened::Open);
    assert_eq!(open("one", al).await, RoomOpened::Open, "a room that exists is free to open again");
    assert_eq!(counted(al).await, 1);
    append_new(&b, &room("two"), said("al", "made by a message", None)).await;
    match open("three", al).await {
        RoomOpened::NewRoomRefused { retry_after } => {
            assert!(
                retry_after >= Duration::from_secs(1) && retry_after <= Duration::from_secs(3600),
                "{retry_after:?}"
            )
        }
        other => panic!("the third new room is over the quota: {other:?}"),
    }
    assert!(!b.history.room_exists(&room("three")).await.expect("room_exists"), "not created");
    let mine = b.history.user_rooms(al, 10).await.expect("user_rooms");
    assert!(!mine.contains(&room("three")), "not listed: {mine:?}");
    assert_eq!(counted(al).await, 3, "a refused attempt counts too");
    // The lobby always exists, even in a store that never saw it; rooms
    // that exist are free whoever made them; others have their own quota.
    assert_eq!(open("lobby", al).await, RoomOpened::Open);
    assert_eq!(open("theirs", bo).await, RoomOpened::Open);
    assert_eq!(open("theirs", al).await, RoomOpened::Open);
    assert_eq!(counted(al).await, 3, "nothing made, nothing counted");
    // A first message into a new room meets the quota opening spent.
    assert_eq!(b.history.append(&room("four"), said("al", "x", None)).await.expect("append"), Appended::NewRoomRefused);

    // Charged atomically: of many new rooms opened at once, the quota's worth are made.
    let start = Arc::new(Barrier::new(8));
    let racers: Vec<_> = (0..8)
        .map(|n| {
            let (b, start, room) = (b.clone(), start.clone(), room(&format!("race-{n}")));
            tokio::spawn(async move {
                start.wait().await;
                b.history.open_room(&room, cy).await.expect("open_room")
            })
        })
        .collect();
    let mut opened = 0;
    for racer in racers {
        if within("an open", racer).await.expect("racer") == RoomOpened::Open {
            opened += 1;
        }
    }
    assert_eq!(opened, 2);
    assert_eq!(b.history.user_rooms(cy, 10).await.expect("user_rooms").len(), 2, "only the rooms made are listed");
}

async fn a_client_id_the_server_assigned_drops_resends_but_is_not_shown(b: Backend) {
    let lobby = RoomName::lobby();
    let assigned = NewMessage { client_id_shown: false, ..said("al", "quiet id", Some("s-123")) };
    let stored = append_new(&b, &lobby, assigned.clone()).await;
    assert_eq!(stored.client_id, None);
    assert_eq!(b.history.recent(&lobby, 1).await.expect("recent")[0].client_id, None);
    assert_eq!(b.history.append(&lobby, assigned).await.expect("append"), Appended::Duplicate(stored.id));
}

async fn resends_and_the_rate_are_counted_per_sender_id_not_per_name(b: Backend) {
    // USER_MESSAGE_BURST=2, and no refill within the test.
    let lobby = RoomName::lobby();
    let first = append_new(&b, &lobby, said("al", "hi", Some("c1"))).await;
    // Another user shown under the same name: their own resends, their own rate.
    let other =
        |body: &str, client_id: &str| NewMessage { sender: UserId::new_v4(), ..said("al", body, Some(client_id)) };
    let namesake = other("hi", "c1");
    let theirs = append_new(&b, &lobby, namesake.clone()).await;
    assert!(theirs.id > first.id, "the same client_id from another sender is another message");
    assert_eq!(b.history.append(&lobby, namesake).await.expect("append"), Appended::Duplicate(theirs.id));
    append_new(&b, &lobby, said("al", "second", Some("c2"))).await;
    assert_eq!(b.history.append(&lobby, said("al", "third", Some("c3"))).await.expect("append"), Appended::Throttled);
    let fresh = other("mine", "c3");
    append_new(&b, &lobby, fresh.clone()).await;
    append_new(&b, &lobby, NewMessage { client_id: Some("c4".into()), ..fresh }).await;
}

// ------------------------------------------------------- private rooms --

/// A test user, with the id [`sender`] gives their name.
fn user(name: &str) -> User {
    User { id: sender(name), name: name.into() }
}

async fn state(b: &Backend, room: &RoomName, who: &str) -> RoomState {
    b.rooms.state(room, sender(who)).await.expect("state")
}

/// The members as (name, role), longest-standing first.
async fn members(b: &Backend, room: &RoomName) -> Option<Vec<(String, Role)>> {
    let members = b.rooms.members(room).await.expect("members")?;
    assert!(members.windows(2).all(|w| w[0].joined_at <= w[1].joined_at), "longest-standing first: {members:?}");
    Some(members.into_iter().map(|m| (m.user.name, m.role)).collect())
}

fn named(pairs: &[(&str, Role)]) -> Option<Vec<(String, Role)>> {
    Some(pairs.iter().map(|(name, role)| (name.to_string(), *role)).collect())
}

async fn add(b: &Backend, room: &RoomName, by: &str, who: &str) -> Added {
    b.rooms.add_member(room, sender(by), &user(who)).await.expect("add_member")
}

async fn remove(b: &Backend, room: &RoomName, by: &str, who: &str) -> Removed {
    b.rooms.remove_member(room, sender(by), sender(who)).await.expect("remove_member")
}

async fn create(b: &Backend, room: &RoomName, owner: &str) -> Created {
    b.rooms.create_private(room, &user(owner)).await.expect("create_private")
}

async fn private_rooms(b: &Backend, who: &str) -> Vec<(String, Role)> {
    let rooms = b.rooms.private_rooms(sender(who)).await.expect("private_rooms");
    rooms.into_iter().map(|(room, role)| (room.to_string(), role)).collect()
}

/// The value of one of `who`'s quota counters.
async fn counted(b: &Backend, counter: String) -> u64 {
    b.counters.get(&[counter]).await.expect("get")[0].0
}

/// Waits for the clock to pass `since`, so that what follows happens in a
/// later millisecond.
async fn next_millisecond(since: UnixMillis) {
    eventually("the clock to move on", || async move { UnixMillis::now() > since }).await;
}

const MEMBER: Role = Role::Member;
const OWNER: Role = Role::Owner;

async fn a_name_is_one_room_whatever_its_kind_even_under_concurrency(b: Backend) {
    // Many creators of one name: one wins.
    const RACERS: usize = 8;
    let secret = room("secret");
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|n| {
            let (b, start, secret) = (b.clone(), start.clone(), secret.clone());
            tokio::spawn(async move {
                start.wait().await;
                (n, create(&b, &secret, &format!("racer{n}")).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        match within("a creation", racer).await.expect("racer") {
            (n, Created::Created) => winners.push(format!("racer{n}")),
            (_, Created::NameTaken) => {}
            (_, other) => panic!("only the name is contested: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator of a name wins: {winners:?}");
    let winner = &winners[0];
    assert_eq!(members(&b, &secret).await, named(&[(winner, OWNER)]));
    for n in 0..RACERS {
        let racer = format!("racer{n}");
        if &racer != winner {
            assert_eq!(state(&b, &secret, &racer).await, RoomState::Private(None));
            assert!(private_rooms(&b, &racer).await.is_empty(), "a loser is in no room");
            assert_eq!(counted(&b, NewRooms::counter(sender(&racer))).await, 0, "a loser is charged nothing");
        }
    }
    assert_eq!(counted(&b, NewRooms::counter(sender(winner))).await, 1, "the room made is charged");

    // A creator and someone opening the name as a public room: one kind wins,
    // and the loser is told.
    for round in 0..6 {
        let name = room(&format!("contested-{round}"));
        let start = Arc::new(Barrier::new(2));
        let creating = {
            let (b, start, name) = (b.clone(), start.clone(), name.clone());
            tokio::spawn(async move {
                start.wait().await;
                create(&b, &name, "al").await
            })
        };
        let opening = {
            let (b, start, name) = (b.clone(), start.clone(), name.clone());
            tokio::spawn(async move {
                start.wait().await;
                b.history.open_room(&name, sender("bo")).await.expect("open_room")
            })
        };
        let created = within("a creation", creating).await.expect("creator");
        let opened = within("an open", opening).await.expect("opener");
        let listed = b.history.user_rooms(sender("bo"), 100).await.expect("user_rooms").contains(&name);
        match (created, opened) {
            (Created::Created, RoomOpened::Private) => {
                assert_eq!(state(&b, &name, "bo").await, RoomState::Private(None));
                assert!(!listed, "a private room's name is not in the opener's list");
                assert_eq!(state(&b, &name, "al").await, RoomState::Private(Some(OWNER)));
            }
            (Created::NameTaken, RoomOpened::Open) => {
                assert_eq!(state(&b, &name, "al").await, RoomState::Public);
                assert!(listed, "the public room is in the opener's list");
            }
            other => panic!("exactly one kind wins and the loser is told: {other:?}"),
        }
        // Tidy up, so that al stays within the bound on private rooms.
        if created == Created::Created {
            assert!(matches!(remove(&b, &name, "al", "al").await, Removed::Removed { deleted: true, .. }));
        }
    }

    // Names taken another way: the lobby, a public room in use.
    assert_eq!(create(&b, &RoomName::lobby(), "al").await, Created::NameTaken, "the lobby always exists");
    b.history.open_room(&room("busy"), sender("bo")).await.expect("open_room");
    assert_eq!(create(&b, &room("busy"), "al").await, Created::NameTaken);
    assert_eq!(state(&b, &room("busy"), "al").await, RoomState::Public);
    assert_eq!(state(&b, &RoomName::lobby(), "al").await, RoomState::Public, "the lobby, even never opened");
    assert_eq!(state(&b, &room("never"), "al").await, RoomState::Missing);

    // Opening a private room's name writes nothing, and charges nothing.
    let before = counted(&b, NewRooms::counter(sender("cy"))).await;
    assert_eq!(b.history.open_room(&secret, sender("cy")).await.expect("open_room"), RoomOpened::Private);
    assert!(b.history.user_rooms(sender("cy"), 10).await.expect("user_rooms").is_empty(), "not listed");
    assert_eq!(counted(&b, NewRooms::counter(sender("cy"))).await, before, "not charged");
    assert!(b.history.room_exists(&secret).await.expect("room_exists"), "a private room exists");
    assert!(!b.history.user_rooms(sender(winner), 10).await.expect("user_rooms").contains(&secret));
}

async fn members_are_added_and_removed_by_the_rules(b: Backend) {
    let team = room("team");
    assert_eq!(create(&b, &team, "al").await, Created::Created);
    assert_eq!(add(&b, &team, "al", "bo").await, Added::Added);
    assert_eq!(add(&b, &team, "bo", "cy").await, Added::Added, "any member adds");
    assert_eq!(add(&b, &team, "cy", "bo").await, Added::AlreadyMember);
    assert_eq!(add(&b, &team, "al", "al").await, Added::AlreadyMember);
    assert_eq!(members(&b, &team).await, named(&[("al", OWNER), ("bo", MEMBER), ("cy", MEMBER)]));
    assert_eq!(state(&b, &team, "bo").await, RoomState::Private(Some(MEMBER)));

    // Who is not a member adds nobody; rooms that are not private have no members.
    assert_eq!(add(&b, &team, "dee", "eve").await, Added::NotFound);
    assert_eq!(add(&b, &team, "dee", "dee").await, Added::NotFound, "nor themselves");
    assert_eq!(add(&b, &room("unknown"), "al", "eve").await, Added::NotFound);
    b.history.open_room(&room("open"), sender("al")).await.expect("open_room");
    assert_eq!(add(&b, &room("open"), "al", "eve").await, Added::NotFound, "a public room");
    let direct = RoomName::direct(sender("al"), sender("bo"));
    assert_eq!(add(&b, &direct, "al", "eve").await, Added::NotFound, "a direct room");
    assert_eq!(members(&b, &room("open")).await, None);
    assert_eq!(members(&b, &room("unknown")).await, None);
    assert_eq!(state(&b, &team, "eve").await, RoomState::Private(None), "nothing written for eve");
    assert!(private_rooms(&b, "eve").await.is_empty());

    // A member removes only themselves; the owner anyone.
    assert_eq!(remove(&b, &team, "bo", "cy").await, Removed::Forbidden);
    assert_eq!(remove(&b, &team, "cy", "al").await, Removed::Forbidden);
    assert_eq!(remove(&b, &team, "eve", "bo").await, Removed::NotFound, "a non-member removes nobody");
    assert_eq!(remove(&b, &team, "al", "eve").await, Removed::NotFound, "nor is one removed");
    assert_eq!(remove(&b, &room("unknown"), "al", "al").await, Removed::NotFound);
    assert_eq!(remove(&b, &direct, "al", "al").await, Removed::NotFound);
    assert_eq!(members(&b, &team).await, named(&[("al", OWNER), ("bo", MEMBER), ("cy", MEMBER)]), "unchanged");

    assert_eq!(remove(&b, &team, "al", "cy").await, Removed::Removed { new_owner: None, deleted: false });
    assert_eq!(state(&b, &team, "cy").await, RoomState::Private(None));
    assert!(private_rooms(&b, "cy").await.is_empty());
    assert_eq!(remove(&b, &team, "bo", "bo").await, Removed::Removed { new_owner: None, deleted: false }, "leaves");
    assert_eq!(remove(&b, &team, "bo", "bo").await, Removed::NotFound, "once");
    assert_eq!(members(&b, &team).await, named(&[("al", OWNER)]));
    assert_eq!(private_rooms(&b, "al").await, [("team".to_owned(), OWNER)]);
    assert!(private_rooms(&b, "bo").await.is_empty());

    // Back in, at the end of the line.
    assert_eq!(add(&b, &team, "al", "cy").await, Added::Added);
    assert_eq!(add(&b, &team, "cy", "bo").await, Added::Added);
    assert_eq!(members(&b, &team).await, named(&[("al", OWNER), ("cy", MEMBER), ("bo", MEMBER)]));
}

async fn the_owner_leaving_hands_the_room_to_the_longest_standing_member(b: Backend) {
    let crew = room("crew");
    assert_eq!(create(&b, &crew, "al").await, Created::Created);
    for who in ["bo", "cy", "dee"] {
        assert_eq!(add(&b, &crew, "al", who).await, Added::Added);
    }
    assert_eq!(remove(&b, &crew, "al", "al").await, Removed::Removed { new_owner: Some(sender("bo")), deleted: false });
    assert_eq!(members(&b, &crew).await, named(&[("bo", OWNER), ("cy", MEMBER), ("dee", MEMBER)]));
    assert_eq!(state(&b, &crew, "bo").await, RoomState::Private(Some(OWNER)));
    assert_eq!(private_rooms(&b, "bo").await, [("crew".to_owned(), OWNER)]);

    // The new owner removes anyone; a member rejoining stands behind the others.
    assert_eq!(remove(&b, &crew, "bo", "cy").await, Removed::Removed { new_owner: None, deleted: false });
    assert_eq!(add(&b, &crew, "dee", "cy").await, Added::Added);
    assert_eq!(add(&b, &crew, "dee", "al").await, Added::Added);
    assert_eq!(members(&b, &crew).await, named(&[("bo", OWNER), ("dee", MEMBER), ("cy", MEMBER), ("al", MEMBER)]));
    assert_eq!(
        remove(&b, &crew, "bo", "bo").await,
        Removed::Removed { new_owner: Some(sender("dee")), deleted: false }
    );
    assert_eq!(
        remove(&b, &crew, "dee", "dee").await,
        Removed::Removed { new_owner: Some(sender("cy")), deleted: false }
    );
    assert_eq!(members(&b, &crew).await, named(&[("cy", OWNER), ("al", MEMBER)]));
    // A member leaving is no hand-over.
    assert_eq!(remove(&b, &crew, "al", "al").await, Removed::Removed { new_owner: None, deleted: false });
    assert_eq!(members(&b, &crew).await, named(&[("cy", OWNER)]));
}

async fn the_last_member_leaving_deletes_the_room_and_its_history(b: Backend) {
    let gone = room("gone");
    assert_eq!(create(&b, &gone, "al").await, Created::Created);
    assert_eq!(add(&b, &gone, "al", "bo").await, Added::Added);
    append_new(&b, &gone, said("al", "one", None)).await;
    append_new(&b, &gone, said("bo", "two", None)).await;
    let minute = Duration::from_secs(60);
    b.presence.update("i1", &[(gone.clone(), "al".into())], &[], minute).await.expect("update");
    assert_eq!(all(&b, &gone).await.len(), 2);

    assert_eq!(remove(&b, &gone, "al", "al").await, Removed::Removed { new_owner: Some(sender("bo")), deleted: false });
    assert_eq!(all(&b, &gone).await.len(), 2, "the room lives on while it has a member");
    assert_eq!(remove(&b, &gone, "bo", "bo").await, Removed::Removed { new_owner: None, deleted: true });

    assert!(all(&b, &gone).await.is_empty(), "its history went with it");
    assert_eq!(b.history.last_id(&gone).await.expect("last_id"), MessageId::ZERO);
    assert_eq!(state(&b, &gone, "bo").await, RoomState::Missing);
    assert!(!b.history.room_exists(&gone).await.expect("room_exists"));
    assert_eq!(members(&b, &gone).await, None);
    assert!(b.presence.online(std::slice::from_ref(&gone)).await.expect("online")[0].is_empty(), "and its presence");
    assert!(private_rooms(&b, "al").await.is_empty() && private_rooms(&b, "bo").await.is_empty());

    // The name is free again, for any kind, and starts with nothing.
    assert_eq!(create(&b, &gone, "cy").await, Created::Created);
    assert!(all(&b, &gone).await.is_empty());
    assert_eq!(members(&b, &gone).await, named(&[("cy", OWNER)]));
    assert_eq!(state(&b, &gone, "al").await, RoomState::Private(None), "the old members are not in the new room");
    assert_eq!(remove(&b, &gone, "cy", "cy").await, Removed::Removed { new_owner: None, deleted: true });
    assert_eq!(b.history.open_room(&gone, sender("dee")).await.expect("open_room"), RoomOpened::Open);
    assert_eq!(state(&b, &gone, "dee").await, RoomState::Public);
}

async fn private_rooms_lists_a_users_memberships_in_the_order_they_joined(b: Backend) {
    assert!(private_rooms(&b, "al").await.is_empty());
    assert_eq!(create(&b, &room("zulu"), "al").await, Created::Created);
    next_millisecond(UnixMillis::now()).await;
    assert_eq!(create(&b, &room("alpha"), "bo").await, Created::Created);
    assert_eq!(add(&b, &room("alpha"), "bo", "al").await, Added::Added);
    next_millisecond(UnixMillis::now()).await;
    assert_eq!(create(&b, &room("mike"), "cy").await, Created::Created);
    assert_eq!(add(&b, &room("mike"), "cy", "al").await, Added::Added);
    let want = [("zulu", OWNER), ("alpha", MEMBER), ("mike", MEMBER)];
    assert_eq!(private_rooms(&b, "al").await, want.map(|(r, role)| (r.to_owned(), role)));
    assert_eq!(private_rooms(&b, "bo").await, [("alpha".to_owned(), OWNER)]);

    // Leaving drops one; a hand-over shows the new role.
    assert_eq!(remove(&b, &room("alpha"), "al", "al").await, Removed::Removed { new_owner: None, deleted: false });
    assert_eq!(
        remove(&b, &room("mike"), "cy", "cy").await,
        Removed::Removed { new_owner: Some(sender("al")), deleted: false }
    );
    let want = [("zulu", OWNER), ("mike", OWNER)];
    assert_eq!(private_rooms(&b, "al").await, want.map(|(r, role)| (r.to_owned(), role)));
    assert!(private_rooms(&b, "cy").await.is_empty());
}

async fn the_bounds_refuse_and_a_refusal_writes_nothing(b: Backend) {
    // MAX_ROOM_MEMBERS=3, MAX_PRIVATE_ROOMS_PER_USER=2.
    let full = room("full");
    assert_eq!(create(&b, &full, "al").await, Created::Created);
    assert_eq!(add(&b, &full, "al", "bo").await, Added::Added);
    assert_eq!(add(&b, &full, "al", "cy").await, Added::Added);
    assert_eq!(add(&b, &full, "al", "dee").await, Added::RoomFull);
    assert_eq!(add(&b, &full, "al", "bo").await, Added::AlreadyMember, "a member is not refused");
    assert_eq!(members(&b, &full).await.expect("members").len(), 3);
    assert_eq!(state(&b, &full, "dee").await, RoomState::Private(None));
    assert!(private_rooms(&b, "dee").await.is_empty());

    // The second room is al's last.
    assert_eq!(create(&b, &room("second"), "al").await, Created::Created);
    let charged = counted(&b, NewRooms::counter(sender("al"))).await;
    assert_eq!(create(&b, &room("third"), "al").await, Created::TooManyRooms);
    assert_eq!(counted(&b, NewRooms::counter(sender("al"))).await, charged, "a refusal is not charged");
    assert_eq!(state(&b, &room("third"), "al").await, RoomState::Missing, "nothing made");
    assert_eq!(create(&b, &room("elsewhere"), "eve").await, Created::Created);
    assert_eq!(add(&b, &room("elsewhere"), "eve", "al").await, Added::TooManyRooms);
    assert_eq!(add(&b, &room("elsewhere"), "bo", "al").await, Added::NotFound, "the adder must be a member first");
    assert_eq!(state(&b, &room("elsewhere"), "al").await, RoomState::Private(None));
    assert_eq!(members(&b, &room("elsewhere")).await, named(&[("eve", OWNER)]));
    assert_eq!(private_rooms(&b, "al").await.len(), 2);

    // Leaving makes room: in the room, and in the user's count.
    assert_eq!(remove(&b, &full, "cy", "cy").await, Removed::Removed { new_owner: None, deleted: false });
    assert_eq!(add(&b, &full, "al", "dee").await, Added::Added);
    assert_eq!(remove(&b, &room("second"), "al", "al").await, Removed::Removed { new_owner: None, deleted: true });
    assert_eq!(add(&b, &room("elsewhere"), "eve", "al").await, Added::Added);
    assert_eq!(create(&b, &room("third"), "al").await, Created::TooManyRooms);
}

async fn creating_a_private_room_counts_on_the_new_room_quota_only_when_made(b: Backend) {
    // ROOMS_PER_USER_PER_HOUR=2, on the counter public rooms count on too.
    let al = sender("al");
    assert_eq!(create(&b, &room("p1"), "al").await, Created::Created);
    assert_eq!(create(&b, &room("p1"), "al").await, Created::NameTaken);
    assert_eq!(counted(&b, NewRooms::counter(al)).await, 1, "a name taken costs nothing");
    assert_eq!(b.history.open_room(&room("pub"), al).await.expect("open_room"), RoomOpened::Open);
    assert_eq!(counted(&b, NewRooms::counter(al)).await, 2);
    match create(&b, &room("p2"), "al").await {
        Created::QuotaRefused { retry_after } => {
            assert!(
                retry_after >= Duration::from_secs(1) && retry_after <= Duration::from_secs(3600),
                "{retry_after:?}"
            )
        }
        other => panic!("over the quota: {other:?}"),
    }
    assert_eq!(counted(&b, NewRooms::counter(al)).await, 2, "a refusal is not counted");
    assert_eq!(state(&b, &room("p2"), "al").await, RoomState::Missing, "nothing made");
    assert_eq!(private_rooms(&b, "al").await, [("p1".to_owned(), OWNER)]);
    // Adding members is no new room.
    assert_eq!(add(&b, &room("p1"), "al", "bo").await, Added::Added);
    assert_eq!(create(&b, &room("p2"), "bo").await, Created::Created, "others have their own quota");
}

async fn the_bounds_hold_under_concurrency(b: Backend) {
    // MAX_ROOM_MEMBERS=3, MAX_PRIVATE_ROOMS_PER_USER=2.
    const RACERS: usize = 6;
    // One user added to many rooms at once: the bound's worth land.
    for n in 0..RACERS {
        assert_eq!(create(&b, &room(&format!("r{n}")), &format!("owner{n}")).await, Created::Created);
    }
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|n| {
            let (b, start) = (b.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                add(&b, &room(&format!("r{n}")), &format!("owner{n}"), "zed").await
            })
        })
        .collect();
    let mut added = 0;
    for racer in racers {
        match within("an add", racer).await.expect("racer") {
            Added::Added => added += 1,
            Added::TooManyRooms => {}
            other => panic!("only the bound refuses: {other:?}"),
        }
    }
    assert_eq!(added, 2, "as many as the bound");
    assert_eq!(private_rooms(&b, "zed").await.len(), 2);

    // Many users added to one room at once: the room's worth land.
    let crowd = room("crowd");
    assert_eq!(create(&b, &crowd, "al").await, Created::Created);
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|n| {
            let (b, start, crowd) = (b.clone(), start.clone(), crowd.clone());
            tokio::spawn(async move {
                start.wait().await;
                (n, add(&b, &crowd, "al", &format!("guest{n}")).await)
            })
        })
        .collect();
    let mut guests = Vec::new();
    for racer in racers {
        match within("an add", racer).await.expect("racer") {
            (n, Added::Added) => guests.push(n),
            (_, Added::RoomFull) => {}
            other => panic!("only the room's bound refuses: {other:?}"),
        }
    }
    assert_eq!(guests.len(), 2, "the owner and two more");
    assert_eq!(members(&b, &crowd).await.expect("members").len(), 3);
    for n in 0..RACERS {
        let listed = private_rooms(&b, &format!("guest{n}")).await;
        assert_eq!(listed.len(), usize::from(guests.contains(&n)), "guest{n}: {listed:?}");
    }
}

async fn an_add_racing_a_removal_never_lets_a_user_past_their_bound(b: Backend) {
    // MAX_PRIVATE_ROOMS_PER_USER=1: zed, a member of `home` or not, may be
    // added to `other` exactly when they are not.
    let (home, other) = (room("home"), room("other"));
    assert_eq!(create(&b, &home, "al").await, Created::Created);
    assert_eq!(create(&b, &other, "bo").await, Created::Created);
    for round in 0..12 {
        if add(&b, &home, "al", "zed").await != Added::AlreadyMember {
            assert_eq!(state(&b, &home, "zed").await, RoomState::Private(Some(MEMBER)));
        }
        let start = Arc::new(Barrier::new(2));
        let removing = {
            let (b, start, home) = (b.clone(), start.clone(), home.clone());
            tokio::spawn(async move {
                start.wait().await;
                remove(&b, &home, "al", "zed").await
            })
        };
        let adding = {
            let (b, start, home) = (b.clone(), start.clone(), home.clone());
            tokio::spawn(async move {
                start.wait().await;
                add(&b, &home, "al", "zed").await
            })
        };
        within("a removal", removing).await.expect("remover");
        within("an add", adding).await.expect("adder");
        let member = state(&b, &home, "zed").await == RoomState::Private(Some(MEMBER));
        let listed = private_rooms(&b, "zed").await;
        assert_eq!(listed.len(), usize::from(member), "round {round}: listed {listed:?}, member {member}");
        let elsewhere = add(&b, &other, "bo", "zed").await;
        if member {
            assert_eq!(elsewhere, Added::TooManyRooms, "round {round}: a member of home is at the bound");
        } else {
            assert_eq!(elsewhere, Added::Added, "round {round}: not a member of home, zed has room");
            assert!(matches!(remove(&b, &other, "bo", "zed").await, Removed::Removed { .. }));
        }
    }
}

async fn states_answer_for_many_pairs_at_once(b: Backend) {
    let (al, bo) = (sender("al"), sender("bo"));
    let mut pairs = Vec::new();
    let mut want = Vec::new();
    // Enough rooms to land in every group (and so, on a cluster, every master).
    for n in 0..24 {
        let (private, public, missing) =
            (room(&format!("priv-{n}")), room(&format!("pub-{n}")), room(&format!("none-{n}")));
        assert_eq!(create(&b, &private, "al").await, Created::Created);
        if n % 2 == 0 {
            assert_eq!(add(&b, &private, "al", "bo").await, Added::Added);
        }
        b.history.open_room(&public, bo).await.expect("open_room");
        pairs.extend([(private.clone(), al), (private, bo), (public, al), (missing, bo)]);
        want.extend([
            RoomState::Private(Some(OWNER)),
            RoomState::Private((n % 2 == 0).then_some(MEMBER)),
            RoomState::Public,
            RoomState::Missing,
        ]);
    }
    pairs.push((RoomName::lobby(), al));
    want.push(RoomState::Public);
    assert_eq!(b.rooms.states(&pairs).await.expect("states"), want);
    for ((room, user), want) in pairs.iter().zip(&want) {
        assert_eq!(b.rooms.state(room, *user).await.expect("state"), *want, "{room}");
    }
    assert!(b.rooms.states(&[]).await.expect("states").is_empty());
}

async fn an_append_stores_nothing_where_the_sender_may_not_write(b: Backend) {
    // ROOM_TTL_SECS=1
    let inner = room("inner");
    assert_eq!(create(&b, &inner, "al").await, Created::Created);
    assert_eq!(b.history.append(&inner, said("bo", "let me in", None)).await.expect("append"), Appended::NotVisible);
    append_new(&b, &inner, said("al", "members only", None)).await;
    assert_eq!(add(&b, &inner, "al", "bo").await, Added::Added);
    append_new(&b, &inner, said("bo", "in", Some("c1"))).await;
    assert!(matches!(remove(&b, &inner, "al", "bo").await, Removed::Removed { .. }));
    assert_eq!(b.history.append(&inner, said("bo", "still here?", None)).await.expect("append"), Appended::NotVisible);
    assert_eq!(
        b.history.append(&inner, said("bo", "in", Some("c1"))).await.expect("append"),
        Appended::NotVisible,
        "not even a resend"
    );
    assert_eq!(who_said(&all(&b, &inner).await), [("al", "members only"), ("bo", "in")]);

    // A direct room is its two members'.
    let direct = RoomName::direct(sender("al"), sender("bo"));
    assert_eq!(b.history.append(&direct, said("cy", "hi both", None)).await.expect("append"), Appended::NotVisible);
    append_new(&b, &direct, said("bo", "hi al", None)).await;
    append_new(&b, &direct, said("al", "hi bo", None)).await;
    assert_eq!(who_said(&all(&b, &direct).await), [("bo", "hi al"), ("al", "hi bo")]);

    // A public room's name that has become a private room's.
    let was = room("was-public");
    append_new(&b, &was, said("bo", "public words", None)).await;
    let (backend, was_ref) = (&b, &was);
    eventually("the public room to expire", || async move {
        !backend.history.room_exists(was_ref).await.expect("room_exists")
    })
    .await;
    assert_eq!(create(&b, &was, "al").await, Created::Created);
    assert!(all(&b, &was).await.is_empty(), "a private room does not inherit a public room's history");
    assert_eq!(b.history.append(&was, said("bo", "anyone?", None)).await.expect("append"), Appended::NotVisible);
    append_new(&b, &was, said("al", "mine now", None)).await;
    assert_eq!(who_said(&all(&b, &was).await), [("al", "mine now")]);
}

async fn private_and_direct_rooms_never_expire(b: Backend) {
    // ROOM_TTL_SECS=1
    let (inner, public) = (room("inner"), room("fleeting"));
    let direct = RoomName::direct(sender("al"), sender("bo"));
    assert_eq!(create(&b, &inner, "al").await, Created::Created);
    append_new(&b, &inner, said("al", "kept", None)).await;
    append_new(&b, &direct, said("al", "kept too", None)).await;
    assert_eq!(b.history.open_room(&direct, sender("al")).await.expect("open_room"), RoomOpened::Open);
    b.history.open_room(&public, sender("al")).await.expect("open_room");
    append_new(&b, &public, said("al", "soon gone", None)).await;
    let (backend, public_ref) = (&b, &public);
    eventually("the public room to expire", || async move {
        !backend.history.room_exists(public_ref).await.expect("room_exists")
    })
    .await;
    assert!(all(&b, &public).await.is_empty());
    assert_eq!(who_said(&all(&b, &inner).await), [("al", "kept")]);
    assert_eq!(who_said(&all(&b, &direct).await), [("al", "kept too")]);
    assert!(b.history.room_exists(&inner).await.expect("room_exists"));
    assert!(b.history.room_exists(&direct).await.expect("room_exists"));
    assert_eq!(state(&b, &inner, "al").await, RoomState::Private(Some(OWNER)));
}

async fn a_first_message_into_a_direct_room_counts_on_the_senders_direct_quota(b: Backend) {
    // DIRECT_PER_USER_PER_HOUR=2, ROOMS_PER_USER_PER_HOUR=1.
    let (al, bo, cy) = (sender("al"), sender("bo"), sender("cy"));
    let direct_count = |who: UserId| counted(&b, RoomLimits::direct_counter(who));
    let (al_bo, al_cy, al_dee) =
        (RoomName::direct(al, bo), RoomName::direct(al, cy), RoomName::direct(al, sender("dee")));
    // Opening a direct room makes nothing, and costs nothing.
    assert_eq!(b.history.open_room(&al_bo, al).await.expect("open_room"), RoomOpened::Open);
    assert!(!b.history.room_exists(&al_bo).await.expect("room_exists"));
    assert!(b.history.user_rooms(al, 10).await.expect("user_rooms").is_empty());
    assert_eq!(direct_count(al).await, 0);

    append_new(&b, &al_bo, said("al", "hi bo", None)).await;
    append_new(&b, &al_bo, said("al", "again", None)).await;
    append_new(&b, &al_bo, said("bo", "replying is free", None)).await;
    assert_eq!(direct_count(al).await, 1);
    assert_eq!(direct_count(bo).await, 0);
    append_new(&b, &al_cy, said("al", "hi cy", None)).await;
    assert_eq!(b.history.append(&al_dee, said("al", "hi dee", None)).await.expect("append"), Appended::NewRoomRefused);
    assert!(all(&b, &al_dee).await.is_empty(), "nothing stored");
    assert!(!b.history.room_exists(&al_dee).await.expect("room_exists"));
    assert_eq!(direct_count(al).await, 3, "a refused attempt counts too, as for rooms");
    assert_eq!(counted(&b, NewRooms::counter(al)).await, 0, "not on the new-room quota");
    // The other side may start it, on their own quota.
    append_new(&b, &al_dee, said("dee", "hi al", None)).await;
    append_new(&b, &al_dee, said("al", "hi dee", None)).await;
    // And a new public room still costs a new room, not a conversation.
    assert_eq!(b.history.open_room(&room("plaza"), al).await.expect("open_room"), RoomOpened::Open);
    assert_eq!(direct_count(al).await, 3);
}

async fn direct_lists_hold_each_conversation_once_most_recent_first(b: Backend) {
    let (al, bo, cy) = (user("al"), user("bo"), user("cy"));
    let (al_bo, al_cy) = (RoomName::direct(al.id, bo.id), RoomName::direct(al.id, cy.id));
    let at = |ms: i64| UnixMillis::from_millis(1_700_000_000_000 + ms);
    let listed = |who: UserId, limit: usize| {
        let b = b.clone();
        async move { b.rooms.direct_rooms(who, limit).await.expect("direct_rooms") }
    };
    assert!(listed(al.id, 10).await.is_empty());
    b.rooms.note_direct(&al_bo, &al, &bo, at(1)).await.expect("note_direct");
    b.rooms.note_direct(&al_cy, &cy, &al, at(2)).await.expect("note_direct");
    assert_eq!(listed(al.id, 10).await, [(al_cy.clone(), "cy".to_owned()), (al_bo.clone(), "bo".to_owned())]);
    assert_eq!(listed(bo.id, 10).await, [(al_bo.clone(), "al".to_owned())], "each side sees the other's name");
    assert_eq!(listed(cy.id, 10).await, [(al_cy.clone(), "al".to_owned())]);

    // A later message moves a conversation up; an earlier one (late news) does not.
    b.rooms.note_direct(&al_bo, &bo, &al, at(3)).await.expect("note_direct");
    assert_eq!(listed(al.id, 10).await, [(al_bo.clone(), "bo".to_owned()), (al_cy.clone(), "cy".to_owned())]);
    b.rooms.note_direct(&al_cy, &al, &cy, at(0)).await.expect("note_direct");
    assert_eq!(
        listed(al.id, 10).await,
        [(al_bo.clone(), "bo".to_owned()), (al_cy.clone(), "cy".to_owned())],
        "idempotent"
    );
    assert_eq!(listed(al.id, 1).await, [(al_bo.clone(), "bo".to_owned())]);
    assert!(listed(al.id, 0).await.is_empty());
    assert!(b.rooms.note_direct(&al_bo, &al, &cy, at(4)).await.is_err(), "a room that is not the pair's");
    assert_eq!(listed(cy.id, 10).await, [(al_cy, "al".to_owned())], "and nothing written by it");
}

// ------------------------------------------------------------ accounts --

/// Starts `racers` calls of `call` (given each racer's number), releases
/// them at once, and returns what each returned, in racer order.
async fn race<T, Fut>(racers: usize, what: &str, call: impl Fn(usize) -> Fut) -> Vec<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let start = Arc::new(Barrier::new(racers));
    let handles: Vec<_> = (0..racers)
        .map(|n| {
            let (start, call) = (start.clone(), call(n));
            tokio::spawn(async move {
                start.wait().await;
                call.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(racers);
    for handle in handles {
        out.push(within(what, handle).await.expect("racer"));
    }
    out
}

/// A user created in the store, with a hash like argon2's (`/` and `+`
/// included: a script that rewrites the record must keep them).
async fn registered(b: &Backend, name: &str) -> (User, String) {
    let user = User { id: UserId::new_v4(), name: name.into() };
    let hash = format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA/+{name}$aGFzaA+/");
    assert!(b.users.create(&user, &hash).await.expect("create"), "{name} is free");
    (user, hash)
}

async fn stored(b: &Backend, name: &str) -> (User, String, bool) {
    let found = b.users.find(name).await.expect("find").expect("the user is there");
    (found.user, found.password_hash, found.disabled)
}

async fn a_password_change_keeps_the_account_and_its_disabled_flag(b: Backend) {
    let (al, hash) = registered(&b, "Alice").await;
    let (bo, bo_hash) = registered(&b, "bob").await;
    assert_eq!(stored(&b, "alice").await, (al.clone(), hash.clone(), false), "a new account is enabled");

    assert_eq!(b.users.set_disabled("ALICE", true).await.expect("set_disabled"), Some(al.clone()), "by any case");
    assert_eq!(stored(&b, "alice").await, (al.clone(), hash.clone(), true));
    assert_eq!(b.users.set_disabled("alice", true).await.expect("set_disabled"), Some(al.clone()), "again: no error");

    let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3/+c2FsdA$bmV3aGFzaA/+";
    assert!(b.users.set_password(&al, new_hash).await.expect("set_password"));
    assert_eq!(stored(&b, "alice").await, (al.clone(), new_hash.to_owned(), true), "still disabled");
    assert_eq!(b.users.set_disabled("alice", false).await.expect("set_disabled"), Some(al.clone()));
    assert_eq!(stored(&b, "Alice").await, (al.clone(), new_hash.to_owned(), false), "the new hash kept");

    // Only the user whose id the record holds.
    let impostor = User { id: UserId::new_v4(), name: "alice".into() };
    assert!(!b.users.set_password(&impostor, "h").await.expect("set_password"), "another id");
    let nobody = User { id: UserId::new_v4(), name: "nobody".into() };
    assert!(!b.users.set_password(&nobody, "h").await.expect("set_password"), "no such user");
    assert_eq!(b.users.set_disabled("nobody", true).await.expect("set_disabled"), None);
    assert!(b.users.find("nobody").await.expect("find").is_none(), "nothing made by either");
    assert_eq!(stored(&b, "alice").await, (al, new_hash.to_owned(), false));
    assert_eq!(stored(&b, "bob").await, (bo, bo_hash, false), "other users are their own");
}

fn descriptor(kind: SessionKind, created_at: UnixMillis, client: &str) -> SessionDescriptor {
    SessionDescriptor {
        kind,
        created_at,
        last_active_at: created_at,
        client: client.into(),
        address: "192.0.2.1".into(),
        long: false,
        sid: None,
    }
}

/// A token session in the store, as `POST /api/token` makes one.
async fn create_token_session(b: &Backend, user: &User, sid: &str) -> Id {
    let now = UnixMillis::now();
    let record = TokenRecord {
        user: user.clone(),
        sid: sid.into(),
        signed_in_at: now,
        refresh: RefreshState { current: "h".into(), spent: vec![], rotated_at: now },
    };
    let id = Id::default();
    let later = now + Duration::from_secs(300);
    b.tokens.create_token_session(id, &record, later, later).await.expect("create_token_session");
    id
}

/// The user's sessions as (id, client), in the order listed.
async fn listed_sessions(b: &Backend, user: UserId, limit: usize) -> Vec<(Id, Option<String>)> {
    let listed = b.devices.list(user, limit).await.expect("list");
    listed.into_iter().map(|s| (s.id, s.descriptor.map(|d| d.client))).collect()
}

fn hour_from_now() -> UnixMillis {
    UnixMillis::now() + Duration::from_secs(3600)
}

async fn sessions_are_listed_with_what_they_say_newest_first(b: Backend) {
    let (al, bo) = (user("al"), user("bo"));
    let t0 = UnixMillis::now() - Duration::from_secs(600);
    let (old, browser, undescribed, token, theirs) = (
        create_session(&b).await,
        create_session(&b).await,
        create_session(&b).await,
        create_token_session(&b, &al, "sid-1").await,
        create_session(&b).await,
    );
    for id in [old, browser, undescribed, token] {
        b.session_index.add(al.id, id, hour_from_now()).await.expect("add");
    }
    b.session_index.add(bo.id, theirs, hour_from_now()).await.expect("add");
    let at = |s: u64| t0 + Duration::from_secs(s);
    let token_descriptor = SessionDescriptor {
        sid: Some("sid-1".into()),
        long: true,
        ..descriptor(SessionKind::Token, at(20), "palaver-cli/0.3")
    };
    let described = [
        (old, descriptor(SessionKind::Browser, at(0), "Firefox on Windows")),
        (browser, descriptor(SessionKind::Browser, at(10), "Chrome on Linux")),
        (token, token_descriptor.clone()),
    ];
    for (id, d) in &described {
        b.devices.put(al.id, *id, d, hour_from_now()).await.expect("put");
    }
    b.devices
        .put(bo.id, theirs, &descriptor(SessionKind::Browser, at(30), "Safari on iOS"), hour_from_now())
        .await
        .expect("put");

    let listed = b.devices.list(al.id, 100).await.expect("list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [token, browser, old, undescribed],
        "newest first, the undescribed session (begun before descriptors) last"
    );
    assert_eq!(listed[0].descriptor.as_ref(), Some(&token_descriptor), "a descriptor round-trips exactly");
    assert_eq!(listed[1].descriptor.as_ref(), Some(&described[1].1));
    assert_eq!(listed[3].descriptor, None, "listed, with nothing to say");
    assert_eq!(listed_sessions(&b, bo.id, 100).await, [(theirs, Some("Safari on iOS".into()))], "their own only");
    assert!(listed_sessions(&b, UserId::new_v4(), 100).await.is_empty(), "an unknown user has none");
    assert!(listed_sessions(&b, al.id, 0).await.is_empty());
}

async fn a_listing_drops_sessions_that_are_gone_and_what_they_said(b: Backend) {
    let al = user("al");
    let (kept, deleted, ended_token, never) = (
        create_session(&b).await,
        create_session(&b).await,
        create_token_session(&b, &al, "sid-2").await,
        Id::default(),
    );
    let t0 = UnixMillis::now();
    for (n, id) in [kept, deleted, ended_token, never].into_iter().enumerate() {
        b.session_index.add(al.id, id, hour_from_now()).await.expect("add");
        let d = descriptor(SessionKind::Browser, t0 + Duration::from_secs(n as u64), &format!("client {n}"));
        b.devices.put(al.id, id, &d, hour_from_now()).await.expect("put");
    }
    b.sessions.delete(&deleted).await.expect("delete");
    b.sessions.delete(&ended_token).await.expect("delete"); // how a token session ends

    assert_eq!(listed_sessions(&b, al.id, 100).await, [(kept, Some("client 0".into()))]);
    // Their descriptors and index entries went with them.
    for gone in [deleted, ended_token, never] {
        assert!(!b.devices.moved(al.id, gone, Id::default()).await.expect("moved"), "no descriptor left");
    }
    assert_eq!(b.session_index.take_all(al.id).await.expect("take_all"), [kept], "only the live one is indexed");
}

async fn a_listing_is_bounded_to_the_sessions_that_end_last(b: Backend) {
    let al = user("al");
    let mut sessions = Vec::new();
    for n in 0..5u64 {
        let id = create_session(&b).await;
        b.session_index.add(al.id, id, hour_from_now() + Duration::from_secs(n)).await.expect("add");
        sessions.push(id);
    }
    // A session ended already (past its absolute lifetime) is not counted.
    let ended = create_session(&b).await;
    b.session_index.add(al.id, ended, UnixMillis::now() - Duration::from_secs(1)).await.expect("add");
    let listed: BTreeSet<i128> = listed_sessions(&b, al.id, 3).await.into_iter().map(|(id, _)| id.0).collect();
    assert_eq!(listed, sessions[2..].iter().map(|id| id.0).collect(), "the three that end last");
    assert_eq!(listed_sessions(&b, al.id, 100).await.len(), 5);
}

async fn last_active_moves_forward_once_per_granularity_even_under_concurrent_touches(b: Backend) {
    let al = user("al");
    let session = create_session(&b).await;
    b.session_index.add(al.id, session, hour_from_now()).await.expect("add");
    let t0 = UnixMillis::now() - Duration::from_secs(3600);
    b.devices
        .put(al.id, session, &descriptor(SessionKind::Browser, t0, "Chrome on Linux"), hour_from_now())
        .await
        .expect("put");
    let minute = Duration::from_secs(60);
    let last_active = || async {
        let listed = b.devices.list(al.id, 10).await.expect("list");
        listed[0].descriptor.as_ref().expect("described").last_active_at
    };
    let (toucher, who) = (b.clone(), al.id);
    let touch = move |at: UnixMillis| {
        let b = toucher.clone();
        async move { b.devices.touch(who, session, at, minute).await.expect("touch") }
    };

    assert!(!touch(t0 + Duration::from_secs(60)).await, "not older than the granularity: nothing written");
    assert_eq!(last_active().await, t0);
    assert!(touch(t0 + Duration::from_secs(61)).await);
    assert_eq!(last_active().await, t0 + Duration::from_secs(61));
    assert!(!touch(t0 + Duration::from_secs(120)).await);
    assert!(!touch(t0).await, "never back");
    assert_eq!(last_active().await, t0 + Duration::from_secs(61));

    const RACERS: usize = 16;
    let at = t0 + Duration::from_secs(600);
    // Within one granularity of each other: only the first writes.
    let written = race(RACERS, "a touch", |n| touch(at + Duration::from_millis(n as u64))).await;
    assert_eq!(written.iter().filter(|w| **w).count(), 1, "one write per granularity, however many touch at once");
    let now = last_active().await;
    assert!(now >= at && now < at + Duration::from_millis(RACERS as u64), "{now:?}");
    let listed = b.devices.list(al.id, 10).await.expect("list");
    let d = listed[0].descriptor.as_ref().expect("described");
    assert_eq!((d.created_at, d.client.as_str()), (t0, "Chrome on Linux"), "the rest untouched");

    // A session with no descriptor gets none from a touch.
    let undescribed = create_session(&b).await;
    b.session_index.add(al.id, undescribed, hour_from_now()).await.expect("add");
    assert!(!b.devices.touch(al.id, undescribed, UnixMillis::now(), minute).await.expect("touch"));
    let listed = listed_sessions(&b, al.id, 10).await;
    assert!(listed.contains(&(undescribed, None)), "{listed:?}");
}

async fn a_descriptor_follows_its_session_to_a_new_id_and_goes_when_removed(b: Backend) {
    let al = user("al");
    let (old, new) = (create_session(&b).await, create_session(&b).await);
    b.session_index.add(al.id, old, hour_from_now()).await.expect("add");
    let said = descriptor(SessionKind::Browser, UnixMillis::now(), "Chrome on Linux");
    b.devices.put(al.id, old, &said, hour_from_now()).await.expect("put");

    // The id cycles as a password change cycles it: the new id indexed, the old one gone.
    b.session_index.add(al.id, new, hour_from_now()).await.expect("add");
    assert!(b.devices.moved(al.id, old, new).await.expect("moved"));
    b.sessions.delete(&old).await.expect("delete");
    b.session_index.remove(al.id, old).await.expect("remove");
    let listed = b.devices.list(al.id, 10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].descriptor.as_ref()), (new, Some(&said)), "unchanged, under the new id");
    assert!(!b.devices.moved(al.id, old, new).await.expect("moved"), "nothing left under the old id");
    assert!(b.devices.moved(al.id, new, new).await.expect("moved"), "to itself: still there");

    b.devices.remove(al.id, new).await.expect("remove");
    b.devices.remove(al.id, Id::default()).await.expect("removing what is not there is no error");
    assert_eq!(listed_sessions(&b, al.id, 10).await, [(new, None)], "still a session, saying nothing");
}

async fn a_new_descriptor_drops_those_of_sessions_no_longer_indexed(b: Backend) {
    let al = user("al");
    let (first, second, third) = (create_session(&b).await, create_session(&b).await, create_session(&b).await);
    let now = UnixMillis::now();
    for (id, client) in [(first, "one"), (second, "two")] {
        b.session_index.add(al.id, id, hour_from_now()).await.expect("add");
        b.devices.put(al.id, id, &descriptor(SessionKind::Browser, now, client), hour_from_now()).await.expect("put");
    }
    // Logged out everywhere: the index is emptied, the descriptors stay behind.
    assert_eq!(b.session_index.take_all(al.id).await.expect("take_all").len(), 2);
    b.session_index.add(al.id, third, hour_from_now()).await.expect("add");
    b.devices.put(al.id, third, &descriptor(SessionKind::Browser, now, "three"), hour_from_now()).await.expect("put");
    // Were they there, indexing the old sessions again would show them.
    for id in [first, second] {
        b.session_index.add(al.id, id, hour_from_now()).await.expect("add");
    }
    let listed: BTreeSet<(i128, Option<String>)> =
        listed_sessions(&b, al.id, 10).await.into_iter().map(|(id, client)| (id.0, client)).collect();
    let expected: BTreeSet<(i128, Option<String>)> =
        [(first.0, None), (second.0, None), (third.0, Some("three".into()))].into_iter().collect();
    assert_eq!(listed, expected);
}

fn signed_in(at: UnixMillis, client: &str) -> SecurityEvent {
    SecurityEvent { at, what: SecurityEventKind::SignedIn { client: client.into(), address: "192.0.2.1".into() } }
}

const KEEP: Duration = Duration::from_secs(3600);

async fn the_security_log_keeps_the_newest_fifty_newest_first(b: Backend) {
    let (al, bo) = (sender("al"), sender("bo"));
    let t0 = UnixMillis::now();
    for n in 0..60u64 {
        b.security_log
            .record(al, &signed_in(t0 + Duration::from_secs(n), &format!("c{n}")), KEEP)
            .await
            .expect("record");
    }
    let ended = SecurityEvent {
        at: t0 + Duration::from_secs(60),
        what: SecurityEventKind::SessionEnded { by: EndedBy::Operator, client: "c3".into(), address: "::1".into() },
    };
    b.security_log.record(al, &ended, KEEP).await.expect("record");
    let events = b.security_log.recent(al, 100).await.expect("recent");
    assert_eq!(events.len(), SECURITY_EVENTS_KEPT);
    assert_eq!(events[0], ended, "an entry round-trips exactly");
    assert_eq!(events[1], signed_in(t0 + Duration::from_secs(59), "c59"), "newest first");
    assert_eq!(events[49], signed_in(t0 + Duration::from_secs(11), "c11"), "the oldest dropped off");
    assert_eq!(b.security_log.recent(al, 3).await.expect("recent"), events[..3]);
    assert!(b.security_log.recent(bo, 100).await.expect("recent").is_empty(), "their own");
}

/// The log as (kind, address, count) for failures, (kind, client) otherwise.
async fn failures(b: &Backend, who: UserId) -> Vec<(String, u32)> {
    let events = b.security_log.recent(who, 100).await.expect("recent");
    events
        .into_iter()
        .map(|e| match e.what {
            SecurityEventKind::SignInFailed { address, count, .. } => (format!("failed from {address}"), count),
            SecurityEventKind::SignedIn { client, .. } => (format!("signed in on {client}"), 0),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

async fn failed_sign_ins_from_one_address_are_one_entry_per_burst_even_concurrently(b: Backend) {
    let al = sender("al");
    let burst = Duration::from_secs(900);
    let t0 = UnixMillis::now();
    const RACERS: usize = 16;
    let counts = race(RACERS, "a failure", |_| {
        let b = b.clone();
        async move { b.security_log.sign_in_failed(al, "192.0.2.9", t0, burst, KEEP).await.expect("sign_in_failed") }
    })
    .await;
    assert_eq!(sorted(counts), (1..=RACERS as u32).collect::<Vec<_>>(), "each failure counted once");
    assert_eq!(failures(&b, al).await, [("failed from 192.0.2.9".into(), RACERS as u32)], "one entry");

    let fail = |address: &'static str, at: UnixMillis| {
        let b = b.clone();
        async move { b.security_log.sign_in_failed(al, address, at, burst, KEEP).await.expect("sign_in_failed") }
    };
    // Later in the burst: counted on it, and its `at` is the latest.
    let later = t0 + Duration::from_secs(899);
    assert_eq!(fail("192.0.2.9", later).await, 17);
    let head = b.security_log.recent(al, 1).await.expect("recent").remove(0);
    assert_eq!(
        head,
        SecurityEvent {
            at: later,
            what: SecurityEventKind::SignInFailed { address: "192.0.2.9".into(), count: 17, since: t0 }
        }
    );
    // The burst is counted from its first failure: past that, a new entry.
    assert_eq!(fail("192.0.2.9", t0 + burst).await, 1);
    // Another address, a new entry; and back, a new one again (it is no longer the newest).
    assert_eq!(fail("198.51.100.1", t0 + burst).await, 1);
    assert_eq!(fail("192.0.2.9", t0 + burst).await, 1);
    // Anything else in between ends a burst too.
    b.security_log.record(al, &signed_in(t0 + burst, "Chrome on Linux"), KEEP).await.expect("record");
    assert_eq!(fail("192.0.2.9", t0 + burst).await, 1);
    assert_eq!(fail("192.0.2.9", t0 + burst).await, 2);
    assert_eq!(
        failures(&b, al).await,
        [
            ("failed from 192.0.2.9".into(), 2),
            ("signed in on Chrome on Linux".into(), 0),
            ("failed from 192.0.2.9".into(), 1),
            ("failed from 198.51.100.1".into(), 1),
            ("failed from 192.0.2.9".into(), 1),
            ("failed from 192.0.2.9".into(), 17),
        ]
    );
}

async fn the_security_log_goes_after_its_idle_time_and_each_write_renews_it(b: Backend) {
    let al = sender("al");
    let keep = Duration::from_millis(1500);
    let first = UnixMillis::now();
    b.security_log.record(al, &signed_in(first, "one"), keep).await.expect("record");
    eventually(
        "some of the idle time to pass",
        || async move { UnixMillis::now() > first + Duration::from_millis(800) },
    )
    .await;
    let second = UnixMillis::now();
    b.security_log.sign_in_failed(al, "192.0.2.9", second, keep, keep).await.expect("sign_in_failed");
    eventually("the first write's idle time to pass", || async move {
        UnixMillis::now() > first + Duration::from_millis(1600)
    })
    .await;
    assert_eq!(b.security_log.recent(al, 10).await.expect("recent").len(), 2, "renewed by the second write");
    eventually("the log to go", || async { b.security_log.recent(al, 10).await.expect("recent").is_empty() }).await;
    b.security_log.record(al, &signed_in(UnixMillis::now(), "fresh"), keep).await.expect("record");
    assert_eq!(b.security_log.recent(al, 10).await.expect("recent").len(), 1, "a new log starts empty");
}

fn invite(uses: u32, expires_at: UnixMillis, by: Option<UserId>) -> Invite {
    Invite { uses, uses_left: uses, created_at: UnixMillis::now(), expires_at, by }
}

async fn an_invite_is_spent_exactly_as_many_times_as_it_has_uses_even_concurrently(b: Backend) {
    let made = invite(3, hour_from_now(), Some(sender("al")));
    assert!(b.invites.create("code-hash-1", &made).await.expect("create"));
    assert!(!b.invites.create("code-hash-1", &invite(9, hour_from_now(), None)).await.expect("create"), "taken");

    const RACERS: usize = 16;
    let spends = race(RACERS, "a spend", |_| {
        let b = b.clone();
        async move { b.invites.spend("code-hash-1", UnixMillis::now()).await.expect("spend") }
    })
    .await;
    let mut left = Vec::new();
    let mut used_up = 0;
    for spend in spends {
        match spend {
            Spend::Spent(now) => {
                assert_eq!(Invite { uses_left: made.uses_left, ..now.clone() }, made, "the invite as made");
                left.push(now.uses_left);
            }
            Spend::UsedUp => used_up += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sorted(left), [0, 1, 2], "exactly its uses, each once");
    assert_eq!(used_up, RACERS - 3);

    // A sign-up that failed gives its use back, never beyond the uses made.
    assert!(b.invites.give_back("code-hash-1").await.expect("give_back"));
    assert!(
        matches!(b.invites.spend("code-hash-1", UnixMillis::now()).await.expect("spend"), Spend::Spent(i) if i.uses_left == 0)
    );
    assert_eq!(b.invites.spend("code-hash-1", UnixMillis::now()).await.expect("spend"), Spend::UsedUp);
    for _ in 0..3 {
        assert!(b.invites.give_back("code-hash-1").await.expect("give_back"));
    }
    assert!(!b.invites.give_back("code-hash-1").await.expect("give_back"), "every use is back");

    assert_eq!(b.invites.spend("never-made", UnixMillis::now()).await.expect("spend"), Spend::Unknown);
    assert!(!b.invites.give_back("never-made").await.expect("give_back"));
}

async fn an_expired_invite_says_so_and_a_spend_just_before_its_expiry_counts(b: Backend) {
    let expires_at = hour_from_now();
    let operator = invite(2, expires_at, None);
    assert!(b.invites.create("code-hash-2", &operator).await.expect("create"));
    let spent = b.invites.spend("code-hash-2", expires_at - Duration::from_millis(1)).await.expect("spend");
    assert_eq!(spent, Spend::Spent(Invite { uses_left: 1, ..operator }), "by an operator: by nobody");
    assert_eq!(b.invites.spend("code-hash-2", expires_at).await.expect("spend"), Spend::Expired);

    let past = UnixMillis::now() - Duration::from_secs(1);
    assert!(b.invites.create("code-hash-3", &invite(1, past, None)).await.expect("create"));
    assert_eq!(b.invites.spend("code-hash-3", UnixMillis::now()).await.expect("spend"), Spend::Expired, "remembered");
}

// ----------------------------------------------------------------- bus --

fn some_events() -> [Event; 6] {
    [
        Event::Logout {
            user_id: UserId::new_v4(),
            sessions: vec![Id::default().to_string()],
            everywhere: false,
            reason: EndReason::Revoked,
            at: Some(palaver::clock::UnixMillis::now()),
        },
        Event::Presence { room: "lobby".into(), instance: "i1".into(), joined: vec!["al".into()], left: vec![] },
        Event::Logout {
            user_id: UserId::new_v4(),
            sessions: vec![],
            everywhere: true,
            reason: EndReason::LoggedOut,
            at: None,
        },
        Event::Access {
            room: "team".into(),
            instance: "i1".into(),
            user: Some(UserId::new_v4()),
            change: AccessChange::Removed,
            label: None,
            since: None,
            at: Some(palaver::clock::UnixMillis::now()),
        },
        Event::Access {
            room: RoomName::direct(UserId::new_v4(), UserId::new_v4()).to_string(),
            instance: "i2".into(),
            user: None,
            change: AccessChange::Deleted,
            label: None,
            since: None,
            at: None,
        },
        // A direct conversation started: the other hears of it under its label.
        Event::Access {
            room: RoomName::direct(UserId::new_v4(), UserId::new_v4()).to_string(),
            instance: "i2".into(),
            user: Some(UserId::new_v4()),
            change: AccessChange::Added,
            label: Some("@al".into()),
            since: Some("1732579200123-4".into()),
            at: Some(palaver::clock::UnixMillis::now()),
        },
    ]
}

async fn published_events_reach_subscribers_as_published(b: Backend) {
    let (mut first, mut second) = (b.bus.subscribe(), b.bus.subscribe());
    let events = some_events();
    for event in &events {
        b.bus.publish(event).await.expect("publish");
    }
    for event in &events {
        assert_eq!(&next_event(&mut first).await, event);
        assert_eq!(&next_event(&mut second).await, event);
    }
}

// -------------------------------------------------------------- health --

async fn health_answers(b: Backend) {
    b.health.ping().await.expect("ping");
}

// ---------------------------------------------------------- redis only --

mod redis_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_sharing_a_redis_hear_each_others_events() {
        hear_each_other(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_sharing_a_cluster_hear_each_others_events() {
        hear_each_other(&RedisCluster::start()).await
    }

    async fn hear_each_other(server: &dyn TestRedis) {
        let one = redis(server, "instance-1", &[]).await;
        let two = redis(server, "instance-2", &[]).await;
        let (mut hears_one, mut hears_two) = (one.bus.subscribe(), two.bus.subscribe());
        let [a, rest @ ..] = some_events();

        one.bus.publish(&a).await.expect("publish");
        assert_eq!(next_event(&mut hears_two).await, a, "the other instance hears it");
        assert_eq!(next_event(&mut hears_one).await, a, "and so does the publisher");
        for event in &rest {
            two.bus.publish(event).await.expect("publish");
        }
        for hears in [&mut hears_one, &mut hears_two] {
            for event in &rest {
                assert_eq!(&next_event(hears).await, event);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_and_direct_rooms_carry_no_ttl_on_a_redis() {
        no_ttl_for_lasting_rooms(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_and_direct_rooms_carry_no_ttl_on_a_cluster() {
        no_ttl_for_lasting_rooms(&RedisCluster::start()).await
    }

    /// `PTTL`: -1 no expiry, -2 no key, else the milliseconds left.
    fn pttl(server: &dyn TestRedis, key: &str) -> i64 {
        let reply = server.command(&["PTTL", key]).expect("PTTL");
        reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("PTTL {key}: {reply:?}"))
    }

    async fn no_ttl_for_lasting_rooms(server: &dyn TestRedis) {
        use palaver::backend::redis::keys;
        let b = redis(server, "instance-1", &[]).await;
        let (inner, public) = (room("inner"), room("public"));
        let direct = RoomName::direct(sender("al"), sender("bo"));
        assert_eq!(create(&b, &inner, "al").await, Created::Created);
        append_new(&b, &inner, said("al", "kept", Some("c1"))).await;
        assert_eq!(add(&b, &inner, "al", "bo").await, Added::Added);
        assert_eq!(b.history.open_room(&inner, sender("bo")).await.expect("open_room"), RoomOpened::Private);
        append_new(&b, &direct, said("al", "kept too", Some("c1"))).await;
        assert_eq!(b.history.open_room(&direct, sender("bo")).await.expect("open_room"), RoomOpened::Open);
        append_new(&b, &direct, said("bo", "and this", None)).await;
        b.history.open_room(&public, sender("al")).await.expect("open_room");
        append_new(&b, &public, said("al", "fleeting", None)).await;
        b.rooms.note_direct(&direct, &user("al"), &user("bo"), UnixMillis::now()).await.expect("note_direct");

        for key in [keys::messages(&inner), keys::meta(&inner), keys::members(&inner)] {
            assert_eq!(pttl(server, &key), -1, "{key} never expires");
        }
        assert_eq!(pttl(server, &keys::active(&inner)), -2, "a private room is no public room in use");
        for key in [keys::messages(&direct), keys::active(&direct)] {
            assert_eq!(pttl(server, &key), -1, "{key} never expires");
        }
        assert_eq!(pttl(server, &keys::meta(&direct)), -2, "a direct room has no meta");
        for who in ["al", "bo"] {
            for key in [
                keys::user_private(sender(who)),
                keys::user_private_seq(sender(who)),
                keys::user_direct(sender(who)),
                keys::user_direct_names(sender(who)),
            ] {
                assert_eq!(pttl(server, &key), -1, "{key} never expires");
            }
        }
        // A public room keeps its lifetime.
        for key in [keys::messages(&public), keys::active(&public)] {
            assert!(pttl(server, &key) > 0, "{key} expires");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_users_index_of_private_rooms_drops_stale_entries_on_a_redis() {
        stale_index_entries(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_users_index_of_private_rooms_drops_stale_entries_on_a_cluster() {
        stale_index_entries(&RedisCluster::start()).await
    }

    fn index_len(server: &dyn TestRedis, who: &str) -> usize {
        let key = palaver::backend::redis::keys::user_private(sender(who));
        let reply = server.command(&["ZCARD", &key]).expect("ZCARD");
        reply.trim().trim_start_matches(':').parse().expect("a count")
    }

    /// Entries as a crash between a room's step and the user's would leave
    /// them: for no room, for a public room, for a private room the user is
    /// not in, with a token above any the user's counter gave.
    fn plant_stale_entries(server: &dyn TestRedis, who: &str) {
        let key = palaver::backend::redis::keys::user_private(sender(who));
        for name in ["ghost", "plaza", "theirs"] {
            assert_eq!(server.command(&["ZADD", &key, "1000000", name]).as_deref(), Some(":1\r\n"), "{name}");
        }
    }

    async fn stale_index_entries(server: &dyn TestRedis) {
        let vars = [("MAX_PRIVATE_ROOMS_PER_USER", "2"), ("MAX_ROOM_MEMBERS", "2")];
        let b = redis(server, "instance-1", &vars).await;
        assert_eq!(create(&b, &room("real"), "al").await, Created::Created);
        b.history.open_room(&room("plaza"), sender("bo")).await.expect("open_room");
        assert_eq!(create(&b, &room("theirs"), "bo").await, Created::Created);
        plant_stale_entries(server, "al");
        assert_eq!(index_len(server, "al"), 4);

        // Read: only the memberships show, and the stale entries go.
        assert_eq!(private_rooms(&b, "al").await, [("real".to_owned(), OWNER)]);
        assert_eq!(index_len(server, "al"), 1);

        // At the bound because of stale entries: they go, and the user is let in.
        plant_stale_entries(server, "al");
        assert_eq!(create(&b, &room("second"), "al").await, Created::Created);
        assert_eq!(index_len(server, "al"), 2);
        assert_eq!(remove(&b, &room("second"), "al", "al").await, Removed::Removed { new_owner: None, deleted: true });
        assert_eq!(index_len(server, "al"), 1, "a removal drops its entry");

        // The dropped entry fenced `theirs` with its token: an add now
        // reserves above it, and lands.
        plant_stale_entries(server, "al");
        assert_eq!(add(&b, &room("theirs"), "bo", "al").await, Added::Added);
        assert_eq!(private_rooms(&b, "al").await, [("real".to_owned(), OWNER), ("theirs".to_owned(), MEMBER)]);
        assert_eq!(index_len(server, "al"), 2);

        // A refused add leaves nothing in the user's index.
        assert_eq!(add(&b, &room("theirs"), "bo", "cy").await, Added::RoomFull);
        assert_eq!(add(&b, &room("ghost"), "bo", "cy").await, Added::NotFound);
        assert_eq!(index_len(server, "cy"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_private_room_leaves_no_key_on_a_redis() {
        nothing_left_of_a_deleted_room(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_private_room_leaves_no_key_on_a_cluster() {
        nothing_left_of_a_deleted_room(&RedisCluster::start()).await
    }

    async fn nothing_left_of_a_deleted_room(server: &dyn TestRedis) {
        let b = redis(server, "instance-1", &[]).await;
        let gone = room("gone");
        assert_eq!(create(&b, &gone, "al").await, Created::Created);
        assert_eq!(add(&b, &gone, "al", "bo").await, Added::Added);
        append_new(&b, &gone, said("al", "soon gone", None)).await;
        b.presence.update("i1", &[(gone.clone(), "al".into())], &[], Duration::from_secs(60)).await.expect("update");
        assert!(matches!(remove(&b, &gone, "al", "al").await, Removed::Removed { deleted: false, .. }));
        let marker = ":gone:";
        assert!(server.all_keys().iter().any(|k| k.contains(marker)), "the room has keys while it lives");
        assert!(matches!(remove(&b, &gone, "bo", "bo").await, Removed::Removed { deleted: true, .. }));
        let left: Vec<String> = server.all_keys().into_iter().filter(|k| k.contains(marker)).collect();
        assert!(left.is_empty(), "nothing of the room is left: {left:?}");
        assert_eq!(index_len(server, "al") + index_len(server, "bo"), 0, "nor in its members' indexes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_record_written_before_accounts_could_be_disabled_reads_as_before_on_a_redis() {
        records_of_before(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_record_written_before_accounts_could_be_disabled_reads_as_before_on_a_cluster() {
        records_of_before(&RedisCluster::start()).await
    }

    /// A command's integer reply.
    fn integer(server: &dyn TestRedis, args: &[&str]) -> i64 {
        let reply = server.command(args).unwrap_or_else(|| panic!("{args:?}"));
        reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("{args:?}: {reply:?}"))
    }

    async fn records_of_before(server: &dyn TestRedis) {
        use palaver::backend::redis::keys;
        let b = redis(server, "instance-1", &[]).await;
        let carol = User { id: UserId::new_v4(), name: "Carol".into() };
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA/+$aGFzaA+/";
        let record = format!(r#"{{"id":"{}","name":"Carol","hash":"{hash}"}}"#, carol.id);
        assert_eq!(server.command(&["SET", &keys::user("carol"), &record]).as_deref(), Some("+OK\r\n"));

        assert_eq!(stored(&b, "CAROL").await, (carol.clone(), hash.to_owned(), false), "enabled, as it was");
        assert!(b.users.set_password(&carol, "$argon2id$new/+").await.expect("set_password"));
        assert_eq!(stored(&b, "carol").await, (carol.clone(), "$argon2id$new/+".to_owned(), false));
        assert_eq!(b.users.set_disabled("carol", true).await.expect("set_disabled"), Some(carol.clone()));
        assert_eq!(stored(&b, "carol").await, (carol.clone(), "$argon2id$new/+".to_owned(), true));
        assert_eq!(pttl(server, &keys::user("carol")), -1, "a user never expires");
        let taken = User { id: UserId::new_v4(), name: "carol".into() };
        assert!(!b.users.create(&taken, "h").await.expect("create"), "the name is still taken");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_account_keys_carry_their_lifetimes_on_a_redis() {
        account_key_lifetimes(&RedisServer::start()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_account_keys_carry_their_lifetimes_on_a_cluster() {
        account_key_lifetimes(&RedisCluster::start()).await
    }

    async fn account_key_lifetimes(server: &dyn TestRedis) {
        use palaver::backend::redis::keys;
        let b = redis(server, "instance-1", &[]).await;
        let al = user("al");

        // Descriptors: kept until the last of their sessions ends.
        let (sooner, later) = (hour_from_now(), hour_from_now() + Duration::from_secs(3600));
        let (one, two) = (create_session(&b).await, create_session(&b).await);
        let said = descriptor(SessionKind::Browser, UnixMillis::now(), "Chrome on Linux");
        for (id, ends) in [(one, later), (two, sooner)] {
            b.session_index.add(al.id, id, ends).await.expect("add");
            b.devices.put(al.id, id, &said, ends).await.expect("put");
        }
        let devices = keys::user_devices(al.id);
        assert_eq!(integer(server, &["PEXPIRETIME", &devices]), later.as_millis(), "the later end, not the last put");
        assert_eq!(integer(server, &["HLEN", &devices]), 2);

        // The security log: trimmed, and living `keep_for` after its last write.
        let keep = Duration::from_secs(60);
        for n in 0..60 {
            b.security_log.record(al.id, &signed_in(UnixMillis::now(), &format!("c{n}")), keep).await.expect("record");
        }
        let events = keys::user_events(al.id);
        assert_eq!(integer(server, &["LLEN", &events]), SECURITY_EVENTS_KEPT as i64);
        let left = pttl(server, &events);
        assert!(left > 0 && left <= keep.as_millis() as i64, "{left} ms left");
        b.security_log
            .sign_in_failed(al.id, "192.0.2.9", UnixMillis::now(), keep, keep * 2)
            .await
            .expect("sign_in_failed");
        assert!(pttl(server, &events) > keep.as_millis() as i64, "renewed by a failure too");
        assert_eq!(integer(server, &["LLEN", &events]), SECURITY_EVENTS_KEPT as i64, "still trimmed");

        // An invite: under its hash, remembered a while past its expiry.
        let expires_at = hour_from_now();
        assert!(b.invites.create("c0ffee", &invite(1, expires_at, None)).await.expect("create"));
        let forget_at = expires_at + palaver::backend::rules::INVITE_REMEMBERED_AFTER_EXPIRY;
        assert_eq!(integer(server, &["PEXPIRETIME", &keys::invite("c0ffee")]), forget_at.as_millis());
        assert!(server.all_keys().contains(&"palaver:invite:c0ffee".to_owned()));
    }

    /// The Redis backend's sources, file by file.
    fn redis_sources() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/redis");
        std::fs::read_dir(dir)
            .expect("the Redis backend's folder")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "rs"))
            .map(|path| std::fs::read_to_string(path).expect("a source file"))
            .collect()
    }

    /// The scripts the code calls: every `SCRIPTS.<name>` in the sources.
    fn scripts_called() -> BTreeSet<String> {
        let mut called = BTreeSet::new();
        for text in redis_sources() {
            for (at, _) in text.match_indices("SCRIPTS.") {
                let rest = &text[at + "SCRIPTS.".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // A method of the list (`all()`) is not a script.
                if !name.is_empty() && !rest[name.len()..].starts_with('(') {
                    called.insert(name);
                }
            }
        }
        called
    }

    /// The list of scripts is what is loaded when the script cache is found
    /// empty (a restart, a failover): a script it missed would run by `EVAL`
    /// or not at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loading_the_script_list_loads_every_script_the_code_calls() {
        let server = RedisServer::start();
        let config = config(Some(&server), &[]);
        let backend = palaver::backend::redis::RedisBackend::connect(
            &server.url(),
            &config.store,
            &config.chat,
            "instance-1",
            Default::default(),
        )
        .await
        .expect("connects to the test Redis");
        let called = scripts_called();
        for name in ["append_store", "mark_read", "open_room", "wake"] {
            assert!(called.contains(name), "the sources are read: {name} is called, found {called:?}");
        }
        let digest = |name: &str| {
            palaver::backend::redis::RedisBackend::script_digest(name)
                .unwrap_or_else(|| panic!("{name} is called but not in the list of scripts"))
        };
        let cached = |name: &str| server.command(&["SCRIPT", "EXISTS", &digest(name)]).expect("SCRIPT EXISTS");
        assert_eq!(server.command(&["SCRIPT", "FLUSH"]).as_deref(), Some("+OK\r\n"));
        assert_eq!(cached("mark_read"), "*1\r\n:0\r\n", "the cache starts empty");

        backend.load_scripts().await.expect("loads the scripts");
        let missing: Vec<&String> = called.iter().filter(|name| cached(name) != "*1\r\n:1\r\n").collect();
        assert!(missing.is_empty(), "called, but not loaded with the list: {missing:?}");
    }
}
