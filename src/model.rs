//! What palaver talks about: users, rooms, messages and their ids, and the
//! rules a valid one follows; what an account keeps of its sessions,
//! security events and invites. Plain data; no I/O.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::UnixMillis;

pub type UserId = Uuid;

/// A registered user, as sessions and sockets know them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
}

/// A token session: a session whose credential is an access token and a
/// refresh token instead of a cookie (docs/protocol.md §5). Stored under a
/// session id that is never given out; `sid` is its public name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: User,
    pub sid: String,
    pub signed_in_at: UnixMillis,
    pub refresh: RefreshState,
}

/// What a session keeps of its refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshState {
    /// The hash of the token that may be used now.
    pub current: String,
    /// Hashes of spent tokens, newest first.
    pub spent: Vec<String>,
    /// When `current` replaced `spent[0]`.
    pub rotated_at: UnixMillis,
}

/// 3 to 32 characters of `A-Z a-z 0-9 _ . -` (docs/protocol.md §2).
pub fn valid_username(username: &str) -> bool {
    (3..=32).contains(&username.len())
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The form of a username that uniqueness is decided on: names are unique
/// ignoring case.
pub fn folded_username(username: &str) -> String {
    username.to_ascii_lowercase()
}

/// The room every user lands in.
pub const LOBBY: &str = "lobby";

/// Longest message body, in characters, after trimming.
pub const MAX_BODY_CHARS: usize = 2000;

/// Longest `client_id`, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// A room as the store knows it: the name of a public or private room
/// (1 to 32 characters of `a-z 0-9 -`, docs/protocol.md §2), or the key of a
/// direct conversation between two users ([`RoomName::direct`]), which no
/// typed name can ever be.
///
/// What a client calls a room is its [`RoomName::label`] as seen by one
/// user: the name, or `@other` for a direct room.
///
/// Cheap to clone: the registry and the hub hold many copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// The two members of a direct room, in its key's order.
pub type DirectPair = (UserId, UserId);

impl RoomName {
    /// A room name as a user types it (never a direct room's key).
    pub fn parse(name: &str) -> Option<Self> {
        let ok = (1..=32).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then(|| Self(name.into()))
    }

    /// A room as the store names it: a room name or a direct room's key
    /// (what [`RoomName::as_str`] gave).
    pub fn from_stored(stored: &str) -> Option<Self> {
        Self::parse(stored).or_else(|| Self::parse_direct(stored))
    }

    /// The direct conversation of `a` and `b`: one key for the pair,
    /// whichever side asks. `@` + both ids (32 hex digits each, the smaller
    /// first) joined by `+`. Holding ids, not names, it can never be reached
    /// through anyone else's name.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        Self(format!("@{}+{}", low.simple(), high.simple()).into())
    }

    fn parse_direct(stored: &str) -> Option<Self> {
        let (a, b) = stored.strip_prefix('@')?.split_once('+')?;
        let (a, b) = (Uuid::try_parse(a).ok()?, Uuid::try_parse(b).ok()?);
        let room = Self::direct(a, b);
        (&*room.0 == stored).then_some(room)
    }

    /// The two members, for a direct room.
    pub fn direct_pair(&self) -> Option<DirectPair> {
        let (a, b) = self.0.strip_prefix('@')?.split_once('+')?;
        Some((Uuid::try_parse(a).ok()?, Uuid::try_parse(b).ok()?))
    }

    pub fn is_direct(&self) -> bool {
        self.0.starts_with('@')
    }

    /// For a direct room, the member who is not `me` (`None`: `me` is not
    /// one of its two, or this is not a direct room).
    pub fn other_member(&self, me: UserId) -> Option<UserId> {
        match self.direct_pair()? {
            (a, b) if a == me => Some(b),
            (a, b) if b == me => Some(a),
            _ => None,
        }
    }

    pub fn lobby() -> Self {
        Self(LOBBY.into())
    }

    /// The lobby always exists: it is never created (so it counts against
    /// no new-room quota), never expires, and is in every user's sidebar.
    /// Every place that treats the lobby apart asks this.
    pub fn is_lobby(&self) -> bool {
        &*self.0 == LOBBY
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What kind of room a room is (docs/protocol.md §6). Serialized as the
/// API's `visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    /// Any signed-in user may open it; opening it creates it.
    Public,
    /// Created on purpose; only its members see anything of it.
    Private,
    /// The conversation of exactly two users; its members never change.
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Direct => "direct",
        }
    }
}

/// A member's role in a private room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Removes anyone; one per room (the longest-standing member takes over
    /// when the owner leaves).
    Owner,
    Member,
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RoomName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

