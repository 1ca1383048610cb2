//! What the run records, from the clients' side only: every session and
//! how it ended, every socket (its room, the frames it got in order, how it
//! closed), every message sent and its ack, every membership change, every
//! fault and every window in which an instance was not ready, and every
//! retry of a credential that had been refused. The checker reads nothing
//! else, besides the store's history at the end.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use palaver::model::MessageId;

/// Milliseconds since the run began: the one time of every record.
pub(crate) type Ms = u64;

static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();

/// Starts the run's clock (once).
pub(crate) fn start_clock() {
    let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    EPOCH.get_or_init(|| (Instant::now(), unix));
}

pub(crate) fn now() -> Ms {
    EPOCH.get().expect("the clock started").0.elapsed().as_millis() as u64
}

/// A unix time in milliseconds (the server's `expires_at`, a message id's
/// first part) on the run's clock; 0 for a time before the run.
pub(crate) fn from_unix_ms(unix: u64) -> Ms {
    unix.saturating_sub(EPOCH.get().expect("the clock started").1)
}

/// Seconds with a millisecond part, for reports: `12.345 s`.
pub(crate) fn secs(ms: Ms) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Credential {
    /// A browser's session cookie.
    Cookie,
    /// An access token (`Authorization: Bearer`), refreshed with a refresh token.
    Token,
}

/// How a session was ended by a request whose answer came back, so that
/// the end is certain: from `answered` on, the session is over.
#[derive(Clone, Debug)]
pub(crate) struct End {
    pub(crate) by: &'static str,
    pub(crate) sent: Ms,
    pub(crate) answered: Ms,
}

/// One session, cookie or token, of one client.
#[derive(Clone, Debug)]
pub(crate) struct SessionLog {
    pub(crate) client: usize,
    pub(crate) user: String,
    pub(crate) credential: Credential,
    /// When the sign-in's answer came (the session began before).
    pub(crate) signed_in: Ms,
    /// The latest moment a request of this session may have slid it:
    /// answered requests count at their answer, requests whose answer
    /// never came at the moment they could last have been served.
    pub(crate) last_slide: Ms,
    /// Ended by this session's own request (logout, a sign-in over it, a
    /// spent refresh token presented after the grace).
    pub(crate) ended: Option<End>,
    /// The cookie, or every access and refresh token it was given: what
    /// the auditor tries again once the session has ended.
    pub(crate) cookie: Option<String>,
    pub(crate) access_tokens: Vec<String>,
    pub(crate) refresh_tokens: Vec<String>,
}

/// `logout everywhere`: every session of `user` that began before `sent`
/// ended by `answered`.
#[derive(Clone, Debug)]
pub(crate) struct UserEnd {
    pub(crate) user: String,
    pub(crate) end: End,
}

/// A frame's kind, as the protocol names it.
pub(crate) type Kind = &'static str;

#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) at: Ms,
    pub(crate) kind: Kind,
    /// A `message`'s id, sender and `client_id`.
    pub(crate) message: Option<(MessageId, String, Option<String>)>,
}

/// How a socket ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Closed {
    /// The server's close frame.
    Code(u16, String),
    /// The connection broke or ended without a close frame (an instance
    /// killed, a socket dropped).
    Broken(String),
    /// This client closed it.
    ByClient,
}

/// One socket, from its upgrade to its end.
#[derive(Debug)]
pub(crate) struct SocketLog {
    pub(crate) id: usize,
    pub(crate) client: usize,
    pub(crate) user: String,
    /// The session whose credential opened it (an index into `sessions`).
    pub(crate) session: usize,
    pub(crate) credential: Credential,
    pub(crate) instance: usize,
    pub(crate) room: String,
    pub(crate) after: Option<MessageId>,
    pub(crate) upgrade_sent: Ms,
    /// When `hello` came.
    pub(crate) hello: Option<Ms>,
    /// The upgrade's refusal: a status, or why no answer came.
    pub(crate) refused: Option<String>,
    /// The access tokens the socket held (a token socket): when it began
    /// to hold each (the upgrade's sending, then each `reauthenticated`)
    /// and the token's `exp` (unix seconds).
    pub(crate) token_exps: Vec<(Ms, u64)>,
    /// The `exp` of the token of a `reauth` sent and not yet answered.
    pub(crate) reauth_exp: Option<u64>,
    pub(crate) frames: Vec<Frame>,
    /// When this client began closing it, if it did.
    pub(crate) closing: Option<Ms>,
    pub(crate) closed: Option<(Ms, Closed)>,
}

