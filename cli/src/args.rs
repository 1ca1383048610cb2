//! The command line, parsed by hand: `palaver-cli [--server URL] COMMAND ...`.
//! Which server to talk to is settled here too, from the flag, the
//! environment and the credentials file.

use std::fmt;

use crate::api::Server;

pub const USAGE: &str = "\
palaver-cli: the command-line client of a palaver chat server

USAGE:
    palaver-cli [--server URL] login USERNAME
    palaver-cli [--server URL] chat ROOM [--last N]
    palaver-cli [--server URL] chat @USER [--last N]
    palaver-cli [--server URL] dm USER [--last N]
    palaver-cli [--server URL] rooms
    palaver-cli [--server URL] create ROOM [--public]
    palaver-cli [--server URL] members ROOM
    palaver-cli [--server URL] invite ROOM USER
    palaver-cli [--server URL] remove ROOM USER
    palaver-cli [--server URL] leave ROOM
    palaver-cli [--server URL] sessions
    palaver-cli [--server URL] sessions end ID
    palaver-cli [--server URL] logout
    palaver-cli --help | --version

COMMANDS:
    login USERNAME     Sign in and keep the credentials. The password is read
                       from PALAVER_PASSWORD if set, else one line of stdin.
    chat ROOM          Join ROOM (1-32 of a-z 0-9 -), after showing its last
                       messages (--last N, default 20). Messages go to stdout
                       as `HH:MM:SS user: body` (local time; more lines of a
                       body indented below); every stdin line is sent, in
                       order, at the server's pace. At a terminal a line
                       ending in \\ goes on on the next (one message).
                       Presence and notes go to stderr. Reconnects by itself;
                       stdin's end sends what is left, then exits.
                       Removed from the room meanwhile: says so, exits 5.
    chat @USER         The direct conversation with USER, as `chat ROOM`.
    dm USER            The same as `chat @USER`.
    rooms              Your rooms, one a line: the name (a direct
                       conversation as @USER), public, private or direct,
                       your role in a private room, and unread messages.
    create ROOM        Create the private room ROOM; you are its owner.
                       With --public, a public room instead.
    members ROOM       The members of a private room (or of @USER, a direct
                       conversation), one a line, with their roles.
    invite ROOM USER   Add USER to the private room ROOM (any member may).
    remove ROOM USER   Remove USER from ROOM (its owner may).
    leave ROOM         Leave ROOM. The owner's role passes to the longest-
                       standing member; the last to leave deletes the room
                       and its history.
    sessions           Every session of yours, one a line: its id, kind
                       (browser or token), client, address, when it was
                       last active (UTC); this one marked `(this one)`.
    sessions end ID    End the session ID everywhere (its open chats close).
    logout             End this session on the server and delete the credentials.

OPTIONS:
    --server URL     The server (http:// or https://). Default: PALAVER_SERVER,
                     else the server of the saved credentials, else
                     http://127.0.0.1:8080
    --public         With create: a public room
    --last N         With chat: show the room's last N messages first
                     (0 to 100; default 20, 0 for none)
    -h, --help       Print this help
    -V, --version    Print the version

ENVIRONMENT:
    PALAVER_SERVER       the server, when --server is not given
    PALAVER_PASSWORD     the password for `login` (instead of stdin)
    PALAVER_CREDENTIALS  the credentials file. Default:
                         $XDG_CONFIG_HOME/palaver/credentials.json, else
                         $HOME/.config/palaver/credentials.json (mode 0600)

EXIT STATUS:
    0 done; 1 an error; 2 wrong username or password; 3 too many attempts or
    requests, try later; 4 signed out (log in again); 5 no access to the
    room (removed from it, or not a member); 64 a usage error
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Login {
        username: String,
    },
    /// `room` is a room name or `@user`.
    Chat {
        room: String,
    },
    Room(RoomCommand),
    Sessions(SessionsCommand),
    Logout,
    Help,
    Version,
}

/// The commands that make one request about rooms. A `room` is a room name
/// or `@user` (a direct conversation), except for `Create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomCommand {
    List,
    Create { room: String, public: bool },
    Members { room: String },
    Invite { room: String, user: String },
    Remove { room: String, user: String },
    Leave { room: String },
}

