//! The room commands, one request each with the session's token (SPEC §6):
//! `rooms`, `create`, `members`, `invite`, `remove`, `leave`. What they
//! print, and which exit status each refusal gets, is decided by the pure
//! functions below.

use std::io::{self, Write};

use crate::{
    api::{ApiError, Member, Room},
    args::RoomCommand,
    exit,
    terminal::printable,
    tokens::{Failed, Tokens},
};

/// Runs one room command; the exit status.
pub async fn run(tokens: &mut Tokens, command: RoomCommand) -> i32 {
    let me = tokens.username().to_owned();
    let done = match &command {
        RoomCommand::List => tokens.call(async |api, token| api.rooms(token).await).await.map(|r| room_lines(&r)),
        RoomCommand::Create { room, public } => {
            let visibility = if *public { "public" } else { "private" };
            let created = tokens.call(async |api, token| api.create_room(token, room, visibility).await).await;
            created.map(|r| vec![format!("Created {}", describe(&r))])
        }
        RoomCommand::Members { room } => {
            tokens.call(async |api, token| api.members(token, room).await).await.map(|m| member_lines(&m))
        }
        RoomCommand::Invite { room, user } => {
            let added = tokens.call(async |api, token| api.add_member(token, room, user).await).await;
            added.map(|()| vec![format!("{user} is a member of {room}")])
        }
        RoomCommand::Remove { room, user } => {
            let removed = tokens.call(async |api, token| api.remove_member(token, room, user).await).await;
            removed.map(|()| vec![format!("Removed {user} from {room}")])
        }
        RoomCommand::Leave { room } => {
            let left = tokens.call(async |api, token| api.remove_member(token, room, &me).await).await;
            left.map(|()| vec![format!("Left {room}")])
        }
    };
    finish(tokens, done, |e| refusal(&command, e))
}

/// What one request's command ends with: its lines printed, or why it could
/// not be done (`refused`: the line and exit status of a refused request);
/// the exit status.
pub fn finish(
    tokens: &Tokens,
    done: Result<Vec<String>, Failed>,
    refused: impl FnOnce(&ApiError) -> (String, i32),
) -> i32 {
    match done {
        Ok(lines) => print_lines(&lines),
        Err(Failed::SignedOut(why)) => tokens.signed_out(&why),
        Err(Failed::Refresh(e)) => {
            eprintln!("cannot refresh the token: {}", printable(&e.to_string()));
            throttled_or(&e, exit::ERROR)
        }
        Err(Failed::Request(e)) => {
            let (line, code) = refused(&e);
            eprintln!("{line}");
            code
        }
    }
}

/// `rooms`' lines: the name (a direct conversation as `@user`, whatever the
/// server calls it), its visibility, the user's role in it, and its unread
/// count, in columns.
pub fn room_lines(rooms: &[Room]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|r| {
            vec![
                label(r),
                printable(&r.visibility),
                r.role.as_deref().map(printable).unwrap_or_default(),
                r.unread.map(|n| format!("{n} unread")).unwrap_or_default(),
            ]
        })
        .collect();
    columns(&rows)
}

/// `members`' lines: the user and their role, in columns.
pub fn member_lines(members: &[Member]) -> Vec<String> {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| vec![printable(&m.user), m.role.as_deref().map(printable).unwrap_or_default()])
        .collect();
    columns(&rows)
}

/// A room as a client calls it: `@bob` for a direct one.
fn label(room: &Room) -> String {
    let name = printable(&room.name);
    if room.visibility == "direct" && !name.starts_with('@') {
        format!("@{name}")
    } else {
        name
    }
}

/// `deploys (private, owner)`.
fn describe(room: &Room) -> String {
    match &room.role {
        Some(role) => format!("{} ({}, {})", label(room), printable(&room.visibility), printable(role)),
        None => format!("{} ({})", label(room), printable(&room.visibility)),
    }
}

/// Rows as lines, every column but the last padded to its widest cell and
/// two spaces apart; empty cells at a line's end leave no spaces behind.
pub fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count() + 2));
            }
            line.trim_end().to_owned()
        })
        .collect()
}

/// What a refused request is told as, and the exit status it gets.
pub fn refusal(command: &RoomCommand, e: &ApiError) -> (String, i32) {
    let doing = match command {
        RoomCommand::List => "cannot list the rooms".to_owned(),
        RoomCommand::Create { room, .. } => format!("cannot create {room}"),
        RoomCommand::Members { room } => format!("cannot list the members of {room}"),
        RoomCommand::Invite { room, user } => format!("cannot add {user} to {room}"),
        RoomCommand::Remove { room, user } => format!("cannot remove {user} from {room}"),
        RoomCommand::Leave { room } => format!("cannot leave {room}"),
    };
    let line = format!("{doing}: {}", printable(&e.to_string()));
    let about_a_room = !matches!(command, RoomCommand::List | RoomCommand::Create { .. });
    let code = match e {
        // The room cannot be seen: unknown, not a member, or public (which
        // has no member list). The same answer for all, as on every surface.
        ApiError::Status { status: 404, code, .. } if about_a_room && code.as_deref() != Some("no_such_user") => {
            exit::NO_ACCESS
        }
        e => throttled_or(e, exit::ERROR),
    };
    (line, code)
}

