//! The palaver binary: read the configuration, build, serve until stopped;
//! or, with `admin …`, run an operator's command on the shared store.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palaver::{admin::AdminCommand, telemetry, Application, Config};

/// A chat web app that does WebSocket authentication right. With no
/// command, serves (configured by the environment and `.env`).
#[derive(Debug, Parser)]
#[command(name = "palaver", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// An operator's commands on the shared store (the server's own
    /// configuration: .env, REDIS_URL).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    palaver::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts");
    runtime.block_on(async move {
        let config = match Config::from_env() {
            Ok(config) => config,
            Err(err) => {
                eprintln!("palaver: {err}");
                return ExitCode::from(2);
            }
        };
        match cli.command {
            None => serve(config).await,
            Some(Command::Admin { command }) => palaver::admin::run(&config, command).await,
        }
    })
}

async fn serve(config: Config) -> ExitCode {
    telemetry::init(config.log_format);
    // From here on, failures are log events too (one JSON object per line
    // with LOG_FORMAT=json).
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("stopped on an error: {err}");
            ExitCode::FAILURE
        }
    }
}
