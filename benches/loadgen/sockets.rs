//! Client WebSockets: opening one (over 16 source addresses; once, or
//! retried), reading its frames, and holding many idle ones open.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::Semaphore, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, handshake::client::Request, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Source addresses cycle through 127.0.0.1-16: one source address has only
/// ~28k ephemeral ports towards one server port.
pub(crate) static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

/// The upgrade request for `/ws{query}` on `port`, with `cookie` if any.
pub(crate) fn upgrade_request(port: u16, cookie: &str, query: &str) -> Request {
    let mut request = format!("ws://127.0.0.1:{port}/ws{query}").into_client_request().unwrap();
    if !cookie.is_empty() {
        request.headers_mut().insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    request
}

/// One attempt at `request` from the next source address: the socket, or
/// why not (a refusal keeps its HTTP response, a failed connect its error).
pub(crate) async fn try_open(port: u16, request: &Request) -> Result<Ws, tungstenite::Error> {
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % 16) as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await?;
    let (ws, _) = tokio_tungstenite::client_async(request.clone(), MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

pub(crate) async fn open(port: u16, cookie: &str, query: &str) -> Ws {
    let request = upgrade_request(port, cookie, query);
    let mut attempt = 0;
    loop {
        match try_open(port, &request).await {
            Ok(ws) => return ws,
            Err(err) if attempt < 5 => {
                attempt += 1;
                eprintln!("connect retry after: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot open a socket: {err}"),
        }
    }
}

pub(crate) async fn next_json(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(frame)) => panic!("socket closed: {frame:?}"),
            Ok(_) => continue,
            Err(err) => panic!("socket failed: {err}"),
        }
    }
}

/// Reads frames until the socket ends; says how (a close frame's code and
/// reason, an error, or the stream's end).
pub(crate) async fn until_closed(ws: &mut Ws) -> String {
    read_until_closed(ws, |_| {}).await
}

/// `until_closed`, handing every text frame to `read` on the way.
async fn read_until_closed(ws: &mut Ws, mut read: impl FnMut(&str)) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => return format!("{} {}", u16::from(frame.code), frame.reason),
            Some(Ok(Message::Close(None))) => return "a close without a code".into(),
            Some(Ok(Message::Text(text))) => read(&text),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return format!("an error: {err}"),
            None => return "the end of the stream".into(),
        }
    }
}

/// Opens a socket into `room` as `cookie`'s user, sends `body` and waits
/// for its ack; the message is in the room when this returns.
pub(crate) async fn say(port: u16, cookie: &str, room: &str, body: &str) {
    let mut ws = open(port, cookie, &format!("?room={room}")).await;
    let hello = next_json(&mut ws).await.expect("hello");
    assert_eq!(hello["room"].as_str(), Some(room), "{hello}");
    let frame = serde_json::json!({"type": "send", "body": body, "client_id": "loadgen-say"});
    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
    loop {
        let frame = next_json(&mut ws).await.expect("the ack");
        match frame["type"].as_str() {
            Some("ack") if frame["client_id"] == "loadgen-say" => break,
            Some("error") => panic!("sending into {room} failed: {frame}"),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
}

/// The body of the message `Held::heard` counts: said into a room after
/// something happened there, it proves the held sockets still receive.
pub(crate) const MARKER: &str = "loadgen: still listening?";

/// Idle sockets held open: each answers pings and nothing else, and ends
/// only if the server ends it (saying how); each counts a `MARKER` message.
pub(crate) struct Held {
    pub(crate) tasks: Vec<JoinHandle<String>>,
    opened: Arc<AtomicU64>,
    /// How many got a `message` whose body is `MARKER`.
    marked: Arc<AtomicU64>,
}

impl Held {
    /// Opens a socket for each `(port, cookie, query)`, 256 handshakes at a
    /// time; every one must get its `hello`.
    pub(crate) fn open(sockets: Vec<(u16, String, String)>) -> Held {
        let gate = Arc::new(Semaphore::new(256));
        let opened = Arc::new(AtomicU64::new(0));
        let marked = Arc::new(AtomicU64::new(0));
        let tasks = sockets
            .into_iter()
            .map(|(port, cookie, query)| {
                let (gate, opened, marked) = (gate.clone(), opened.clone(), marked.clone());
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.unwrap();
                    let mut ws = open(port, &cookie, &query).await;
                    let hello = next_json(&mut ws).await.expect("hello");
                    assert_eq!(hello["type"], "hello");
                    drop(permit);
                    opened.fetch_add(1, Ordering::Relaxed);
                    let mut heard = false;
                    read_until_closed(&mut ws, |text| {
                        // Most frames are presence: skip them before parsing.
                        if !heard && text.contains(MARKER) {
                            let frame: serde_json::Value = serde_json::from_str(text).unwrap();
                            heard = frame["type"] == "message" && frame["body"] == MARKER;
                            marked.fetch_add(heard.into(), Ordering::Relaxed);
                        }
                    })
                    .await
                })
            })
            .collect();
        Held { tasks, opened, marked }
    }

    /// Waits until every socket has its `hello`; none may end meanwhile.
    pub(crate) async fn opened(&self) -> Duration {
        let started = Instant::now();
        while self.opened.load(Ordering::Relaxed) < self.tasks.len() as u64 {
            assert_eq!(self.closed(), 0, "a socket ended while the sockets were opening");
            assert!(started.elapsed() < Duration::from_secs(600), "opening sockets took too long");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    }

    /// Waits until every socket got a `MARKER` message, or `within` has
    /// passed; returns how many got one.
    pub(crate) async fn heard(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let heard = self.marked.load(Ordering::Relaxed) as usize;
            if heard >= self.tasks.len() || Instant::now() >= deadline {
                return heard;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many sockets the server ended.
    pub(crate) fn closed(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Why the first few ended.
    pub(crate) async fn report(self) -> Vec<String> {
        let mut why = Vec::new();
        for task in self.tasks {
            if task.is_finished() && why.len() < 5 {
                why.push(task.await.unwrap_or_else(|e| format!("panicked: {e}")));
            } else {
                task.abort();
            }
        }
        why
    }
}
