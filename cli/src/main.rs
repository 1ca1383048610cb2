//! palaver-cli: sign in to a palaver server with a token, chat in a room
//! from a terminal or a pipe, sign out.
//!
//! - `args`: the command line, and which server to use
//! - `credentials`: the credentials file (0600, replaced atomically) and token rotation
//! - `api`: the HTTP token API (`/api/token`, `/api/token/refresh`, `/api/logout`)
//! - `session`: `chat`, the WebSocket loop, and the pure types that decide it

mod api;
mod args;
mod credentials;
mod session;

use std::{
    env,
    io::{self, BufRead, IsTerminal, Write},
    path::Path,
};

use api::{Api, Server};
use args::{Command, ServerSource};
use credentials::{now_ms, Credentials};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_BAD_CREDENTIALS: i32 = 2;
pub const EXIT_THROTTLED: i32 = 3;
pub const EXIT_SIGNED_OUT: i32 = 4;
pub const EXIT_USAGE: i32 = 64;

fn main() {
    let code = match parse_args() {
        Ok(args) => match args.command {
            Command::Help => {
                print!("{}", args::USAGE);
                EXIT_OK
            }
            Command::Version => {
                println!("palaver-cli {}", env!("CARGO_PKG_VERSION"));
                EXIT_OK
            }
            _ => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(rt) => rt.block_on(run(args)),
                    Err(e) => {
                        eprintln!("palaver-cli: cannot start: {e}");
                        EXIT_ERROR
                    }
                }
            }
        },
        Err(e) => {
            eprintln!("palaver-cli: {e}\nRun `palaver-cli --help` for usage.");
            EXIT_USAGE
        }
    };
    let _ = io::stdout().flush();
    // Straight out: stdin's reader thread may be blocked in a read that
    // nothing can cancel.
    std::process::exit(code);
}

fn parse_args() -> Result<args::Args, args::UsageError> {
    let words: Option<Vec<String>> = env::args_os().skip(1).map(|a| a.into_string().ok()).collect();
    args::parse(words.ok_or_else(|| args::UsageError("arguments must be UTF-8".into()))?)
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok()
}

async fn run(args: args::Args) -> i32 {
    let path = match credentials::path_from(var) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    match args.command {
        Command::Login { username } => {
            let server = match server(args.server.as_deref(), None) {
                Ok(s) => s,
                Err(code) => return code,
            };
            login(Api::new(server), &path, &username).await
        }
        Command::Chat { room } => {
            let creds = match load(&path) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    eprintln!("not signed in: run `palaver-cli login USERNAME` first");
                    return EXIT_SIGNED_OUT;
                }
                Err(code) => return code,
            };
            let server = match server(args.server.as_deref(), Some(&creds)) {
                Ok(s) => s,
                Err(code) => return code,
            };
            session::run(session::Chat { api: Api::new(server), path, creds, room }).await
        }
        Command::Logout => {
            let creds = match load(&path) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    eprintln!("not signed in");
                    return EXIT_OK;
                }
                Err(code) => return code,
            };
            let server = match server(args.server.as_deref(), Some(&creds)) {
                Ok(s) => s,
                Err(code) => return code,
            };
            logout(Api::new(server), &path, creds).await
        }
        Command::Help | Command::Version => unreachable!("answered without a runtime"),
    }
}

fn fail(text: &str) -> i32 {
    eprintln!("palaver-cli: {text}");
    EXIT_ERROR
}

fn load(path: &Path) -> Result<Option<Credentials>, i32> {
    credentials::load(path).map_err(|e| fail(&e))
}

/// The server for this command. Tokens go only to the server that issued
/// them: a `--server` or `PALAVER_SERVER` naming another one is refused.
fn server(flag: Option<&str>, creds: Option<&Credentials>) -> Result<Server, i32> {
    let env = var("PALAVER_SERVER");
    let (server, source) =
        args::resolve_server(flag, env.as_deref(), creds.map(|c| c.server.as_str())).map_err(|e| {
            eprintln!("palaver-cli: {e}");
            EXIT_USAGE
        })?;
    if let Some(creds) = creds {
        let issuer = Server::parse(&creds.server).map(|s| s.base().to_owned()).unwrap_or_default();
        if source != ServerSource::Credentials && server.base() != issuer {
            eprintln!(
                "palaver-cli: the saved credentials are for {}, not {}: log in to {} first \
                 (or point PALAVER_CREDENTIALS at another file)",
                creds.server,
                server.base(),
                server.base()
            );
            return Err(EXIT_ERROR);
        }
    }
    if server.is_plain_remote() {
        eprintln!(
            "warning: {} is plain HTTP to another machine: passwords and tokens cross the network unencrypted",
            server.base()
        );
    }
    Ok(server)
}

/// `PALAVER_PASSWORD`, else one line of stdin (prompted for on a terminal).
fn read_password() -> Result<String, String> {
    if let Some(password) = var("PALAVER_PASSWORD") {
        return Ok(password);
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = io::stderr().flush();
    }
    let mut line = String::new();
    match stdin.lock().read_line(&mut line) {
        Ok(0) => return Err("no password: set PALAVER_PASSWORD or give it on stdin".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("cannot read the password from stdin: {e}")),
    }
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(line)
}

async fn login(api: Api, path: &Path, username: &str) -> i32 {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let asked = now_ms();
    let pair = match api.sign_in(username, &password).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("login failed: {e}");
            return match e.status() {
                Some(401) => EXIT_BAD_CREDENTIALS,
                Some(429) => EXIT_THROTTLED,
                _ => EXIT_ERROR,
            };
        }
    };
    let creds = Credentials::new(api.server().base(), username, pair, asked);
    if let Err(e) = credentials::save(path, &creds) {
        // A session nobody holds the tokens of: end it rather than leave it.
        let _ = api.logout(&creds.access_token).await;
        return fail(&format!("signed in, but cannot save the credentials to {}: {e}", path.display()));
    }
    println!("Signed in as {username}");
    EXIT_OK
}

async fn logout(api: Api, path: &Path, mut creds: Credentials) -> i32 {
    if creds.needs_refresh(now_ms()) {
        let file_token = creds.refresh_token.clone();
        match credentials::refresh(&api, path, creds.clone(), &file_token, false).await {
            Ok(r) => {
                if let Err(e) = r.saved {
                    eprintln!("warning: cannot save the new refresh token to {}: {e}", path.display());
                }
                creds = r.creds;
            }
            Err(e) if e.status() == Some(401) => return forget(path, Some("the session had already ended")),
            Err(e) => {
                eprintln!("logout failed: cannot refresh the token: {e}; the credentials are kept, try again");
                return EXIT_ERROR;
            }
        }
    }
    match api.logout(&creds.access_token).await {
        Ok(()) => forget(path, None),
        Err(e) if e.status() == Some(401) => {
            forget(path, Some(&format!("the session had already ended ({})", e.reason())))
        }
        Err(e) => {
            eprintln!("logout failed: {e}; the credentials are kept, try again");
            EXIT_ERROR
        }
    }
}

/// Deletes the credentials file after a logout; `note` says the session was
/// already over.
fn forget(path: &Path, note: Option<&str>) -> i32 {
    if let Some(note) = note {
        eprintln!("{note}");
    }
    match credentials::delete(path) {
        Ok(_) => {
            println!("Signed out");
            EXIT_OK
        }
        Err(e) => fail(&format!("the session is over, but {} cannot be deleted: {e}", path.display())),
    }
}
