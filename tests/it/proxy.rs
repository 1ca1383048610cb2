//! palaver behind a real TLS proxy, as docs/deploy.md deploys it: nginx
//! run from `deploy/nginx/palaver.conf` itself (only its addresses, ports
//! and certificate paths replaced) with a certificate made here, in front
//! of instances configured from `deploy/palaver.env`. Pinned down: plain
//! HTTP is redirected, `/metrics` stays private, the `Origin` reaches
//! palaver; the login throttle counts the client nginx names in
//! `X-Forwarded-For`, and no client can name itself past
//! `TRUSTED_PROXIES`; a rolling restart with `SHUTDOWN_DRAIN_SECS` loses
//! no acknowledged message and moves its clients to the other instance.
//! The browser journey through the proxy is in `browser/proxy.rs`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use reqwest::{cookie::CookieStore, redirect::Policy, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue},
    Connector,
};

use crate::helpers::*;

/// The name clients reach the proxy by. Every client here maps it to
/// 127.0.0.1 itself (reqwest's `resolve`, Chromium's host rules): no DNS.
pub const NAME: &str = "chat.palaver.test";

/// A file of the repository, as it ships.
pub fn shipped(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("reading {}: {err}", full.display()))
}

/// `text` (the contents of `what`) with each `from` replaced by its `to`.
/// Fails when a `from` does not occur, so that a change to a shipped file
/// cannot leave a test quietly running something else.
pub fn render(what: &str, text: &str, substitutions: &[(&str, &str)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in substitutions {
        assert!(text.contains(from), "{what} no longer contains {from:?}: update the test that renders it");
        text = text.replace(from, to);
    }
    text
}

// ------------------------------------------------------------- the proxy --

/// The proxy's certificate, self-signed for [`NAME`].
pub struct SiteCertificate {
    pub cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    /// The base64 SHA-256 of its public key (SubjectPublicKeyInfo), as
    /// Chromium's `--ignore-certificate-errors-spki-list` names a key.
    pub spki_sha256: String,
}

impl SiteCertificate {
    fn new() -> Self {
        use base64::Engine;
        use rcgen::PublicKeyData;
        let certified = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("a certificate");
        let spki = certified.signing_key.subject_public_key_info();
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
        SiteCertificate {
            cert_pem: certified.cert.pem(),
            cert_der: certified.cert.der().to_vec(),
            key_pem: certified.signing_key.serialize_pem(),
            spki_sha256: base64::engine::general_purpose::STANDARD.encode(digest),
        }
    }

    /// A TLS client configuration that trusts this certificate only.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.cert_der.clone())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

/// A real `nginx` child process serving `deploy/nginx/palaver.conf` on free
/// loopback ports, in a directory of its own.
pub struct Proxy {
    /// The HTTPS port.
    pub port: u16,
    /// The plain HTTP port, which only redirects.
    pub http_port: u16,
    /// `https://chat.palaver.test:<port>`: every instance's `PUBLIC_ORIGIN`.
    pub origin: String,
    pub certificate: SiteCertificate,
    tls: Arc<rustls::ClientConfig>,
    dir: tempfile::TempDir,
    child: Child,
}

/// The nginx binary: on the PATH, or where Debian puts it (/usr/sbin is
/// not on every user's PATH).
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("nginx")).find(|p| p.is_file());
    let found = on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!(
            "the proxy tests need nginx, which is not installed. Install it (`sudo apt-get install nginx`) or run \
             `scripts/test` as root, which installs it."
        )
    })
}

