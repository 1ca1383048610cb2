//! The security log: a list per user in the user's slot, newest first,
//! trimmed and given its lifetime by the script that writes it.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;

use super::{connection::millis, keys, scripts::SCRIPTS, RedisBackend};
use crate::{
    backend::{rules, SecurityLog, StoreResult},
    clock::UnixMillis,
    model::{SecurityEvent, SecurityEventKind, UserId},
};

fn event_json(event: &SecurityEvent) -> String {
    serde_json::to_string(event).expect("events serialize")
}

fn ms(d: Duration) -> Value {
    (d.as_millis() as i64).into()
}

#[async_trait]
impl SecurityLog for RedisBackend {
    async fn record(&self, user: UserId, event: &SecurityEvent, keep_for: Duration) -> StoreResult<()> {
        let args = vec![event_json(event).into(), (rules::SECURITY_EVENTS_KEPT as i64).into(), ms(keep_for)];
        self.conn.run::<()>(&SCRIPTS.events_record, vec![keys::user_events(user)], args).await
    }

    async fn sign_in_failed(
        &self,
        user: UserId,
        address: &str,
        at: UnixMillis,
        burst: Duration,
        keep_for: Duration,
    ) -> StoreResult<u32> {
        let first = SecurityEvent {
            at,
            what: SecurityEventKind::SignInFailed { address: address.to_owned(), count: 1, since: at },
        };
        let args = vec![
            address.into(),
            millis(at),
            ms(burst),
            (rules::SECURITY_EVENTS_KEPT as i64).into(),
            ms(keep_for),
            event_json(&first).into(),
        ];
        let count: i64 = self.conn.run(&SCRIPTS.events_failure, vec![keys::user_events(user)], args).await?;
        Ok(count.clamp(1, i64::from(u32::MAX)) as u32)
    }

    async fn recent(&self, user: UserId, limit: usize) -> StoreResult<Vec<SecurityEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = limit.min(rules::SECURITY_EVENTS_KEPT) as i64 - 1;
        let entries: Vec<String> =
            self.conn.timed("lrange", self.conn.fast.lrange(keys::user_events(user), 0, stop)).await?;
        Ok(entries
            .iter()
            .filter_map(|json| match serde_json::from_str(json) {
                Ok(event) => Some(event),
                Err(err) => {
                    tracing::warn!(%err, "a security event this version cannot read is skipped");
                    None
                }
            })
            .collect())
    }
}
