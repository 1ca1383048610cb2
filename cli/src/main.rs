//! palaver-cli: sign in to a palaver server with a token, chat in a room or
//! a direct conversation from a terminal or a pipe, list and manage rooms
//! and their members, list and end the user's sessions, sign out.
//!
//! - `args`: the command line, and which server to use
//! - `credentials`: the credentials file (0600, replaced atomically) and token rotation
//! - `tokens`: the tokens one command runs with: refreshed when due or refused, saved at once
//! - `api`: the HTTP API (`/api/token`, `/api/token/refresh`, `/api/logout`, `/api/rooms`, `/api/sessions`)
//! - `session`: `chat`, the WebSocket loop, and the pure types that decide it
//! - `rooms`: `rooms`, `create`, `members`, `invite`, `remove`, `leave`
//! - `sessions`: `sessions`, `sessions end ID`
//! - `exit`: the exit statuses
//! - `json`: JSON errors that never quote what they read (it may be a token)
//! - `terminal`: text from others made safe to print

mod api;
mod args;
mod credentials;
mod exit;
mod json;
mod rooms;
mod session;
mod sessions;
mod terminal;
mod tokens;

use std::{
    env,
    io::{self, BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
};

use api::{Api, Server};
use args::{Command, ServerSource};
use credentials::{now_ms, Credentials};
use tokens::Tokens;

fn main() {
    let code = match parse_args() {
        Ok(args) => match args.command {
            Command::Help => {
                print!("{}", args::USAGE);
                exit::OK
            }
            Command::Version => {
                println!("palaver-cli {}", env!("CARGO_PKG_VERSION"));
                exit::OK
            }
            _ => {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(rt) => rt.block_on(run(args)),
                    Err(e) => {
                        eprintln!("palaver-cli: cannot start: {e}");
                        exit::ERROR
                    }
                }
            }
        },
        Err(e) => {
            eprintln!("palaver-cli: {e}\nRun `palaver-cli --help` for usage.");
            exit::USAGE
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
            // A damaged file is replaced by this login.
            let saved = credentials::load(&path).ok().flatten();
            let remembered = saved.as_ref().map(|c| c.server_of(&username));
            let server = match login_server(args.server.as_deref(), remembered) {
                Ok(s) => s,
                Err(code) => return code,
            };
            login(Api::new(server), &path, &username, saved).await
        }
        Command::Chat { room } => match signed_in(args.server.as_deref(), path) {
            Ok(tokens) => {
                let last = args.last.unwrap_or(args::DEFAULT_LAST);
                session::run(session::Chat { tokens, room, last }).await
            }
            Err(code) => code,
        },
        Command::Room(command) => match signed_in(args.server.as_deref(), path) {
            Ok(mut tokens) => rooms::run(&mut tokens, command).await,
            Err(code) => code,
        },
        Command::Sessions(command) => match signed_in(args.server.as_deref(), path) {
            Ok(mut tokens) => sessions::run(&mut tokens, command).await,
            Err(code) => code,
        },
        Command::Logout => {
            let creds = match load(&path) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    eprintln!("not signed in");
                    return exit::OK;
                }
                Err(code) => return code,
            };
            let server = match server(args.server.as_deref(), Some(&creds)) {
                Ok(s) => s,
                Err(code) => return code,
            };
            logout(Tokens::new(Api::new(server), path, creds)).await
        }
        Command::Help | Command::Version => unreachable!("answered without a runtime"),
    }
}

fn fail(text: &str) -> i32 {
    eprintln!("palaver-cli: {text}");
    exit::ERROR
}

fn load(path: &Path) -> Result<Option<Credentials>, i32> {
    credentials::load(path).map_err(|e| fail(&e))
}