impl Proxy {
    /// nginx in front of `upstreams`, which need not be up yet: nginx finds
    /// out passively, with live traffic, as it does in production.
    pub fn start(upstreams: &[SocketAddr]) -> Proxy {
        let binary = nginx_binary();
        let certificate = SiteCertificate::new();
        let tls = certificate.client_config();
        let dir = tempfile::tempdir().expect("temp dir");
        // Started as root, nginx runs its workers as `nobody`: they need to
        // reach the directory (the private key is read by the master).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let temp = dir.path().join("temp");
        std::fs::create_dir(&temp).unwrap();
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &certificate.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certificate.key_pem).unwrap();
        std::fs::set_permissions(dir.path().join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();

        for _ in 0..5 {
            let (port, http_port) = (free_port(), free_port());
            std::fs::write(dir.path().join("palaver.conf"), site_config(dir.path(), port, http_port, upstreams))
                .unwrap();
            let include = dir.path().join("palaver.conf").display().to_string();
            std::fs::write(dir.path().join("nginx.conf"), main_config(dir.path(), &include)).unwrap();
            let args = |cmd: &mut Command| {
                cmd.arg("-p").arg(dir.path()).arg("-c").arg(dir.path().join("nginx.conf"));
                cmd.arg("-e").arg(dir.path().join("error.log"));
            };
            // `nginx -t` first, so that a configuration error says so.
            let mut check = Command::new(&binary);
            args(&mut check);
            let checked = check.arg("-t").output().expect("nginx -t runs");
            assert!(checked.status.success(), "nginx -t: {}", String::from_utf8_lossy(&checked.stderr));

            let mut cmd = Command::new(&binary);
            args(&mut cmd);
            if let Some(child) = launch(cmd, port) {
                let origin = format!("https://{NAME}:{port}");
                return Proxy { port, http_port, origin, certificate, tls, dir, child };
            }
        }
        panic!("nginx did not start on free ports");
    }

    /// `path` on the proxy's public origin.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// nginx's error log and access log (each request with the instances
    /// it was offered to; a WebSocket's is written when it closes).
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("nginx error.log:\n{}\nnginx access.log:\n{}", read("error.log"), read("access.log"))
    }

    /// nginx's error log: where it says which instance it gave up on.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The switches that make Chromium reach [`NAME`] here and accept this
    /// certificate (and no other that fails verification).
    pub fn chromium_args(&self) -> Vec<String> {
        vec![
            format!("--host-resolver-rules=MAP {NAME} 127.0.0.1"),
            format!("--ignore-certificate-errors-spki-list={}", self.certificate.spki_sha256),
        ]
    }

    /// A client of its own at the loopback address `from` (127.0.0.2,
    /// 127.0.0.3, …): nginx sees that address and names it in
    /// `X-Forwarded-For`.
    pub fn visitor(&self, from: Ipv4Addr) -> Visitor {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.certificate.cert_pem.as_bytes()).unwrap())
            .resolve(NAME, SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
            .local_address(IpAddr::V4(from))
            .cookie_provider(jar.clone())
            .redirect(Policy::none())
            .build()
            .expect("https client");
        Visitor { http, jar, from, origin: self.origin.clone(), port: self.port, tls: self.tls.clone() }
    }
}

/// Starts nginx and waits until it listens on `port`; `None` when it exits
/// first (a port was taken meanwhile).
fn launch(mut cmd: Command, port: u16) -> Option<Child> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Its own process group: stopping it stops its workers too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("nginx starts");
    let up = poll_blocking(DEADLINE, || {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(true);
        }
        matches!(child.try_wait(), Ok(Some(_))).then_some(false)
    });
    if up == Some(true) {
        return Some(child);
    }
    stop(&mut child);
    None
}

/// Stops nginx: SIGTERM to its process group (nginx's fast shutdown, the
/// workers included), SIGKILL if that is not enough.
fn stop(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
    if poll_blocking(Duration::from_secs(5), || child.try_wait().ok().flatten()).is_none() {
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        stop(&mut self.child);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The shipped configuration with this test's ports, certificate and
/// instances.
fn site_config(dir: &Path, port: u16, http_port: u16, upstreams: &[SocketAddr]) -> String {
    const FILE: &str = "deploy/nginx/palaver.conf";
    let text = shipped(FILE);
    let (servers, ours) = upstream_servers(&text, upstreams);
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    render(
        FILE,
        &text,
        &[
            (servers.as_str(), ours.as_str()),
            ("listen 443 ssl http2;", &format!("listen 127.0.0.1:{port} ssl http2;")),
            ("listen 80;", &format!("listen 127.0.0.1:{http_port};")),
            // The test machine may have no IPv6.
            ("listen [::]:443 ssl http2;", ""),
            ("listen [::]:80;", ""),
            ("/etc/letsencrypt/live/chat.example.com/fullchain.pem", &cert),
            ("/etc/letsencrypt/live/chat.example.com/privkey.pem", &key),
            ("chat.example.com", NAME),
        ],
    )
}

/// The upstream's `server` lines as shipped, and the same lines (same
/// parameters) for `upstreams`.
fn upstream_servers(text: &str, upstreams: &[SocketAddr]) -> (String, String) {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.trim_start().starts_with("server ") && line.trim_end().ends_with(';'))
        .collect();
    assert!(lines.len() >= 2, "the upstream lists two instances or more: {lines:?}");
    let shipped = lines.join("\n");
    assert!(text.contains(&shipped), "the upstream's servers are listed together");
    let parameters = |line: &str| line.trim().splitn(3, ' ').nth(2).unwrap_or(";").to_owned();
    let first = parameters(lines[0]);
    assert!(lines.iter().all(|l| parameters(l) == first), "every instance is listed alike: {lines:?}");
    let indent = &lines[0][..lines[0].len() - lines[0].trim_start().len()];
    let ours: Vec<String> = upstreams.iter().map(|addr| format!("{indent}server {addr} {first}")).collect();
    (shipped, ours.join("\n"))
}

/// A main configuration for nginx around files written for its `http`
/// context (as Debian's /etc/nginx/nginx.conf includes conf.d/*.conf):
/// `include`, with pid, logs and temporary files in `dir`, and an access
/// log that names the instances each request was offered to.
pub fn main_config(dir: &Path, include: &str) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$remote_addr \"$request\" $status upstream=$upstream_addr';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
    include {include};
}}
"
    )
}

