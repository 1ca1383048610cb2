//! `login` (what a sign-in costs) and `login-storm` (what a storm of them
//! costs everyone chatting).

use std::time::{Duration, Instant};

use crate::{
    args::{arg, flag},
    chat::{join_room, UNLIMITED},
    http::{login, register, register_many, PASSWORD},
    servers::{start_palaver, start_redis, start_servers, Kind},
    stats::{latency_line, ms, pct, summary, unix_micros},
};

pub(crate) async fn logins(args: &[String]) {
    use palaver::auth::password::{self, Password};
    let count: usize = arg(args, "--count", 30);
    let hash = password::hash(Password::new(PASSWORD.into()), &metrics::Histogram::noop()).await;
    let mut verify = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        assert!(
            password::verify(Password::new(PASSWORD.into()), Some(hash.clone()), &metrics::Histogram::noop()).await
        );
        verify.push(started.elapsed());
    }
    println!("argon2id verify (m=19456 KiB, t=2, p=1): {}", summary(verify));

    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let (_server, port) = start_palaver(redis_port, &[("LOGIN_MAX_FAILURES", "1000000")]);
    register(port, "timer");
    let (mut ok, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let started = Instant::now();
        assert!(login(port, "timer", PASSWORD).starts_with("HTTP/1.1 303"));
        ok.push(started.elapsed());
        let started = Instant::now();
        assert!(login(port, "nobody-here", PASSWORD).starts_with("HTTP/1.1 401"));
        unknown.push(started.elapsed());
    }
    println!("POST /login, right password: {}", summary(ok));
    println!("POST /login, unknown user:   {}", summary(unknown));
}

/// `login-storm` (palaver): chat delivery p99 before and during a storm of
/// concurrent logins (real Argon2, right passwords).
pub(crate) async fn login_storm(kind: Kind, args: &[String]) {
    assert_eq!(kind, Kind::Palaver, "login-storm measures palaver's logins (the Node peer hashes with SHA-256)");
    let sockets: usize = arg(args, "--sockets", 1000);
    let logins: usize = arg(args, "--logins", 50);
    let rate: f64 = arg(args, "--rate", 100.0);
    let senders: usize = arg(args, "--senders", 10);
    let users: usize = arg(args, "--users", 50);
    let seconds: u64 = arg(args, "--seconds", 10);
    let once = flag(args, "--once");
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let mut env = UNLIMITED.to_vec();
    env.push(("LOGIN_MAX_FAILURES", "1000000"));
    let servers = start_servers(kind, redis_port, 2, &env);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let cookies = register_many(kind, ports[0], "chat", users).await;
    register_many(kind, ports[0], "storm", logins).await;

    let mut room = join_room(&ports, &cookies, "storm", sockets, senders).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // presence settles
    let period = Duration::from_secs(seconds);
    let start_us = unix_micros();
    let storm_start = Instant::now() + period;
    let storm_end = storm_start + period;
    // Each storm client logs in back to back (alternating instances), so
    // `logins` are in flight for the whole second period; with `--once`,
    // each logs in once at its start.
    let storm: Vec<_> = (0..logins)
        .map(|k| {
            let port = ports[k % ports.len()];
            tokio::spawn(async move {
                tokio::time::sleep_until(storm_start.into()).await;
                let mut times = Vec::new();
                while Instant::now() < storm_end {
                    let started = Instant::now();
                    let status =
                        tokio::task::spawn_blocking(move || login(port, &format!("storm{k}"), PASSWORD)).await.unwrap();
                    assert!(status.starts_with("HTTP/1.1 303"), "storm login {k} answered {status}");
                    times.push(started.elapsed());
                    if once {
                        break;
                    }
                }
                times
            })
        })
        .collect();
    let (sent, acked) = room.send(rate, 2.0 * seconds as f64).await;
    assert_eq!(acked.len() as u64, sent, "every message sent is acked");
    let all = room.finish(&acked).await;
    let mut login_times = Vec::new();
    for task in storm {
        login_times.extend(task.await.unwrap());
    }
    login_times.sort_unstable();
    let split = start_us + period.as_micros() as u64;
    let baseline: Vec<(u64, u64)> = all.iter().copied().filter(|(sent, _)| *sent < split).collect();
    let during: Vec<(u64, u64)> = all.iter().copied().filter(|(sent, _)| *sent >= split).collect();
    let ratio = pct(&during, 0.99).1 as f64 / pct(&baseline, 0.99).1.max(1) as f64;
    println!(
        "login-storm (palaver): {sockets} sockets in one room over 2 instances, {rate} msg/s; baseline {seconds} s: {}; \
         during {logins} concurrent logins{} for {seconds} s ({} logins, each p50 {:.1} ms, p99 {:.1} ms): {}; \
         p99 ratio {ratio:.2} (target: at most 1.20); {sent} sent, all acked and delivered to every receiver in order",
        latency_line(&baseline),
        if once { " (one burst)" } else { " (back to back)" },
        login_times.len(),
        ms(pct(&login_times, 0.50)),
        ms(pct(&login_times, 0.99)),
        latency_line(&during),
    );
}
