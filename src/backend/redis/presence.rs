//! Presence: per room, a sorted set of `instance|user` by deadline.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;

use super::{
    connection::{millis, Call},
    keys::{self, room_group},
    scripts::SCRIPTS,
    RedisBackend,
};
use crate::{
    backend::{PresenceStore, StoreResult},
    clock::UnixMillis,
    model::RoomName,
};

fn presence_member(instance: &str, user: &str) -> String {
    format!("{instance}|{user}")
}

/// Indexes of `rooms` by room group, in first-seen order.
fn by_group(rooms: impl Iterator<Item = usize>) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, group) in rooms.enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(i),
            None => groups.push((group, vec![i])),
        }
    }
    groups
}

/// Presence keys of a room group share its slot: one script call per group
/// touched, all in one pipeline.
#[async_trait]
impl PresenceStore for RedisBackend {
    async fn update(
        &self,
        instance: &str,
        online: &[(RoomName, String)],
        offline: &[(RoomName, String)],
        ttl: Duration,
    ) -> StoreResult<()> {
        if online.is_empty() && offline.is_empty() {
            return Ok(());
        }
        let deadline = millis(UnixMillis::now() + ttl);
        let pairs: Vec<(&(RoomName, String), bool)> =
            online.iter().map(|p| (p, true)).chain(offline.iter().map(|p| (p, false))).collect();
        let groups = by_group(pairs.iter().map(|((room, _), _)| room_group(room)));
        let calls: Vec<Call> = groups
            .iter()
            .map(|(_, members)| {
                // Online entries first, as the script expects.
                let ordered: Vec<&(&(RoomName, String), bool)> = members
                    .iter()
                    .map(|i| &pairs[*i])
                    .filter(|(_, on)| *on)
                    .chain(members.iter().map(|i| &pairs[*i]).filter(|(_, on)| !*on))
                    .collect();
                let keys = ordered.iter().map(|((room, _), _)| keys::presence(room)).collect();
                let mut args = vec![deadline.clone(), (ordered.iter().filter(|(_, on)| *on).count() as i64).into()];
                args.extend(ordered.iter().map(|((_, user), _)| Value::from(presence_member(instance, user))));
                Call::new(&SCRIPTS.presence_update, keys, args)
            })
            .collect();
        self.conn.run_all(&calls).await?;
        Ok(())
    }

    async fn online(&self, rooms: &[RoomName]) -> StoreResult<Vec<Vec<(String, String)>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let now = millis(UnixMillis::now());
        let groups = by_group(rooms.iter().map(room_group));
        let calls: Vec<Call> = groups
            .iter()
            .map(|(_, members)| {
                let keys = members.iter().map(|i| keys::presence(&rooms[*i])).collect();
                Call::new(&SCRIPTS.presence_online, keys, vec![now.clone()])
            })
            .collect();
        let mut out = vec![Vec::new(); rooms.len()];
        for ((_, members), reply) in groups.iter().zip(self.conn.run_all(&calls).await?) {
            let lists: Vec<Vec<String>> = reply.convert()?;
            for (i, list) in members.iter().zip(lists) {
                out[*i] = list
                    .into_iter()
                    .filter_map(|m| m.split_once('|').map(|(instance, user)| (instance.to_owned(), user.to_owned())))
                    .collect();
            }
        }
        Ok(out)
    }
}