// Shared with palaver-cli, so its one owner is palaver-wire.
pub use palaver_wire::MessageId;

/// A message as the sender hands it over, already validated.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Who sends it (quotas are theirs), and the name shown with it.
    pub sender: UserId,
    pub user: String,
    pub body: String,
    /// What makes a resend recognisable (the sender's, or one the server
    /// assigned).
    pub client_id: Option<String>,
    /// Whether `client_id` came from the sender, and so is shown with the
    /// message to everyone.
    pub client_id_shown: bool,
    pub sent_at: UnixMillis,
}

impl NewMessage {
    /// The message as stored under `id`.
    pub fn stored(self, id: MessageId) -> Message {
        let client_id = self.client_id.filter(|_| self.client_id_shown);
        Message { id, user: self.user, body: self.body, sent_at: self.sent_at, client_id }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub user: String,
    pub body: String,
    pub sent_at: UnixMillis,
    pub client_id: Option<String>,
}

/// What `append` did: stored a new message, found the one already stored
/// for this sender's `client_id` (a resend after a lost ack), or stored
/// nothing because the sender is over their rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    New(Message),
    Duplicate(MessageId),
    /// The sender is over their message rate.
    Throttled,
    /// The room does not exist, and the sender has brought enough rooms
    /// (or, for a direct room, conversations) into existence lately.
    NewRoomRefused,
    /// Nothing stored: the sender may not write here (a private room they
    /// are not a member of, a public room's name that has become a private
    /// room's, or a direct room that is not theirs).
    NotVisible,
}

impl Appended {
    /// The id the message is stored under, if it is.
    pub fn id(&self) -> Option<MessageId> {
        match self {
            Appended::New(m) => Some(m.id),
            Appended::Duplicate(id) => Some(*id),
            Appended::Throttled | Appended::NewRoomRefused | Appended::NotVisible => None,
        }
    }
}

/// Validates a message body and drops what carries nothing: trailing
/// whitespace, and blank lines before the first line of text. The first
/// line keeps its indentation (code, a quoted block). `None` when nothing
/// is left or it is too long.
pub fn clean_body(body: &str) -> Option<&str> {
    let body = body.trim_end();
    let text_at = body.len() - body.trim_start().len();
    let line_start = body[..text_at].rfind('\n').map_or(0, |newline| newline + 1);
    let body = &body[line_start..];
    let chars = body.chars().count();
    (1..=MAX_BODY_CHARS).contains(&chars).then_some(body)
}

/// The most names one message's mentions are kept for (a message could
/// name hundreds; the unread counts need only who was named).
pub const MAX_MENTIONS: usize = 32;

/// The names a message body mentions (`@name`), lowercased, each once, in
/// order of first mention, at most [`MAX_MENTIONS`].
///
/// The same rule as the browser client's (static/format.js `tokenize`),
/// so that the server counts exactly the mentions the page highlights: an
/// `@` at the start or after a character that is not a letter, digit, `_`,
/// `@`, `.` or `-`, then 3 to 32 characters of `A-Z a-z 0-9 _ . -` (at most
/// 32 are taken), without trailing dots ("@bob." is bob at the end of a
/// sentence). Nothing inside ``` fences, `code` spans or http(s) links
/// counts.
pub fn mentions(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for text in outside_code_and_links(body) {
        mentions_in(text, &mut names);
        if names.len() >= MAX_MENTIONS {
            names.truncate(MAX_MENTIONS);
            break;
        }
    }
    names
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_name(b: u8) -> bool {
    is_word(b) || b == b'.' || b == b'-'
}

/// The pieces of `body` that are plain text: not in a fenced block, a code
/// span or a link. Each piece starts a fresh text for the mention rule (the
/// client's segments do the same).
fn outside_code_and_links(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for between_fences in split_out(body, fence) {
        for between_spans in split_out(between_fences, code_span) {
            out.extend(split_out(between_spans, link));
        }
    }
    out
}

/// `text` without the regions `find` reports (`find(text, from)` gives the
/// next region at or after `from` as a byte range).
fn split_out(text: &str, find: fn(&str, usize) -> Option<(usize, usize)>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut last = 0;
    while let Some((start, end)) = find(text, last) {
        out.push(&text[last..start]);
        last = end;
    }
    out.push(&text[last..]);
    out
}

/// A ``` fence and everything to the next ``` (none closed: no block).
fn fence(text: &str, from: usize) -> Option<(usize, usize)> {
    let start = from + text[from..].find("```")?;
    let end = start + 3 + text[start + 3..].find("```")? + 3;
    Some((start, end))
}

/// A `code` span: a backtick pair on one line with something between.
fn code_span(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut at = from;
    loop {
        let start = at + text[at..].find('`')?;
        let close = start + 1 + text[start + 1..].find('`')?;
        let inner = &bytes[start + 1..close];
        if !inner.is_empty() && !inner.contains(&b'\n') {
            return Some((start, close + 1));
        }
        at = start + 1;
    }
}

/// An http(s) link: from `http://` or `https://` (not inside a word) to the
/// next space or `< > " ' \``.
fn link(text: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut at = from;
    while at < bytes.len() {
        let start = at + text[at..].find(['h', 'H'])?;
        let rest = &bytes[start..];
        let scheme = [&b"https://"[..], &b"http://"[..]]
            .into_iter()
            .find(|s| rest.len() >= s.len() && rest[..s.len()].eq_ignore_ascii_case(s));
        let boundary = start == 0 || !is_word(bytes[start - 1]);
        if let (Some(scheme), true) = (scheme, boundary) {
            let body = start + scheme.len();
            let end = text[body..]
                .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '`'))
                .map_or(text.len(), |n| body + n);
            if end > body {
                return Some((start, end));
            }
        }
        at = start + 1;
    }
    None
}

