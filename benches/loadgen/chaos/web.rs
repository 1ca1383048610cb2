//! The clients' wire: one HTTP/1.1 request per connection, and WebSocket
//! upgrades, each bounded in time. A request whose answer never came is
//! told apart from one that never reached a server: only the first may
//! have done something.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Error as WsError},
    MaybeTlsStream, WebSocketStream,
};

/// How long a request or an upgrade may take before the client gives up.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `name=value` of the `Set-Cookie` header, if any.
    pub(crate) fn cookie(&self) -> Option<String> {
        Some(self.header("set-cookie")?.split(';').next()?.to_owned())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// Why no answer came.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing listened: the request was not served.
    Refused,
    /// Sent, but the answer did not come (in time, or at all): it may have
    /// been served.
    Unknown(String),
}

pub(crate) async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> Result<Response, Failure> {
    let mut stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Failure::Refused),
        Ok(Err(err)) => return Err(Failure::Unknown(err.to_string())),
        Err(_) => return Err(Failure::Unknown("connect timed out".into())),
    };
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(raw)) => String::from_utf8_lossy(&raw).into_owned(),
        Ok(Err(err)) => return Err(Failure::Unknown(err.to_string())),
        Err(_) => return Err(Failure::Unknown("no answer within 5 s".into())),
    };
    parse(&raw)
        .ok_or_else(|| Failure::Unknown(format!("no HTTP answer: {:?}", raw.chars().take(80).collect::<String>())))
}

fn parse(raw: &str) -> Option<Response> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Some(Response { status, headers, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How an upgrade was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The server answered this status instead of 101.
    Status(u16),
    Failed(Failure),
}

/// `GET /ws{query}` with one header (`Cookie: …` or `Authorization: …`).
pub(crate) async fn upgrade(port: u16, query: &str, credential: &str) -> Result<Ws, Refusal> {
    let mut request = format!("ws://127.0.0.1:{port}/ws{query}").into_client_request().unwrap();
    let (name, value) = credential.split_once(": ").expect("a header");
    let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
    request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
    let stream = match tokio::time::timeout(TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Refusal::Failed(Failure::Refused))
        }
        Ok(Err(err)) => return Err(Refusal::Failed(Failure::Unknown(err.to_string()))),
        Err(_) => return Err(Refusal::Failed(Failure::Unknown("connect timed out".into()))),
    };
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => Err(Refusal::Status(response.status().as_u16())),
        Ok(Err(err)) => Err(Refusal::Failed(Failure::Unknown(err.to_string()))),
        Err(_) => Err(Refusal::Failed(Failure::Unknown("no 101 within 5 s".into()))),
    }
}

/// The `exp` claim (unix seconds) of a JWT, read without verifying it.
pub(crate) fn token_exp(token: &str) -> u64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url claims");
    serde_json::from_slice::<serde_json::Value>(&claims).expect("JSON claims")["exp"].as_u64().expect("exp")
}