/// `sessions` and `sessions end ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionsCommand {
    List,
    End { id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--server`, as given.
    pub server: Option<String>,
    /// `--last`, as given: how many earlier messages `chat` shows.
    pub last: Option<u32>,
    pub command: Command,
}

/// How many earlier messages `chat` shows without `--last`.
pub const DEFAULT_LAST: u32 = 20;
/// The most `--last` takes: one page of the server's history at its default
/// `HISTORY_PAGE_MAX`.
pub const MAX_LAST: u32 = 100;

/// A command line that makes no sense; the text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Parses the arguments after the program name. Options may stand anywhere;
/// `--` ends them (for a username that starts with `-`).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, UsageError> {
    let mut server = None;
    let mut last = None;
    let mut public = false;
    let mut words = Vec::new();
    let mut args = args.into_iter();
    let mut options_done = false;
    while let Some(arg) = args.next() {
        if options_done || !arg.starts_with('-') || arg == "-" {
            words.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => options_done = true,
            "-h" | "--help" => return Ok(Args { server, last, command: Command::Help }),
            "-V" | "--version" => return Ok(Args { server, last, command: Command::Version }),
            "--public" => public = true,
            "--server" => {
                let url = args.next().ok_or_else(|| usage("--server needs a URL"))?;
                server = Some(url);
            }
            "--last" => last = Some(count(args.next())?),
            _ => match (arg.strip_prefix("--server="), arg.strip_prefix("--last=")) {
                (Some(url), _) => server = Some(url.to_owned()),
                (_, Some(n)) => last = Some(count(Some(n.to_owned()))?),
                _ => return Err(usage(format!("unknown option {arg}"))),
            },
        }
    }
    if server.as_deref() == Some("") {
        return Err(usage("--server needs a URL"));
    }
    let mut words = words.into_iter();
    let mut next = |what: &str| words.next().ok_or_else(|| usage(what));
    let command = match next("a command is missing: login, chat, rooms or logout (see --help)")?.as_str() {
        "help" => Command::Help,
        "login" => {
            let username = next("login needs a USERNAME")?;
            if username.is_empty() {
                return Err(usage("the USERNAME is empty"));
            }
            Command::Login { username }
        }
        "chat" => Command::Chat { room: target(next("chat needs a ROOM or @USER")?)? },
        "dm" => Command::Chat { room: format!("@{}", user(next("dm needs a USER")?)?) },
        "rooms" => Command::Room(RoomCommand::List),
        "create" => {
            let room = next("create needs a ROOM")?;
            if !valid_room(&room) {
                return Err(not_a_room_name(&room));
            }
            Command::Room(RoomCommand::Create { room, public })
        }
        "members" => Command::Room(RoomCommand::Members { room: target(next("members needs a ROOM")?)? }),
        "invite" => {
            let room = target(next("invite needs a ROOM and a USER")?)?;
            let user = user(next("invite needs a USER after the ROOM")?)?;
            Command::Room(RoomCommand::Invite { room, user })
        }
        "remove" => {
            let room = target(next("remove needs a ROOM and a USER")?)?;
            let user = user(next("remove needs a USER after the ROOM")?)?;
            Command::Room(RoomCommand::Remove { room, user })
        }
        "leave" => Command::Room(RoomCommand::Leave { room: target(next("leave needs a ROOM")?)? }),
        "sessions" => match words.next().as_deref() {
            None => Command::Sessions(SessionsCommand::List),
            Some("end") => {
                let id = words.next().ok_or_else(|| usage("sessions end needs an ID (see `palaver-cli sessions`)"))?;
                if !valid_session_id(&id) {
                    return Err(usage(format!("{id:?} is not a session id (see `palaver-cli sessions`)")));
                }
                Command::Sessions(SessionsCommand::End { id })
            }
            Some(other) => {
                return Err(usage(format!("unknown sessions command {other:?}: sessions, or sessions end ID")))
            }
        },
        "logout" => Command::Logout,
        other => return Err(usage(format!("unknown command {other:?} (see --help)"))),
    };
    if let Some(extra) = words.next() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    if public && !matches!(command, Command::Room(RoomCommand::Create { .. })) {
        return Err(usage("--public goes with create only"));
    }
    if last.is_some() && !matches!(command, Command::Chat { .. }) {
        return Err(usage("--last goes with chat only"));
    }
    Ok(Args { server, last, command })
}

/// `--last`'s N.
fn count(word: Option<String>) -> Result<u32, UsageError> {
    let word = word.ok_or_else(|| usage("--last needs a number"))?;
    word.parse()
        .ok()
        .filter(|n| *n <= MAX_LAST)
        .ok_or_else(|| usage(format!("--last takes a number from 0 to {MAX_LAST}, not {word:?}")))
}

fn not_a_room_name(room: &str) -> UsageError {
    usage(format!("{room:?} is not a room name: 1 to 32 of a-z, 0-9 and -"))
}

/// A room as `chat` and the room commands take it: a room name, or `@user`
/// for the direct conversation with that user.
fn target(word: String) -> Result<String, UsageError> {
    match word.strip_prefix('@') {
        Some(name) if valid_username(name) => Ok(word),
        Some(_) => Err(usage(format!("{word:?} is not @USER: 3 to 32 of A-Z, a-z, 0-9, _, . and - after the @"))),
        None if valid_room(&word) => Ok(word),
        None => Err(usage(format!(
            "{word:?} is not a room name: 1 to 32 of a-z, 0-9 and -, or @USER for a direct conversation"
        ))),
    }
}

/// A username given as a USER argument; a leading `@` is allowed.
fn user(word: String) -> Result<String, UsageError> {
    let name = word.strip_prefix('@').unwrap_or(&word);
    if valid_username(name) {
        Ok(name.to_owned())
    } else {
        Err(usage(format!("{word:?} is not a username: 3 to 32 of A-Z, a-z, 0-9, _, . and -")))
    }
}

/// The server's rule for usernames (docs/protocol.md): 3 to 32 of
/// `A-Z a-z 0-9 _ . -`, so one needs no escaping in a path or a query.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The server's rule for room names (docs/protocol.md): checked here so that
/// a typo is a usage error, not a refused upgrade after a token refresh.
pub fn valid_room(room: &str) -> bool {
    (1..=32).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What a session id the server lists looks like: base64url, so one needs
/// no escaping in a path.
fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Where the server comes from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSource {
    Flag,
    Env,
    Credentials,
    Default,
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The server to talk to: `--server`, else `PALAVER_SERVER`, else the one the
/// saved credentials belong to, else the default.
pub fn resolve_server(
    flag: Option<&str>,
    env: Option<&str>,
    stored: Option<&str>,
) -> Result<(Server, ServerSource), UsageError> {
    let env = env.filter(|s| !s.trim().is_empty());
    let (url, source) = match (flag, env, stored) {
        (Some(url), _, _) => (url, ServerSource::Flag),
        (None, Some(url), _) => (url, ServerSource::Env),
        (None, None, Some(url)) => (url, ServerSource::Credentials),
        (None, None, None) => (DEFAULT_SERVER, ServerSource::Default),
    };
    let server = Server::parse(url).map_err(|e| match source {
        ServerSource::Flag => usage(format!("--server: {e}")),
        ServerSource::Env => usage(format!("PALAVER_SERVER: {e}")),
        ServerSource::Credentials => usage(format!("the credentials file's server: {e}")),
        ServerSource::Default => usage(e),
    })?;
    Ok((server, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn cmd(args: &[&str]) -> Command {
        p(args).unwrap().command
    }

    #[test]
    fn the_three_commands_parse() {
        assert_eq!(cmd(&["login", "alice"]), Command::Login { username: "alice".into() });
        assert_eq!(cmd(&["chat", "lobby"]), Command::Chat { room: "lobby".into() });
        assert_eq!(cmd(&["logout"]), Command::Logout);
    }

    #[test]
    fn a_direct_conversation_is_chat_at_user_or_dm_user() {
        assert_eq!(cmd(&["chat", "@bob"]), Command::Chat { room: "@bob".into() });
        assert_eq!(cmd(&["chat", "@Bo_b.x-9"]), Command::Chat { room: "@Bo_b.x-9".into() });
        assert_eq!(cmd(&["dm", "bob"]), Command::Chat { room: "@bob".into() });
        assert_eq!(cmd(&["dm", "@bob"]), Command::Chat { room: "@bob".into() });
        assert_eq!(cmd(&["dm", "--", "-bob-"]), Command::Chat { room: "@-bob-".into() });
    }

    #[test]
    fn the_room_commands_parse() {
        let room = |c| Command::Room(c);
        assert_eq!(cmd(&["rooms"]), room(RoomCommand::List));
        assert_eq!(cmd(&["create", "deploys"]), room(RoomCommand::Create { room: "deploys".into(), public: false }));
        assert_eq!(
            cmd(&["create", "--public", "town"]),
            room(RoomCommand::Create { room: "town".into(), public: true })
        );
        assert_eq!(cmd(&["members", "deploys"]), room(RoomCommand::Members { room: "deploys".into() }));
        assert_eq!(cmd(&["members", "@bob"]), room(RoomCommand::Members { room: "@bob".into() }));
        assert_eq!(
            cmd(&["invite", "deploys", "bob"]),
            room(RoomCommand::Invite { room: "deploys".into(), user: "bob".into() })
        );
        assert_eq!(
            cmd(&["invite", "deploys", "@bob"]),
            room(RoomCommand::Invite { room: "deploys".into(), user: "bob".into() }),
            "a user may be written @user"
        );
        assert_eq!(
            cmd(&["remove", "deploys", "bob"]),
            room(RoomCommand::Remove { room: "deploys".into(), user: "bob".into() })
        );
        assert_eq!(cmd(&["leave", "deploys"]), room(RoomCommand::Leave { room: "deploys".into() }));
    }

    #[test]
    fn server_flag_goes_anywhere_in_both_spellings() {
        for args in [
            &["--server", "http://h:1", "chat", "r"][..],
            &["chat", "--server", "http://h:1", "r"],
            &["chat", "r", "--server=http://h:1"],
        ] {
            let a = p(args).unwrap();
            assert_eq!(a.server.as_deref(), Some("http://h:1"), "{args:?}");
            assert_eq!(a.command, Command::Chat { room: "r".into() });
        }
        assert_eq!(p(&["logout"]).unwrap().server, None);
    }

    #[test]
    fn last_says_how_many_earlier_messages_chat_shows() {
        assert_eq!(p(&["chat", "lobby"]).unwrap().last, None);
        assert_eq!(p(&["chat", "lobby", "--last", "5"]).unwrap().last, Some(5));
        assert_eq!(p(&["--last=0", "dm", "bob"]).unwrap().last, Some(0));
        assert_eq!(p(&["chat", "lobby", "--last", "100"]).unwrap().last, Some(100));
        for (args, says) in [
            (&["chat", "lobby", "--last"][..], "needs a number"),
            (&["chat", "lobby", "--last", "101"], "from 0 to 100"),
            (&["chat", "lobby", "--last=-1"], "from 0 to 100"),
            (&["chat", "lobby", "--last", "all"], "from 0 to 100"),
            (&["rooms", "--last", "3"], "--last goes with chat only"),
        ] {
            let err = p(args).unwrap_err();
            assert!(err.0.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn sessions_lists_and_sessions_end_takes_one_id() {
        assert_eq!(cmd(&["sessions"]), Command::Sessions(SessionsCommand::List));
        assert_eq!(cmd(&["sessions", "end", "Ab-_9"]), Command::Sessions(SessionsCommand::End { id: "Ab-_9".into() }));
        for (args, says) in [
            (&["sessions", "end"][..], "needs an ID"),
            (&["sessions", "end", "a/b"], "not a session id"),
            (&["sessions", "list"], "unknown sessions command"),
            (&["sessions", "end", "a", "b"], "unexpected argument"),
        ] {
            let err = p(args).unwrap_err().0;
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn help_and_version_need_no_command() {
        assert_eq!(cmd(&["--help"]), Command::Help);
        assert_eq!(cmd(&["chat", "-h"]), Command::Help);
        assert_eq!(cmd(&["help"]), Command::Help);
        assert_eq!(cmd(&["--version"]), Command::Version);
        assert_eq!(cmd(&["chat", "lobby", "-V"]), Command::Version);
        // Options are read in order: an unknown one before --help is reported.
        assert!(p(&["login", "--bogus", "-h"]).unwrap_err().0.contains("--bogus"));
    }

    #[test]
    fn double_dash_lets_a_username_start_with_a_dash() {
        assert_eq!(cmd(&["login", "--", "-dash-"]), Command::Login { username: "-dash-".into() });
        assert!(p(&["login", "-dash-"]).unwrap_err().0.contains("unknown option"));
    }

    #[test]
    fn mistakes_are_usage_errors_that_say_what_is_wrong() {
        for (args, says) in [
            (&[][..], "command is missing"),
            (&["login"], "needs a USERNAME"),
            (&["chat"], "needs a ROOM"),
            (&["chat", "Lobby"], "not a room name"),
            (&["chat", "a/b"], "not a room name"),
            (&["chat", "lobby", "extra"], "unexpected argument"),
            (&["logout", "now"], "unexpected argument"),
            (&["dance"], "unknown command"),
            (&["chat", "r", "--server"], "needs a URL"),
            (&["chat", "r", "--server="], "needs a URL"),
            (&["--verbose", "logout"], "unknown option --verbose"),
            (&["chat", "@"], "is not @USER"),
            (&["chat", "@bo"], "is not @USER"),
            (&["chat", "@bob/x"], "is not @USER"),
            (&["chat", "bob@x"], "not a room name"),
            (&["dm"], "needs a USER"),
            (&["dm", "b"], "not a username"),
            (&["dm", "bob", "carol"], "unexpected argument"),
            (&["rooms", "all"], "unexpected argument"),
            (&["create"], "needs a ROOM"),
            (&["create", "@bob"], "not a room name"),
            (&["create", "Deploys"], "not a room name"),
            (&["members"], "needs a ROOM"),
            (&["members", "a b"], "not a room name"),
            (&["invite", "deploys"], "needs a USER"),
            (&["invite", "deploys", "b"], "not a username"),
            (&["invite", "deploys", "bob", "carol"], "unexpected argument"),
            (&["remove", "deploys"], "needs a USER"),
            (&["remove", "deploys", "bob/x"], "not a username"),
            (&["leave"], "needs a ROOM"),
            (&["leave", "deploys", "now"], "unexpected argument"),
            (&["rooms", "--public"], "--public goes with create only"),
            (&["chat", "lobby", "--public"], "--public goes with create only"),
        ] {
            let err = p(args).unwrap_err();
            assert!(err.0.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn usernames_follow_the_servers_rule() {
        for good in ["bob", "Bob_the.2nd-", "-x-", &"x".repeat(32)] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["", "bo", "b b", "b@b", "b/b", "bö", &"x".repeat(33)] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn room_names_follow_the_servers_rule() {
        for good in ["lobby", "a", "room-2", &"x".repeat(32)] {
            assert!(valid_room(good), "{good}");
        }
        for bad in ["", "Lobby", "a b", "a_b", "ä", &"x".repeat(33)] {
            assert!(!valid_room(bad), "{bad}");
        }
    }

    #[test]
    fn the_server_is_the_flag_then_the_env_then_the_stored_one_then_the_default() {
        let s = |f, e, c| resolve_server(f, e, c).map(|(s, src)| (s.base().to_owned(), src));
        assert_eq!(s(Some("http://f:1"), Some("http://e:1"), Some("http://c:1")).unwrap().1, ServerSource::Flag);
        assert_eq!(s(None, Some("http://e:1"), Some("http://c:1")).unwrap(), ("http://e:1".into(), ServerSource::Env));
        assert_eq!(s(None, Some(" "), Some("http://c:1")).unwrap(), ("http://c:1".into(), ServerSource::Credentials));
        assert_eq!(s(None, None, None).unwrap(), ("http://127.0.0.1:8080".into(), ServerSource::Default));
        assert!(s(Some("ftp://x"), None, None).unwrap_err().0.starts_with("--server:"));
        assert!(s(None, Some("nonsense"), None).unwrap_err().0.starts_with("PALAVER_SERVER:"));
    }
}
