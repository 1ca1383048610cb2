//! `chat ROOM` and `chat @USER`: one WebSocket at a time, authenticated with
//! the access token, kept alive across drops, re-authenticated in-band
//! before its deadline, and given up for good when the user may no longer
//! see the room.
//!
//! The decisions are made by small pure types, each with its own tests:
//! [`outbox::Outbox`] (what to send and when), [`frames::Seen`] (what not
//! to print twice), [`reconnect::after_close`], [`reconnect::Backoff`] and
//! [`reconnect::busy_wait`] (whether and when to come back). The async code
//! here only carries them out.

pub mod frames;
pub mod input;
pub mod outbox;
pub mod pace;
pub mod reconnect;

use std::{io, time::Duration};

use futures_util::{
    stream::{SplitSink, SplitStream},
    SinkExt, StreamExt,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{sleep_until, timeout, Instant},
};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{
        self,
        client::IntoClientRequest,
        http::{header::AUTHORIZATION, HeaderValue},
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    api::ApiError,
    credentials::Refreshed,
    exit, json,
    terminal::printable,
    tokens::{refused_refresh, Tokens},
};
use frames::{message_line, presence_diff_line, presence_line, ClientFrame, Seen, ServerFrame};
use outbox::{Outbox, Refused, Verdict};
use pace::Pace;
use reconnect::{after_close, busy_wait, jitter, AfterClose, Backoff, Outage};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// After stdin ends, how long to wait for the next acknowledgement while
/// lines are still unacknowledged: the clock starts again at every one, so a
/// long pipe sent at the server's pace is not cut short.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// The upgrade must be answered within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// This client pings this often, so a dead connection is noticed whatever
/// the server's own ping interval is...
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and gives a connection up after hearing nothing for this long.
const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// After a refresh that failed for want of an answer, the next try.
const REFRESH_RETRY: Duration = Duration::from_secs(5);
/// Lines read ahead of the outbox; stdin is not read further until it drains.
const OUTBOX_MAX: usize = 256;

/// What `chat` needs: the tokens (and so the server and the user), and the
/// room: a name, or `@user` for a direct conversation.
pub struct Chat {
    pub tokens: Tokens,
    pub room: String,
    /// How many of the room's last messages to show before going live.
    pub last: u32,
}

/// Runs `chat` to its end; the process's exit code.
pub async fn run(chat: Chat) -> i32 {
    let (line_tx, lines) = mpsc::channel(64);
    input::start(line_tx, format!("{}> ", chat.room));
    let (interrupt_tx, interrupted) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(true);
        }
        // Keep the sender: a closed channel would read as an interrupt.
        std::future::pending::<()>().await
    });
    let mut session = Session {
        tokens: chat.tokens,
        room: chat.room,
        earlier: Some(chat.last).filter(|&n| n > 0),
        been_in: false,
        lines,
        stdin_open: true,
        drain_deadline: None,
        interrupted,
        outbox: Outbox::default(),
        seen: Seen::default(),
        backoff: Backoff::new(),
        outage: Outage::default(),
        pace: None,
        refreshing: None,
    };
    let code = session.run().await;
    session.settle_refresh().await;
    input::finish();
    code
}

/// How one socket ended.
enum End {
    /// Come back (after a backoff); the text says why it ended.
    Lost(String),
    /// Stop with this exit code.
    Exit(i32),
}

/// Why an upgrade did not give a socket.
enum Refusal {
    /// 401: the access token was not accepted.
    Unauthorized(String),
    /// 403: this user may not see the room (not a member, or no more).
    Forbidden(String),
    /// Worth another try later.
    Transient(String),
    /// 503 with `Retry-After`: the server is turning upgrades away; come
    /// back no sooner than this.
    Busy(Duration),
    /// Trying again would get the same answer.
    Fatal(String),
}

struct Session {
    tokens: Tokens,
    room: String,
    /// How many earlier messages to show before the first socket, until
    /// they are.
    earlier: Option<u32>,
    /// Whether the server has let this user into the room (said `hello`) in
    /// this run: a refusal after that means they were removed.
    been_in: bool,
    lines: mpsc::Receiver<String>,
    stdin_open: bool,
    /// Set when stdin ends: by then every line must be acknowledged.
    drain_deadline: Option<Instant>,
    interrupted: watch::Receiver<bool>,
    outbox: Outbox,
    seen: Seen,
    backoff: Backoff,
    outage: Outage,
    /// The pace of the socket's `hello`, when it gave one.
    pace: Option<Pace>,
    /// A refresh on its way. A task, not a future of this loop: once the
    /// server has answered, the old refresh token is spent, so the new one
    /// must reach the file even if the socket goes away meanwhile.
    refreshing: Option<JoinHandle<Result<Refreshed, ApiError>>>,
}

