//! palaver's integration tests: one binary (one link step), one module per
//! area. Every test starts its own `redis-server` on a free port and its own
//! application instance(s) on port 0, so they run in parallel without
//! sharing keys or ports.

#[macro_use]
mod helpers;

mod abuse;
mod account;
mod admin;
mod admission;
mod attention;
mod auth;
mod browser;
mod chat;
mod cli;
mod connections;
mod contract;
mod deploy;
mod durability;
mod failover;
mod faults;
mod hashing;
mod history;
mod kernel;
mod layout;
mod lifecycle;
mod liveness;
mod metrics;
mod process;
mod proxy;
mod revocation;
mod rooms;
mod routes;
mod signup;
mod tls;
mod tokens;
mod upgrade;
mod ws;
