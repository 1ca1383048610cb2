//! The authenticated WebSocket: the upgrade, one task per socket, the
//! registry of open sockets, the frames, limits, and the lifecycle (logout
//! events, revalidation).

pub mod frames;
pub mod lifecycle;
pub mod limits;
pub mod registry;
pub mod socket;
pub mod upgrade;
