//! What sockets the server gives up on leave in the kernel (issue 20, item
//! 6): clients that open WebSockets replaying a big room and never read
//! them fill the server's send buffers; when the server closes them, their
//! unsent data must not stay queued in the kernel (FIN-WAIT-1 orphans, TCP
//! memory) for minutes.
//!
//! A probe of the host's kernel rather than a test: it reads
//! `/proc/net/sockstat` (shared by everything on the machine) and `ss`,
//! and pins up to a few MB of kernel memory per socket while it runs, so it
//! is ignored by default. Run it alone:
//!
//! ```sh
//! PROBE_SOCKETS=30 cargo test --test it kernel:: -- --ignored --nocapture
//! ```
//!
//! (`TCP_SEND_BUFFER_BYTES=0` in its environment leaves the send buffers to
//! the kernel, to see what the reset does alone.)
//!
//! It prints the server's sockets in FIN-WAIT-1 with their unsent bytes,
//! and the kernel's TCP orphans and memory, from the moment the server has
//! closed them all, and fails if any of the server's sockets is still an
//! orphan holding data 10 s later.

use std::time::{Duration, Instant};

use crate::helpers::*;

/// `TCP: inuse … orphan N tw … alloc … mem P` from `/proc/net/sockstat`:
/// (orphans, memory in KiB).
fn sockstat() -> (i64, i64) {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let tcp = text.lines().find(|l| l.starts_with("TCP:")).expect("a TCP line");
    let field = |name: &str| -> i64 {
        let words: Vec<&str> = tcp.split_whitespace().collect();
        let at = words.iter().position(|w| *w == name).expect(name);
        words[at + 1].parse().unwrap()
    };
    (field("orphan"), field("mem") * 4)
}

/// The server's sockets on `port` in FIN-WAIT-1, and their unsent bytes.
fn fin_wait_1(port: u16) -> (usize, u64) {
    let out = std::process::Command::new("ss")
        .args(["-tnH", "state", "fin-wait-1", "sport", "=", &format!(":{port}")])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let unsent = lines.iter().filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
    (lines.len(), unsent)
}

/// `palaver_sockets_open` from the instance's metrics.
async fn sockets_open(app: &TestApp) -> u64 {
    let url = format!("http://{}/metrics", app.metrics_addr.expect("metrics"));
    let text = reqwest::get(url).await.expect("metrics").text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("palaver_sockets_open "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a probe of the host's kernel memory: run alone (see the module's documentation)"]
async fn sockets_closed_for_not_reading_leave_no_data_queued_in_the_kernel() {
    let sockets: usize = std::env::var("PROBE_SOCKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    // 0: the kernel sizes send buffers (to see the reset alone).
    let send_buffer = std::env::var("TCP_SEND_BUFFER_BYTES").unwrap_or_else(|_| "131072".into());
    let redis = RedisServer::start();
    let cap = (sockets + 10).to_string();
    let vars = [
        ("METRICS_ADDR", "127.0.0.1:0"),
        ("MAX_SOCKETS_PER_USER", cap.as_str()),
        ("MAX_SOCKETS_PER_SESSION", cap.as_str()),
        ("TCP_SEND_BUFFER_BYTES", send_buffer.as_str()),
    ];
    let app = TestApp::spawn_with(Some(&redis), &vars).await;
    let alice = signed_up(&app, "alice").await;
    // The lobby of issue 20: 10,000 messages of 2,000 characters (20 MB).
    alice.join(&app, "").await;
    let body = "x".repeat(2000);
    let script = "for i = 1, tonumber(ARGV[1]) do \
                  redis.call('XADD', KEYS[1], '*', 'user', 'alice', 'body', ARGV[2], 'sent_at', ARGV[3]) end";
    let key = room_key("lobby", "messages");
    let sent_at = now_ms().to_string();
    let reply = redis.command(&["EVAL", script, "1", &key, "10000", &body, &sent_at]).unwrap();
    assert!(!reply.starts_with('-'), "{reply}");

    let port = app.addr.port();
    let (orphans_before, memory_before) = sockstat();
    let mut held = Vec::new();
    for _ in 0..sockets {
        // Replays the whole room, and is never read.
        held.push(alice.open_socket(&app, "?after=0-0").await.expect("upgrade"));
    }
    let opened = Instant::now();
    // A write stuck for 10 s closes a socket (and its close handshake gets 2 s).
    let all_closed = poll(Duration::from_secs(60), || async { (sockets_open(&app).await == 0).then_some(()) }).await;
    assert!(all_closed.is_some(), "the server did not close the sockets within a minute");
    let closed = opened.elapsed();
    eprintln!("{sockets} never-reading sockets, closed by the server {closed:?} after opening");
    eprintln!("after close | server FIN-WAIT-1 (unsent) | kernel TCP orphans (+{orphans_before}) | TCP memory");
    let mut last = (0, 0);
    for at in [0u64, 1, 2, 5, 10] {
        let since = Duration::from_secs(at);
        if let Some(wait) = since.checked_sub(opened.elapsed() - closed) {
            tokio::time::sleep(wait).await;
        }
        let (orphans, memory) = sockstat();
        last = fin_wait_1(port);
        eprintln!(
            "{:>10}s | {:>5} ({:>7} KiB) | {:>+5} | {:>+8} KiB",
            at,
            last.0,
            last.1 / 1024,
            orphans - orphans_before,
            memory - memory_before
        );
    }
    drop(held);
    assert_eq!(last, (0, 0), "the server's closed sockets still hold data in the kernel 10 s later");
}
