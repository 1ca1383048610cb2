//! palaver: a chat web app that does WebSocket authentication right.
//!
//! The modules, each depending only on those listed before it:
//!
//! - [`clock`]: [`clock::UnixMillis`], the one unit and the one clock.
//! - [`model`]: users, rooms, messages and their ids, and their rules.
//! - [`net`]: client addresses behind proxies, origins and the
//!   cross-origin policy.
//! - [`config`]: configuration from the environment and `.env`.
//! - [`telemetry`]: logging, as text or JSON lines.
//! - [`meters`]: Prometheus metrics on their own listener (`METRICS_ADDR`).
//! - [`protocol`]: the WebSocket frames and close codes.
//! - [`backend`]: the storage traits, the rules every backend follows, and
//!   the Redis and in-process implementations.
//! - [`error`]: the application error and its status.
//! - [`auth`]: account rules, Argon2 passwords off the runtime, the typed
//!   cookie session, the session lifecycle, login throttling, and who may
//!   see which room.
//! - [`realtime`]: `GET /ws`: the authenticated upgrade, one task per
//!   socket and its deadline, the connection registry, the fan-out hub,
//!   presence, limits, and the lifecycle (logout events, revalidation).
//! - [`web`]: the route table and the HTTP handlers: pages, account forms,
//!   static assets; the cross-origin check and security headers at its
//!   boundary.
//! - [`server`]: the accept loop: TCP, optional TLS, hyper with upgrades;
//!   every connection bounded in time and counted under the cap.
//! - [`state`]: assembly: every handle built once, and which route and
//!   task gets it.
//! - [`startup`]: `Application::build` / `run_until_stopped`, the order of
//!   start and shutdown.
//! - [`admin`]: `palaver admin …`, an operator's commands on the shared
//!   store.

// Public: what the binary, the integration tests and the benches use. The
// rest is the crate's own, so the compiler reports what nothing uses.
pub mod admin;
pub mod auth;
pub mod backend;
pub mod clock;
pub mod config;
pub(crate) mod error;
pub mod meters;
pub mod model;
pub mod net;
pub(crate) mod protocol;
pub(crate) mod realtime;
pub(crate) mod server;
pub(crate) mod startup;
pub(crate) mod state;
pub mod telemetry;
pub(crate) mod web;

pub use config::Config;
pub use protocol::SERVER_FRAMES;
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

/// Hands freed memory back to the system (glibc only; a no-op elsewhere).
///
/// glibc keeps freed small allocations in its arenas: after a burst of
/// sockets that each held a page of replay and then closed, the process
/// kept ~30 MB it no longer used (measured with `cargo bench --bench loadgen
/// -- replay`). `malloc_trim` returns free pages in every arena to the
/// kernel. It takes the arena locks while it runs (a few milliseconds), so
/// it is called only after many sockets closed, not on a timer.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