impl SocketLog {
    pub(crate) fn last_message(&self) -> Option<MessageId> {
        self.frames.iter().rev().find_map(|f| f.message.as_ref().map(|m| m.0))
    }
}

/// One `send`, over however many sockets it took.
#[derive(Clone, Debug)]
pub(crate) struct SentLog {
    pub(crate) user: String,
    pub(crate) room: String,
    pub(crate) client_id: String,
    pub(crate) first_sent: Ms,
    pub(crate) attempts: u32,
    pub(crate) acked: Option<(Ms, MessageId)>,
}

/// A membership change (SPEC §6): `PUT` or `DELETE
/// /api/rooms/{room}/members/{user}`. `answered` is `None` when no answer
/// came: it may or may not have happened.
#[derive(Clone, Debug)]
pub(crate) struct MembershipLog {
    pub(crate) room: String,
    pub(crate) user: String,
    pub(crate) added: bool,
    pub(crate) sent: Ms,
    pub(crate) answered: Option<Ms>,
}

/// A fault the run injected, from its start to when every instance was
/// ready again after it was undone.
#[derive(Clone, Debug)]
pub(crate) struct FaultLog {
    pub(crate) kind: &'static str,
    pub(crate) target: String,
    /// The instance it hit; `None`: the store, so every instance.
    pub(crate) instance: Option<usize>,
    pub(crate) start: Ms,
    /// When it was undone (restarted, continued); `start` for a cut.
    pub(crate) undone: Ms,
    /// When every instance answered `/readyz` 200 again after it.
    pub(crate) recovered: Ms,
    /// Whether events published meanwhile can be lost (a subscriber away,
    /// the channel's master gone): then the sweep is what closes sockets.
    pub(crate) loses_events: bool,
}

/// A span in which an instance's `/readyz` was not 200 (or not answered),
/// as the readiness monitor saw it: events may not have reached it.
#[derive(Clone, Debug)]
pub(crate) struct Unready {
    pub(crate) instance: usize,
    pub(crate) from: Ms,
    pub(crate) to: Ms,
    pub(crate) why: String,
}

/// A credential of an ended session tried again by the auditor.
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    pub(crate) session: usize,
    pub(crate) what: &'static str,
    pub(crate) sent: Ms,
    /// The answer's status; `None`: no answer (inconclusive).
    pub(crate) status: Option<u16>,
}

#[derive(Default)]
pub(crate) struct Journal {
    pub(crate) sessions: Vec<SessionLog>,
    pub(crate) user_ends: Vec<UserEnd>,
    pub(crate) sockets: Vec<Arc<Mutex<SocketLog>>>,
    pub(crate) sent: Vec<SentLog>,
    pub(crate) memberships: Vec<MembershipLog>,
    pub(crate) faults: Vec<FaultLog>,
    pub(crate) unready: Vec<Unready>,
    pub(crate) retries: Vec<Retry>,
}

impl Journal {
    /// When `session` certainly ended, and by what: its own end, or a
    /// `logout everywhere` of its user sent after it began.
    pub(crate) fn ended(&self, session: usize) -> Option<End> {
        let s = &self.sessions[session];
        let everywhere =
            self.user_ends.iter().filter(|e| e.user == s.user && e.end.sent > s.signed_in).map(|e| e.end.clone());
        s.ended.iter().cloned().chain(everywhere).min_by_key(|e| e.answered)
    }
}

pub(crate) type Shared = Arc<Mutex<Journal>>;
