//! The session commands (docs/protocol.md §7): `sessions` lists every
//! session of the user, `sessions end ID` ends one. What they print, and
//! the exit status of each refusal, is decided by the pure functions below.

use crate::{
    api::{ApiError, SessionInfo},
    args::SessionsCommand,
    exit,
    rooms::{columns, finish, throttled_or},
    terminal::printable,
    tokens::Tokens,
};

/// Runs one session command; the exit status.
pub async fn run(tokens: &mut Tokens, command: SessionsCommand) -> i32 {
    let done = match &command {
        SessionsCommand::List => {
            tokens.call(async |api, token| api.sessions(token).await).await.map(|s| session_lines(&s))
        }
        SessionsCommand::End { id } => {
            let ended = tokens.call(async |api, token| api.end_session(token, id).await).await;
            ended.map(|()| vec![format!("Ended session {id}")])
        }
    };
    finish(tokens, done, |e| (refusal(&command, e), throttled_or(e, exit::ERROR)))
}

/// `sessions`' lines, in the server's order (the one that expires last
/// first), in columns: the id, the kind, the client, the address, when it
/// was last active, and `(this one)` for the session of this client.
pub fn session_lines(sessions: &[SessionInfo]) -> Vec<String> {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let client = if s.client.is_empty() { "Unknown".to_owned() } else { printable(&s.client) };
            vec![
                printable(&s.id),
                printable(&s.kind),
                client,
                printable(&s.address),
                match s.last_active_at.or(s.created_at) {
                    Some(at) => format!("active {}", date_time_utc(at)),
                    None => String::new(),
                },
                if s.current { "(this one)".to_owned() } else { String::new() },
            ]
        })
        .collect();
    columns(&rows)
}

/// What a refused request is told as.
pub fn refusal(command: &SessionsCommand, e: &ApiError) -> String {
    let doing = match command {
        SessionsCommand::List => "cannot list the sessions".to_owned(),
        SessionsCommand::End { id } => format!("cannot end session {id}"),
    };
    format!("{doing}: {}", printable(&e.to_string()))
}

/// `YYYY-MM-DD HH:MM UTC` of a unix-ms time.
pub fn date_time_utc(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil, for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year}-{month:02}-{day:02} {:02}:{:02} UTC", of_day / 3600, of_day / 60 % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, kind: &str, client: &str, last: Option<i64>, current: bool) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            kind: kind.into(),
            created_at: Some(0),
            last_active_at: last,
            client: client.into(),
            address: "192.0.2.1".into(),
            current,
        }
    }

    #[test]
    fn sessions_are_one_a_line_in_columns_with_this_one_marked() {
        let sessions = [
            session("tok1", "token", "palaver-cli/0.3.0", Some(1_796_669_242_383), true),
            session("b2", "browser", "Chrome on Linux", Some(1_700_000_000_000), false),
            session("old3", "browser", "", None, false),
        ];
        assert_eq!(
            session_lines(&sessions),
            [
                "tok1  token    palaver-cli/0.3.0  192.0.2.1  active 2026-12-07 18:47 UTC  (this one)",
                "b2    browser  Chrome on Linux    192.0.2.1  active 2023-11-14 22:13 UTC",
                "old3  browser  Unknown            192.0.2.1  active 1970-01-01 00:00 UTC",
            ]
        );
        assert!(session_lines(&[]).is_empty());
    }

    #[test]
    fn dates_are_utc_across_leap_years_and_before_the_epoch() {
        assert_eq!(date_time_utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(date_time_utc(-60_000), "1969-12-31 23:59 UTC");
    }

    #[test]
    fn a_refusal_says_what_could_not_be_done_in_the_servers_words() {
        let e = ApiError::Status {
            status: 404,
            code: Some("not_found".into()),
            message: Some("You have no session with that id.".into()),
            retry_after: None,
        };
        assert_eq!(
            refusal(&SessionsCommand::End { id: "abc".into() }, &e),
            "cannot end session abc: the server answered 404 Not Found: You have no session with that id. (not_found)"
        );
    }
}