impl Session {
    async fn run(&mut self) -> i32 {
        // Set once a refresh has just given this token, so a 401 on the
        // upgrade right after means the session is over, not the token stale.
        let mut fresh = false;
        let mut must_refresh = false;
        loop {
            if self.done() {
                return exit::OK;
            }
            // A refresh the last socket started: its token is the one to use
            // (and it needs no `reauth` on the next socket).
            self.settle_refresh().await;
            if must_refresh || self.tokens.needs_refresh() {
                let refreshed = self.tokens.refresh(must_refresh).await;
                must_refresh = false;
                match refreshed {
                    Ok(()) => fresh = true,
                    Err(e) if e.status() == Some(401) => return self.tokens.signed_out(&refused_refresh(&e)),
                    Err(e) if e.is_transient() => {
                        self.lost(&format!("could not refresh the token: {e}"));
                        let pause = self.backoff.next_wait(jitter());
                        match self.wait(pause).await {
                            Some(code) => return code,
                            None => continue,
                        }
                    }
                    Err(e) => {
                        note(&format!("could not refresh the token: {e}"));
                        return exit::ERROR;
                    }
                }
            }
            if let Some(last) = self.earlier.take() {
                if let Some(code) = self.show_earlier(last).await {
                    return code;
                }
            }
            // Ctrl-C is heard while the upgrade is on its way (up to CONNECT_TIMEOUT).
            let mut interrupted = self.interrupted.clone();
            let connected = tokio::select! {
                connected = self.connect() => connected,
                _ = interrupted.changed() => return exit::OK,
            };
            let wait = match connected {
                Ok(socket) => {
                    fresh = false;
                    let started = Instant::now();
                    match self.converse(socket).await {
                        End::Exit(code) => return code,
                        End::Lost(why) => {
                            self.backoff.connection_ended(started.elapsed());
                            self.lost(&why);
                        }
                    }
                    self.backoff.next_wait(jitter())
                }
                Err(Refusal::Unauthorized(why)) if fresh => return self.tokens.signed_out(&why),
                Err(Refusal::Unauthorized(_)) => {
                    // Revoked keys, a clock that ran fast: one refresh decides.
                    must_refresh = true;
                    continue;
                }
                Err(Refusal::Forbidden(why)) => return self.no_access(&why),
                Err(Refusal::Fatal(why)) => {
                    note(&format!("cannot connect: {why}"));
                    return exit::ERROR;
                }
                Err(Refusal::Transient(why)) => {
                    self.lost(&format!("cannot connect: {why}"));
                    self.backoff.next_wait(jitter())
                }
                Err(Refusal::Busy(retry_after)) => {
                    let wait = busy_wait(retry_after, self.backoff.next_wait(jitter()), jitter());
                    if let Some(line) = self.outage.busy(wait, Instant::now().into_std()) {
                        note(&line);
                    }
                    wait
                }
            };
            if let Some(code) = self.wait(wait).await {
                return code;
            }
        }
    }

    /// The room's last `last` messages, shown before going live with the
    /// token just checked: the socket then asks for what came after the
    /// newest of them (`after=`), so none is shown twice and none is
    /// missed. `Some(code)` to stop.
    async fn show_earlier(&mut self, last: u32) -> Option<i32> {
        let asked = self.tokens.api().history(self.tokens.access_token(), &self.room, last).await;
        match asked {
            Ok(messages) => {
                for m in messages {
                    if self.seen.admit(&m.id, &m.user, None)
                        && print_line(&message_line(m.sent_at, &m.user, &m.body)).is_err()
                    {
                        return Some(exit::ERROR);
                    }
                }
            }
            // A public room not made yet (the upgrade makes it), or one this
            // user may not see (the upgrade says so, and exits).
            Err(e) if e.status() == Some(404) => {}
            // The socket is what counts: it refreshes, or signs out, itself.
            Err(e) => note(&format!("no earlier messages: {e}")),
        }
        None
    }

    /// stdin has ended and every line it gave is acknowledged.
    fn done(&self) -> bool {
        !self.stdin_open && self.outbox.is_empty()
    }

