//! The authenticated WebSocket: the upgrade, one task per socket and its
//! deadline, the registry of open sockets, the fan-out hub that tails room
//! history, presence, limits, and the lifecycle (logout events,
//! revalidation).

pub mod deadline;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod presence;
pub mod registry;
pub mod socket;
#[cfg(test)]
mod testing;
pub mod upgrade;