// -------------------------------------------------------------- clients --

/// A client of the proxy from a loopback address of its own: HTTPS with its
/// own cookies, redirects not followed, and WebSockets over TLS. Clones
/// share the cookies: another tab of the same browser.
#[derive(Clone)]
pub struct Visitor {
    pub http: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
    from: Ipv4Addr,
    origin: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl Visitor {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// A form post, from the proxy's own pages as a browser sends it.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(self.url(path)).header("origin", &self.origin).form(form).send().await.expect("POST")
    }

    /// A post with no body (sign out), as a browser's button sends it.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.post_form(path, &[]).await
    }

    pub async fn register(&self, username: &str) -> reqwest::Response {
        self.post_form("/register", &[("username", username), ("password", PASSWORD)]).await
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post_form("/login", &[("username", username), ("password", password)]).await
    }

    /// The `Cookie` header it sends to the proxy.
    pub fn cookie(&self) -> Option<String> {
        self.jar.cookies(&self.origin.parse().unwrap()).map(|v| v.to_str().unwrap().to_owned())
    }

    /// Opens `/ws` through the proxy with its cookies, from its address,
    /// with `origin` as the page's origin.
    pub async fn open_socket_from(&self, origin: &str, query: &str) -> Result<Socket, StatusCode> {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.bind(SocketAddr::from((self.from, 0))).expect("binding a loopback address");
        let stream = tcp.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))).await.expect("reaching nginx");
        let mut request = format!("wss://{NAME}:{}/ws{query}", self.port).into_client_request().unwrap();
        if let Some(cookie) = self.cookie() {
            request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
        }
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).unwrap());
        let connector = Some(Connector::Rustls(self.tls.clone()));
        match tokio_tungstenite::client_async_tls_with_config(request, stream, None, connector).await {
            Ok((ws, _)) => Ok(Socket::new(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                Err(StatusCode::from_u16(res.status().as_u16()).unwrap())
            }
            Err(err) => panic!("WebSocket through the proxy failed without an HTTP answer: {err}"),
        }
    }

    pub async fn open_socket(&self, query: &str) -> Result<Socket, StatusCode> {
        self.open_socket_from(&self.origin.clone(), query).await
    }
}

// ------------------------------------------------------------ instances --

/// The settings of `deploy/palaver.env`, with what names the machine (this
/// instance's address, the Redis, the public origin, the metrics address)
/// replaced by the test's, then `extra` on top.
pub fn instance_vars(
    proxy: &Proxy,
    listen: SocketAddr,
    redis: &dyn TestRedis,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    const FILE: &str = "deploy/palaver.env";
    let listen = listen.to_string();
    let ours = [
        ("LISTEN_ADDR", listen.as_str()),
        ("PUBLIC_ORIGIN", proxy.origin.as_str()),
        ("REDIS_URL", &redis.url()),
        ("METRICS_ADDR", "127.0.0.1:0"),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    let mut vars: Vec<(String, String)> = shipped(FILE)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{FILE}: not KEY=VALUE: {line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    for (key, value) in &ours {
        let var = vars.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{FILE} no longer sets {key}"));
        var.1 = value.clone();
    }
    for (key, value) in extra {
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_string(), value.to_string()));
    }
    vars
}