/// The saved credentials, for a command that needs them; without any, the
/// user is told to log in (exit 4).
fn signed_in(flag: Option<&str>, path: PathBuf) -> Result<Tokens, i32> {
    let Some(creds) = load(&path)? else {
        eprintln!("not signed in: run `palaver-cli login USERNAME` first");
        return Err(exit::SIGNED_OUT);
    };
    let server = server(flag, Some(&creds))?;
    Ok(Tokens::new(Api::new(server), path, creds))
}

/// The server for this command. Tokens go only to the server that issued
/// them: a `--server` or `PALAVER_SERVER` naming another one is refused.
fn server(flag: Option<&str>, creds: Option<&Credentials>) -> Result<Server, i32> {
    let env = var("PALAVER_SERVER");
    let (server, source) =
        args::resolve_server(flag, env.as_deref(), creds.map(|c| c.server.as_str())).map_err(|e| {
            eprintln!("palaver-cli: {e}");
            exit::USAGE
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
            return Err(exit::ERROR);
        }
    }
    warn_if_plain(&server);
    Ok(server)
}

/// The server a password goes to: `--server`, else `PALAVER_SERVER`, else the
/// one this user last logged in to with this credentials file (or the last
/// one used), else the default. Never one the user did not name or save.
fn login_server(flag: Option<&str>, remembered: Option<&str>) -> Result<Server, i32> {
    let env = var("PALAVER_SERVER");
    let (server, _) = args::resolve_server(flag, env.as_deref(), remembered).map_err(|e| {
        eprintln!("palaver-cli: {e}");
        exit::USAGE
    })?;
    warn_if_plain(&server);
    Ok(server)
}

fn warn_if_plain(server: &Server) {
    if server.is_plain_remote() {
        eprintln!(
            "warning: {} is plain HTTP to another machine: passwords and tokens cross the network unencrypted",
            server.base()
        );
    }
}

/// `PALAVER_PASSWORD`, else one line of stdin: typed without echo on a
/// terminal, read as it comes from a pipe.
fn read_password() -> Result<String, String> {
    if let Some(password) = var("PALAVER_PASSWORD") {
        return Ok(password);
    }
    let stdin = io::stdin();
    if stdin.is_terminal() {
        // From the terminal itself, with echo off while it is typed.
        eprint!("Password: ");
        let _ = io::stderr().flush();
        return rpassword::read_password().map_err(|e| format!("cannot read the password from the terminal: {e}"));
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

async fn login(api: Api, path: &Path, username: &str, earlier: Option<Credentials>) -> i32 {
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
                Some(401) => exit::BAD_CREDENTIALS,
                Some(429) => exit::THROTTLED,
                _ => exit::ERROR,
            };
        }
    };
    let mut creds = Credentials::new(api.server().base(), username, pair, asked);
    creds.remember(earlier);
    if let Err(e) = credentials::save(path, &creds) {
        // A session nobody holds the tokens of: end it rather than leave it.
        let _ = api.logout(&creds.access_token).await;
        return fail(&format!("signed in, but cannot save the credentials to {}: {e}", path.display()));
    }
    println!("Signed in as {username}");
    exit::OK
}

async fn logout(mut tokens: Tokens) -> i32 {
    if tokens.needs_refresh() {
        match tokens.refresh(false).await {
            Ok(()) => {}
            Err(e) if e.status() == Some(401) => return forget(tokens.path(), Some("the session had already ended")),
            Err(e) => {
                eprintln!("logout failed: cannot refresh the token: {e}; the credentials are kept, try again");
                return exit::ERROR;
            }
        }
    }
    match tokens.api().logout(tokens.access_token()).await {
        Ok(()) => forget(tokens.path(), None),
        Err(e) if e.status() == Some(401) => {
            forget(tokens.path(), Some(&format!("the session had already ended ({})", e.reason())))
        }
        Err(e) => {
            eprintln!("logout failed: {e}; the credentials are kept, try again");
            exit::ERROR
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
            exit::OK
        }
        Err(e) => fail(&format!("the session is over, but {} cannot be deleted: {e}", path.display())),
    }
}
