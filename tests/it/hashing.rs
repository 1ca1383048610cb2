//! Password hashing is shared fairly and never makes anyone wait long
//! (issue 20, item 4): a flood of wrong passwords from many addresses, each
//! within its login limits, gets its surplus answered at once with 503 and
//! `Retry-After`, and a real user signing in from another address meanwhile
//! gets in within seconds (or is told at once to retry).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use crate::helpers::*;

/// A `POST /login` for `username` through the trusted proxy (this test's
/// own address) for the client `client`.
fn login_from(app: &TestApp, client: &str, username: &str, password: &str) -> Vec<u8> {
    let body = format!("username={username}&password={}", password.replace(' ', "+"));
    format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         X-Forwarded-For: {client}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.addr,
        app.origin,
        body.len()
    )
    .into_bytes()
}

/// The response head on `stream`, and when it was complete.
async fn answer(mut stream: TcpStream) -> (String, Instant) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while !data.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&data).into_owned(), Instant::now())
}

fn status(head: &str) -> u16 {
    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn retry_after(head: &str) -> Option<u64> {
    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().parse().unwrap()))
}

/// Addresses in the flood.
const ADDRESSES: usize = 120;
/// Wrong passwords from each address while the real user signs in: with
/// those before, within the login limits (10 per name and client, 50 per
/// client), and enough hashing that, queued in turn, the real user would
/// wait well over the 5 s allowed.
const EACH: usize = 6;

fn flood_address(i: usize) -> String {
    format!("198.51.100.{}", i + 1)
}

/// A wave of wrong passwords on its way: how many have been answered so
/// far, and the answers, in order, with how long after the first write each
/// came.
struct Wave {
    answered: Arc<AtomicUsize>,
    answers: JoinHandle<Vec<(String, Duration)>>,
}

/// Sends one wrong password for `username` from each of `addresses`, on
/// connections opened beforehand so that they arrive together.
async fn wave(app: &TestApp, addresses: &[usize], username: &str) -> Wave {
    let mut streams = Vec::new();
    for _ in addresses {
        streams.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    let started = Instant::now();
    for (stream, i) in streams.iter_mut().zip(addresses) {
        stream.write_all(&login_from(app, &flood_address(*i), username, "not the password")).await.expect("write");
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let counted: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let answered = answered.clone();
            async move {
                let (head, at) = answer(stream).await;
                answered.fetch_add(1, Ordering::SeqCst);
                (head, at - started)
            }
        })
        .collect();
    Wave { answered, answers: tokio::spawn(futures_util::future::join_all(counted)) }
}

/// Checks a wave's answers: each a 401 or a 503 that says to retry in a
/// second, none waiting long. Returns how many were 503.
fn tally(answers: &[(String, Duration)]) -> usize {
    let count = |code| answers.iter().filter(|(head, _)| status(head) == code).count();
    let (refused, busy) = (count(401), count(503));
    let slowest = answers.iter().map(|(_, after)| *after).max().unwrap();
    eprintln!(
        "{} wrong passwords: {refused} checked and refused (401), {busy} told to retry (503), the slowest answered \
         after {slowest:?}",
        answers.len()
    );
    assert_eq!(refused + busy, answers.len(), "every wrong password is a 401 or a 503");
    for (head, _) in answers.iter().filter(|(head, _)| status(head) == 503) {
        assert_eq!(retry_after(head), Some(1), "{head}");
    }
    assert!(slowest < Duration::from_secs(5), "a wrong password waited {slowest:?} for its answer");
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_during_a_flood_of_wrong_passwords_from_many_addresses_gets_in_within_seconds() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    signed_up(&app, "alice").await;
    // The flood has been going on: every address has had a password
    // checked (those told to retry, retry).
    let mut unchecked: Vec<usize> = (0..ADDRESSES).collect();
    for round in 0.. {
        assert!(round < 10, "{} addresses never had a password checked", unchecked.len());
        let answers = within("a wave", wave(&app, &unchecked, &format!("earlier{round}")).await.answers).await.unwrap();
        tally(&answers);
        unchecked =
            unchecked.into_iter().zip(answers).filter(|(_, (head, _))| status(head) == 503).map(|(i, _)| i).collect();
        if unchecked.is_empty() {
            break;
        }
    }

    let addresses: Vec<usize> = (0..ADDRESSES).cycle().take(ADDRESSES * EACH).collect();
    let flood = wave(&app, &addresses, "victim").await;
    // The real user comes once the flood is under way (its first answers
    // are out), not at the same instant as it.
    eventually("the flood's first answers", || {
        let answered = flood.answered.load(Ordering::SeqCst);
        async move { answered >= ADDRESSES / 2 }
    })
    .await;
    let mut real = TcpStream::connect(app.addr).await.expect("connect");
    let asked = Instant::now();
    real.write_all(&login_from(&app, "203.0.113.9", "alice", PASSWORD)).await.expect("write");
    let (head, at) = within_for(Duration::from_secs(60), "the real user's answer", answer(real)).await;
    let took = at - asked;
    eprintln!("the real user's sign-in during the flood: {:?} after {took:?}", head.lines().next());
    match status(&head) {
        303 => assert!(took < Duration::from_secs(5), "signed in only after {took:?}"),
        503 => {
            assert!(took < Duration::from_secs(1), "told to retry only after {took:?}");
            assert!(retry_after(&head).is_some_and(|s| s <= 1), "{head}");
        }
        other => panic!("the real user got {other}: {head}"),
    }

    let flood = within_for(Duration::from_secs(60), "the flood's answers", flood.answers).await.unwrap();
    assert!(tally(&flood) > 0, "the surplus is refused rather than queued");
}