/// Adds the names `text` mentions to `names`.
fn mentions_in(text: &str, names: &mut Vec<String>) {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find('@') {
        let sign = at + found;
        at = sign + 1;
        if sign > 0 && (is_name(bytes[sign - 1]) || bytes[sign - 1] == b'@') {
            continue;
        }
        let run = bytes[sign + 1..].iter().take(32).take_while(|b| is_name(**b)).count();
        let name = text[sign + 1..sign + 1 + run].trim_end_matches('.');
        if run < 3 || name.len() < 3 {
            continue;
        }
        at = sign + 1 + run;
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
}

/// How a session is held (docs/protocol.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// A cookie session.
    Browser,
    /// A token session (an access token and a refresh token).
    Token,
}

/// What a session says of itself on the account page. Written at sign-in;
/// `last_active_at` is rewritten as the session is used, at most once per
/// granularity, so it is as fresh as that granularity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescriptor {
    pub kind: SessionKind,
    pub created_at: UnixMillis,
    pub last_active_at: UnixMillis,
    /// Browser and OS ("Chrome on Linux"), or a token client's name.
    pub client: String,
    /// Where it signed in from (after `TRUSTED_PROXIES`).
    pub address: String,
    /// "Keep me signed in": the long idle and absolute lifetimes.
    #[serde(default)]
    pub long: bool,
    /// A token session's `sid`, its public id: nothing else leads from the
    /// session's store id to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Who or what ended a session, as its `session_ended` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The user, from another of their sessions.
    You,
    PasswordChange,
    LogoutEverywhere,
    /// A spent refresh token was presented again.
    RefreshReuse,
    Operator,
}

/// One entry of a user's security log, as `GET /api/security-events`
/// gives it: `{"at","kind",…}` with the kind's fields beside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    pub at: UnixMillis,
    #[serde(flatten)]
    pub what: SecurityEventKind,
}

/// What happened to the account. Text fields absent from a stored entry
/// read as empty, so entries written by another version still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecurityEventKind {
    SignedIn {
        #[serde(default)]
        client: String,
        #[serde(default)]
        address: String,
    },
    /// Failed sign-ins from one address, kept as one entry per burst: the
    /// first at `since`, the last at the entry's `at`.
    SignInFailed {
        #[serde(default)]
        address: String,
        count: u32,
        since: UnixMillis,
    },
    /// A session ended: `client` and `address` are the ended session's.
    SessionEnded {
        by: EndedBy,
        #[serde(default)]
        client: String,
        #[serde(default)]
        address: String,
    },
    /// From the session that changed it.
    PasswordChanged {
        #[serde(default)]
        client: String,
        #[serde(default)]
        address: String,
    },
    /// The session whose spent refresh token came back (`client`), and
    /// where it came from (`address`).
    RefreshReuseDetected {
        #[serde(default)]
        client: String,
        #[serde(default)]
        address: String,
    },
}

