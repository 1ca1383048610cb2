//! The exit statuses (cli/README.md lists them): what a script learns from
//! every command, the chat session's included.

pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
pub const BAD_CREDENTIALS: i32 = 2;
pub const THROTTLED: i32 = 3;
pub const SIGNED_OUT: i32 = 4;
/// The user may not see the room: removed from it (a 4403 close, or an
/// upgrade refused with 403 after a `hello`), never a member (403 on the
/// upgrade), or a room route answered "no such room, or you are not a
/// member" (404).
pub const NO_ACCESS: i32 = 5;
pub const USAGE: i32 = 64;
