//! The WebSocket protocol's frames and close codes (docs/protocol.md §3):
//! the wire format, and nothing else.
//!
//! A frame's `room` is the room's label as its socket's user calls it (a
//! name, or `@other` for a direct room), never a direct room's key.

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    clock::UnixMillis,
    model::{Message, MessageId, RoomKind},
};

/// A frame from the client.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        body: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// After a refresh over HTTP. A token socket carries its new token.
    Reauth {
        #[serde(default)]
        token: Option<String>,
    },
    /// The reader has read the socket's room up to this message id
    /// (docs/protocol.md §3.3). Kept as text: a bad id is answered with
    /// an `invalid` that says so.
    Read { up_to: String },
}

/// A frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First, always. `rate` is the pace the client may send at (§3.6);
    /// `read_markers` says the server takes `read` frames (§3.3, §3.8).
    Hello {
        user: &'a str,
        room: &'a str,
        expires_at: UnixMillis,
        rate: Rate,
        read_markers: bool,
    },
    Message {
        room: &'a str,
        id: MessageId,
        user: &'a str,
        body: &'a str,
        sent_at: UnixMillis,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        id: MessageId,
    },
    /// Who is online, first thing after `hello`: at most 500 names, sorted,
    /// and the true count.
    Presence {
        room: &'a str,
        online: &'a [String],
        count: usize,
    },
    /// What changed since the last presence frame (empty lists when the
    /// room has more than 500 online: then only the count).
    PresenceDiff {
        room: &'a str,
        joined: &'a [String],
        left: &'a [String],
        count: usize,
    },
    Reauthenticate {
        expires_at: UnixMillis,
    },
    Reauthenticated {
        expires_at: UnixMillis,
    },
    /// Unread counts of one of the user's other rooms (§3.8); `unread`
    /// counts to [`UNREAD_CAP`], "that many or more".
    Unread {
        room: &'a str,
        unread: u32,
        mentions: u32,
    },
    /// The user became a member of a private room (said on each of their
    /// sockets, whichever room it is in: the sidebar lists it).
    RoomAdded {
        room: &'a str,
        visibility: RoomKind,
    },
    /// The user may no longer see a room (removed, left, or the room was
    /// deleted): said on their sockets in other rooms; those in the room
    /// are closed with 4403.
    RoomRemoved {
        room: &'a str,
    },
    /// Something was refused. `client_id` is present when the error is
    /// about one `send`, so the client knows which message failed.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
    },
}

/// How far unread counts go: a room with more says this many (the client
/// shows "99+"), so counting costs at most this many messages per room.
pub const UNREAD_CAP: u32 = 100;

/// An `unread` frame: how many messages in `room`, another of the user's
/// rooms, came after their read marker, and how many of those mention them.
pub fn unread(room: &str, unread: u32, mentions: u32) -> Utf8Bytes {
    ServerFrame::Unread { room, unread, mentions }.to_text()
}

/// The sending pace a socket is held to (docs/protocol.md §3.6): frames
/// per second sustained, and how many at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Invalid,
    RateLimited,
    Unavailable,
}

/// The `type` of every server frame: what a test that walks the frames
/// (tests/it/rooms.rs) must have a check for. A frame added to
/// [`ServerFrame`] fails this module's unit test until it is named here
/// (and in the test's match, which the compiler holds to the enum).
pub const SERVER_FRAMES: &[&str] = &[
    "hello",
    "message",
    "ack",
    "presence",
    "presence_diff",
    "reauthenticate",
    "reauthenticated",
    "unread",
    "room_added",
    "room_removed",
    "error",
];

impl ServerFrame<'_> {
    pub fn to_text(&self) -> Utf8Bytes {
        serde_json::to_string(self).expect("frames serialize").into()
    }
}

#[cfg(test)]
impl ServerFrame<'_> {
    /// Its `type`: every variant named, so that a new one is named here too.
    fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Hello { .. } => "hello",
            ServerFrame::Message { .. } => "message",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::PresenceDiff { .. } => "presence_diff",
            ServerFrame::Reauthenticate { .. } => "reauthenticate",
            ServerFrame::Reauthenticated { .. } => "reauthenticated",
            ServerFrame::Unread { .. } => "unread",
            ServerFrame::RoomAdded { .. } => "room_added",
            ServerFrame::RoomRemoved { .. } => "room_removed",
            ServerFrame::Error { .. } => "error",
        }
    }
}

/// The `message` frame of a stored message, serialized once per delivery.
pub fn message(room: &str, m: &Message) -> Utf8Bytes {
    ServerFrame::Message {
        room,
        id: m.id,
        user: &m.user,
        body: &m.body,
        sent_at: m.sent_at,
        client_id: m.client_id.as_deref(),
    }
    .to_text()
}

