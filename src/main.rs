//! The palaver binary: read the configuration, build, serve until stopped.

use std::process::ExitCode;

use palaver::{telemetry, Application, Config};

fn main() -> ExitCode {
    palaver::tune_allocator();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("the tokio runtime starts").block_on(run())
}

async fn run() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("palaver: {err}");
            return ExitCode::from(2);
        }
    };
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
