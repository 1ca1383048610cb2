//! `idle` and its hidden `idle-client` children: the server memory an idle
//! authenticated socket costs.

use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    args::arg,
    http::register_many,
    servers::{rss_kib, start_redis, start_servers, Kind, Process},
    sockets::Held,
};

/// The idle sockets numbered `indices` of a run: socket i goes to instance
/// i % instances, as user i % users, into room r{i % users}.
fn idle_sockets(ports: &[u16], cookies: &[String], indices: impl Iterator<Item = usize>) -> Vec<(u16, String, String)> {
    indices
        .map(|i| (ports[i % ports.len()], cookies[i % cookies.len()].clone(), format!("?room=r{}", i % cookies.len())))
        .collect()
}

pub(crate) async fn idle(kind: Kind, args: &[String]) {
    let sockets: usize = arg(args, "--sockets", 10_000);
    let users: usize = arg(args, "--users", 100);
    let instances: usize = arg(args, "--instances", 1);
    let clients: usize = arg(args, "--clients", 1);
    let dir = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis(dir.path());
    let servers = start_servers(kind, redis_port, instances, &[]);
    let ports: Vec<u16> = servers.iter().map(|(_, port)| *port).collect();
    let pids: Vec<u32> = servers.iter().map(|(p, _)| p.0.id()).collect();

    let cookies = register_many(kind, ports[0], "idle", users).await;
    // Warm up: one socket per user on each instance (their rooms exist,
    // presence is written, the servers' pools are in use).
    let warm = Held::open(
        (0..users * instances)
            .map(|i| (ports[i / users], cookies[i % users].clone(), format!("?room=r{}", i % users)))
            .collect(),
    );
    warm.opened().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();

    let started = Instant::now();
    let (open_time, intact) = if clients <= 1 {
        let held = Held::open(idle_sockets(&ports, &cookies, 0..sockets));
        let open_time = held.opened().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        (open_time, held)
    } else {
        // Child processes of this binary, each holding every clients-th
        // socket, each under its own open-file limit.
        let cookie_file = dir.path().join("cookies");
        std::fs::write(&cookie_file, cookies.join("\n")).unwrap();
        let ports_arg = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut children = Vec::new();
        for part in 0..clients {
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["idle-client", "--ports", &ports_arg, "--sockets", &sockets.to_string()])
                .args(["--part", &part.to_string(), "--parts", &clients.to_string()])
                .arg("--cookies")
                .arg(&cookie_file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a load-generator child");
            children.push(Process(child));
        }
        for child in &mut children {
            let line = tokio::task::block_in_place(|| read_line(&mut child.0));
            assert!(line.starts_with("opened"), "a load-generator child failed: {line:?}");
        }
        let open_time = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
        // Each child checks, when its standard input closes, that none of
        // its sockets ended, and says so.
        for child in &mut children {
            drop(child.0.stdin.take());
            let line = tokio::task::block_in_place(|| read_line(&mut child.0));
            assert!(line.starts_with("intact"), "a load-generator child lost sockets: {line:?}");
        }
        print_idle(kind, sockets, instances, clients, open_time, &before, &after);
        assert_eq!(warm.closed(), 0, "a warm-up socket ended");
        return;
    };
    let after: Vec<u64> = pids.iter().map(|&pid| rss_kib(pid)).collect();
    let closed = intact.closed();
    let why = intact.report().await;
    assert!(closed == 0 && warm.closed() == 0, "{closed} idle sockets ended during the run: {why:?}");
    print_idle(kind, sockets, instances, clients, open_time, &before, &after);
}

/// One line from a child's standard output.
fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    line
}

fn print_idle(
    kind: Kind,
    sockets: usize,
    instances: usize,
    clients: usize,
    open_time: Duration,
    before: &[u64],
    after: &[u64],
) {
    let total_before: u64 = before.iter().sum();
    let total_after: u64 = after.iter().sum();
    let per_instance: Vec<String> = (0..instances)
        .map(|k| {
            let on_it = (0..sockets).filter(|i| i % instances == k).count().max(1);
            format!(
                "instance {k}: {} -> {} KiB, {:.1} KiB per socket over {on_it}",
                before[k],
                after[k],
                after[k].saturating_sub(before[k]) as f64 / on_it as f64
            )
        })
        .collect();
    println!(
        "idle ({}): {sockets} sockets on {instances} instance(s) from {clients} load-generator process(es), opened in {open_time:.1?}; \
         server RSS {total_before} KiB -> {total_after} KiB in total: {:.1} KiB per idle authenticated socket; {}; \
         no socket ended (target for palaver: at most 6 KiB per socket)",
        kind.name(),
        total_after.saturating_sub(total_before) as f64 / sockets as f64,
        per_instance.join("; ")
    );
    // A regression check, not a timing: at 10k sockets and more the fixed
    // overhead is amortised, so a per-socket cost over the target means a
    // socket got bigger (a buffer, a field, a boxed future).
    let per_socket = total_after.saturating_sub(total_before) as f64 / sockets as f64;
    if kind == Kind::Palaver && sockets >= 10_000 {
        assert!(per_socket <= 6.0, "an idle palaver socket costs {per_socket:.1} KiB, over the 6 KiB target");
    }
}

/// The hidden `idle-client` subcommand: holds this child's share of an
/// idle run's sockets, prints `opened N` once all have their `hello`, and
/// when its standard input closes prints `intact N` if none ended.
pub(crate) async fn idle_client(args: &[String]) {
    let ports: Vec<u16> = arg(args, "--ports", String::new()).split(',').map(|p| p.parse().unwrap()).collect();
    let sockets: usize = arg(args, "--sockets", 0);
    let part: usize = arg(args, "--part", 0);
    let parts: usize = arg(args, "--parts", 1);
    let cookies: Vec<String> = std::fs::read_to_string(arg(args, "--cookies", String::new()))
        .unwrap()
        .split('\n')
        .map(str::to_owned)
        .collect();
    let held = Held::open(idle_sockets(&ports, &cookies, (0..sockets).filter(|i| i % parts == part)));
    let count = held.tasks.len();
    held.opened().await;
    println!("opened {count}");
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await.unwrap().unwrap();
    let closed = held.closed();
    let why = held.report().await;
    if closed == 0 {
        println!("intact {count}");
    } else {
        println!("closed {closed} of {count}: {why:?}");
        std::process::exit(1);
    }
}
