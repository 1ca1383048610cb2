//! The authenticated WebSocket: the upgrade and its admission (how many may
//! be in flight at once), one task per socket and its
//! deadline, the registry of open sockets, the fan-out hub that tails room
//! history, presence, unread counts, limits, the budget of store reads for
//! sockets, and the lifecycle (logout events, revalidation). `state` wires
//! them.

pub mod admission;
pub mod deadline;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod presence;
pub mod reads;
pub mod registry;
pub mod socket;
pub mod unread;
pub mod upgrade;
