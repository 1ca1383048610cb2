//! Connections are bounded in time and counted (docs/protocol.md §1.1):
//! idle connections (silent, between keep-alive requests, partial headers,
//! TLS, HTTP/2) are closed, a stalled body gets 408, the TLS handshake has
//! a limit, and at the cap an idle connection makes room for a new one,
//! while open WebSockets and requests in progress are never cut for it nor
//! by the HTTP timeouts.
//!
//! Timings: the limits under test are 1 s; a connection must be cut no
//! sooner than its limit and well before [`CUT`] (before this work, idle
//! connections were never cut and partial headers only after 30 s).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use crate::{helpers::*, tls::identity};

/// How long a 1 s limit may take to cut a connection here.
const CUT: Duration = Duration::from_secs(4);
const ONE_SECOND: Duration = Duration::from_secs(1);

/// Reads until the server closes the connection (end of stream or reset)
/// and returns what it sent meanwhile.
async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits for the server to close `stream` within [`CUT`]; returns what it
/// sent and how long after `since` it closed.
async fn cut<S: AsyncRead + Unpin>(what: &str, stream: &mut S, since: Instant) -> (String, Duration) {
    let sent = within_for(CUT, what, until_closed(stream)).await;
    (String::from_utf8_lossy(&sent).into_owned(), since.elapsed())
}

