//! The deployment guide (docs/deploy.md) and what it installs. Every
//! command block of the guide is read from it and run here, in a sandbox
//! that stands in for a machine's root, or says why no test can run it.
//! Pinned down: the installed unit passes `systemd-analyze verify` and is
//! sandboxed (`systemd-analyze security`), the installed binary starts
//! from the installed settings and key as systemd starts it, and nginx
//! accepts the installed proxy file; the proxy's timeouts and the unit's
//! limits fit palaver's own settings; a key rotation done as the guide says
//! signs nobody out; three instances on a Redis Cluster behind nginx are
//! one chat.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

use crate::{helpers::*, proxy::*};

const GUIDE: &str = "docs/deploy.md";

/// The files the guide installs, as the repository ships them.
const SHIPPED: [&str; 3] = ["deploy/palaver.env", "deploy/palaver.service", "deploy/nginx/palaver.conf"];

// --------------------------------------------------------------- the guide --

/// A fenced block of the guide and the HTML comment on the line above it
/// (`run: <name>`, `not run: <why>`, `env: <name>`).
struct Block {
    marker: Option<String>,
    lang: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let guide = shipped(GUIDE);
    let mut blocks = Vec::new();
    let mut lines = guide.lines();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let marker = previous.strip_prefix("<!--").and_then(|m| m.strip_suffix("-->")).map(|m| m.trim().to_owned());
            let text: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push(Block { marker, lang: lang.to_owned(), text: text.join("\n") + "\n" });
            previous = "";
        } else {
            previous = line;
        }
    }
    blocks
}

/// The block marked `<kind>: <name>`.
fn block(kind: &str, name: &str) -> String {
    let marker = format!("{kind}: {name}");
    let mut found = blocks().into_iter().filter(|b| b.marker.as_deref() == Some(marker.as_str()));
    let block = found.next().unwrap_or_else(|| panic!("{GUIDE} has no block marked `<!-- {marker} -->`"));
    assert!(found.next().is_none(), "{GUIDE} has two blocks marked {marker}");
    block.text
}

