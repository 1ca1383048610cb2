//! What a session says of itself (docs/protocol.md §7): the client it was
//! signed in with, named from its `User-Agent` or by itself, where from,
//! and the public id it is listed and ended under.
//!
//! A token session's public id is its `sid`. A cookie session's is derived
//! one-way from its store id, so it needs no storage, exists for sessions
//! begun before sessions described themselves, and never leads back to the
//! cookie (whose value is the store id).

use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::Serialize;
use tower_sessions::session::Id;

use crate::{
    backend::ListedSession,
    clock::UnixMillis,
    model::{SessionDescriptor, SessionKind},
};

/// How stale a session's `last_active_at` may be: it is rewritten when a
/// request slides the session (or a token is refreshed) and the stored
/// value is older than this, so the store takes at most one such write per
/// session per granularity.
pub const ACTIVITY_GRANULARITY: Duration = Duration::from_secs(60);

/// The longest client name a token session may give (`POST /api/token`'s
/// `client`), in characters.
pub const MAX_CLIENT_CHARS: usize = 64;

/// What a session is listed as when nothing describes it.
const UNKNOWN: &str = "Unknown";

/// Where a session is signed in from: its client and its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    pub client: String,
    pub address: String,
}

impl Device {
    /// A browser: named from its `User-Agent`.
    pub fn browser(user_agent: Option<&str>, address: String) -> Self {
        Self { client: browser_name(user_agent), address }
    }

    /// A token client: the name it gave, else its `User-Agent`'s first
    /// product (`palaver-cli/0.3`).
    pub fn token_client(given: Option<&str>, user_agent: Option<&str>, address: String) -> Self {
        let given = given.map(str::trim).filter(|name| !name.is_empty());
        let product = || {
            user_agent.and_then(|ua| ua.split_whitespace().next()).map(|p| p.chars().take(MAX_CLIENT_CHARS).collect())
        };
        let client = given.map(str::to_owned).or_else(product).unwrap_or_else(|| UNKNOWN.to_owned());
        Self { client, address }
    }

    /// The descriptor of a session of `kind` begun at `at`.
    pub fn describe(&self, kind: SessionKind, at: UnixMillis, long: bool, sid: Option<String>) -> SessionDescriptor {
        SessionDescriptor {
            kind,
            created_at: at,
            last_active_at: at,
            client: self.client.clone(),
            address: self.address.clone(),
            long,
            sid,
        }
    }
}

/// "Chrome on Linux", from a `User-Agent` (parsed by woothee); what it
/// cannot read is "Unknown browser".
pub fn browser_name(user_agent: Option<&str>) -> String {
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    let Some(found) = user_agent.and_then(|ua| woothee::parser::Parser::new().parse(ua)) else {
        return "Unknown browser".to_owned();
    };
    let os = match found.os {
        "Mac OSX" => "macOS",
        os => os,
    };
    match (known(found.name), known(os)) {
        (true, true) => format!("{} on {os}", found.name),
        (true, false) => found.name.to_owned(),
        (false, true) => format!("A browser on {os}"),
        (false, false) => "Unknown browser".to_owned(),
    }
}

/// A cookie session's public id: base64url of SHA-256 of its store id,
/// 22 characters.
pub fn public_id(session: &Id) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("palaver-session:{session}").as_bytes());
    let mut id = URL_SAFE_NO_PAD.encode(digest);
    id.truncate(22);
    id
}

/// A session as `GET /api/sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// The public id: the token's `sid`, or [`public_id`].
    pub id: String,
    pub kind: SessionKind,
    pub created_at: Option<UnixMillis>,
    pub last_active_at: Option<UnixMillis>,
    pub client: String,
    pub address: String,
    /// The session the request came with.
    pub current: bool,
    /// "Keep me signed in".
    #[serde(skip)]
    pub long: bool,
    /// Its store id: never shown.
    #[serde(skip)]
    pub store_id: Id,
}

impl SessionView {
    /// A listed session, as seen from session `current`.
    pub fn new(listed: ListedSession, current: Id) -> Self {
        let is_current = listed.id == current;
        match listed.descriptor {
            Some(d) => Self {
                id: d.sid.clone().unwrap_or_else(|| public_id(&listed.id)),
                kind: d.kind,
                created_at: Some(d.created_at),
                last_active_at: Some(d.last_active_at),
                client: d.client,
                address: d.address,
                current: is_current,
                long: d.long,
                store_id: listed.id,
            },
            // Begun before sessions described themselves: a cookie session
            // (token sessions came later still).
            None => Self {
                id: public_id(&listed.id),
                kind: SessionKind::Browser,
                created_at: None,
                last_active_at: None,
                client: UNKNOWN.to_owned(),
                address: String::new(),
                current: is_current,
                long: false,
                store_id: listed.id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_named_by_browser_and_system() {
        let chrome =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(browser_name(Some(chrome)), "Chrome on Linux");
        let firefox = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0";
        assert_eq!(browser_name(Some(firefox)), "Firefox on macOS");
        for unreadable in [None, Some(""), Some("reqwest")] {
            assert_eq!(browser_name(unreadable), "Unknown browser", "{unreadable:?}");
        }
    }

    #[test]
    fn a_token_client_is_its_given_name_or_its_first_product() {
        let at = |given, ua| Device::token_client(given, ua, "::1".into()).client;
        assert_eq!(at(Some(" bot "), Some("palaver-cli/0.3")), "bot");
        assert_eq!(at(None, Some("palaver-cli/0.3 (linux)")), "palaver-cli/0.3");
        assert_eq!(at(Some(""), Some("curl/8.0")), "curl/8.0");
        assert_eq!(at(None, None), "Unknown");
        assert_eq!(at(None, Some(&"x".repeat(100))).chars().count(), MAX_CLIENT_CHARS);
    }

    #[test]
    fn a_cookie_sessions_public_id_is_short_stable_and_not_its_id() {
        let id = Id::default();
        let public = public_id(&id);
        assert_eq!(public.len(), 22);
        assert_eq!(public, public_id(&id));
        assert_ne!(public, public_id(&Id::default()));
        assert!(!public.contains(&id.to_string()) && !id.to_string().contains(&public));
    }

    #[test]
    fn a_token_session_is_listed_under_its_sid_and_an_undescribed_one_as_unknown() {
        let (id, other) = (Id::default(), Id::default());
        let device = Device { client: "bot".into(), address: "192.0.2.1".into() };
        let at = UnixMillis::from_secs(100);
        let described = device.describe(SessionKind::Token, at, false, Some("s1".into()));
        let view = SessionView::new(ListedSession { id, descriptor: Some(described) }, id);
        assert_eq!((view.id.as_str(), view.kind, view.current), ("s1", SessionKind::Token, true));
        assert_eq!((view.client.as_str(), view.created_at), ("bot", Some(at)));
        let bare = SessionView::new(ListedSession { id: other, descriptor: None }, id);
        assert_eq!((bare.id, bare.client.as_str(), bare.current), (public_id(&other), "Unknown", false));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "s1", "kind": "token", "created_at": 100_000, "last_active_at": 100_000,
                "client": "bot", "address": "192.0.2.1", "current": true})
        );
    }
}
