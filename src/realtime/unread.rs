//! What counts as unread (docs/protocol.md §3.8): the messages of a room
//! after the reader's marker that others sent, and how many of those
//! mention the reader, each counted to [`UNREAD_CAP`] ("that many or
//! more").
//!
//! One rule for both places that count: a socket's start, which counts the
//! stored messages after the marker (the store's page, [`Unread::of_page`]),
//! and the registry, which counts messages as they are delivered
//! ([`Unread::count`]). Pure (no clock), but for the one page a count
//! reads from the store ([`Unread::stored`]). Where each count starts is
//! [`Starts`]'s to say.

use std::{collections::HashMap, sync::Arc};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    backend::{History, Mentioned},
    model::{mentions, Message, MessageId, RoomName},
    protocol::{self as frames, UNREAD_CAP},
    realtime::reads::ReadBudget,
};

/// Who the count is for: their own messages are not unread to them, and a
/// mention of them is found ignoring case (names are unique ignoring case).
#[derive(Debug, Clone)]
pub struct Reader {
    name: Arc<str>,
    folded: String,
}

impl Reader {
    pub fn new(name: Arc<str>) -> Self {
        let folded = name.to_lowercase();
        Self { name, folded }
    }
}

/// The names a message mentions, folded to compare with a [`Reader`]'s:
/// found once per message, however many readers count it.
pub fn mentioned(message: &Message) -> Vec<String> {
    mentions(&message.body).into_iter().map(|name| name.to_lowercase()).collect()
}

/// How many messages are unread, and how many of those mention the reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    pub unread: u32,
    pub mentions: u32,
}

impl Unread {
    /// How many messages a count reads from the store at most: one more
    /// would not change what it says.
    pub const PAGE: usize = UNREAD_CAP as usize;

    /// Counts one message for `reader`, given the names it mentions
    /// ([`mentioned`]).
    pub fn count(&mut self, reader: &Reader, message: &Message, mentioned: &[String]) {
        if message.user.as_str() == &*reader.name {
            return;
        }
        self.unread = (self.unread + 1).min(UNREAD_CAP);
        if mentioned.contains(&reader.folded) {
            self.mentions = (self.mentions + 1).min(UNREAD_CAP);
        }
    }

    /// The count of the stored messages after the reader's marker up to
    /// `cursor`, from `page`: the store's first [`Unread::PAGE`] of them,
    /// oldest first. A full page wholly before the cursor may go on, so it
    /// says "at least the cap".
    pub fn of_page(reader: &Reader, page: &[Message], cursor: MessageId) -> Unread {
        let mut count = Unread::default();
        for message in page.iter().filter(|m| m.id <= cursor) {
            count.count(reader, message, &mentioned(message));
        }
        if page.len() == Self::PAGE && page.iter().all(|m| m.id <= cursor) {
            count.unread = UNREAD_CAP;
        }
        count
    }

    /// The count of `room` for `reader` from the store: the messages after
    /// `from` (where [`Starts`] says their count starts) up to `cursor`
    /// ([`Unread::of_page`]), read within the instance's budget. A store
    /// failure counts none (a count is not worth a refusal).
    pub async fn stored(
        history: &dyn History,
        reads: &ReadBudget,
        reader: &Reader,
        room: &RoomName,
        from: MessageId,
        cursor: MessageId,
    ) -> Unread {
        if from >= cursor {
            return Unread::default();
        }
        match reads.unread_after(history, room, from, Unread::PAGE, &reader.folded).await {
            Ok(page) => Unread::of_page(reader, &page, cursor),
            Err(err) => {
                tracing::warn!(%err, %room, "unread count not read: store unavailable");
                Unread::default()
            }
        }
    }

    /// Both counts together (what the store counted, and what was delivered
    /// since), capped.
    pub fn plus(self, more: Unread) -> Unread {
        Unread {
            unread: (self.unread + more.unread).min(UNREAD_CAP),
            mentions: (self.mentions + more.mentions).min(UNREAD_CAP),
        }
    }

    pub fn is_zero(self) -> bool {
        self == Unread::default()
    }

    /// The `unread` frame of this count, for a socket whose user calls the
    /// room `room`.
    pub fn frame(self, room: &str) -> Utf8Bytes {
        frames::unread(room, self.unread, self.mentions)
    }
}

/// Where a user's count of each of their rooms starts (docs/protocol.md
/// §3.8): after their read marker, which opening a room's page puts at
/// the newest message it shows. A room of their list they have no marker
/// for was never opened: a public room a mention brought counts from its
/// oldest mention the inbox keeps (the "since" of that room); any other
/// (a conversation someone began, a room they were added to before markers
/// were written on joining) counts from the start of what the room keeps.
/// Never "nothing": no marker is not "all read".
#[derive(Debug, Clone, Default)]
pub struct Starts {
    markers: HashMap<RoomName, MessageId>,
    /// Per room, just before the oldest mention the inbox keeps there.
    mentioned: HashMap<RoomName, MessageId>,
}