/// An invite code as the store keeps it: under the code's hash, never the
/// code itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// How many sign-ups it was made for.
    pub uses: u32,
    pub uses_left: u32,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// Who made it: a user (on /account), or `None`, an operator.
    pub by: Option<UserId>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn usernames_follow_the_rules_and_fold_case() {
        for ok in ["al.ice_-9", "abc", &"a".repeat(32)] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in ["al", &"a".repeat(33), "al ice", "alïce", "al/ice", ""] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert_eq!(folded_username("AlIcE"), "alice");
    }

    #[test]
    fn room_names_follow_the_spec() {
        for ok in ["lobby", "a", "rust-lang", "0", &"x".repeat(32)] {
            assert!(RoomName::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "Lobby", "a b", "a_b", "é", &"x".repeat(33), "../x"] {
            assert!(RoomName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_direct_room_is_one_key_for_the_pair_that_no_typed_name_can_be() {
        let (al, bo, cy) = (UserId::new_v4(), UserId::new_v4(), UserId::new_v4());
        let room = RoomName::direct(al, bo);
        assert_eq!(room, RoomName::direct(bo, al), "the same for both sides");
        assert!(room.is_direct() && !RoomName::lobby().is_direct());
        assert_eq!(RoomName::parse(room.as_str()), None, "never a typed name");
        assert_eq!(RoomName::from_stored(room.as_str()), Some(room.clone()));
        assert_eq!(RoomName::from_stored("lobby"), Some(RoomName::lobby()));
        assert_eq!(room.other_member(al), Some(bo));
        assert_eq!(room.other_member(bo), Some(al));
        assert_eq!(room.other_member(cy), None, "not hers");
        assert_eq!(RoomName::lobby().other_member(al), None);
        // Only the canonical form is a key: the same pair in the other order,
        // upper case or hyphenated ids are not.
        let (low, high) = room.direct_pair().unwrap();
        assert!(low < high);
        for bad in [
            format!("@{}+{}", high.simple(), low.simple()),
            format!("@{}+{}", low.hyphenated(), high.hyphenated()),
            room.as_str().to_uppercase(),
            format!("{}+", room.as_str()),
            "@x+y".to_owned(),
        ] {
            assert_eq!(RoomName::from_stored(&bad), None, "{bad}");
        }
    }

    #[test]
    fn bodies_lose_trailing_space_and_blank_lines_but_keep_indentation() {
        assert_eq!(clean_body("hi \n"), Some("hi"));
        assert_eq!(clean_body("  hi \n"), Some("  hi"), "the first line's indentation stays");
        assert_eq!(clean_body("\n \t\n    fn main() {}\n\n"), Some("    fn main() {}"), "blank lines go");
        assert_eq!(clean_body(" \r\n  a\n    b  \r\n"), Some("  a\n    b"));
        assert_eq!(clean_body("a  \n  b"), Some("a  \n  b"), "inside, nothing changes");
        assert_eq!(clean_body("   "), None);
        assert_eq!(clean_body(" \n\t\n "), None);
        assert!(clean_body(&"é".repeat(2000)).is_some());
        assert!(clean_body(&"é".repeat(2001)).is_none());
    }

    #[test]
    fn mentions_follow_the_clients_rule() {
        let m = |body: &str| mentions(body);
        assert_eq!(m("hi @bob. and me@mail.example @al"), ["bob"], "an address and a short name are not mentions");
        assert_eq!(m("@Alice look"), ["alice"], "at the start, lowercased");
        assert_eq!(m("@alice and @ALICE, (@carol)"), ["alice", "carol"], "each once");
        assert_eq!(m("@bob@carol @bob.x @dave-"), ["bob", "bob.x", "dave-"]);
        assert_eq!(m("x@bob _@bob .@bob -@bob"), Vec::<String>::new(), "inside a word is not a mention");
        assert_eq!(m("é@bob »@carol"), ["bob", "carol"], "any other character is a boundary");
        assert_eq!(m(&format!("@{}", "a".repeat(40))), ["a".repeat(32)], "at most 32 characters are taken");
        assert_eq!(m("@bob..."), ["bob"]);
        assert_eq!(m("@ab. @ab"), Vec::<String>::new());
    }

    #[test]
    fn code_and_links_mention_nobody() {
        let m = |body: &str| mentions(body);
        assert_eq!(m("`@bob` @carol"), ["carol"]);
        assert_eq!(m("```\n@bob\n``` @carol"), ["carol"]);
        assert_eq!(m("```@bob```@carol"), ["carol"], "right after a block counts");
        assert_eq!(m("``` unclosed @bob"), ["bob"], "an unclosed fence is text");
        assert_eq!(m("`\n@bob\n` @carol"), ["bob", "carol"], "a pair across lines is no span");
        assert_eq!(m("`` @bob ` @carol"), ["carol"], "an empty pair is none: the span starts at the second");
        assert_eq!(m("see https://example.com/@bob or HTTP://x.example/@al, @carol"), ["carol"]);
        assert_eq!(m("xhttps://example.com/@bob"), ["bob"], "a link starts a word");
        assert_eq!(m("https://example.com/\"@bob"), ["bob"], "a quote ends a link");
    }

    #[test]
    fn mentions_are_bounded() {
        let body: String = (0..100).map(|i| format!("@user{i:03} ")).collect();
        let names = mentions(&body);
        assert_eq!(names.len(), MAX_MENTIONS);
        assert_eq!(names[0], "user000");
    }

    #[test]
    fn security_events_are_the_apis_json_at_kind_and_the_kinds_fields() {
        let at = UnixMillis::from_millis(1_700_000_000_000);
        let text = |s: &str| s.to_owned();
        let cases = [
            (
                SecurityEventKind::SignedIn { client: text("Chrome on Linux"), address: text("192.0.2.1") },
                r#"{"at":1700000000000,"kind":"signed_in","client":"Chrome on Linux","address":"192.0.2.1"}"#,
            ),
            (
                SecurityEventKind::SignInFailed {
                    address: text("192.0.2.9"),
                    count: 3,
                    since: at - Duration::from_secs(60),
                },
                r#"{"at":1700000000000,"kind":"sign_in_failed","address":"192.0.2.9","count":3,"since":1699999940000}"#,
            ),
            (
                SecurityEventKind::SessionEnded {
                    by: EndedBy::PasswordChange,
                    client: text("palaver-cli/0.3"),
                    address: text("::1"),
                },
                r#"{"at":1700000000000,"kind":"session_ended","by":"password_change","client":"palaver-cli/0.3","address":"::1"}"#,
            ),
            (
                SecurityEventKind::PasswordChanged { client: text("Firefox on macOS"), address: text("::1") },
                r#"{"at":1700000000000,"kind":"password_changed","client":"Firefox on macOS","address":"::1"}"#,
            ),
            (
                SecurityEventKind::RefreshReuseDetected { client: text("bot"), address: text("192.0.2.7") },
                r#"{"at":1700000000000,"kind":"refresh_reuse_detected","client":"bot","address":"192.0.2.7"}"#,
            ),
        ];
        for (what, json) in cases {
            let event = SecurityEvent { at, what };
            assert_eq!(serde_json::to_string(&event).unwrap(), json);
            assert_eq!(serde_json::from_str::<SecurityEvent>(json).unwrap(), event);
        }
        for (by, name) in [
            (EndedBy::You, "you"),
            (EndedBy::PasswordChange, "password_change"),
            (EndedBy::LogoutEverywhere, "logout_everywhere"),
            (EndedBy::RefreshReuse, "refresh_reuse"),
            (EndedBy::Operator, "operator"),
        ] {
            assert_eq!(serde_json::to_value(by).unwrap(), name);
        }
    }

    /// The Redis scripts rewrite stored JSON with Lua's cjson, which orders
    /// fields as it likes and escapes `/`.
    #[test]
    fn entries_rewritten_by_a_script_read_as_written() {
        let failure: SecurityEvent = serde_json::from_str(
            r#"{"count":2,"since":1699999940000,"kind":"sign_in_failed","at":1700000000000,"address":"2001:db8::\/1"}"#,
        )
        .unwrap();
        assert_eq!(
            failure,
            SecurityEvent {
                at: UnixMillis::from_millis(1_700_000_000_000),
                what: SecurityEventKind::SignInFailed {
                    address: "2001:db8::/1".into(),
                    count: 2,
                    since: UnixMillis::from_millis(1_699_999_940_000),
                },
            }
        );
        let descriptor: SessionDescriptor = serde_json::from_str(
            r#"{"sid":"s1","long":true,"last_active_at":1700000060000,"address":"::1","client":"palaver-cli\/0.3","kind":"token","created_at":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(descriptor.client, "palaver-cli/0.3");
        assert_eq!(descriptor.last_active_at, UnixMillis::from_millis(1_700_000_060_000));
        assert_eq!(
            (descriptor.kind, descriptor.long, descriptor.sid.as_deref()),
            (SessionKind::Token, true, Some("s1"))
        );
    }

    #[test]
    fn a_descriptor_without_the_optional_fields_reads_as_a_short_browser_session() {
        let descriptor: SessionDescriptor = serde_json::from_str(
            r#"{"kind":"browser","created_at":1,"last_active_at":2,"client":"Chrome on Linux","address":"::1"}"#,
        )
        .unwrap();
        assert_eq!((descriptor.long, descriptor.sid.as_deref()), (false, None));
        let written = serde_json::to_string(&descriptor).unwrap();
        assert!(!written.contains("sid"), "no sid written for a browser session: {written}");
    }
}
