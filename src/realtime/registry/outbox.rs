//! What the registry queues for a socket, and the id it knows the socket by.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::MessageId;

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
}

pub type Outbound = Arc<OutFrame>;

/// The sending end of a socket's queue; its task holds the other.
pub type Outbox = mpsc::Sender<Outbound>;

/// A frame for one socket only (its unread count), and where it goes.
pub type Single = (ConnId, Outbox, Outbound);