impl Starts {
    /// From the user's markers and mention inbox (newest first).
    pub fn new(markers: HashMap<RoomName, MessageId>, inbox: &[Mentioned]) -> Self {
        let mut mentioned = HashMap::new();
        for note in inbox {
            mentioned.insert(note.room.clone(), just_before(note.id));
        }
        Self { markers, mentioned }
    }

    /// Where the "new since your last visit" divider of `room` goes: after
    /// the marker, or before the oldest kept mention of a room never opened.
    pub fn since(&self, room: &RoomName) -> Option<MessageId> {
        self.markers.get(room).or_else(|| self.mentioned.get(room)).copied()
    }

    /// Where the count of `room` starts: [`Starts::since`], else from the
    /// start of what the room keeps.
    pub fn of(&self, room: &RoomName) -> MessageId {
        self.since(room).unwrap_or(MessageId::ZERO)
    }

    /// Counts `room` from just before `first` (a message known to be the
    /// first the user has not seen), unless a marker says otherwise.
    pub fn starting(&mut self, room: &RoomName, first: MessageId) {
        self.mentioned.insert(room.clone(), just_before(first));
    }
}

/// The id just before `first`: a count from it counts `first` and what
/// follows.
pub fn just_before(first: MessageId) -> MessageId {
    match first.seq {
        0 => MessageId { ms: first.ms.saturating_sub(1), seq: u64::MAX },
        seq => MessageId { ms: first.ms, seq: seq - 1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixMillis;

    fn said(ms: u64, user: &str, body: &str) -> Message {
        Message {
            id: MessageId { ms, seq: 0 },
            user: user.into(),
            body: body.into(),
            sent_at: UnixMillis::from_millis(0),
            client_id: None,
        }
    }

    fn ali() -> Reader {
        Reader::new("Ali".into())
    }

    #[test]
    fn others_messages_count_and_mentions_of_the_reader_are_found_ignoring_case_and_code() {
        let mut count = Unread::default();
        for message in
            [said(1, "bo", "hi @ali"), said(2, "Ali", "mine"), said(3, "cy", "@ALI!"), said(4, "bo", "`@ali`")]
        {
            count.count(&ali(), &message, &mentioned(&message));
        }
        assert_eq!(count, Unread { unread: 3, mentions: 2 });
    }

    #[test]
    fn a_count_starts_at_the_marker_else_before_the_oldest_kept_mention_else_at_the_start() {
        let room = |name: &str| RoomName::parse(name).unwrap();
        let id = |ms, seq| MessageId { ms, seq };
        let markers = HashMap::from([(room("dev"), id(5, 0))]);
        let inbox = [
            Mentioned { room: room("ops"), id: id(9, 0) },
            Mentioned { room: room("dev"), id: id(8, 0) },
            Mentioned { room: room("ops"), id: id(7, 2) },
        ];
        let starts = Starts::new(markers, &inbox);
        assert_eq!(starts.of(&room("dev")), id(5, 0), "the marker wins");
        assert_eq!(starts.of(&room("ops")), id(7, 1), "just before the oldest mention");
        assert_eq!(starts.since(&room("qa")), None, "no divider in a room never opened");
        assert_eq!(starts.of(&room("qa")), MessageId::ZERO, "but no marker is never all read");
        assert_eq!(just_before(id(7, 0)), id(6, u64::MAX));
    }

    #[test]
    fn counts_stop_at_the_cap() {
        let message = said(1, "bo", "@ali");
        let mut count = Unread { unread: UNREAD_CAP - 1, mentions: UNREAD_CAP - 1 };
        for _ in 0..3 {
            count.count(&ali(), &message, &mentioned(&message));
        }
        assert_eq!(count, Unread { unread: UNREAD_CAP, mentions: UNREAD_CAP });
        assert_eq!(count.plus(count), count);
        assert_eq!(Unread { unread: 2, mentions: 1 }.plus(Unread { unread: 3, mentions: 0 }).unread, 5);
    }

    #[test]
    fn a_stored_page_counts_up_to_the_cursor_and_a_full_one_before_it_says_at_least_the_cap() {
        let page = [said(1, "bo", "one"), said(2, "Ali", "mine"), said(3, "bo", "@ali"), said(4, "bo", "late")];
        let count = Unread::of_page(&ali(), &page, MessageId { ms: 3, seq: 0 });
        assert_eq!(count, Unread { unread: 2, mentions: 1 }, "the reader's own and those after the cursor are out");

        let full: Vec<Message> =
            (1..=Unread::PAGE as u64).map(|ms| said(ms, if ms == 1 { "Ali" } else { "bo" }, "x")).collect();
        let at_least = Unread::of_page(&ali(), &full, MessageId { ms: 1000, seq: 0 });
        assert_eq!(at_least.unread, UNREAD_CAP, "a full page may go on");
        let cut = Unread::of_page(&ali(), &full, MessageId { ms: 50, seq: 0 });
        assert_eq!(cut.unread, 49, "a page past the cursor is counted to it");
    }
}
