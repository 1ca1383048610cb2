//! Admission for upgrades (issue 21): with `MAX_PENDING_UPGRADES` upgrades
//! in flight, the next ones are answered at once, 503 with a `Retry-After`
//! within `UPGRADE_RETRY_AFTER_MAX_SECS`, instead of queueing; every place
//! comes back whether its upgrade ended in a refusal or a 101; and while
//! the instance is turning upgrades away, `POST /session/refresh` says so
//! with a `Retry-After` (the browser's way to learn it, since it cannot
//! read a refused upgrade's status).
//!
//! Upgrades are held in flight by a Redis that is not answering (SIGSTOP):
//! an admitted upgrade waits for its session check until the store's
//! command timeout, then is answered 503 `store unavailable`.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

const MAX_PENDING: usize = 4;
/// Long enough that the refresh asked after the hold is still within the
/// window in which the instance says it is turning upgrades away.
const RETRY_AFTER_MAX: u64 = 30;

/// One answer to an upgrade, read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: String,
}

impl Answer {
    /// Turned away for want of a place: 503, the sentence, a `Retry-After`.
    fn shed(&self) -> bool {
        self.status == 503 && self.body.contains("too many connections are being opened") && self.retry_after.is_some()
    }

    /// Admitted, then refused because the store did not answer.
    fn store_unavailable(&self) -> bool {
        self.status == 503 && self.body == "store unavailable" && self.retry_after.is_none()
    }
}

/// A cookie upgrade's request, by hand.
fn upgrade_request(app: &TestApp, cookie: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n",
        app.addr
    )
    .into_bytes()
}

/// Reads one response: its head, then as much body as it announces.
async fn answer(mut stream: TcpStream) -> Answer {
    let head = read_head(&mut stream).await;
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("a status line: {head:?}"));
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = field("content-length").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.expect("the body");
    let retry_after = field("retry-after").map(|v| v.parse().expect("Retry-After in whole seconds"));
    Answer { status, retry_after, body: String::from_utf8_lossy(&body).into_owned() }
}

/// `n` upgrades that arrive together: the connections are opened first,
/// then every request is written, then the answers are read.
async fn together(app: &TestApp, cookie: &str, n: usize) -> Vec<Answer> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(app.addr).await.expect("connect"));
    }
    let request = upgrade_request(app, cookie);
    for stream in &mut streams {
        stream.write_all(&request).await.expect("write");
    }
    within("every answer", futures_util::future::join_all(streams.into_iter().map(answer))).await
}

/// How many were turned away and how many were admitted and then found the
/// store silent; nothing else is expected while it is paused.
fn tally(answers: &[Answer]) -> (usize, usize) {
    let shed = answers.iter().filter(|a| a.shed()).count();
    let unavailable = answers.iter().filter(|a| a.store_unavailable()).count();
    assert_eq!(shed + unavailable, answers.len(), "nothing else: {answers:?}");
    for a in answers.iter().filter(|a| a.shed()) {
        assert!((1..=RETRY_AFTER_MAX).contains(&a.retry_after.unwrap()), "{a:?}");
    }
    (shed, unavailable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_the_places_in_flight_are_answered_503_at_once_and_every_place_comes_back() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(
        Some(&redis),
        &[
            ("MAX_PENDING_UPGRADES", &MAX_PENDING.to_string()),
            ("UPGRADE_RETRY_AFTER_MAX_SECS", &RETRY_AFTER_MAX.to_string()),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ],
    )
    .await;
    let alice = signed_up(&app, "alice").await;
    let cookie = alice.cookie_header(&app).expect("signed in");
    let calm = alice.refresh(&app).await;
    assert_eq!(calm.status(), 200);
    assert!(calm.headers().get("retry-after").is_none(), "nothing turned away yet");

    redis.pause();
    // Four are admitted and hold their places until the store times out;
    // the other eight are answered without waiting for them.
    let answers = together(&app, &cookie, 12).await;
    assert_eq!(tally(&answers), (8, MAX_PENDING), "{answers:?}");
    // Those four places came back on the refusal's path: four at once are
    // admitted again, and only a fifth is turned away.
    let answers = together(&app, &cookie, MAX_PENDING + 1).await;
    assert_eq!(tally(&answers), (1, MAX_PENDING), "{answers:?}");
    redis.resume();

    // While it has lately turned upgrades away, a refresh says how long to wait.
    let app_ref = &app;
    let probe = poll(DEADLINE, || async {
        let res = alice.refresh(app_ref).await;
        (res.status() == 200).then_some(res)
    })
    .await
    .expect("the store answers again");
    let said: u64 = probe.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=RETRY_AFTER_MAX).contains(&said), "{said}");

    // And on the 101's path: more upgrades than there are places, one
    // after another, each let in.
    for _ in 0..2 * MAX_PENDING {
        let (socket, hello) = alice.join(&app, "").await;
        assert_eq!(hello["type"], "hello");
        drop(socket);
    }
    assert_eq!(app.metric("palaver_upgrades_shed_total").await, Some(9.0));
}
