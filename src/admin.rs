//! `palaver admin …` (docs/protocol.md §7): an operator's hand on an
//! account, and invite links for sign-up, from the same binary and configuration as the server (`.env`,
//! `REDIS_URL`), acting on the shared store and telling every instance
//! through the event bus, as the server itself does.
//!
//! Each command prints one line saying what it did. Exit codes: 0 done, 1
//! no such user, 2 the store cannot be reached (or there is none to
//! share: the in-process store is a server's own).

use std::{process::ExitCode, sync::Arc};

use clap::Subcommand;

use crate::{
    auth::{invites, Sessions},
    backend::{Backend, BackendKind, EndReason, StoreError},
    config::Config,
    meters::Meters,
    model::EndedBy,
    state,
};

/// What an operator can do.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Refuse every sign-in of USERNAME and end every session of theirs on
    /// every instance.
    Disable { username: String },
    /// Let USERNAME sign in again.
    Enable { username: String },
    /// End every session of USERNAME on every instance (they may sign in
    /// again).
    EndSessions { username: String },
    /// Make an invite link for sign-up (REGISTRATION=invite); prints it.
    Invite {
        /// How many sign-ups it admits.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
        /// How many days it lasts.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=365))]
        days: u32,
    },
}

/// Why a command did not do what it was asked.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no user is named {0:?}")]
    NoSuchUser(String),
    #[error("{0}")]
    Store(String),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::NoSuchUser(_) => ExitCode::from(1),
            Failure::Store(_) => ExitCode::from(2),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(format!("the store did not answer: {err}"))
    }
}

/// Runs `command` against the store `config` names; prints its one line
/// (on standard output when done, standard error when not).
pub async fn run(config: &Config, command: AdminCommand) -> ExitCode {
    let result = match connect(config).await {
        Ok((backend, sessions)) => {
            let done = execute(config, &backend, &sessions, command).await;
            backend.health.close().await;
            done
        }
        Err(failure) => Err(failure),
    };
    match result {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("palaver admin: {failure}");
            failure.exit_code()
        }
    }
}

async fn connect(config: &Config) -> Result<(Backend, Sessions), Failure> {
    let instance = format!("admin-{}", uuid::Uuid::new_v4().simple());
    let backend = Backend::connect(config, &instance, &Meters::disabled())
        .await
        .map_err(|err| Failure::Store(err.to_string()))?;
    if backend.kind == BackendKind::Memory {
        return Err(Failure::Store(
            "no shared store: the admin commands act on Redis (set REDIS_URL as the server has it)".into(),
        ));
    }
    backend.health.ping().await?;
    let sessions = state::operator_sessions(config, &backend);
    Ok((backend, sessions))
}

async fn execute(
    config: &Config,
    backend: &Backend,
    sessions: &Sessions,
    command: AdminCommand,
) -> Result<String, Failure> {
    let users = Arc::clone(&backend.users);
    match command {
        AdminCommand::Disable { username } => {
            let user = users.set_disabled(&username, true).await?.ok_or(Failure::NoSuchUser(username))?;
            let ended = sessions.end_all(user.id, EndReason::Revoked, EndedBy::Operator).await?;
            Ok(format!("disabled {} and ended {}", user.name, sessions_said(ended)))
        }
        AdminCommand::Enable { username } => {
            let user = users.set_disabled(&username, false).await?.ok_or(Failure::NoSuchUser(username))?;
            Ok(format!("enabled {}: they may sign in again", user.name))
        }
        AdminCommand::EndSessions { username } => {
            let user = users.find(&username).await?.ok_or(Failure::NoSuchUser(username))?.user;
            let ended = sessions.end_all(user.id, EndReason::Revoked, EndedBy::Operator).await?;
            Ok(format!("ended {} of {}", sessions_said(ended), user.name))
        }
        AdminCommand::Invite { uses, days } => {
            let code = state::invite_codes(config, backend).make(uses, days, None).await?;
            let origin = config.server.resolve_origin(config.server.listen_addr);
            Ok(format!(
                "made an invite for {uses} sign-up{} within {days} day{}: {}",
                if uses == 1 { "" } else { "s" },
                if days == 1 { "" } else { "s" },
                invites::link(&origin, &code)
            ))
        }
    }
}

fn sessions_said(n: usize) -> String {
    format!("{n} session{}", if n == 1 { "" } else { "s" })
}
