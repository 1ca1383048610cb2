//! What palaver's server and its clients read and write alike, with one
//! owner: the server re-exports it (`palaver::model::MessageId`) and
//! palaver-cli uses it without depending on the server.

use std::{cmp::Ordering, fmt, str::FromStr};

use serde::Serialize;

/// A message id: a Redis stream id `<ms>-<seq>`, ordered numerically (as
/// strings they would not sort: `"9-0" > "10-0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageId {
    pub ms: u64,
    pub seq: u64,
}

impl MessageId {
    /// The id before every message; `after=0-0` replays a whole room.
    pub const ZERO: MessageId = MessageId { ms: 0, seq: 0 };
}

impl Ord for MessageId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl PartialOrd for MessageId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for MessageId {
    type Err = ();

    /// `<ms>-<seq>`, or `<ms>` alone (read as `<ms>-0`, as Redis does):
    /// decimal digits only, each part within a `u64`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(());
        }
        Ok(MessageId { ms: ms.parse().map_err(|_| ())?, seq: seq.parse().map_err(|_| ())? })
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        s.parse().unwrap()
    }

    #[test]
    fn message_ids_order_as_numbers_not_as_text() {
        assert!(id("9-0") < id("10-0") && id("10-0") < id("10-1"));
        assert!(id("9-10") > id("9-9"));
        assert!(id("1700000000000-0") > id("999999999999-99"));
        assert_eq!(MessageId::ZERO, id("0-0"));
    }

    #[test]
    fn message_ids_read_and_write_as_ms_dash_seq() {
        assert_eq!(id("5"), MessageId { ms: 5, seq: 0 });
        assert_eq!(id("17-3").to_string(), "17-3");
        assert_eq!(id("18446744073709551615-0").ms, u64::MAX);
        assert_eq!(serde_json::to_string(&id("7-1")).unwrap(), r#""7-1""#);
        for bad in [
            "",
            "-",
            "a-1",
            "1-",
            "-1",
            "-1-0",
            "1-2-3",
            "1.5-0",
            "+1-0",
            " 1-0",
            "18446744073709551616-0",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }
}
