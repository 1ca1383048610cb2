//! The exit statuses (cli/README.md lists them): what a script learns from
//! every command, the chat session's included.

pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const BAD_CREDENTIALS: i32 = 2;
pub const THROTTLED: i32 = 3;
pub const SIGNED_OUT: i32 = 4;
pub const USAGE: i32 = 64;