    /// Sits out a backoff while still reading stdin. `Some(code)` to stop.
    async fn wait(&mut self, pause: Duration) -> Option<i32> {
        let until = Instant::now() + pause;
        loop {
            if self.done() {
                return Some(exit::OK);
            }
            tokio::select! {
                _ = sleep_until(until) => return None,
                _ = self.interrupted.changed() => return Some(exit::OK),
                line = self.lines.recv(), if self.stdin_open && self.outbox.len() < OUTBOX_MAX => self.take_line(line),
                _ = sleep_until(self.drain_deadline.unwrap_or(until)), if self.drain_deadline.is_some() => {
                    return Some(self.give_up());
                }
            }
        }
    }

    /// Talks over one socket until it ends.
    async fn converse(&mut self, socket: Socket) -> End {
        let (mut sink, mut stream) = socket.split();
        let mut greeted = false;
        let mut last_heard = Instant::now();
        let mut next_ping = Instant::now() + PING_INTERVAL;
        let mut refresh_retry: Option<Instant> = None;
        let end = loop {
            if self.done() {
                close(&mut sink, &mut stream).await;
                return End::Exit(exit::OK);
            }
            // The server takes sends only once it has said hello, and at
            // the pace it gave there.
            let now = Instant::now();
            let paced = self.pace.as_ref().map(|p| p.ready_at(now.into_std())).filter(|&at| at > now.into_std());
            if greeted && paced.is_none() {
                if let Some(line) = self.outbox.next_to_send(now.into_std()) {
                    if let Some(pace) = &mut self.pace {
                        pace.take(now.into_std());
                    }
                    let frame = ClientFrame::Send { body: &line.body, client_id: &line.client_id }.to_json();
                    if let Err(e) = sink.send(Message::text(frame)).await {
                        break End::Lost(format!("sending failed: {e}"));
                    }
                }
            }
            let never = Instant::now() + Duration::from_secs(86_400);
            let outbox_wakeup = match paced {
                Some(at) if greeted && !self.outbox.is_empty() => Some(Instant::from_std(at)),
                _ => self.outbox.next_wakeup().map(Instant::from_std),
            };
            tokio::select! {
                _ = self.interrupted.changed() => {
                    close(&mut sink, &mut stream).await;
                    return End::Exit(exit::OK);
                }
                frame = stream.next() => {
                    last_heard = Instant::now();
                    let frame = match frame {
                        None => break End::Lost("connection lost".into()),
                        Some(Err(e)) => break End::Lost(format!("connection lost: {e}")),
                        Some(Ok(frame)) => frame,
                    };
                    match frame {
                        Message::Text(text) => match self.on_frame(text.as_str()) {
                            Step::Go => {}
                            Step::Greeted(rate) => {
                                greeted = true;
                                self.pace = rate.map(|rate| Pace::new(rate.with_margin(), Instant::now().into_std()));
                            }
                            Step::Reauthenticate => self.start_refresh(),
                            Step::Stop(code) => {
                                close(&mut sink, &mut stream).await;
                                return End::Exit(code);
                            }
                        },
                        Message::Close(frame) => {
                            let (code, reason) =
                                frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            match after_close(code, &reason) {
                                AfterClose::SignedOut(why) => return End::Exit(self.tokens.signed_out(&why)),
                                AfterClose::Removed => {
                                    note(&format!("removed from {}", self.room));
                                    return End::Exit(exit::NO_ACCESS);
                                }
                                AfterClose::Reconnect(why) => break End::Lost(why),
                                AfterClose::Fatal(why) => {
                                    note(&format!("the server ended the connection: {why}"));
                                    return End::Exit(exit::ERROR);
                                }
                            }
                        }
                        // Pongs (to our pings) only show the line is alive.
                        _ => {}
                    }
                }
                line = self.lines.recv(), if self.stdin_open && self.outbox.len() < OUTBOX_MAX => self.take_line(line),
                _ = sleep_until(outbox_wakeup.unwrap_or(never)), if outbox_wakeup.is_some() => {}
                refreshed = join(&mut self.refreshing), if self.refreshing.is_some() => {
                    self.refreshing = None;
                    match refreshed {
                        Ok(Ok(r)) => {
                            self.tokens.adopt(r);
                            let frame = ClientFrame::Reauth { token: self.tokens.access_token() }.to_json();
                            if let Err(e) = sink.send(Message::text(frame)).await {
                                break End::Lost(format!("sending failed: {e}"));
                            }
                        }
                        Ok(Err(e)) if e.status() == Some(401) => {
                            close(&mut sink, &mut stream).await;
                            return End::Exit(self.tokens.signed_out(&refused_refresh(&e)));
                        }
                        Ok(Err(e)) => {
                            note(&format!("could not refresh the token: {e}; trying again in {} s", REFRESH_RETRY.as_secs()));
                            refresh_retry = Some(Instant::now() + REFRESH_RETRY);
                        }
                        Err(e) => {
                            note(&format!("the refresh failed: {e}"));
                            refresh_retry = Some(Instant::now() + REFRESH_RETRY);
                        }
                    }
                }
                _ = sleep_until(refresh_retry.unwrap_or(never)), if refresh_retry.is_some() => {
                    refresh_retry = None;
                    self.start_refresh();
                }
                _ = sleep_until(next_ping) => {
                    if last_heard.elapsed() >= SILENCE_LIMIT {
                        break End::Lost(format!("nothing heard for {} s", SILENCE_LIMIT.as_secs()));
                    }
                    next_ping = Instant::now() + PING_INTERVAL;
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        break End::Lost(format!("sending failed: {e}"));
                    }
                }
                _ = sleep_until(self.drain_deadline.unwrap_or(never)), if self.drain_deadline.is_some() => {
                    close(&mut sink, &mut stream).await;
                    return End::Exit(self.give_up());
                }
            }
        };
        self.outbox.on_disconnect();
        end
    }

    /// One text frame from the server.
    fn on_frame(&mut self, text: &str) -> Step {
        let frame = match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => frame,
            Err(e) => {
                note(&format!("ignored a frame this client cannot read ({})", json::describe(&e)));
                return Step::Go;
            }
        };
        match frame {
            ServerFrame::Hello { user, room, rate } => {
                self.been_in = true;
                note(&format!("connected to {} as {}", printable(&room), printable(&user)));
                if let Some(back) = self.outage.greeted(Instant::now().into_std()) {
                    note(&back);
                }
                return Step::Greeted(rate);
            }
            ServerFrame::Presence { room, online, count } => note(&presence_line(&room, &online, count)),
            ServerFrame::PresenceDiff { room, joined, left, count } => {
                note(&presence_diff_line(&room, &joined, &left, count))
            }
            ServerFrame::Message { id, user, body, sent_at, client_id } => {
                if self.seen.admit(&id, &user, client_id.as_deref())
                    && print_line(&message_line(sent_at, &user, &body)).is_err()
                {
                    // Nobody reads any more (a closed pipe): nothing left to do.
                    return Step::Stop(exit::ERROR);
                }
            }
            ServerFrame::Ack { client_id: Some(client_id), .. } => {
                if self.outbox.on_ack(&client_id).is_some() && self.drain_deadline.is_some() {
                    self.drain_deadline = Some(Instant::now() + DRAIN_WAIT);
                }
            }
            ServerFrame::Ack { client_id: None, .. } => {}
            ServerFrame::Reauthenticate {} => return Step::Reauthenticate,
            ServerFrame::Reauthenticated {} => note("reauthenticated"),
            ServerFrame::RoomAdded { room, visibility } => match visibility {
                Some(v) => note(&format!("now a member of {} ({})", printable(&room), printable(&v))),
                None => note(&format!("now a member of {}", printable(&room))),
            },
            ServerFrame::RoomRemoved { room } => note(&format!("no longer a member of {}", printable(&room))),
            ServerFrame::Error { code, message, client_id } => {
                match self.outbox.on_error(&code, client_id.as_deref(), Instant::now().into_std()) {
                    // Said once per line, not at every resend.
                    Verdict::Resend { attempts: 1, wait, .. } => {
                        note(&format!("{code}: {}; sending it again in {} s", printable(&message), wait.as_secs_f64()))
                    }
                    Verdict::Resend { .. } => {}
                    Verdict::Dropped(line) => {
                        note(&format!("not sent ({code}: {}): {}", printable(&message), printable(&line.body)))
                    }
                    Verdict::NotOurs => note(&format!("the server says {code}: {}", printable(&message))),
                }
            }
            ServerFrame::Unknown => {}
        }
        Step::Go
    }

    /// A line from stdin, or its end.
    fn take_line(&mut self, line: Option<String>) {
        let Some(body) = line else {
            self.stdin_open = false;
            self.drain_deadline = Some(Instant::now() + DRAIN_WAIT);
            return;
        };
        let client_id = uuid::Uuid::new_v4().to_string();
        match self.outbox.push(body, client_id) {
            Ok(()) | Err(Refused::Blank) => {}
            Err(Refused::TooLong(n)) => {
                note(&format!("not sent: the line has {n} characters, at most {}", outbox::MAX_BODY_CHARS))
            }
        }
    }

    /// Starts a refresh in the background, unless one is under way.
    fn start_refresh(&mut self) {
        if self.refreshing.is_none() {
            self.refreshing = Some(self.tokens.spawn_refresh());
        }
    }

    /// Waits (briefly) for a refresh on its way, so its new refresh token is saved.
    async fn settle_refresh(&mut self) {
        if let Some(handle) = self.refreshing.take() {
            if let Ok(Ok(Ok(r))) = timeout(Duration::from_secs(10), handle).await {
                self.tokens.adopt(r);
            }
        }
    }

    /// The connection is gone or cannot be made: said once until it is back.
    fn lost(&mut self, why: &str) {
        if let Some(line) = self.outage.failed(why, Instant::now().into_std()) {
            note(&line);
        }
    }

    /// The server will not let this user into the room: if it did before,
    /// they were removed while away. Never retried.
    fn no_access(&self, why: &str) -> i32 {
        if self.been_in {
            note(&format!("removed from {} ({why})", self.room));
        } else {
            note(&format!("no access to {}: {why}", self.room));
        }
        exit::NO_ACCESS
    }

    fn give_up(&self) -> i32 {
        note(&format!(
            "gave up: {} line(s) not confirmed by the server, none for {} s",
            self.outbox.len(),
            DRAIN_WAIT.as_secs()
        ));
        exit::ERROR
    }

    /// The upgrade, with the access token in `Authorization`, and
    /// `after=` the last message shown so none is missed or repeated.
    async fn connect(&self) -> Result<Socket, Refusal> {
        let after = self.seen.last().map(|id| id.to_string());
        let url = self.tokens.api().server().ws_url(&self.room, after.as_deref());
        let mut request = url.into_client_request().map_err(|e| Refusal::Fatal(e.to_string()))?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", self.tokens.access_token()))
            .map_err(|_| Refusal::Fatal("the saved access token is not fit for a header; log in again".into()))?;
        bearer.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, bearer);
        match timeout(CONNECT_TIMEOUT, connect_async(request)).await {
            Err(_) => Err(Refusal::Transient(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status();
                let said = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("message").or(v.get("error")).and_then(|m| m.as_str()).map(printable));
                let why = match said {
                    Some(said) => format!("the server answered {status}: {said}"),
                    None => format!("the server answered {status}"),
                };
                let busy = retry_after(response.headers()).filter(|_| status.as_u16() == 503);
                Err(match (status.as_u16(), busy) {
                    (_, Some(retry_after)) => Refusal::Busy(retry_after),
                    (401, _) => Refusal::Unauthorized(why),
                    (403, _) => Refusal::Forbidden(why),
                    (408 | 429 | 500..=599, _) => Refusal::Transient(why),
                    _ => Refusal::Fatal(why),
                })
            }
            Ok(Err(e @ (tungstenite::Error::Tls(_) | tungstenite::Error::Url(_)))) => {
                Err(Refusal::Fatal(e.to_string()))
            }
            Ok(Err(e)) => Err(Refusal::Transient(e.to_string())),
        }
    }
}

/// A `Retry-After` in whole seconds (the form palaver sends; an HTTP date
/// is not read).
fn retry_after(headers: &tungstenite::http::HeaderMap) -> Option<Duration> {
    let secs = headers.get(tungstenite::http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// What a frame asks of the loop.
enum Step {
    Go,
    /// A `hello`, with the pace it asks for.
    Greeted(Option<pace::Rate>),
    Reauthenticate,
    Stop(i32),
}

/// Awaits the refresh in `slot` (the caller checks there is one).
async fn join<T>(slot: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match slot {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Closes with 1000 and waits a moment for the server's answer.
async fn close(sink: &mut SplitSink<Socket, Message>, stream: &mut SplitStream<Socket>) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    if sink.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = stream.next().await {} }).await;
    }
}

/// A message line on stdout, flushed at once (tests and pipes read it live).
fn print_line(line: &str) -> io::Result<()> {
    input::show(line)
}

/// Presence and everything else about the connection goes to stderr.
fn note(text: &str) {
    input::note(text)
}
