//! The bare ceiling: the least a WebSocket chat server can do, to measure
//! palaver against. tokio-tungstenite with 4 KiB read and write buffers, no
//! authentication, no storage, no presence, no pings: it accepts `GET /ws`,
//! sends a `hello`, and broadcasts each `send` to the sockets of the same
//! room (in-process, in one order per room), acking it to the sender.
//!
//! The load generator starts it as a process (`bare serve --listen ADDR`);
//! `cargo bench --bench bare` only builds it. Run by cargo with anything
//! else on its command line (as `cargo bench --bench bare --bench loadgen
//! -- …` does), it says so and exits.
//!
//! Frames, as palaver's (docs/protocol.md §3): `{"type":"hello","user":
//! "anonymous","room":R}`; `{"type":"send","body":B,"client_id":C}` from
//! a client is answered `{"type":"ack","client_id":C,"id":N}` and reaches
//! every socket of the room as `{"type":"message","room":R,"id":N,"user":
//! "anonymous","body":B,"sent_at":T,"client_id":C}`, where `N` counts up
//! per room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
    protocol::WebSocketConfig,
    Message, Utf8Bytes,
};

#[derive(Default)]
struct Room {
    last_id: u64,
    members: HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>,
}

#[derive(Default)]
struct Rooms {
    next_member: u64,
    rooms: HashMap<String, Room>,
}

type Shared = Arc<Mutex<Rooms>>;

fn room_of(request: &Request) -> Option<String> {
    let query = request.uri().query().unwrap_or("");
    let room = query.split('&').find_map(|pair| pair.strip_prefix("room=")).unwrap_or("lobby");
    let valid = !room.is_empty()
        && room.len() <= 32
        && room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| room.to_owned())
}

async fn serve(stream: tokio::net::TcpStream, shared: Shared) {
    let config =
        WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(4096).max_message_size(Some(16 << 10));
    let mut room = None;
    // tungstenite's handshake callback fixes this signature, large Err and all.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != "/ws" {
            let mut refusal = ErrorResponse::new(None);
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        match room_of(request) {
            Some(name) => {
                room = Some(name);
                Ok(response)
            }
            None => {
                let mut refusal = ErrorResponse::new(None);
                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                Err(refusal)
            }
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    let room = room.expect("set by the accepted handshake");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let member = {
        let mut rooms = shared.lock().unwrap();
        rooms.next_member += 1;
        let member = rooms.next_member;
        rooms.rooms.entry(room.clone()).or_default().members.insert(member, tx);
        member
    };
    let hello = serde_json::json!({"type": "hello", "user": "anonymous", "room": room}).to_string();
    if ws.send(Message::Text(hello.into())).await.is_ok() {
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { break };
                    if ws.send(Message::Text(frame)).await.is_err() {
                        break;
                    }
                }
                incoming = ws.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    if frame["type"] != "send" {
                        continue;
                    }
                    let body = frame["body"].as_str().unwrap_or("").trim();
                    let client_id = frame["client_id"].as_str().unwrap_or("");
                    if body.is_empty() || body.chars().count() > 2000 {
                        continue;
                    }
                    let sent_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
                    // Numbered and handed to every member under the lock: one
                    // order per room, the ids' order.
                    let id = {
                        let mut rooms = shared.lock().unwrap();
                        let target = rooms.rooms.get_mut(&room).expect("this socket's room");
                        target.last_id += 1;
                        let id = target.last_id.to_string();
                        let message: Utf8Bytes = serde_json::json!({
                            "type": "message", "room": room, "id": id, "user": "anonymous",
                            "body": body, "sent_at": sent_at, "client_id": client_id,
                        })
                        .to_string()
                        .into();
                        for member in target.members.values() {
                            let _ = member.send(message.clone());
                        }
                        id
                    };
                    let ack = serde_json::json!({"type": "ack", "client_id": client_id, "id": id}).to_string();
                    if ws.send(Message::Text(ack.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let mut rooms = shared.lock().unwrap();
    if let Some(target) = rooms.rooms.get_mut(&room) {
        target.members.remove(&member);
        if target.members.is_empty() {
            rooms.rooms.remove(&room);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        eprintln!("bare: built; the load generator starts it (`bare serve --listen 127.0.0.1:PORT`)");
        return;
    }
    let listen =
        args.iter().position(|a| a == "--listen").and_then(|i| args.get(i + 1)).expect("--listen ADDR").clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        let shared = Shared::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, shared.clone()));
        }
    });
}
