//! Each user's security log: events newest first, a burst of failed
//! sign-ins from one address counted in one entry.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;

use super::{lock, MemoryBackend, SecurityEntries};
use crate::{
    backend::{SecurityLog, StoreResult},
    clock::UnixMillis,
    model::{SecurityEvent, SecurityEventKind, UserId},
};

/// `user`'s security log, empty if its time is up.
fn live_log(logs: &mut HashMap<UserId, SecurityEntries>, user: UserId, now: UnixMillis) -> &mut SecurityEntries {
    let mine = logs.entry(user).or_default();
    if mine.until <= now {
        mine.entries.clear();
    }
    mine
}

/// Each write under the logs' lock: one atomic step, as one script is.
#[async_trait]
impl SecurityLog for MemoryBackend {
    async fn record(&self, user: UserId, event: &SecurityEvent, keep_for: Duration) -> StoreResult<()> {
        let now = UnixMillis::now();
        let mut logs = lock(&self.security);
        logs.retain(|_, mine| mine.until > now);
        let mine = live_log(&mut logs, user, now);
        mine.push(event.clone());
        mine.until = now + keep_for;
        Ok(())
    }

    async fn sign_in_failed(
        &self,
        user: UserId,
        address: &str,
        at: UnixMillis,
        burst: Duration,
        keep_for: Duration,
    ) -> StoreResult<u32> {
        let now = UnixMillis::now();
        let mut logs = lock(&self.security);
        let mine = live_log(&mut logs, user, now);
        let burst_began_after = at - burst;
        let count = match mine.entries.front_mut() {
            Some(SecurityEvent { at: last, what: SecurityEventKind::SignInFailed { address: from, count, since } })
                if from == address && *since > burst_began_after =>
            {
                *count += 1;
                *last = (*last).max(at);
                *count
            }
            _ => {
                let what = SecurityEventKind::SignInFailed { address: address.to_owned(), count: 1, since: at };
                mine.push(SecurityEvent { at, what });
                1
            }
        };
        mine.until = now + keep_for;
        Ok(count)
    }

    async fn recent(&self, user: UserId, limit: usize) -> StoreResult<Vec<SecurityEvent>> {
        let now = UnixMillis::now();
        let logs = lock(&self.security);
        Ok(match logs.get(&user) {
            Some(mine) if mine.until > now => mine.entries.iter().take(limit).cloned().collect(),
            _ => Vec::new(),
        })
    }
}