/// `KEY=VALUE` lines, as systemd's `EnvironmentFile=` reads them.
fn settings_in(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

// ------------------------------------------------------------- sandbox --

/// A directory standing in for a machine's root, where the guide's
/// commands run unchanged but for one rule: `/etc/` and `/usr/local/` are
/// under the sandbox, in the commands and in the copies of the shipped
/// files they install. `nginx` reads the sandbox's /etc/nginx/nginx.conf.
pub struct Sandbox {
    root: tempfile::TempDir,
    /// Where the commands run: a copy of the repository's `deploy/`, and
    /// `target/release/palaver`.
    repo: PathBuf,
}

/// What the commands run with: `nginx` pointed at the sandbox (`$NGINX` is
/// the binary, wherever it is).
const PRELUDE: &str = r#"set -euo pipefail
nginx() { "$NGINX" -p "$ROOT/run/nginx" -c "$ROOT/etc/nginx/nginx.conf" -e stderr "$@"; }
"#;

impl Sandbox {
    /// With a stand-in for the binary (for tests that only need the
    /// settings and keys).
    pub fn new() -> Sandbox {
        Self::build(None)
    }

    /// With the palaver binary that `cargo test` built as its release build.
    fn with_binary() -> Sandbox {
        Self::build(Some(Path::new(env!("CARGO_BIN_EXE_palaver"))))
    }

    fn build(binary: Option<&Path>) -> Sandbox {
        let root = tempfile::tempdir().expect("temp dir");
        let repo = root.path().join("repo");
        let sandbox = Sandbox { repo, root };
        for file in SHIPPED {
            sandbox.write(&sandbox.repo.join(file), &sandbox.moved(&shipped(file)));
        }
        let release = sandbox.repo.join("target/release/palaver");
        match binary {
            Some(binary) => {
                std::fs::create_dir_all(release.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(binary, &release).unwrap();
            }
            None => {
                sandbox.write(&release, "#!/bin/sh\nexit 0\n");
                std::fs::set_permissions(&release, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        // What the nginx package installs: a main configuration that
        // includes conf.d/*.conf.
        let run = sandbox.path("/run/nginx");
        std::fs::create_dir_all(run.join("temp")).unwrap();
        let include = sandbox.path("/etc/nginx/conf.d/*.conf").display().to_string();
        sandbox.write(&sandbox.path("/etc/nginx/nginx.conf"), &main_config(&run, &include));
        sandbox
    }

    fn write(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
    }

    /// `text` with the machine's paths moved into the sandbox.
    fn moved(&self, text: &str) -> String {
        let root = self.root.path().display();
        text.replace("/etc/", &format!("{root}/etc/")).replace("/usr/local/", &format!("{root}/usr/local/"))
    }

    /// Where the machine's `path` is in the sandbox.
    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path(path)).unwrap_or_else(|err| panic!("reading {path}: {err}"))
    }

    /// Runs the guide's block `run: <name>`, with `addresses` replaced
    /// (the guide's example addresses by the test's).
    fn try_run(&self, name: &str, addresses: &[(&str, &str)]) -> Output {
        let script = render(name, &self.moved(&block("run", name)), addresses);
        Command::new("bash")
            .arg("-c")
            .arg(format!("{PRELUDE}{script}"))
            .current_dir(&self.repo)
            .env("ROOT", self.root.path())
            .env("NGINX", nginx_binary())
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    }

    /// [`Sandbox::try_run`], which must succeed; its output.
    pub fn run(&self, name: &str, addresses: &[(&str, &str)]) -> (String, String) {
        let output = self.try_run(name, addresses);
        let (stdout, stderr) = outputs(&output);
        assert!(output.status.success(), "the guide's `{name}` failed ({}):\n{stdout}\n{stderr}", output.status);
        (stdout, stderr)
    }

    /// The installed settings (/etc/palaver/palaver.env).
    fn settings(&self) -> Vec<(String, String)> {
        settings_in(&self.read("/etc/palaver/palaver.env"))
    }

    /// Edits the installed settings as the guide asks the reader to.
    fn set(&self, changes: &[(&str, &str)]) {
        let mut text = self.read("/etc/palaver/palaver.env");
        for (key, value) in changes {
            let line = text.lines().find(|l| l.starts_with(&format!("{key}="))).expect("the setting is there");
            text = text.replace(line, &format!("{key}={value}"));
        }
        self.write(&self.path("/etc/palaver/palaver.env"), &text);
    }

    /// What the unit gives the service beside its settings: the signing
    /// key (`LoadCredential=` and `TOKEN_SIGNING_KEY=`).
    fn key(&self) -> String {
        self.path("/etc/palaver/token-signing-key.pem").display().to_string()
    }
}

fn outputs(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

// ----------------------------------------------------------------- tests --

#[test]
fn every_command_block_in_the_guide_is_run_by_a_test_or_says_why_not() {
    let sources = [include_str!("deploy.rs"), include_str!("proxy.rs"), include_str!("browser/proxy.rs")];
    let mut names = BTreeSet::new();
    for block in blocks() {
        let marker = block.marker.clone().unwrap_or_default();
        if block.lang == "sh" {
            if let Some(name) = marker.strip_prefix("run: ") {
                assert!(names.insert(name.to_owned()), "two blocks are named {name}");
                let call = format!("run(\"{name}\"");
                assert!(sources.iter().any(|s| s.contains(&call)), "no test runs the guide's `{name}`");
            } else {
                assert!(
                    marker.starts_with("not run: "),
                    "a command block of {GUIDE} says neither which test runs it nor why none does:\n{}",
                    block.text
                );
            }
        } else if let Some(name) = marker.strip_prefix("env: ") {
            assert!(sources[0].contains(&format!("block(\"env\", \"{name}\")")), "no test reads the guide's `{name}`");
        }
    }
    // The tests the guide names exist.
    let guide = shipped(GUIDE);
    let named = guide.split(['`', ' ', '\n', '(', ')', ';']).filter_map(|word| {
        ["deploy::", "proxy::", "browser::proxy::"].iter().find_map(|module| word.strip_prefix(module))
    });
    for test in named.filter(|t| !t.contains("::")) {
        assert!(
            sources.iter().any(|source| source.contains(&format!("fn {test}("))),
            "{GUIDE} names a test that does not exist: {test}"
        );
    }
}

#[test]
fn the_proxy_outwaits_palavers_ping_interval_and_idle_timeout() {
    let defaults = palaver::Config::from_map(&Default::default()).unwrap();
    let conf = shipped("deploy/nginx/palaver.conf");
    let ws = conf.split("location = /ws {").nth(1).expect("a location for /ws").split('}').next().unwrap();
    for directive in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = ws
            .lines()
            .find_map(|l| l.trim().strip_prefix(directive)?.trim().strip_suffix("s;")?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no `{directive} <n>s;` for /ws"));
        let timeout = Duration::from_secs(value);
        assert!(timeout > defaults.sockets.ping_interval, "{directive} {timeout:?} is within the ping interval");
        assert!(timeout > defaults.sockets.idle_timeout, "{directive} {timeout:?} is within the idle timeout");
    }
    assert!(ws.contains("proxy_buffering off;"), "frames are not buffered");
}

/// What palaver's graceful stop waits for beyond the drain and the two
/// grace periods: the presence clean-up (`startup.rs`).
const PRESENCE_CLEANUP: Duration = Duration::from_secs(3);
/// File descriptors palaver keeps beside its connection cap (README,
/// `MAX_OPEN_CONNECTIONS`).
const FD_RESERVE: u64 = 256;

#[test]
fn the_unit_leaves_room_for_the_connection_cap_and_the_graceful_stop() {
    let unit = shipped("deploy/palaver.service");
    let setting = |key: &str| {
        let value = unit.lines().find_map(|l| l.strip_prefix(&format!("{key}=")));
        value.unwrap_or_else(|| panic!("the unit sets no {key}")).to_owned()
    };
    let vars = settings_in(&shipped("deploy/palaver.env")).into_iter().collect();
    let config = palaver::Config::from_map(&vars).expect("palaver.env is valid");

    let files: u64 = setting("LimitNOFILE").parse().unwrap();
    assert!(files >= config.connections.max_open as u64 + FD_RESERVE, "LimitNOFILE={files} under the cap");
    let stop = Duration::from_secs(setting("TimeoutStopSec").strip_suffix('s').unwrap().parse().unwrap());
    let longest = config.server.shutdown_drain + config.server.shutdown_grace * 2 + PRESENCE_CLEANUP;
    assert!(stop > longest, "TimeoutStopSec={stop:?}: a graceful stop may take {longest:?}");
    assert_eq!(setting("KillSignal"), "SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_install_gives_a_sandboxed_service_that_starts_stops_and_passes_nginx_t() {
    let sandbox = Sandbox::with_binary();
    sandbox.run("install", &[]);

    // The unit as installed (its ExecStart, the binary, exists: systemd-
    // analyze checks it).
    let (verified, objections) = sandbox.run("verify", &[]);
    assert_eq!(objections, "", "systemd-analyze has objections");
    let exposure: f64 = verified
        .lines()
        .find_map(|l| l.split("Overall exposure level for palaver.service: ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{verified}"));
    assert!(exposure <= 2.0, "the unit's exposure is {exposure}:\n{verified}");

    // The edits the guide asks for (the origin), and this machine's free
    // addresses and Redis in place of the example's.
    let redis = RedisServer::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    sandbox.set(&[
        ("PUBLIC_ORIGIN", "https://chat.palaver.test"),
        ("LISTEN_ADDR", &listen),
        ("METRICS_ADDR", &metrics),
        ("REDIS_URL", &redis.url()),
    ]);
    let addresses = [("127.0.0.1:8081", listen.as_str()), ("127.0.0.1:9091", metrics.as_str())];

    // `systemctl start`: the installed binary with the installed settings
    // and the key the guide made, in an empty working directory.
    let mut service = Service::start(&sandbox);
    let ready = poll_blocking(DEADLINE, || {
        let output = sandbox.try_run("ready", &addresses[..1]);
        output.status.success().then(|| outputs(&output).0)
    });
    let ready = ready.unwrap_or_else(|| panic!("never ready:\n{}", service.log()));
    assert_eq!(ready, r#"{"status":"ok","backend":"redis"}"#);
    let (metrics_line, _) = sandbox.run("metrics", &addresses[1..]);
    assert_eq!(metrics_line.trim(), "palaver_sockets_open 0");
    let log = service.log();
    assert!(log.contains("access tokens signed with key") && !log.contains("GENERATED"), "the guide's key:\n{log}");
    // A new binary goes in while the old one runs.
    sandbox.run("upgrade", &[]);
    // `systemctl stop`: SIGTERM, and a clean exit within TimeoutStopSec.
    service.stop();

    // nginx accepts the installed file once it names this machine's
    // instance (the guide: delete the second `server` line), with the
    // certificate where certbot puts it.
    sandbox.run("nginx", &[]);
    let conf = sandbox.read("/etc/nginx/conf.d/palaver.conf");
    let second = conf.lines().find(|l| l.contains("server 127.0.0.1:8082")).expect("a second instance").to_owned();
    sandbox.write(&sandbox.path("/etc/nginx/conf.d/palaver.conf"), &conf.replace(&format!("{second}\n"), ""));
    let certified = rcgen::generate_simple_self_signed(vec!["chat.example.com".to_owned()]).unwrap();
    let live = "/etc/letsencrypt/live/chat.example.com";
    sandbox.write(&sandbox.path(&format!("{live}/fullchain.pem")), &certified.cert.pem());
    sandbox.write(&sandbox.path(&format!("{live}/privkey.pem")), &certified.signing_key.serialize_pem());
    let (_, checked) = sandbox.run("nginx-check", &[]);
    assert!(checked.contains("test is successful"), "{checked}");
}

/// The installed binary run as palaver.service runs it.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(sandbox: &Sandbox) -> Service {
        let workdir = sandbox.path("/run/palaver");
        std::fs::create_dir_all(&workdir).unwrap();
        let log = sandbox.path("/run/palaver.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(sandbox.path("/usr/local/bin/palaver"))
            .env_clear()
            .envs(sandbox.settings())
            .env("TOKEN_SIGNING_KEY", sandbox.key())
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the installed binary starts");
        Service { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd stops it; it must exit 0 within the unit's
    /// TimeoutStopSec.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let stopped = poll_blocking(Duration::from_secs(30), || self.child.try_wait().unwrap());
        let status = stopped.unwrap_or_else(|| panic!("still running after TimeoutStopSec:\n{}", self.log()));
        assert!(status.success(), "exit {status:?}:\n{}", self.log());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --------------------------------------------------------- key rotation --

/// Two instances started as the installed unit starts them (its settings,
/// its key), on one Redis, at one public origin; restarted one at a time.
struct Group<'a> {
    sandbox: &'a Sandbox,
    redis: &'a RedisServer,
    addrs: [SocketAddr; 2],
}

impl Group<'_> {
    async fn start(&self, i: usize) -> TestApp {
        self.start_at(self.addrs[i], &self.sandbox.key()).await
    }

    async fn start_at(&self, addr: SocketAddr, key: &str) -> TestApp {
        let listen = addr.to_string();
        // The machine's addresses, and no drain: nothing balances here.
        let ours = [
            ("LISTEN_ADDR", listen.as_str()),
            ("PUBLIC_ORIGIN", "https://chat.palaver.test"),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("SHUTDOWN_DRAIN_SECS", "0"),
            ("TOKEN_SIGNING_KEY", key),
        ];
        let mut settings = self.sandbox.settings();
        settings.retain(|(k, _)| k != "REDIS_URL" && !ours.iter().any(|(ours, _)| ours == k));
        let vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(ours).collect();
        TestApp::spawn_with(Some(self.redis), &vars).await
    }

    /// `systemctl restart` of instance `i`.
    async fn restart(&self, app: TestApp, i: usize) -> TestApp {
        app.shutdown().await.expect("a clean stop");
        self.start(i).await
    }
}

/// A client of the token API, talking to each instance directly.
async fn api(app: &TestApp, path: &str, body: Value) -> Value {
    let res = reqwest::Client::new().post(format!("http://{}{path}", app.addr)).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "POST {path}");
    res.json().await.unwrap()
}

/// Opens a socket on `app` with an access token.
async fn bearer_socket(app: &TestApp, token: &str) -> Result<Socket, StatusCode> {
    let mut request = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    connect(request).await
}

async fn joined(app: &TestApp, token: &str) -> Socket {
    let mut socket = bearer_socket(app, token).await.expect("the token is accepted");
    socket.next_of("hello").await;
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_as_the_guide_says_signs_nobody_out() {
    let sandbox = Sandbox::new();
    sandbox.run("install", &[]);
    let first_key = sandbox.root.path().join("first-key.pem");
    std::fs::copy(sandbox.key(), &first_key).unwrap();
    let redis = RedisServer::start();
    let group = Group { sandbox: &sandbox, redis: &redis, addrs: [0, 1].map(|_| ([127, 0, 0, 1], free_port()).into()) };
    let mut a = group.start(0).await;
    let mut b = group.start(1).await;

    let form = [("username", "alice"), ("password", PASSWORD)];
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{}/register", a.addr))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let pair = api(&a, "/api/token", json!({"username": "alice", "password": PASSWORD})).await;
    let old = pair["access_token"].as_str().unwrap().to_owned();
    let mut socket = joined(&b, &old).await;

    // Round one: every instance learns the new key, still signing with the
    // old. A socket closed by a restart comes back with its token.
    sandbox.run("rotate-prepare", &[]);
    a = group.restart(a, 0).await;
    b = group.restart(b, 1).await;
    assert_eq!(socket.closed().await.0, 1001);
    socket = joined(&b, &old).await;

    // Round two, half way: a signs with the new key; b has not restarted.
    sandbox.run("rotate-switch", &[]);
    a = group.restart(a, 0).await;
    let pair = api(&a, "/api/token/refresh", json!({"refresh_token": pair["refresh_token"]})).await;
    let new = pair["access_token"].as_str().unwrap().to_owned();
    joined(&a, &old).await;
    // b's socket re-authenticates in-band with a's new token: accepted,
    // because round one told b the new key.
    socket.send_json(json!({"type": "reauth", "token": new})).await;
    socket.next_of("reauthenticated").await;
    // Without round one it would not be: an instance that knows only the
    // old key refuses the new token.
    let stale = group.start_at(([127, 0, 0, 1], free_port()).into(), &first_key.display().to_string()).await;
    assert_eq!(bearer_socket(&stale, &new).await.err(), Some(StatusCode::UNAUTHORIZED));
    drop(stale);
    b = group.restart(b, 1).await;
    assert_eq!(socket.closed().await.0, 1001);
    socket = joined(&b, &new).await;

    // Round three: the old key is forgotten. Its tokens, which would have
    // expired by now (ACCESS_TOKEN_TTL_SECS), are refused; the new ones
    // go on.
    sandbox.run("rotate-finish", &[]);
    a = group.restart(a, 0).await;
    b = group.restart(b, 1).await;
    assert_eq!(socket.closed().await.0, 1001);
    for app in [&a, &b] {
        joined(app, &new).await;
        assert_eq!(bearer_socket(app, &old).await.err(), Some(StatusCode::UNAUTHORIZED));
    }
    assert!(!sandbox.path("/etc/palaver/token-previous.pub.pem").exists());
}

// -------------------------------------------------------------- cluster --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_redis_cluster_behind_the_proxy_are_one_chat() {
    // Six nodes joined by the guide's own command.
    let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_cluster_node()).collect();
    let examples: Vec<String> = (21..=26).map(|n| format!("10.0.0.{n}:6379")).collect();
    let ours: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let nodes_as_ours: Vec<(&str, &str)> =
        examples.iter().map(String::as_str).zip(ours.iter().map(String::as_str)).collect();
    Sandbox::new().run("cluster", &nodes_as_ours);
    let cluster = RedisCluster { nodes };
    cluster.wait_healthy();

    // Three instances with the guide's lines for a cluster, each with its
    // own address, behind nginx. One socket each, so that each of the three
    // sockets below is on another instance.
    let addrs = instance_addrs(3);
    let proxy = Proxy::start(&addrs);
    let mut instances = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let (listen, metrics) = (addr.to_string(), "127.0.0.1:0");
        let mut machine = vec![
            ("10.0.0.11:8081", listen.as_str()),
            ("10.0.0.11:9091", metrics),
            ("https://chat.example.com", proxy.origin.as_str()),
            ("10.0.0.10", "127.0.0.1"),
        ];
        let env = block("env", "cluster-env");
        machine.extend(nodes_as_ours.iter().filter(|(example, _)| env.contains(example)));
        let lines = settings_in(&render("cluster-env", &env, &machine));
        let mut extra: Vec<(&str, &str)> = lines.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        extra.push(("MAX_CONNECTIONS", "1"));
        let app = instance(&proxy, *addr, &cluster, &extra).await;
        assert_eq!(app.addr, *addr, "instance {i}");
        instances.push(app);
    }

    let alice = proxy.visitor(loopback(2));
    assert_redirect(&alice.register("alice").await, "/chat");
    let bob = proxy.visitor(loopback(3));
    assert_redirect(&bob.register("bob").await, "/chat");
    let mut sockets = Vec::new();
    for visitor in [&alice, &alice, &bob] {
        let mut socket = visitor.open_socket("").await.expect("an instance takes the socket");
        socket.next_of("hello").await;
        sockets.push(socket);
    }
    for app in &instances {
        assert_eq!(app.sockets_open().await, 1, "one socket on {}", app.addr);
    }

    let id = sockets[2].say("hello, cluster", "c1").await["id"].clone();
    for socket in &mut sockets[..2] {
        let message = socket.next_of("message").await;
        assert_eq!((&message["id"], &message["body"]), (&id, &json!("hello, cluster")));
    }

    // Alice signs out everywhere from another device: her sockets close on
    // both instances, bob's stays.
    let phone = proxy.visitor(loopback(4));
    assert_redirect(&phone.login("alice", PASSWORD).await, "/chat");
    assert_redirect(&phone.post("/logout/everywhere").await, "/login");
    for socket in &mut sockets[..2] {
        assert_eq!(socket.closed().await, (4401, "logged out".to_owned()));
    }
    sockets[2].say("still here", "c2").await;
}