/// Starts an instance with [`instance_vars`].
pub async fn instance(proxy: &Proxy, listen: SocketAddr, redis: &dyn TestRedis, extra: &[(&str, &str)]) -> TestApp {
    let vars = instance_vars(proxy, listen, redis, extra);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestApp::spawn_with(Some(redis), &vars).await
}

/// Addresses for instances to come, so that the proxy can name them first.
pub fn instance_addrs(n: usize) -> Vec<SocketAddr> {
    (0..n).map(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))).collect()
}

/// A Redis, nginx, and instances behind it started with `extra`.
pub async fn site(n: usize, extra: &[(&str, &str)]) -> (RedisServer, Proxy, Vec<TestApp>) {
    let redis = RedisServer::start();
    let addrs = instance_addrs(n);
    let proxy = Proxy::start(&addrs);
    let mut instances = Vec::new();
    for addr in addrs {
        instances.push(instance(&proxy, addr, &redis, extra).await);
    }
    (redis, proxy, instances)
}

/// A client's address, distinct for each client of a test.
pub fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

// ---------------------------------------------------------------- tests --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_proxy_plain_http_is_redirected_metrics_stay_private_and_the_origin_is_checked() {
    let (_redis, proxy, instances) = site(2, &[]).await;

    // Plain HTTP gets a redirect to HTTPS, nothing else.
    let plain = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let res =
        plain.get(format!("http://127.0.0.1:{}/chat", proxy.http_port)).header("host", NAME).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(res.headers()["location"], format!("https://{NAME}/chat").as_str());

    let visitor = proxy.visitor(loopback(2));
    let ready = visitor.http.get(proxy.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.headers()["strict-transport-security"].to_str().unwrap().contains("max-age="));

    // /metrics: never through the proxy, on each instance's own listener.
    assert_eq!(visitor.http.get(proxy.url("/metrics")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    for app in &instances {
        assert!(app.metric("palaver_sockets_open").await.is_some(), "metrics served at {:?}", app.metrics_addr);
    }

    // A body palaver would refuse never reaches it.
    let big = "x".repeat(20 * 1024);
    let res = visitor.post_form("/login", &[("username", "alice"), ("password", &big)]).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // The browser's Origin reaches palaver: its own origin signs in and
    // upgrades, another is refused.
    assert_redirect(&visitor.register("alice").await, "/chat");
    let mut socket = visitor.open_socket("").await.expect("upgrade from the public origin");
    assert_eq!(socket.next_of("hello").await["user"], "alice");
    let foreign = visitor.open_socket_from("https://elsewhere.example", "").await;
    assert_eq!(foreign.err(), Some(StatusCode::FORBIDDEN));
    let res = visitor
        .http
        .post(proxy.url("/login"))
        .header("origin", "https://elsewhere.example")
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_proxy_each_client_has_its_own_login_throttle_and_cannot_claim_another_address() {
    const MAX_FAILURES: usize = 3;
    let (_redis, proxy, _instances) = site(2, &[("LOGIN_MAX_FAILURES", "3")]).await;
    assert_redirect(&proxy.visitor(loopback(4)).register("alice").await, "/chat");

    // One client guesses until it is throttled.
    let guesser = proxy.visitor(loopback(2));
    for _ in 0..MAX_FAILURES {
        assert_eq!(guesser.login("alice", "not the password").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(guesser.login("alice", "not the password").await.status(), StatusCode::TOO_MANY_REQUESTS);

    // Naming another address in X-Forwarded-For does not get it out: nginx
    // appends the address it really saw, and palaver reads from the right.
    for claimed in ["127.0.0.3", "198.51.100.7", "127.0.0.1", "198.51.100.7, 127.0.0.1", "garbage"] {
        let res = guesser
            .http
            .post(proxy.url("/login"))
            .header("origin", &proxy.origin)
            .header("x-forwarded-for", claimed)
            .form(&[("username", "alice"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "claiming to be {claimed:?}");
    }

    // Another client behind the same proxy has a count of its own.
    let other = proxy.visitor(loopback(3));
    assert_eq!(other.login("alice", "not the password").await.status(), StatusCode::UNAUTHORIZED);
    assert_redirect(&other.login("alice", PASSWORD).await, "/chat");
}

/// A client that stays in the lobby through restarts as the chat page
/// does: closed with 1001, it reconnects through the proxy with `after=`
/// the last message it has, and sends again, under the same `client_id`,
/// whatever was not acknowledged.
struct Steadfast {
    name: &'static str,
    visitor: Visitor,
    socket: Socket,
    /// The messages it has received, in order: (id, body).
    seen: Vec<(String, String)>,
    /// How many times the server closed its socket with 1001.
    moved: usize,
}

impl Steadfast {
    async fn join(name: &'static str, visitor: Visitor) -> Steadfast {
        let socket = Self::connect(&visitor, "0-0").await;
        Steadfast { name, visitor, socket, seen: Vec::new(), moved: 0 }
    }

    /// Connects, retrying while no instance takes the socket (each refusal
    /// is an answer, not a wait).
    async fn connect(visitor: &Visitor, after: &str) -> Socket {
        let query = format!("?room=lobby&after={after}");
        let socket = poll(DEADLINE, || async {
            match visitor.open_socket(&query).await {
                Ok(socket) => Some(socket),
                Err(StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY) => None,
                Err(status) => panic!("reconnecting through the proxy: {status}"),
            }
        })
        .await;
        let mut socket = socket.expect("an instance takes the socket");
        socket.next_of("hello").await;
        socket
    }

    /// The next frame worth returning; a 1001 is followed by a reconnect.
    async fn next(&mut self) -> Value {
        loop {
            match self.socket.next_frame().await {
                Frame::Json(frame) => {
                    if frame["type"] == "message" {
                        let id = frame["id"].as_str().unwrap().to_owned();
                        self.seen.push((id, frame["body"].as_str().unwrap().to_owned()));
                    }
                    return frame;
                }
                Frame::Close(1001, _) => self.reconnect().await,
                other => panic!("{}: the socket ended with {other:?}", self.name),
            }
        }
    }

    async fn reconnect(&mut self) {
        self.moved += 1;
        let after = self.seen.last().map_or("0-0".to_owned(), |(id, _)| id.clone());
        self.socket = Self::connect(&self.visitor, &after).await;
    }

    /// Sends until acknowledged, across reconnects; returns the id.
    async fn say(&mut self, body: &str, client_id: &str) -> String {
        let send = json!({"type": "send", "body": body, "client_id": client_id});
        self.socket.send_json(send.clone()).await;
        let moved = self.moved;
        loop {
            let frame = self.next().await;
            if self.moved != moved {
                // A new socket: the send may have been lost with the old one.
                return Box::pin(self.say(body, client_id)).await;
            }
            match frame["type"].as_str() {
                Some("ack") if frame["client_id"] == client_id => return frame["id"].as_str().unwrap().to_owned(),
                Some("error") => panic!("{}: {body:?} refused: {frame}", self.name),
                _ => {}
            }
        }
    }

    /// Reads until every one of `ids` has arrived.
    async fn until_seen(&mut self, ids: &[String]) {
        while !ids.iter().all(|id| self.seen.iter().any(|(seen, _)| seen == id)) {
            self.next().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_the_proxy_loses_no_acknowledged_message_and_moves_clients_to_the_other_instance() {
    // A short drain keeps the test short; palaver.env's own is 5 s.
    let drain = [("SHUTDOWN_DRAIN_SECS", "2")];
    let redis = RedisServer::start();
    let addrs = instance_addrs(2);
    let proxy = Proxy::start(&addrs);
    let a = instance(&proxy, addrs[0], &redis, &drain).await;
    let b = instance(&proxy, addrs[1], &redis, &drain).await;

    let alice = proxy.visitor(loopback(2));
    assert_redirect(&alice.register("alice").await, "/chat");
    let bob = proxy.visitor(loopback(3));
    assert_redirect(&bob.register("bob").await, "/chat");
    let carol = proxy.visitor(loopback(4));
    assert_redirect(&carol.register("carol").await, "/chat");

    // Four sockets, one after the other; nginx's least_conn puts each on
    // the instance holding fewer. Which one took it is read from a's count.
    let mut clients = Vec::new();
    let mut on_a = Vec::new();
    for (name, visitor) in
        [("alice", &alice), ("alice's second tab", &alice), ("bob", &bob), ("bob's second tab", &bob)]
    {
        let held = a.sockets_open().await;
        clients.push(Steadfast::join(name, visitor.clone()).await);
        let total = clients.len() as u64;
        eventually("both instances count the new socket", || async {
            a.sockets_open().await + b.sockets_open().await == total
        })
        .await;
        on_a.push(a.sockets_open().await > held);
    }
    assert_eq!(on_a.iter().filter(|on| **on).count(), 2, "least_conn spreads the sockets: {on_a:?}");
    // One of a's listeners leaves, so that a holds fewer and least_conn
    // will offer the next socket to a first.
    let leaving = (1..clients.len()).find(|&i| on_a[i]).expect("a listener on a");
    drop(clients.remove(leaving));
    on_a.remove(leaving);
    eventually("a holds one socket", || async { a.sockets_open().await == 1 }).await;

    let mut acked = vec![clients[0].say("before the restart", "before").await];

    // Instance a is stopped as SIGTERM stops it: for two seconds /readyz says
    // 503 and new sockets are refused with 503, which nginx retries on b;
    // then a closes its sockets with 1001, and their clients reconnect
    // through the proxy.
    let a_addr = a.addr;
    let stopping = tokio::spawn(a.shutdown());
    let readyz = format!("http://{a_addr}/readyz");
    eventually("a says it is draining", || async {
        reqwest::get(&readyz).await.is_ok_and(|res| res.status() == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    clients.push(Steadfast::join("carol, while a drains", carol.clone()).await);
    let refused = format!(
        "upstream server temporarily disabled while reading response header from upstream, client: {}",
        carol.from
    );
    let log = proxy.error_log();
    let line = log.lines().find(|l| l.contains(&refused)).unwrap_or_else(|| panic!("no {refused:?} in {log}"));
    assert!(line.contains(&format!("upstream: \"http://{a_addr}/ws")), "offered to a first, which refused: {line}");
    assert_eq!(b.sockets_open().await, 3, "then to b");

    // Messages all through the drain and the closing, paced at the rate
    // the server advertises (10 a second).
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    let (mut n, mut after_stop) = (0, 0);
    while after_stop < 3 {
        pace.tick().await;
        if stopping.is_finished() {
            after_stop += 1;
        }
        n += 1;
        acked.push(clients[0].say(&format!("message {n}"), &format!("m{n}")).await);
    }
    within("a's graceful shutdown", stopping).await.unwrap().expect("a stopped cleanly");

    // Every client has every acknowledged message, once each and in order,
    // and every one is on b now.
    for client in clients.iter_mut() {
        client.until_seen(&acked).await;
        let ids: Vec<&String> = client.seen.iter().map(|(id, _)| id).collect();
        let unique: BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{} saw a message twice: {:?}", client.name, client.seen);
        assert_eq!(ids, acked.iter().collect::<Vec<_>>(), "{} saw {:?}", client.name, client.seen);
    }
    let moved: Vec<&str> = clients.iter().filter(|c| c.moved > 0).map(|c| c.name).collect();
    let were_on_a: Vec<&str> = clients.iter().zip(&on_a).filter(|(_, on)| **on).map(|(c, _)| c.name).collect();
    assert_eq!(moved, were_on_a, "the sockets a held, and only those, were closed with 1001 and came back");
    assert_eq!(b.sockets_open().await, clients.len() as u64, "every client is on b");

    // Restarted, and waited for as the guide says (ready, then nginx's
    // fail_timeout), a takes the next new socket: it holds the fewest.
    let a = instance(&proxy, a_addr, &redis, &drain).await;
    let a_listen = a_addr.to_string();
    let waiting = tokio::task::spawn_blocking(move || {
        crate::deploy::Sandbox::new().run("wait-ready", &[("127.0.0.1:8081", &a_listen)]);
    });
    within_for(Duration::from_secs(20), "the guide's wait-ready", waiting).await.unwrap();
    let _newcomer = Steadfast::join("a newcomer", carol.clone()).await;
    assert_eq!(a.sockets_open().await, 1, "the restarted instance took the new socket");
    println!("{n} messages sent through the restart; {} sockets moved to b", moved.len());
}
