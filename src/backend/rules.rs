//! The rules both backends follow, stated once. The Redis backend passes
//! them to its scripts; the in-process one applies them directly; the
//! contract suite (`tests/it/contract.rs`) holds both to them.

use std::time::Duration;

use crate::config::Config;

/// How long a `(room, user, client_id)` triple is remembered, so that a
/// resend after a lost ack is acknowledged with the first id instead of
/// being stored twice (`SEND_DEDUPE_SECS`, whole seconds).
pub fn dedupe_window(config: &Config) -> Duration {
    Duration::from_secs(config.send_dedupe_window.as_secs().max(1))
}

/// How many messages a room keeps at least (Redis trims approximately, in
/// whole nodes, so it may keep somewhat more; never fewer).
pub fn history_cap(config: &Config) -> u64 {
    config.history_max_len.max(1)
}
