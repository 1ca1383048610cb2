//! palaver: a chat web app that does WebSocket authentication right.
//!
//! The request path, module by module:
//!
//! - [`config`]: configuration from the environment and `.env`.
//! - [`startup`]: `Application::build` / `run_until_stopped`, the wiring.
//! - [`server`]: the accept loop: TCP, optional TLS, hyper with upgrades,
//!   graceful shutdown.
//! - [`web`]: the HTTP surface: pages, account forms, the origin guard,
//!   security headers, static assets.
//! - [`auth`]: account rules, Argon2 passwords off the runtime, the typed
//!   session, login throttling.
//! - [`realtime`]: `GET /ws`: the authenticated upgrade, one task per
//!   socket, the connection registry, frames, limits, and the lifecycle
//!   (logout events, revalidation).
//! - [`chat`]: rooms and messages, the fan-out hub that tails room history,
//!   presence.
//! - [`backend`]: the storage traits and their Redis and in-process
//!   implementations.
//! - [`state`]: what requests and sockets share.
//! - [`error`]: the application error and its status.

pub mod auth;
pub mod backend;
pub mod chat;
pub mod config;
pub mod error;
pub mod realtime;
pub mod server;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod web;

pub use config::Config;
pub use startup::{Application, StartError};

/// Makes freed large allocations go back to the system (glibc only).
///
/// Every Argon2 hash allocates and frees 19 MiB. glibc's dynamic mmap
/// threshold rises to that size after the first free, after which such
/// blocks come from the heap and are kept: resident memory grew by about
/// 16 MiB per login, without bound (measured: 40 registrations, 656 MB).
/// A fixed threshold keeps large blocks on mmap, returned on free, at the
/// cost of the kernel zeroing fresh pages (~10% of a hash). Call it first
/// thing in `main`, before any threads start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
