//! The server's HTTP API: the token routes (docs/protocol.md §5: sign in,
//! refresh, log out), the room routes (rooms, members, SPEC §6) and a
//! room's history (§2). Tokens
//! travel only in request bodies and the `Authorization` header, and no
//! error built here ever contains one.

use std::{fmt, time::Duration};

use reqwest::{header, StatusCode, Url};
use serde::{de::DeserializeOwned, Deserialize};

use crate::json;

/// A server's base URL, `http(s)://host[:port][/prefix]`, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    base: String,
    url: Url,
}

impl Server {
    pub fn parse(s: &str) -> Result<Server, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{s:?} is not an http:// or https:// URL"));
        }
        if url.host_str().is_none() {
            return Err(format!("{s:?} has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the server URL must not carry a user name or password".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{s:?} must not have a query or a fragment"));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(Server { base, url })
    }

    /// The URL as written back to the credentials file and compared with it.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws(s)://…/ws?room=ROOM[&after=ID]`, a direct room's `@` written
    /// `%40` as a form encoder would. Message ids need no escaping.
    pub fn ws_url(&self, room: &str, after: Option<&str>) -> String {
        let rest = self.base.split_once("://").map_or(self.base.as_str(), |(_, rest)| rest);
        let scheme = if self.url.scheme() == "https" { "wss" } else { "ws" };
        let room = query_value(room);
        match after {
            Some(id) => format!("{scheme}://{rest}/ws?room={room}&after={id}"),
            None => format!("{scheme}://{rest}/ws?room={room}"),
        }
    }

    /// Plain HTTP to a host that is not this machine: passwords and tokens
    /// would cross the network in clear.
    pub fn is_plain_remote(&self) -> bool {
        self.url.scheme() == "http" && !self.url.host_str().is_some_and(is_loopback)
    }
}

/// `text` as a query value: the characters of room names and usernames as
/// they are, anything else (a direct room's `@`) percent-encoded.
fn query_value(text: &str) -> String {
    escape_but(text, b"")
}

/// A room's or a user's name as one path segment, where `@` may stand as it
/// is (`/api/rooms/@bob/members`).
fn segment(name: &str) -> String {
    escape_but(name, b"@")
}

/// Percent-encodes every byte but the unreserved ones and `keep`.
fn escape_but(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `localhost`, 127.0.0.0/8 or `[::1]`, as `Url::host_str` writes them.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What `POST /api/token` and `POST /api/token/refresh` answer with.
#[derive(Clone, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: String,
    /// Seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Unix milliseconds, when the server gives it.
    #[serde(default)]
    pub session_expires_at: Option<u64>,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"[redacted]")
            .field("session_expires_at", &self.session_expires_at)
            .finish()
    }
}

/// One room of `GET /api/rooms`, or the answer to `POST /api/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Room {
    /// What the client calls it: `deploys`, or `@bob` for a direct room.
    pub name: String,
    /// `public`, `private` or `direct`.
    pub visibility: String,
    /// The user's role in a private room: `owner` or `member`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub unread: Option<u64>,
}

#[derive(Deserialize)]
struct Rooms {
    rooms: Vec<Room>,
}

/// One message of `GET /chat/{room}/history`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Stored {
    pub id: String,
    pub user: String,
    pub body: String,
    pub sent_at: i64,
}

#[derive(Deserialize)]
struct History {
    messages: Vec<Stored>,
}

/// One session of `GET /api/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionInfo {
    /// Its public id (a token session's `sid`).
    pub id: String,
    /// `browser` or `token`.
    pub kind: String,
    /// Unix milliseconds, when known.
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub last_active_at: Option<i64>,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub address: String,
    /// The session this request came with.
    #[serde(default)]
    pub current: bool,
}

#[derive(Deserialize)]
struct Sessions {
    sessions: Vec<SessionInfo>,
}

/// One member of `GET /api/rooms/{name}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    pub user: String,
    /// `owner` or `member`.
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Deserialize)]
struct Members {
    members: Vec<Member>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The server answered 4xx/5xx; `code` and `message` are its JSON body's
    /// (`{"error","message"}`), `retry_after` its `Retry-After` in seconds.
    Status { status: u16, code: Option<String>, message: Option<String>, retry_after: Option<u64> },
    /// No answer: connection refused, timed out, TLS failed.
    Transport(String),
    /// An answer that does not follow the contract.
    Malformed(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's own words for the refusal (its `message`, else its
    /// `error` code), else this error's description.
    pub fn reason(&self) -> String {
        match self {
            ApiError::Status { message: Some(m), .. } => m.clone(),
            ApiError::Status { code: Some(c), .. } => c.clone(),
            other => other.to_string(),
        }
    }

    /// Worth trying again later: the server or the network is down, not the credential.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status == 429 || *status >= 500,
            ApiError::Transport(_) => true,
            ApiError::Malformed(_) => false,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Status { status, code, message, retry_after } => {
                let reason = StatusCode::from_u16(*status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
                write!(f, "the server answered {status} {reason}")?;
                match (message, code) {
                    (Some(m), Some(c)) => write!(f, ": {m} ({c})")?,
                    (Some(m), None) => write!(f, ": {m}")?,
                    (None, Some(c)) => write!(f, ": {c}")?,
                    (None, None) => {}
                }
                if let Some(secs) = retry_after {
                    write!(f, "; try again in {secs} s")?;
                }
                Ok(())
            }
            ApiError::Transport(e) => write!(f, "no answer from the server: {e}"),
            ApiError::Malformed(e) => write!(f, "the server's answer makes no sense: {e}"),
        }
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    message: Option<String>,
}

/// What this client calls itself: `palaver-cli/<version>`.
pub const CLIENT: &str = concat!("palaver-cli/", env!("CARGO_PKG_VERSION"));

/// A client of one server's API.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    server: Server,
}

