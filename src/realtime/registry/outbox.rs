//! What the registry queues for a socket, and the id it knows the socket by.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::{MessageId, RoomName};

/// A socket's id in the registry, unique for the life of the instance.
pub type ConnId = u64;

/// A frame the registry pushes to sockets, serialized once and shared by
/// every socket it goes to. (One pointer per queue slot also keeps an idle
/// socket's queue small: tokio allocates it 32 slots at a time.)
#[derive(Debug)]
pub struct OutFrame {
    /// Set on chat messages: a socket skips ids it already sent (the
    /// overlap between replay and live delivery).
    pub id: Option<MessageId>,
    pub text: Utf8Bytes,
    /// Set on a `room_added` for a socket that counts unread messages:
    /// after writing the frame, the socket starts counting that room.
    pub watch: Option<Box<Watch>>,
}

impl OutFrame {
    /// A frame that is only text.
    pub fn text(text: Utf8Bytes) -> Self {
        Self { id: None, text, watch: None }
    }
}

/// A room a socket is to start counting, under the label it gives it, and
/// the first message it has not seen, if known (else it counts from the
/// user's read marker, as at its start).
#[derive(Debug)]
pub struct Watch {
    pub room: RoomName,
    pub label: Arc<str>,
    pub since: Option<MessageId>,
}

pub type Outbound = Arc<OutFrame>;

/// The sending end of a socket's queue; its task holds the other.
pub type Outbox = mpsc::Sender<Outbound>;

/// A frame for one socket only (its unread count), and where it goes.
pub type Single = (ConnId, Outbox, Outbound);
