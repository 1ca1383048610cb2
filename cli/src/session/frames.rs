//! The WebSocket frames as the client sees them (docs/protocol.md §3 and §5),
//! what has been shown (by message id), and how a message and presence are
//! shown.

use std::{
    collections::{HashSet, VecDeque},
    sync::OnceLock,
};

use jiff::{tz::TimeZone, Timestamp};

use palaver_wire::MessageId;
use serde::{Deserialize, Serialize};

use super::pace::Rate;
use crate::terminal::printable;

/// A frame from the server. Unknown types are tolerated (a newer server may
/// add some); fields this client does not need are optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user: String,
        room: String,
        /// The pace to send at; a server without one is not paced.
        #[serde(default)]
        rate: Option<Rate>,
    },
    Presence {
        room: String,
        #[serde(default)]
        online: Vec<String>,
        #[serde(default)]
        count: Option<u64>,
    },
    PresenceDiff {
        room: String,
        #[serde(default)]
        joined: Vec<String>,
        #[serde(default)]
        left: Vec<String>,
        #[serde(default)]
        count: Option<u64>,
    },
    Message {
        id: String,
        user: String,
        body: String,
        sent_at: i64,
        #[serde(default)]
        client_id: Option<String>,
    },
    Ack {
        #[serde(default)]
        client_id: Option<String>,
        id: String,
    },
    Reauthenticate {},
    Reauthenticated {},
    /// This user became a member of a private room: said on each of their
    /// sockets, whichever room it is in.
    RoomAdded {
        room: String,
        #[serde(default)]
        visibility: Option<String>,
    },
    /// This user stopped being a member of a room: said on their sockets in
    /// other rooms (those in that room are closed with 4403).
    RoomRemoved {
        room: String,
    },
    Error {
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    #[serde(other)]
    Unknown,
}

/// A frame to the server. No `Debug`: `Reauth` carries a token.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame<'a> {
    Send { body: &'a str, client_id: &'a str },
    Reauth { token: &'a str },
}

impl ClientFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames serialize")
    }
}

/// How many senders' `client_id`s [`Seen`] remembers.
const SENDS_KEPT: usize = 1000;

/// The newest message shown so far: what to ask for with `after=` on a
/// reconnect, and what not to show twice.
#[derive(Debug, Default)]
pub struct Seen {
    last: Option<MessageId>,
    /// (sender, client_id) of the last messages that carried one, oldest
    /// first: a message shown and then lost in a store failover comes again
    /// under a new id when its sender resends it.
    sends: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Seen {
    /// Whether the message with this id is new (and then it counts as seen).
    /// An id that does not parse is shown and does not move the mark. A
    /// newer id for a (sender, `client_id`) already shown moves the mark but
    /// is not shown again.
    pub fn admit(&mut self, id: &str, user: &str, client_id: Option<&str>) -> bool {
        let Ok(id) = id.parse::<MessageId>() else { return true };
        if self.last.is_some_and(|last| id <= last) {
            return false;
        }
        self.last = Some(id);
        let Some(client_id) = client_id else { return true };
        let key = (user.to_owned(), client_id.to_owned());
        if self.sends.contains(&key) {
            return false;
        }
        self.sends.insert(key.clone());
        self.order.push_back(key);
        if self.order.len() > SENDS_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.sends.remove(&oldest);
            }
        }
        true
    }

    pub fn last(&self) -> Option<MessageId> {
        self.last
    }
}

/// The user's time zone (`TZ`, else the system's), read once.
fn local_zone() -> &'static TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(|| TimeZone::try_system().unwrap_or(TimeZone::UTC))
}

/// `HH:MM:SS` of a unix-ms time in `zone`.
pub fn clock(unix_ms: i64, zone: &TimeZone) -> String {
    match Timestamp::from_millisecond(unix_ms) {
        Ok(t) => zone.to_datetime(t).strftime("%H:%M:%S").to_string(),
        Err(_) => "--:--:--".to_owned(),
    }
}

/// `HH:MM:SS user: body` in the user's time zone; a body of several lines
/// goes on below, each line indented under the sender.
pub fn message_line(sent_at: i64, user: &str, body: &str) -> String {
    message_line_in(local_zone(), sent_at, user, body)
}

/// As wide as `HH:MM:SS `: the body's later lines start under the sender.
const INDENT: &str = "         ";