/// A close code with its reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub const LOGGED_OUT: CloseReason = CloseReason { code: 4401, reason: "logged out" };
pub const SESSION_EXPIRED: CloseReason = CloseReason { code: 4401, reason: "session expired" };
pub const SESSION_REVOKED: CloseReason = CloseReason { code: 4401, reason: "session revoked" };
/// A token socket's deadline was its access token's expiry.
pub const TOKEN_EXPIRED: CloseReason = CloseReason { code: 4401, reason: "token expired" };
/// A token socket's `reauth` carried a token that is not valid for it.
pub const INVALID_TOKEN: CloseReason = CloseReason { code: 4401, reason: "invalid token" };
/// The user may no longer see the socket's room (docs/protocol.md §6).
pub const ACCESS_REVOKED: CloseReason = CloseReason { code: 4403, reason: "access revoked" };
pub const SHUTTING_DOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
pub const POLICY_VIOLATION: CloseReason = CloseReason { code: 1008, reason: "policy violation" };
pub const TOO_BIG: CloseReason = CloseReason { code: 1009, reason: "message too big" };
/// A frame that breaks the WebSocket protocol (unmasked, a reserved opcode
/// or bit, a bad control frame).
pub const PROTOCOL_ERROR: CloseReason = CloseReason { code: 1002, reason: "protocol error" };
/// A text frame that is not UTF-8.
pub const INVALID_TEXT: CloseReason = CloseReason { code: 1007, reason: "invalid utf-8" };
/// The socket stopped reading and its queue filled. 1013 "try again
/// later" makes clients reconnect with `after=`.
pub const SLOW_CONSUMER: CloseReason = CloseReason { code: 1013, reason: "slow consumer" };
/// The store could not confirm the session at its deadline (or replay
/// failed, or access could not be confirmed: see the registry's
/// revocation log). The client reconnects; the upgrade answers 503 until the store
/// is back, and 101 only if the session still lives.
pub const STORE_UNAVAILABLE: CloseReason = CloseReason { code: 1013, reason: "store unavailable" };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_and_reject_strangers() {
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"send","body":"hi","client_id":"c1"}"#).unwrap(),
            ClientFrame::Send { body: "hi".into(), client_id: Some("c1".into()) }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"send","body":"hi"}"#).unwrap(),
            ClientFrame::Send { body: "hi".into(), client_id: None }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"reauth"}"#).unwrap(),
            ClientFrame::Reauth { token: None }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"reauth","token":"t"}"#).unwrap(),
            ClientFrame::Reauth { token: Some("t".into()) }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"read","up_to":"5-1"}"#).unwrap(),
            ClientFrame::Read { up_to: "5-1".into() }
        );
        for bad in [
            r#"{"type":"read"}"#,
            r#"{"type":"read","up_to":5}"#,
            r#"{"type":"shout"}"#,
            r#"{"body":"x"}"#,
            r#"{"type":"send","body":5}"#,
            "[]",
            "nope",
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_frames_match_the_spec() {
        let room = "lobby";
        let hello = ServerFrame::Hello {
            user: "alice",
            room,
            expires_at: UnixMillis::from_millis(5),
            rate: Rate { per_sec: 2.5, burst: 20 },
            read_markers: true,
        }
        .to_text();
        assert_eq!(
            hello.as_str(),
            r#"{"type":"hello","user":"alice","room":"lobby","expires_at":5,"rate":{"per_sec":2.5,"burst":20},"read_markers":true}"#
        );
        let m = Message {
            id: MessageId { ms: 7, seq: 1 },
            user: "bob".into(),
            body: "<b>".into(),
            sent_at: UnixMillis::from_millis(9),
            client_id: None,
        };
        assert_eq!(
            message(room, &m).as_str(),
            r#"{"type":"message","room":"lobby","id":"7-1","user":"bob","body":"<b>","sent_at":9}"#
        );
        assert_eq!(unread("dev", 3, 1).as_str(), r#"{"type":"unread","room":"dev","unread":3,"mentions":1}"#);
        let err = ServerFrame::Error { code: ErrorCode::RateLimited, message: "slow down", client_id: None };
        assert_eq!(err.to_text().as_str(), r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
        let added = ServerFrame::RoomAdded { room: "team", visibility: RoomKind::Private };
        assert_eq!(added.to_text().as_str(), r#"{"type":"room_added","room":"team","visibility":"private"}"#);
        let removed = ServerFrame::RoomRemoved { room: "team" };
        assert_eq!(removed.to_text().as_str(), r#"{"type":"room_removed","room":"team"}"#);
    }

    #[test]
    fn the_list_of_server_frames_is_the_enum() {
        let none: &[String] = &[];
        let t = UnixMillis::from_millis(1);
        let rate = Rate { per_sec: 1.0, burst: 1 };
        let id = MessageId { ms: 1, seq: 0 };
        let every = [
            ServerFrame::Hello { user: "a", room: "r", expires_at: t, rate, read_markers: true },
            ServerFrame::Message { room: "r", id, user: "a", body: "b", sent_at: t, client_id: None },
            ServerFrame::Ack { client_id: None, id },
            ServerFrame::Presence { room: "r", online: none, count: 0 },
            ServerFrame::PresenceDiff { room: "r", joined: none, left: none, count: 0 },
            ServerFrame::Reauthenticate { expires_at: t },
            ServerFrame::Reauthenticated { expires_at: t },
            ServerFrame::Unread { room: "r", unread: 1, mentions: 0 },
            ServerFrame::RoomAdded { room: "r", visibility: RoomKind::Private },
            ServerFrame::RoomRemoved { room: "r" },
            ServerFrame::Error { code: ErrorCode::Invalid, message: "m", client_id: None },
        ];
        let kinds: Vec<&str> = every.iter().map(ServerFrame::kind).collect();
        assert_eq!(kinds, SERVER_FRAMES, "one of each frame, in the list's order");
        for frame in &every {
            let json: serde_json::Value = serde_json::from_str(frame.to_text().as_str()).unwrap();
            assert_eq!(json["type"], frame.kind(), "kind() is the type on the wire");
        }
    }
}
