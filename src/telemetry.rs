//! Logging, on standard error: `RUST_LOG` filters (default `info`);
//! `LOG_FORMAT` picks human-readable lines or one JSON object per line.
//! Text is coloured only on a terminal, and never when `NO_COLOR` is set
//! (<https://no-color.org>): a log file or collector gets plain text.

use std::{ffi::OsString, io::IsTerminal};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))).try_init()
        }
        // Fields at the top level, beside "message": what collectors index.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

/// Colour only on a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string.
fn colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("1".into())));
    }
}