impl Api {
    pub fn new(server: Server) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // A redirect would carry a password or a refresh token somewhere
            // else; the token API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(CLIENT)
            .build()
            .expect("a TLS backend is compiled in");
        Api { http, server }
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `POST /api/token`, naming this client (the account page lists the
    /// session as it).
    pub async fn sign_in(&self, username: &str, password: &str) -> Result<TokenPair, ApiError> {
        let body = serde_json::json!({ "username": username, "password": password, "client": CLIENT });
        let resp = self.send(self.http.post(self.server.endpoint("/api/token")).json(&body)).await?;
        token_pair(resp).await
    }

    /// `POST /api/token/refresh`. The refresh token given is spent once this
    /// answers 200: save the new one before anything else.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ApiError> {
        let body = serde_json::json!({ "refresh_token": refresh_token });
        let resp = self.send(self.http.post(self.server.endpoint("/api/token/refresh")).json(&body)).await?;
        token_pair(resp).await
    }

    /// `POST /api/logout` with the access token: ends that session.
    pub async fn logout(&self, access_token: &str) -> Result<(), ApiError> {
        let resp = self.send(self.http.post(self.server.endpoint("/api/logout")).bearer_auth(access_token)).await?;
        let _ = resp.bytes().await;
        Ok(())
    }

    /// `GET /api/rooms`: the user's rooms, in the server's order.
    pub async fn rooms(&self, access_token: &str) -> Result<Vec<Room>, ApiError> {
        let resp = self.send(self.http.get(self.server.endpoint("/api/rooms")).bearer_auth(access_token)).await?;
        Ok(json_body::<Rooms>(resp).await?.rooms)
    }

    /// `POST /api/rooms` `{"name","visibility"}`: a new room, the user its owner.
    pub async fn create_room(&self, access_token: &str, name: &str, visibility: &str) -> Result<Room, ApiError> {
        let body = serde_json::json!({ "name": name, "visibility": visibility });
        let req = self.http.post(self.server.endpoint("/api/rooms")).bearer_auth(access_token).json(&body);
        json_body(self.send(req).await?).await
    }

    /// `GET /chat/{room}/history?limit=N`: the room's last `limit` messages,
    /// oldest first.
    pub async fn history(&self, access_token: &str, room: &str, limit: u32) -> Result<Vec<Stored>, ApiError> {
        let url = self.server.endpoint(&format!("/chat/{}/history?limit={limit}", segment(room)));
        let resp = self.send(self.http.get(url).bearer_auth(access_token)).await?;
        Ok(json_body::<History>(resp).await?.messages)
    }

    /// `GET /api/rooms/{room}/members`.
    pub async fn members(&self, access_token: &str, room: &str) -> Result<Vec<Member>, ApiError> {
        let url = self.server.endpoint(&format!("/api/rooms/{}/members", segment(room)));
        let resp = self.send(self.http.get(url).bearer_auth(access_token)).await?;
        Ok(json_body::<Members>(resp).await?.members)
    }

    /// `PUT /api/rooms/{room}/members/{user}`: adds a member (a member already is one).
    pub async fn add_member(&self, access_token: &str, room: &str, user: &str) -> Result<(), ApiError> {
        let url = self.server.endpoint(&format!("/api/rooms/{}/members/{}", segment(room), segment(user)));
        let resp = self.send(self.http.put(url).bearer_auth(access_token)).await?;
        let _ = resp.bytes().await;
        Ok(())
    }

    /// `DELETE /api/rooms/{room}/members/{user}`: removes a member, or
    /// (the user's own name) leaves.
    pub async fn remove_member(&self, access_token: &str, room: &str, user: &str) -> Result<(), ApiError> {
        let url = self.server.endpoint(&format!("/api/rooms/{}/members/{}", segment(room), segment(user)));
        let resp = self.send(self.http.delete(url).bearer_auth(access_token)).await?;
        let _ = resp.bytes().await;
        Ok(())
    }

    /// `GET /api/sessions`: every session of the user.
    pub async fn sessions(&self, access_token: &str) -> Result<Vec<SessionInfo>, ApiError> {
        let resp = self.send(self.http.get(self.server.endpoint("/api/sessions")).bearer_auth(access_token)).await?;
        Ok(json_body::<Sessions>(resp).await?.sessions)
    }

