//! Moves data written by an earlier palaver to today's key names, once per
//! Redis, at start-up.
//!
//! Cluster support tagged the per-user and per-room keys (docs/cluster.md),
//! and a room's existence moved from one global sorted set to a key per
//! room. Without this step an upgraded instance would not see the rooms,
//! their history or the users' room lists, and, worse, "log out
//! everywhere" would not find the sessions made before the upgrade. Only a
//! single Redis can hold such data (earlier versions ran on nothing else),
//! so only it is migrated, with `RENAMENX`, which keeps each key's value and
//! expiry and never overwrites what a newer instance already wrote.
//!
//! Every step may run twice (two instances starting at once, or a crash
//! halfway): a key already moved is simply not found again. The schema key
//! is written last.

use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand},
};

use super::keys;
use crate::{
    clock::UnixMillis,
    model::{RoomName, UserId},
};

/// The key layout's version; absent means the first one.
pub const SCHEMA_KEY: &str = "palaver:schema";
pub const SCHEMA: i64 = 2;
/// The first layout's rooms: a sorted set of room name → last activity ms.
const OLD_ROOMS: &str = "palaver:rooms";

/// What was moved, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub user_keys: usize,
    pub rooms: usize,
    pub expired_rooms: usize,
}

async fn command(client: &Pool, name: &'static str, args: Vec<Value>) -> Result<Value, Error> {
    client.custom(CustomCommand::new_static(name, ClusterHash::FirstKey, false), args).await
}

/// Brings a single Redis to [`SCHEMA`]; does nothing when it is there.
pub async fn run(client: &Pool, room_ttl: std::time::Duration) -> Result<Option<Moved>, Error> {
    let version: Option<i64> = command(client, "GET", vec![SCHEMA_KEY.into()]).await?.convert()?;
    if version.is_some_and(|v| v >= SCHEMA) {
        return Ok(None);
    }
    let mut moved = Moved::default();

    // Per-user keys: `palaver:user:<id>:{sessions,rooms}` gain the id's tag.
    for (suffix, new_key) in [("sessions", keys::user_sessions as fn(UserId) -> String), ("rooms", keys::user_rooms)] {
        let pattern = format!("palaver:user:*:{suffix}");
        for key in scan(client, &pattern).await? {
            let Some(id) = key.strip_prefix("palaver:user:").and_then(|k| k.strip_suffix(&format!(":{suffix}"))) else {
                continue;
            };
            let Ok(id) = id.parse::<UserId>() else { continue };
            if rename(client, &key, &new_key(id)).await? {
                moved.user_keys += 1;
            }
        }
    }

    // Rooms: the global set's score was the last activity; a room lives
    // `room_ttl` after it, now kept by the room's own `active` key.
    let flat: Vec<String> =
        command(client, "ZRANGE", vec![OLD_ROOMS.into(), 0.into(), (-1).into(), "WITHSCORES".into()])
            .await?
            .convert()?;
    let now = UnixMillis::now().as_millis();
    for pair in flat.chunks_exact(2) {
        let (name, at) = (&pair[0], pair[1].parse::<f64>().unwrap_or(0.0) as i64);
        let Some(room) = RoomName::parse(name) else { continue };
        let old_stream = format!("palaver:room:{room}:messages");
        let until = at + room_ttl.as_millis() as i64;
        if until <= now {
            let _: Value = command(client, "DEL", vec![old_stream.into()]).await?;
            moved.expired_rooms += 1;
            continue;
        }
        let active = keys::active(&room);
        let _: Value =
            command(client, "SET", vec![active.into(), at.into(), "PXAT".into(), until.into(), "NX".into()]).await?;
        let stream = keys::messages(&room);
        rename(client, &old_stream, &stream).await?;
        let _: Value = command(client, "PEXPIREAT", vec![stream.into(), until.into()]).await?;
        moved.rooms += 1;
    }
    let _: Value = command(client, "DEL", vec![OLD_ROOMS.into()]).await?;
    let _: Value = command(client, "SET", vec![SCHEMA_KEY.into(), SCHEMA.into()]).await?;
    Ok(Some(moved))
}

/// Every key matching `pattern`, by `SCAN` (which never blocks the server
/// the way `KEYS` would).
async fn scan(client: &Pool, pattern: &str) -> Result<Vec<String>, Error> {
    let mut found = Vec::new();
    let mut cursor = "0".to_owned();
    loop {
        let (next, keys): (String, Vec<String>) = command(
            client,
            "SCAN",
            vec![cursor.as_str().into(), "MATCH".into(), pattern.into(), "COUNT".into(), 1000.into()],
        )
        .await?
        .convert()?;
        found.extend(keys);
        if next == "0" {
            return Ok(found);
        }
        cursor = next;
    }
}

/// `RENAMENX old new`: true when it moved; false when `old` is gone (moved
/// already) or `new` exists (a newer instance wrote it: it wins, and the
/// old key is dropped).
async fn rename(client: &Pool, old: &str, new: &str) -> Result<bool, Error> {
    match command(client, "RENAMENX", vec![old.into(), new.into()]).await {
        Ok(value) => {
            let renamed: i64 = value.convert()?;
            if renamed == 0 {
                let _: Value = command(client, "DEL", vec![old.into()]).await?;
            }
            Ok(renamed == 1)
        }
        // "ERR no such key": moved by another instance meanwhile.
        Err(err) if err.details().contains("no such key") => Ok(false),
        Err(err) => Err(err),
    }
}