fn message_line_in(zone: &TimeZone, sent_at: i64, user: &str, body: &str) -> String {
    let mut lines = body.split('\n').map(|line| printable(line.strip_suffix('\r').unwrap_or(line)));
    let mut out = format!("{} {}: {}", clock(sent_at, zone), printable(user), lines.next().unwrap_or_default());
    for line in lines {
        out.push('\n');
        out.push_str(INDENT);
        out.push_str(&line);
    }
    out
}

pub fn presence_line(room: &str, online: &[String], count: Option<u64>) -> String {
    let count = count.unwrap_or(online.len() as u64);
    let names: Vec<String> = online.iter().map(|n| printable(n)).collect();
    if names.is_empty() {
        format!("{count} online in {room}")
    } else if (names.len() as u64) < count {
        format!("{count} online in {room}: {} and {} more", names.join(", "), count - names.len() as u64)
    } else {
        format!("{count} online in {room}: {}", names.join(", "))
    }
}

pub fn presence_diff_line(room: &str, joined: &[String], left: &[String], count: Option<u64>) -> String {
    let list = |names: &[String]| names.iter().map(|n| printable(n)).collect::<Vec<_>>().join(", ");
    let mut parts = Vec::new();
    if !joined.is_empty() {
        parts.push(format!("joined: {}", list(joined)));
    }
    if !left.is_empty() {
        parts.push(format!("left: {}", list(left)));
    }
    match (parts.is_empty(), count) {
        (true, Some(c)) => format!("{room}: {c} online"),
        (true, None) => format!("{room}: presence changed"),
        (false, Some(c)) => format!("{room}: {} ({c} online)", parts.join("; ")),
        (false, None) => format!("{room}: {}", parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_shown_twice_and_the_mark_only_moves_forward() {
        let mut seen = Seen::default();
        assert!(seen.admit("9-0", "bob", None));
        assert!(seen.admit("10-0", "bob", None));
        assert!(!seen.admit("10-0", "bob", None), "again");
        assert!(!seen.admit("9-5", "bob", None), "older, though larger as text");
        assert!(seen.admit("10-1", "bob", None));
        assert_eq!(seen.last().unwrap().to_string(), "10-1");
        assert!(seen.admit("garbage", "bob", None), "shown, it may be real");
        assert_eq!(seen.last().unwrap().to_string(), "10-1");
    }

    #[test]
    fn a_message_stored_again_under_a_new_id_is_shown_once() {
        let mut seen = Seen::default();
        assert!(seen.admit("1-0", "bob", Some("c1")));
        // The first copy was lost in a failover; the resend has a new id.
        assert!(!seen.admit("2-0", "bob", Some("c1")), "the same send again");
        assert_eq!(seen.last().unwrap().to_string(), "2-0", "the mark still moves");
        assert!(seen.admit("3-0", "carol", Some("c1")), "another sender's id");
        for n in 0..SENDS_KEPT {
            assert!(seen.admit(&format!("{}-0", 10 + n), "bob", Some(&format!("x{n}"))));
        }
        assert!(seen.admit("99999-0", "bob", Some("c1")), "forgotten after {SENDS_KEPT} others");
    }

    #[test]
    fn server_frames_parse_including_ones_this_client_does_not_know() {
        let f = |s: &str| serde_json::from_str::<ServerFrame>(s).unwrap();
        assert_eq!(
            f(r#"{"type":"hello","user":"alice","room":"lobby","expires_at":5}"#),
            ServerFrame::Hello { user: "alice".into(), room: "lobby".into(), rate: None }
        );
        assert_eq!(
            f(r#"{"type":"hello","user":"a","room":"r","rate":{"per_sec":10.0,"burst":20},"read_markers":true}"#),
            ServerFrame::Hello { user: "a".into(), room: "r".into(), rate: Some(Rate { per_sec: 10.0, burst: 20 }) }
        );
        assert_eq!(
            f(r#"{"type":"message","room":"r","id":"7-1","user":"bob","body":"hi","sent_at":9}"#),
            ServerFrame::Message {
                id: "7-1".into(),
                user: "bob".into(),
                body: "hi".into(),
                sent_at: 9,
                client_id: None
            }
        );
        assert_eq!(
            f(r#"{"type":"ack","client_id":"c","id":"7-1"}"#),
            ServerFrame::Ack { client_id: Some("c".into()), id: "7-1".into() }
        );
        assert_eq!(
            f(r#"{"type":"presence","room":"r","online":["a"]}"#),
            ServerFrame::Presence { room: "r".into(), online: vec!["a".into()], count: None }
        );
        assert_eq!(
            f(r#"{"type":"presence_diff","room":"r","joined":[],"left":["b"],"count":1}"#),
            ServerFrame::PresenceDiff { room: "r".into(), joined: vec![], left: vec!["b".into()], count: Some(1) }
        );
        assert_eq!(f(r#"{"type":"reauthenticate","expires_at":1}"#), ServerFrame::Reauthenticate {});
        assert_eq!(f(r#"{"type":"reauthenticated","expires_at":1}"#), ServerFrame::Reauthenticated {});
        assert_eq!(
            f(r#"{"type":"error","code":"rate_limited","message":"slow down","client_id":"c"}"#),
            ServerFrame::Error {
                code: "rate_limited".into(),
                message: "slow down".into(),
                client_id: Some("c".into())
            }
        );
        assert_eq!(
            f(r#"{"type":"room_added","room":"deploys","visibility":"private"}"#),
            ServerFrame::RoomAdded { room: "deploys".into(), visibility: Some("private".into()) }
        );
        assert_eq!(f(r#"{"type":"room_removed","room":"@bob"}"#), ServerFrame::RoomRemoved { room: "@bob".into() });
        assert_eq!(f(r#"{"type":"typing","user":"a"}"#), ServerFrame::Unknown);
    }

    #[test]
    fn client_frames_match_the_contract() {
        assert_eq!(
            ClientFrame::Send { body: "hi \"x\"", client_id: "c1" }.to_json(),
            r#"{"type":"send","body":"hi \"x\"","client_id":"c1"}"#
        );
        assert_eq!(ClientFrame::Reauth { token: "T" }.to_json(), r#"{"type":"reauth","token":"T"}"#);
    }

    #[test]
    fn messages_are_in_the_users_time_zone_with_nothing_a_terminal_would_obey() {
        let utc = TimeZone::UTC;
        // 2023-11-14 22:13:20.500 UTC
        assert_eq!(message_line_in(&utc, 1_700_000_000_500, "alice", "hello"), "22:13:20 alice: hello");
        assert_eq!(clock(0, &utc), "00:00:00");
        assert_eq!(clock(-1, &utc), "23:59:59");
        assert_eq!(clock(i64::MAX, &utc), "--:--:--", "beyond any calendar");
        let kolkata = TimeZone::posix("IST-5:30").unwrap();
        assert_eq!(clock(1_700_000_000_500, &kolkata), "03:43:20");
        // Central Europe, summer time from the last Sunday of March.
        let paris = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(clock(1_700_000_000_000, &paris), "23:13:20", "November: UTC+1");
        assert_eq!(clock(1_690_000_000_000, &paris), "06:26:40", "July: UTC+2");
        assert_eq!(
            message_line_in(&utc, 0, "bob", "tab\tthere\r\u{1b}[2Jgone\u{202e}"),
            "00:00:00 bob: tab\\tthere\\u{d}\\u{1b}[2Jgone\\u{202e}"
        );
    }

    #[test]
    fn a_message_of_several_lines_is_shown_as_lines_under_its_sender() {
        let utc = TimeZone::UTC;
        assert_eq!(
            message_line_in(&utc, 0, "bob", "Traceback:\n  at main\r\n\n\u{1b}[2Jdone"),
            "00:00:00 bob: Traceback:\n           at main\n         \n         \\u{1b}[2Jdone"
        );
        assert_eq!(message_line_in(&utc, 0, "bob\nx", "hi"), "00:00:00 bob\\nx: hi", "a name stays one line");
    }

    #[test]
    fn presence_reads_as_a_sentence() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(presence_line("lobby", &names(&["alice", "bob"]), Some(2)), "2 online in lobby: alice, bob");
        assert_eq!(presence_line("lobby", &names(&["alice"]), None), "1 online in lobby: alice");
        assert_eq!(presence_line("big", &names(&["a"]), Some(900)), "900 online in big: a and 899 more");
        assert_eq!(presence_line("big", &[], Some(900)), "900 online in big");
        assert_eq!(
            presence_diff_line("lobby", &names(&["carol"]), &names(&["bob"]), Some(2)),
            "lobby: joined: carol; left: bob (2 online)"
        );
        assert_eq!(presence_diff_line("big", &[], &[], Some(901)), "big: 901 online");
        assert_eq!(presence_diff_line("r", &[], &[], None), "r: presence changed");
    }
}
