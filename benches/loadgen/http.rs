//! Raw HTTP/1.1 against a server: registration, sign-in, tokens, and
//! palaver's room API. One connection per request, as a browser's first
//! visit makes it.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::servers::Kind;

pub(crate) const PASSWORD: &str = "load-test-password";

/// Sends one request with `headers` (each a whole `Name: value`) on a
/// connection of its own and returns the whole response.
pub(crate) fn request(port: u16, method: &str, path: &str, headers: &[String], body: &str) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A response's status line.
pub(crate) fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// POSTs a form over raw HTTP/1.1 and returns the whole response.
fn post_form(port: u16, path: &str, body: &str) -> String {
    post_form_as(port, path, body, None)
}

/// POSTs a form, with a `Cookie` header when given.
pub(crate) fn post_form_as(port: u16, path: &str, body: &str, cookie: Option<&str>) -> String {
    let mut headers = vec!["Content-Type: application/x-www-form-urlencoded".to_owned()];
    headers.extend(cookie.map(|c| format!("Cookie: {c}")));
    request(port, "POST", path, &headers, body)
}

/// Registers `username` and returns the `Cookie` header value (palaver and
/// the Node peer answer registration alike: 303 and a session cookie).
pub(crate) fn register(port: u16, username: &str) -> String {
    let response = post_form(port, "/register", &format!("username={username}&password={PASSWORD}"));
    assert!(response.starts_with("HTTP/1.1 303"), "registration of {username} failed: {}", status_line(&response));
    session_cookie(&response)
}

fn session_cookie(response: &str) -> String {
    response
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie")))
        .map(|(_, value)| value.trim())
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// `work(i)` for every i below `count`, on `workers` threads, the results
/// in order.
fn in_parallel<T: Default + Send>(count: usize, workers: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicU64::new(0);
    let results: Vec<Mutex<T>> = (0..count).map(|_| Mutex::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    break;
                }
                *results[i].lock().unwrap() = work(i);
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().unwrap()).collect()
}

/// Registers `{prefix}{i}` for every i below `count`, a few at a time (each
/// costs palaver an Argon2 hash), and returns their cookies in order. The
/// bare server has no users: empty cookies.
pub(crate) async fn register_many(kind: Kind, port: u16, prefix: &str, count: usize) -> Vec<String> {
    if kind == Kind::Bare {
        return vec![String::new(); count];
    }
    let started = Instant::now();
    let prefix = prefix.to_owned();
    let cookies =
        tokio::task::spawn_blocking(move || in_parallel(count, 4, |i| register(port, &format!("{prefix}{i}"))))
            .await
            .unwrap();
    if count >= 1000 {
        eprintln!("registered {count} users in {:.1?}", started.elapsed());
    }
    cookies
}

/// POSTs a login and returns the status line.
pub(crate) fn login(port: u16, username: &str, password: &str) -> String {
    let response = post_form(port, "/login", &format!("username={username}&password={password}"));
    status_line(&response).to_owned()
}

/// POSTs palaver's JSON login for an access token; returns `Bearer …`.
pub(crate) fn bearer(port: u16, username: &str) -> String {
    let login = format!(r#"{{"username":"{username}","password":"{PASSWORD}"}}"#);
    let response = request(port, "POST", "/api/token", &["Content-Type: application/json".to_owned()], &login);
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let pair: serde_json::Value = serde_json::from_str(body).expect("a token pair");
    format!("Bearer {}", pair["access_token"].as_str().unwrap())
}

/// palaver's room API (SPEC §6) as one user, with an access token.
#[derive(Clone)]
pub(crate) struct RoomApi {
    port: u16,
    authorization: String,
}

impl RoomApi {
    /// Signs `username` in on the instance at `port` for a token.
    pub(crate) fn sign_in(port: u16, username: &str) -> RoomApi {
        RoomApi { port, authorization: format!("Authorization: {}", bearer(port, username)) }
    }

    fn send(&self, method: &str, path: &str, body: &str) -> String {
        let headers = [self.authorization.clone(), "Content-Type: application/json".to_owned()];
        request(self.port, method, path, &headers, body)
    }

    /// `POST /api/rooms`: creates `room` as a private room, this user its owner.
    pub(crate) fn create_private(&self, room: &str) {
        let body = format!(r#"{{"name":"{room}","visibility":"private"}}"#);
        let response = self.send("POST", "/api/rooms", &body);
        assert!(response.starts_with("HTTP/1.1 201"), "creating the private room {room}: {}", status_line(&response));
    }

    /// `PUT /api/rooms/{room}/members/{username}`; the whole response.
    pub(crate) fn add_member(&self, room: &str, username: &str) -> String {
        self.send("PUT", &format!("/api/rooms/{room}/members/{username}"), "")
    }

    /// Adds every one of `usernames` to `room`, 8 requests in flight (each
    /// is a store write, not a hash: the threads wait on the server), and
    /// checks every answer; returns how long it took.
    pub(crate) async fn add_members(&self, room: &str, usernames: Vec<String>) -> Duration {
        let (api, room) = (self.clone(), room.to_owned());
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            in_parallel(usernames.len(), 8, |i| {
                let response = api.add_member(&room, &usernames[i]);
                assert!(
                    response.starts_with("HTTP/1.1 204"),
                    "adding {} to {room}: {}",
                    usernames[i],
                    status_line(&response)
                );
            })
        })
        .await
        .unwrap();
        started.elapsed()
    }

    /// `DELETE /api/rooms/{room}/members/{username}`; the whole response.
    pub(crate) fn remove_member(&self, room: &str, username: &str) -> String {
        self.send("DELETE", &format!("/api/rooms/{room}/members/{username}"), "")
    }
}
