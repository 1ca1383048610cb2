//! The credentials one command runs with: the access token it presents,
//! refreshed before it runs out and once when the server refuses it, every
//! rotation written back at once ([`credentials::refresh`]), and what the
//! user is told when the session is over. `chat`, `logout` and the room
//! commands all hold their tokens here.

use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;

use crate::{
    api::{Api, ApiError},
    args::DEFAULT_SERVER,
    credentials::{self, now_ms, Credentials, Refreshed},
    exit,
    terminal::printable,
};

pub struct Tokens {
    api: Api,
    path: PathBuf,
    creds: Credentials,
    /// The refresh token last read from or written to the file; a different
    /// one there means another process rotated it (see [`credentials::refresh`]).
    file_token: String,
}

/// Why [`Tokens::call`] got no answer.
#[derive(Debug)]
pub enum Failed {
    /// The session is over: the refresh was refused, or a token just
    /// refreshed was. The text says why.
    SignedOut(String),
    /// The refresh got no answer, or was refused for a while (429, 5xx).
    Refresh(ApiError),
    /// The request itself was refused (or got no answer).
    Request(ApiError),
}

impl Failed {
    fn refresh(e: ApiError) -> Failed {
        match e.status() {
            Some(401) => Failed::SignedOut(refused_refresh(&e)),
            _ => Failed::Refresh(e),
        }
    }
}

impl Tokens {
    /// The credentials as loaded from `path`, for `api`'s server.
    pub fn new(api: Api, path: PathBuf, creds: Credentials) -> Tokens {
        let file_token = creds.refresh_token.clone();
        Tokens { api, path, creds, file_token }
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn access_token(&self) -> &str {
        &self.creds.access_token
    }

    pub fn username(&self) -> &str {
        &self.creds.username
    }

    /// The access token has less than [`credentials::REFRESH_MARGIN_MS`] left.
    pub fn needs_refresh(&self) -> bool {
        self.creds.needs_refresh(now_ms())
    }

    /// Refreshes now; `force` after the server refused the access token, so
    /// that one taken from the file is not trusted just for looking fresh.
    pub async fn refresh(&mut self, force: bool) -> Result<(), ApiError> {
        let r = credentials::refresh(&self.api, &self.path, self.creds.clone(), &self.file_token, force).await?;
        self.adopt(r);
        Ok(())
    }

    /// A forced refresh in a task of its own: once the server has answered,
    /// the old refresh token is spent, so the new one must reach the file
    /// even if the caller stops waiting. Its outcome goes to [`Tokens::adopt`].
    pub fn spawn_refresh(&self) -> JoinHandle<Result<Refreshed, ApiError>> {
        let (api, path, creds, file_token) =
            (self.api.clone(), self.path.clone(), self.creds.clone(), self.file_token.clone());
        tokio::spawn(async move { credentials::refresh(&api, &path, creds, &file_token, true).await })
    }

    /// Takes refreshed credentials; says so if the file could not be updated.
    pub fn adopt(&mut self, r: Refreshed) {
        self.creds = r.creds;
        match r.saved {
            Ok(()) => self.file_token = self.creds.refresh_token.clone(),
            Err(e) => eprintln!(
                "warning: could not save the new refresh token to {}: {e}. The one in the file is spent: \
                 after this program stops, log in again",
                self.path.display()
            ),
        }
    }

    /// One request with the access token: refreshed first when it is about
    /// to run out, and refreshed once and tried again when the server
    /// refuses it (revoked keys, a clock that ran fast). A refused refresh,
    /// or a token refused right after its refresh, means the session is over.
    pub async fn call<T>(&mut self, request: impl AsyncFn(&Api, &str) -> Result<T, ApiError>) -> Result<T, Failed> {
        let mut fresh = false;
        if self.needs_refresh() {
            self.refresh(false).await.map_err(Failed::refresh)?;
            fresh = true;
        }
        loop {
            match request(&self.api, &self.creds.access_token).await {
                Err(e) if e.status() == Some(401) && !fresh => {
                    self.refresh(true).await.map_err(Failed::refresh)?;
                    fresh = true;
                }
                Err(e) if e.status() == Some(401) => return Err(Failed::SignedOut(printable(&e.reason()))),
                answer => return answer.map_err(Failed::Request),
            }
        }
    }

    /// Says the session is over and how to start another; the exit status.
    pub fn signed_out(&self, why: &str) -> i32 {
        eprintln!("signed out: {why}");
        eprintln!("(log in again with: {})", login_command(&self.creds.server, &self.creds.username));
        exit::SIGNED_OUT
    }
}

/// The command that logs `username` in to `server` again: `--server` is
/// named unless it is the default, so the line works as it is, wherever
/// `PALAVER_SERVER` points.
pub fn login_command(server: &str, username: &str) -> String {
    if server == DEFAULT_SERVER {
        format!("palaver-cli login {username}")
    } else {
        format!("palaver-cli --server {server} login {username}")
    }
}

/// A 401 from the refresh endpoint, as the reason for being signed out.
pub fn refused_refresh(e: &ApiError) -> String {
    match e {
        ApiError::Status { message: None, code: None, .. } => "the session has ended".into(),
        e => printable(&e.reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: Option<&str>, message: Option<&str>) -> ApiError {
        ApiError::Status { status, code: code.map(Into::into), message: message.map(Into::into), retry_after: None }
    }

    #[test]
    fn a_refused_refresh_signs_out_in_the_servers_words_and_anything_else_is_a_failed_refresh() {
        let said = |e| match Failed::refresh(e) {
            Failed::SignedOut(why) => Some(why),
            _ => None,
        };
        assert_eq!(said(status(401, None, None)).as_deref(), Some("the session has ended"));
        assert_eq!(said(status(401, Some("invalid_token"), None)).as_deref(), Some("invalid_token"));
        assert_eq!(said(status(401, Some("x"), Some("logged\nout"))).as_deref(), Some("logged\\nout"));
        assert!(matches!(Failed::refresh(status(429, None, None)), Failed::Refresh(_)));
        assert!(matches!(Failed::refresh(ApiError::Transport("refused".into())), Failed::Refresh(_)));
    }

    #[test]
    fn the_login_hint_names_the_server_unless_it_is_the_default() {
        assert_eq!(login_command("http://127.0.0.1:8080", "alice"), "palaver-cli login alice");
        assert_eq!(
            login_command("https://chat.example", "alice"),
            "palaver-cli --server https://chat.example login alice"
        );
    }
}