    /// `DELETE /api/sessions/{id}`: ends one session of the user.
    pub async fn end_session(&self, access_token: &str, id: &str) -> Result<(), ApiError> {
        let url = self.server.endpoint(&format!("/api/sessions/{}", segment(id)));
        let resp = self.send(self.http.delete(url).bearer_auth(access_token)).await?;
        let _ = resp.bytes().await;
        Ok(())
    }

    /// Sends, and turns every non-2xx answer into [`ApiError::Status`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        // `without_url`: the URL holds no secret, but the error is shown as
        // the server's, which the caller names anyway.
        let resp = req.send().await.map_err(|e| ApiError::Transport(describe(&e.without_url())))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after =
            resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        let body: ErrorBody = resp.json().await.unwrap_or_default();
        Err(ApiError::Status { status: status.as_u16(), code: body.error, message: body.message, retry_after })
    }
}

/// A 2xx answer's JSON body.
async fn json_body<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
    let bytes = resp.bytes().await.map_err(|e| ApiError::Transport(describe(&e.without_url())))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Malformed(json::describe(&e)))
}

async fn token_pair(resp: reqwest::Response) -> Result<TokenPair, ApiError> {
    let pair: TokenPair = json_body(resp).await?;
    if !pair.token_type.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Malformed(format!("token_type {:?}, not Bearer", pair.token_type)));
    }
    if pair.access_token.is_empty() || pair.refresh_token.is_empty() {
        return Err(ApiError::Malformed("an empty token".into()));
    }
    Ok(pair)
}

/// reqwest's error with its causes ("error sending request: connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_http_urls_kept_without_a_trailing_slash() {
        assert_eq!(Server::parse("http://127.0.0.1:8080/").unwrap().base(), "http://127.0.0.1:8080");
        assert_eq!(Server::parse(" https://chat.example ").unwrap().base(), "https://chat.example");
        assert_eq!(Server::parse("https://example.com/palaver/").unwrap().base(), "https://example.com/palaver");
        for bad in ["ftp://x", "example.com", "http://", "http://u:p@h", "http://h/?q=1", ""] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_websocket_url_follows_the_scheme() {
        let s = Server::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(s.ws_url("lobby", None), "ws://127.0.0.1:8080/ws?room=lobby");
        assert_eq!(s.ws_url("lobby", Some("17-2")), "ws://127.0.0.1:8080/ws?room=lobby&after=17-2");
        let s = Server::parse("https://chat.example/p/").unwrap();
        assert_eq!(s.ws_url("r", None), "wss://chat.example/p/ws?room=r");
        assert_eq!(s.endpoint("/api/token"), "https://chat.example/p/api/token");
    }

    #[test]
    fn a_direct_room_is_addressed_with_an_escaped_at_in_a_query_and_a_plain_one_in_a_path() {
        let s = Server::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(s.ws_url("@bob", None), "ws://127.0.0.1:8080/ws?room=%40bob");
        assert_eq!(s.ws_url("@Bo_b.x-1", Some("3-0")), "ws://127.0.0.1:8080/ws?room=%40Bo_b.x-1&after=3-0");
        assert_eq!(segment("@bob"), "@bob");
        assert_eq!(segment("dev-ops"), "dev-ops");
        assert_eq!(segment("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9", "nothing leaves its segment");
    }

    #[test]
    fn plain_http_is_fine_only_on_this_machine() {
        for local in ["http://127.0.0.1:1", "http://127.9.9.9", "http://localhost:8080", "http://[::1]:8080"] {
            assert!(!Server::parse(local).unwrap().is_plain_remote(), "{local}");
        }
        for remote in ["http://10.0.0.1", "http://chat.example", "http://[2001:db8::1]"] {
            assert!(Server::parse(remote).unwrap().is_plain_remote(), "{remote}");
        }
        assert!(!Server::parse("https://chat.example").unwrap().is_plain_remote());
    }

    #[test]
    fn token_pairs_never_show_their_tokens() {
        let pair: TokenPair = serde_json::from_str(
            r#"{"access_token":"AT-secret","token_type":"Bearer","expires_in":300,"refresh_token":"RT-secret","session_expires_at":5}"#,
        )
        .unwrap();
        let shown = format!("{pair:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("300"));
    }

    #[test]
    fn errors_read_as_the_servers_words() {
        let e = ApiError::Status {
            status: 429,
            code: Some("too_many_attempts".into()),
            message: Some("Too many failed sign-ins.".into()),
            retry_after: Some(60),
        };
        assert_eq!(
            e.to_string(),
            "the server answered 429 Too Many Requests: Too many failed sign-ins. (too_many_attempts); try again in 60 s"
        );
        let e = ApiError::Status {
            status: 401,
            code: Some("invalid_credentials".into()),
            message: None,
            retry_after: None,
        };
        assert_eq!(e.to_string(), "the server answered 401 Unauthorized: invalid_credentials");
        assert_eq!(e.reason(), "invalid_credentials");
        assert!(e.status() == Some(401) && !e.is_transient());
        assert!(ApiError::Transport("refused".into()).is_transient());
        assert!(ApiError::Status { status: 503, code: None, message: None, retry_after: None }.is_transient());
    }
}
