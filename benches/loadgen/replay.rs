//! `replay`: server memory while many sockets replay a full room and never
//! read.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    time::{Duration, Instant},
};

use palaver::model::MessageId;

use crate::{
    args::arg,
    chat::room_order,
    http::register,
    servers::{rss_kib, start_palaver, start_redis},
    sockets::{next_json, open},
    stats::unix_micros,
};

/// Fills `room` with `count` messages of `body_len` characters, straight
/// into its stream (as palaver stores them), pipelined.
fn fill_room(redis_port: u16, room: &str, count: usize, body_len: usize) {
    let mut stream = StdTcpStream::connect(("127.0.0.1", redis_port)).unwrap();
    let body = "x".repeat(body_len);
    let key = palaver::backend::redis::keys::messages(&palaver::model::RoomName::parse(room).expect("a room name"));
    let now = unix_micros() / 1000;
    let mut batch = String::new();
    for i in 0..count {
        let sent_at = now.to_string();
        let args = ["XADD", &key, "*", "user", "filler", "body", &body, "sent_at", &sent_at];
        batch.push_str(&format!("*{}\r\n", args.len()));
        for arg in args {
            batch.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        if i % 500 == 499 || i == count - 1 {
            stream.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    // Each reply is a bulk string, `$<len>` and the id: two lines.
    let mut lines = 0;
    let mut buf = vec![0u8; 1 << 16];
    while lines < 2 * count {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection");
        lines += buf[..n].iter().filter(|b| **b == b'\n').count();
    }
}

/// Opens a socket by hand that never reads a byte after its request.
fn never_reading(port: u16, cookie: &str, query: &str) -> StdTcpStream {
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// `replay`: memory while many sockets replay a full room and never read.
pub(crate) async fn replay(args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 400);
    let messages: usize = arg(args, "--messages", 10_000);
    let body: usize = arg(args, "--body", 500);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (server, port) = start_palaver(redis_port, &[("HISTORY_MAX_LEN", &messages.to_string())]);
    let pid = server.0.id();
    let cookie = register(port, "replayer");
    // The room exists (its page was opened) and is full.
    let page = format!("GET /chat/full HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(page.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    fill_room(redis_port, "full", messages, body);

    // Correctness first: a client that reads gets the whole room, in order.
    let mut reader = open(port, &cookie, "?room=full&after=0-0").await;
    let mut ids: Vec<MessageId> = Vec::new();
    while ids.len() < messages {
        let frame = next_json(&mut reader).await.expect("a frame");
        if frame["type"] == "message" {
            ids.push(room_order(frame["id"].as_str().unwrap()));
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "replay in order, no repeat");

    drop(reader);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = rss_kib(pid);
    let started = Instant::now();
    let held: Vec<StdTcpStream> = (0..sockets).map(|_| never_reading(port, &cookie, "?room=full&after=0-0")).collect();
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = rss_kib(pid);
    drop(held);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pid);
    // Still serving: a new reader replays the room.
    let mut check = open(port, &cookie, "?room=full&after=0-0").await;
    let mut got = 0;
    while got < messages {
        if next_json(&mut check).await.expect("a frame")["type"] == "message" {
            got += 1;
        }
    }
    println!(
        "replay: {sockets} never-reading sockets replaying {messages} messages of {body} characters: \
         server RSS before {before} KiB, peak {peak} KiB ({:.1} KiB per socket), at 15 s {during} KiB, \
         10 s after they closed {after} KiB; a reading client got all {messages} in order before and after",
        (peak.saturating_sub(before)) as f64 / sockets as f64
    );
}
