//! The liveness and readiness checks answer whatever holds the connection
//! cap (issue 20, item 3): slow bodies that fill it leave `/healthz`,
//! `/readyz` and `/metrics` answering at once, WebSockets never take the
//! last HTTP places (a sign-in still gets through), and one address cannot
//! hold more than `MAX_CONNECTIONS_PER_ADDRESS` connections while another
//! connects.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{connections::FIFTY_PLACES_ONE_USER, helpers::*};

/// A probe must be answered this fast at a full cap: a load balancer's or
/// orchestrator's check times out after a second or two.
const PROMPT: Duration = Duration::from_secs(1);

/// `GET <path>` on a fresh connection (closed after the answer): the
/// response's head, and how long it took.
async fn fresh_get(addr: SocketAddr, path: &str) -> (String, Duration) {
    let asked = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: palaver\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request written");
    let head = within(&format!("an answer to GET {path}"), read_head(&mut stream)).await;
    (head, asked.elapsed())
}

/// A connection to `app` from the loopback address `from` (127.0.0.2, …):
/// another client address on one machine.
async fn connect_from(from: &str, app: &TestApp) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).expect("bind a loopback source address");
    socket.connect(app.addr).await.expect("connect")
}

/// One request on an open connection; the response's head.
async fn ask(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: palaver\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request written");
    within(&format!("an answer to GET {path}"), read_head(stream)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_full_of_slow_bodies_still_answers_healthz_readyz_and_metrics_at_once() {
    let redis = RedisServer::start();
    let app =
        TestApp::spawn_with(Some(&redis), &[("MAX_OPEN_CONNECTIONS", "50"), ("METRICS_ADDR", "127.0.0.1:0")]).await;
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(slow_body(&app).await);
    }

    for path in ["/healthz", "/readyz"] {
        let (head, took) = fresh_get(app.addr, path).await;
        eprintln!("GET {path} with the cap full of slow bodies: {:?} in {took:?}", head.lines().next());
        assert!(head.starts_with("HTTP/1.1 200 "), "{path}: {head}");
        assert!(took < PROMPT, "{path} answered only after {took:?}");
    }
    let (head, took) = fresh_get(app.metrics_addr.expect("metrics served"), "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 ") && took < PROMPT, "/metrics after {took:?}: {head}");

    // The places kept for the checks serve nothing else.
    let (head, _) = fresh_get(app.addr, "/login").await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
    // The slow bodies were not cut for the checks.
    for (i, stream) in held.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        let cut = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
        assert!(cut.is_err(), "slow body {i} was answered or closed: {cut:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_up_to_their_cap_leave_room_for_healthz_and_a_sign_in() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &FIFTY_PLACES_ONE_USER).await;
    let alice = signed_up(&app, "alice").await;
    let mut sockets = Vec::new();
    let refused = loop {
        match alice.open_socket(&app, "").await {
            Ok(socket) => sockets.push(socket),
            Err(status) => break status,
        }
        assert!(sockets.len() <= 50, "more sockets than the connection cap");
    };
    eprintln!("{} WebSockets open with MAX_OPEN_CONNECTIONS=50; the next one: {refused}", sockets.len());
    assert_eq!(refused, StatusCode::SERVICE_UNAVAILABLE);
    // A tenth of the cap is kept for HTTP.
    assert_eq!(sockets.len(), 45);

    let (head, took) = fresh_get(app.addr, "/healthz").await;
    eprintln!("GET /healthz with the WebSocket cap reached: {:?} in {took:?}", head.lines().next());
    assert!(head.starts_with("HTTP/1.1 200 ") && took < PROMPT, "after {took:?}: {head}");
    let bob = Browser::new();
    assert_redirect(&bob.login(&app, "alice", PASSWORD).await, "/chat");
    for (i, socket) in sockets.iter_mut().enumerate() {
        socket.say("still here", &format!("c{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_refused_its_extra_connection_while_another_address_connects() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("MAX_CONNECTIONS_PER_ADDRESS", "5")]).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.3", &app).await);
    }

    let mut extra = connect_from("127.0.0.3", &app).await;
    let refusal = within("the extra connection to be refused", read_head(&mut extra)).await;
    eprintln!("the sixth connection from one address: {:?}", refusal.lines().next());
    assert!(refusal.starts_with("HTTP/1.1 429 "), "{refusal}");
    assert!(refusal.contains("\r\nRetry-After: 1\r\n"), "{refusal}");

    let mut other = connect_from("127.0.0.4", &app).await;
    assert!(ask(&mut other, "/healthz").await.starts_with("HTTP/1.1 200 "), "another address connects");
    // Its place is given back when one of them closes.
    drop(held.remove(0));
    eventually("a place for the address once one of its connections closed", || async {
        let mut again = connect_from("127.0.0.3", &app).await;
        ask(&mut again, "/healthz").await.starts_with("HTTP/1.1 200 ")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_trusted_proxy_only_websockets_are_counted_and_against_the_client_they_are_for() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let redis = RedisServer::start();
    let vars = [("TRUSTED_PROXIES", "127.0.0.1"), ("MAX_CONNECTIONS_PER_ADDRESS", "2"), ("MAX_SOCKETS_PER_USER", "10")];
    let app = TestApp::spawn_with(Some(&redis), &vars).await;
    let alice = signed_up(&app, "alice").await;
    // The proxy's connections carry many clients: none is refused for its
    // address, however many are open.
    let mut pooled = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: palaver\r\n\r\n").await.unwrap();
        assert!(within("an answer", read_head(&mut stream)).await.starts_with("HTTP/1.1 200 "));
        pooled.push(stream);
    }

    let upgrade_for = |client: &str| {
        let mut request = app.ws_url("").into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("cookie", HeaderValue::from_str(&alice.cookie_header(&app).unwrap()).unwrap());
        headers.insert("origin", HeaderValue::from_str(&app.origin).unwrap());
        headers.insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
        connect(request)
    };
    let first = upgrade_for("203.0.113.7").await.expect("a first socket");
    let _second = upgrade_for("203.0.113.7").await.expect("a second socket");
    assert_eq!(upgrade_for("203.0.113.7").await.err(), Some(StatusCode::TOO_MANY_REQUESTS), "a third");
    let _other = upgrade_for("203.0.113.8").await.expect("another client's socket");
    drop(first);
    eventually("the client's place given back when its socket closes", || async {
        upgrade_for("203.0.113.7").await.is_ok()
    })
    .await;
}