pub fn throttled_or(e: &ApiError, code: i32) -> i32 {
    if e.status() == Some(429) {
        exit::THROTTLED
    } else {
        code
    }
}

/// The lines on stdout; an empty list prints nothing.
fn print_lines(lines: &[String]) -> i32 {
    let mut out = io::stdout().lock();
    let written = lines.iter().try_for_each(|l| writeln!(out, "{l}")).and_then(|()| out.flush());
    match written {
        Ok(()) => exit::OK,
        // Nobody reads any more (a closed pipe).
        Err(_) => exit::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str, visibility: &str, role: Option<&str>, unread: Option<u64>) -> Room {
        Room { name: name.into(), visibility: visibility.into(), role: role.map(Into::into), unread }
    }

    fn status(status: u16, code: Option<&str>, message: &str, retry_after: Option<u64>) -> ApiError {
        ApiError::Status { status, code: code.map(Into::into), message: Some(message.into()), retry_after }
    }

    #[test]
    fn rooms_are_one_a_line_in_columns_with_direct_ones_as_at_names() {
        let rooms = [
            room("lobby", "public", None, Some(2)),
            room("deploys", "private", Some("owner"), Some(0)),
            room("hiring", "private", Some("member"), None),
            room("@bob", "direct", None, Some(12)),
            room("carol", "direct", None, None),
        ];
        assert_eq!(
            room_lines(&rooms),
            [
                "lobby    public           2 unread",
                "deploys  private  owner   0 unread",
                "hiring   private  member",
                "@bob     direct           12 unread",
                "@carol   direct",
            ]
        );
        assert!(room_lines(&[]).is_empty());
    }

    #[test]
    fn members_are_one_a_line_with_their_roles() {
        let members = [
            Member { user: "alice".into(), role: Some("owner".into()) },
            Member { user: "bob".into(), role: Some("member".into()) },
            Member { user: "c\u{1b}[2J".into(), role: None },
        ];
        assert_eq!(member_lines(&members), ["alice       owner", "bob         member", "c\\u{1b}[2J"]);
    }

    #[test]
    fn a_created_room_is_described_with_its_visibility_and_role() {
        assert_eq!(describe(&room("deploys", "private", Some("owner"), None)), "deploys (private, owner)");
        assert_eq!(describe(&room("town", "public", None, None)), "town (public)");
    }

    #[test]
    fn a_room_one_cannot_see_exits_5_and_every_other_refusal_1_or_3_in_the_servers_words() {
        let members = RoomCommand::Members { room: "deploys".into() };
        let invite = RoomCommand::Invite { room: "deploys".into(), user: "bob".into() };
        let remove = RoomCommand::Remove { room: "deploys".into(), user: "bob".into() };
        let create = RoomCommand::Create { room: "deploys".into(), public: false };
        let hidden = status(404, Some("not_found"), "No such room, or you are not a member.", None);
        assert_eq!(
            refusal(&members, &hidden),
            (
                "cannot list the members of deploys: the server answered 404 Not Found: \
                 No such room, or you are not a member. (not_found)"
                    .into(),
                5
            )
        );
        assert_eq!(refusal(&RoomCommand::Leave { room: "x".into() }, &hidden).1, 5);
        let nobody = status(404, Some("no_such_user"), "No such user.", None);
        assert_eq!(
            refusal(&invite, &nobody),
            ("cannot add bob to deploys: the server answered 404 Not Found: No such user. (no_such_user)".into(), 1)
        );
        // A server without the room routes.
        assert_eq!(refusal(&RoomCommand::List, &status(404, Some("not_found"), "x", None)).1, 1);
        let direct = status(409, Some("direct_room"), "A direct conversation's members never change.", None);
        assert_eq!(refusal(&invite, &direct).1, 1);
        let taken = status(409, Some("name_taken"), "That name is taken.", None);
        assert_eq!(
            refusal(&create, &taken),
            ("cannot create deploys: the server answered 409 Conflict: That name is taken. (name_taken)".into(), 1)
        );
        assert_eq!(refusal(&create, &status(422, Some("invalid"), "Not a room name.", None)).1, 1);
        let owner_only = status(403, Some("forbidden"), "Only the owner removes others.", None);
        assert_eq!(refusal(&remove, &owner_only).1, 1);
        let (line, code) = refusal(&create, &status(429, Some("rate_limited"), "Too many new rooms.", Some(30)));
        assert_eq!(code, 3);
        assert!(line.ends_with("Too many new rooms. (rate_limited); try again in 30 s"), "{line}");
        let (line, code) = refusal(&members, &status(503, None, "two\nlines", None));
        assert_eq!(
            (line.as_str(), code),
            ("cannot list the members of deploys: the server answered 503 Service Unavailable: two\\nlines", 1)
        );
    }
}
