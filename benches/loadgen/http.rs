//! Raw HTTP/1.1 against a server: registration, sign-in, tokens. One
//! connection per request, as a browser's first visit makes it.

use std::{
    io::{Read, Write},
    net::TcpStream as StdTcpStream,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use crate::servers::Kind;

pub(crate) const PASSWORD: &str = "load-test-password";

/// POSTs a form over raw HTTP/1.1 and returns the whole response.
fn post_form(port: u16, path: &str, body: &str) -> String {
    post_form_as(port, path, body, None)
}

/// POSTs a form, with a `Cookie` header when given.
pub(crate) fn post_form_as(port: u16, path: &str, body: &str, cookie: Option<&str>) -> String {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{cookie}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Registers `username` and returns the `Cookie` header value (palaver and
/// the Node peer answer registration alike: 303 and a session cookie).
pub(crate) fn register(port: u16, username: &str) -> String {
    let response = post_form(port, "/register", &format!("username={username}&password={PASSWORD}"));
    assert!(
        response.starts_with("HTTP/1.1 303"),
        "registration of {username} failed: {}",
        response.lines().next().unwrap_or("")
    );
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

/// Registers `{prefix}{i}` for every i below `count`, a few at a time (each
/// costs palaver an Argon2 hash), and returns their cookies in order. The
/// bare server has no users: empty cookies.
pub(crate) async fn register_many(kind: Kind, port: u16, prefix: &str, count: usize) -> Vec<String> {
    if kind == Kind::Bare {
        return vec![String::new(); count];
    }
    let started = Instant::now();
    let prefix = prefix.to_owned();
    let cookies = tokio::task::spawn_blocking(move || {
        let next = AtomicU64::new(0);
        let cookies: Vec<Mutex<String>> = (0..count).map(|_| Mutex::default()).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= count {
                        break;
                    }
                    *cookies[i].lock().unwrap() = register(port, &format!("{prefix}{i}"));
                });
            }
        });
        cookies.into_iter().map(|c| c.into_inner().unwrap()).collect::<Vec<_>>()
    })
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
    response.lines().next().unwrap_or_default().to_owned()
}

/// POSTs palaver's JSON login for an access token; returns `Bearer …`.
pub(crate) fn bearer(port: u16, username: &str) -> String {
    let login = format!(r#"{{"username":"{username}","password":"{PASSWORD}"}}"#);
    let request = format!(
        "POST /api/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{login}",
        login.len()
    );
    let mut stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    let pair: serde_json::Value = serde_json::from_str(body).expect("a token pair");
    format!("Bearer {}", pair["access_token"].as_str().unwrap())
}