/// One HTTP/1.1 request on a raw connection; the response's status and
/// head (its body is read by `Content-Length` and dropped).
async fn exchange(stream: &mut TcpStream, request: &str) -> (u16, String) {
    stream.write_all(request.as_bytes()).await.expect("request written");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .map_or(0, |v| v.parse().unwrap());
            while data.len() < end + 4 + length {
                let n = stream.read(&mut buf).await.expect("body");
                assert!(n > 0, "closed in the middle of a body");
                data.extend_from_slice(&buf[..n]);
            }
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            return (status, head);
        }
        let n = stream.read(&mut buf).await.expect("response");
        assert!(n > 0, "closed before answering; got {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: palaver\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    let opened = Instant::now();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let (sent, after) = cut("a silent connection to be closed", &mut stream, opened).await;
    eprintln!("silent connection closed after {after:?}");
    assert_eq!(sent, "", "nothing is said to a client that said nothing");
    assert!(after >= ONE_SECOND, "closed after {after:?}, before the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_is_closed_when_idle_between_requests() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let asked = Instant::now();
    let (status, head) = exchange(&mut stream, HEALTHZ).await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "the first answer keeps the connection: {head}");
    let answered = asked.elapsed();
    let (sent, after) = cut("an idle keep-alive connection to be closed", &mut stream, asked).await;
    eprintln!("keep-alive connection closed {after:?} after the request ({answered:?} to answer it)");
    assert_eq!(sent, "");
    assert!(after >= ONE_SECOND, "closed {after:?} after the request, before the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_cut_by_the_idle_timeout() {
    let redis = RedisServer::start();
    // The header timeout is left at its default (10 s): the idle one acts.
    let app = TestApp::spawn_with(Some(&redis), &[("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    let opened = Instant::now();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (sent, after) = cut("a connection stuck in its headers to be closed", &mut stream, opened).await;
    eprintln!("partial headers cut after {after:?} (idle timeout 1 s)");
    assert_eq!(sent, "", "no request was made, so none is answered");
    assert!(after >= ONE_SECOND, "cut after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_are_cut_by_the_header_timeout() {
    let redis = RedisServer::start();
    let app =
        TestApp::spawn_with(Some(&redis), &[("HTTP_IDLE_TIMEOUT_SECS", "30"), ("HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let opened = Instant::now();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (_, after) = cut("a connection stuck in its headers to be closed", &mut stream, opened).await;
    eprintln!("partial headers cut after {after:?} (header timeout 1 s)");
    assert!(after >= ONE_SECOND, "cut after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_halfway_gets_408_and_the_connection_ends() {
    let redis = RedisServer::start();
    let app =
        TestApp::spawn_with(Some(&redis), &[("HTTP_REQUEST_TIMEOUT_SECS", "1"), ("HTTP_IDLE_TIMEOUT_SECS", "30")])
            .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 100\r\n\r\nusername=a",
        app.addr, app.origin
    );
    let asked = Instant::now();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (sent, after) = cut("a stalled request to be answered and closed", &mut stream, asked).await;
    eprintln!("stalled body answered and closed after {after:?}: {:?}", sent.lines().next());
    assert!(sent.starts_with("HTTP/1.1 408 "), "{sent}");
    assert!(sent.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{sent}");
    assert!(after >= ONE_SECOND, "answered after {after:?}, before the request timeout");
}

fn tls_client(cert_der: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_closed_after_its_handshake() {
    let id = identity();
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(
        Some(&redis),
        &[("TLS_CERT", &id.cert_path), ("TLS_KEY", &id.key_path), ("HTTP_IDLE_TIMEOUT_SECS", "1")],
    )
    .await;
    let opened = Instant::now();
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let mut tls =
        tls_client(&id.cert_der).connect(ServerName::try_from("localhost").unwrap(), tcp).await.expect("handshake");
    let handshake = opened.elapsed();
    // Measured from before connecting: the client may see its handshake end
    // a little after the server does, so that is no lower bound.
    let (sent, after) = cut("an idle TLS connection to be closed", &mut tls, opened).await;
    eprintln!("idle TLS connection closed {after:?} after connecting ({handshake:?} of it the handshake)");
    assert_eq!(sent, "");
    assert!(after >= ONE_SECOND, "closed {after:?} after connecting, before the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_cut() {
    let id = identity();
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(
        Some(&redis),
        &[("TLS_CERT", &id.cert_path), ("TLS_KEY", &id.key_path), ("TLS_HANDSHAKE_TIMEOUT_SECS", "1")],
    )
    .await;
    let opened = Instant::now();
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let (sent, after) = cut("a connection without a handshake to be closed", &mut tcp, opened).await;
    eprintln!("connection without a TLS handshake closed after {after:?}");
    assert_eq!(sent, "");
    assert!(after >= ONE_SECOND, "closed after {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("HTTP_IDLE_TIMEOUT_SECS", "1")]).await;
    // HTTP/2 with prior knowledge (h2c), hyper's own client connection: its
    // future ends exactly when the server closes the connection.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let asked = Instant::now();
    let request = http::Request::get(format!("http://{}/healthz", app.addr)).body(Empty::<Bytes>::new()).unwrap();
    let res = within("an HTTP/2 answer", sender.send_request(request)).await.expect("h2 response");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.expect("body");

    let ended = within_for(CUT, "the idle HTTP/2 connection to be closed", conn).await.unwrap();
    let after = asked.elapsed();
    eprintln!("idle HTTP/2 connection closed {after:?} after its request ({ended:?})");
    assert!(after >= ONE_SECOND, "closed {after:?} after the request, before the idle timeout");
    // Still holding the sender: the client did not close it itself.
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_longest_idle_connection_makes_room_for_a_new_one() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &[("MAX_OPEN_CONNECTIONS", "50")]).await;
    // 50 silent connections, all open at once: the cap is full of idle ones.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }

    let asked = Instant::now();
    let mut fresh = TcpStream::connect(app.addr).await.unwrap();
    let (status, head) = within("GET /healthz at the cap", exchange(&mut fresh, HEALTHZ)).await;
    let took = asked.elapsed();
    eprintln!("GET /healthz with the cap full of idle connections: {status} in {took:?}");
    assert_eq!(status, 200, "{head}");
    assert!(took < ONE_SECOND, "answered only after {took:?}");

    // The one that made room is the longest idle: the first opened.
    let (sent, _) = cut("the longest-idle connection to be evicted", &mut idle[0], asked).await;
    assert_eq!(sent, "");
    // Only that one: every other is still served (no new place is needed).
    for (i, stream) in idle.iter_mut().enumerate().skip(1) {
        let (status, head) = within("an answer on a held connection", exchange(stream, HEALTHZ)).await;
        assert_eq!(status, 200, "connection {i}: {head}");
    }
}

/// A cap of 50 connections that one user's sockets may fill alone (their
/// own per-user, per-session and message limits lifted).
pub const FIFTY_PLACES_ONE_USER: [(&str, &str); 4] = [
    ("MAX_OPEN_CONNECTIONS", "50"),
    ("MAX_SOCKETS_PER_USER", "100"),
    ("MAX_SOCKETS_PER_SESSION", "100"),
    ("USER_MESSAGE_BURST", "100"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_cap_full_of_websockets_and_busy_requests_a_new_connection_gets_503_and_the_sockets_stay() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(Some(&redis), &FIFTY_PLACES_ONE_USER).await;
    let alice = signed_up(&app, "alice").await;
    let mut sockets = Vec::new();
    // WebSockets take at most nine places in ten; requests in progress the rest.
    for _ in 0..45 {
        sockets.push(alice.join(&app, "").await.0);
    }
    let mut busy = Vec::new();
    for _ in 0..5 {
        busy.push(slow_body(&app).await);
    }

    let asked = Instant::now();
    let mut fresh = TcpStream::connect(app.addr).await.unwrap();
    fresh.write_all(b"GET / HTTP/1.1\r\nHost: palaver\r\nConnection: close\r\n\r\n").await.unwrap();
    let (sent, took) = cut("the new connection to be answered and closed", &mut fresh, asked).await;
    eprintln!("new connection with the cap full of WebSockets and requests: {:?} in {took:?}", sent.lines().next());
    assert!(sent.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{sent}");
    let head = sent.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close\r\n") && head.contains("\r\nretry-after: 1\r\n"), "{sent}");

    for (i, socket) in sockets.iter_mut().enumerate() {
        let ack = socket.say("still here", &format!("c{i}")).await;
        assert_eq!(ack["type"], "ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_http_idle_and_request_timeouts() {
    let redis = RedisServer::start();
    let app = TestApp::spawn_with(
        Some(&redis),
        &[
            ("HTTP_IDLE_TIMEOUT_SECS", "1"),
            ("HTTP_REQUEST_TIMEOUT_SECS", "1"),
            ("WS_PING_INTERVAL_SECS", "1"),
            ("WS_IDLE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let alice = signed_up(&app, "alice").await;
    let (mut socket, _) = alice.join(&app, "").await;

    // Four times both limits, with nothing but the server's pings (which
    // tungstenite answers as it reads).
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, socket.ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Text(_)))) => {}
            Ok(other) => panic!("the socket ended: {other:?}"),
        }
    }
    eprintln!("socket open after 4 s, {pings} pings");
    assert!(pings >= 2, "{pings} pings in 4 s");
    let ack = socket.say("still here", "after-the-timeouts").await;
    assert_eq!(ack["type"], "ack");
}
