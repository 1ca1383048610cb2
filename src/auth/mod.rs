//! Who the user is: account rules, passwords, the typed cookie session, the
//! session lifecycle (sign in, refresh, sign out, end everywhere) for cookie
//! and token sessions alike, access tokens and refresh-token rotation,
//! throttling, the one check of a username and password, and who may see
//! which room.

pub(crate) mod access;
pub(crate) mod devices;
pub(crate) mod invites;
pub(crate) mod journal;
pub(crate) mod login;
pub(crate) mod memberships;
pub mod password;
pub(crate) mod password_change;
pub(crate) mod refresh;
pub mod session;
pub(crate) mod sessions;
pub(crate) mod strength;
pub(crate) mod throttle;
pub mod tokens;

pub(crate) use sessions::{Ended, RefreshError, Sessions, SessionsEnded, TokenCurrent};

use crate::model::valid_username;

/// Why a username or password is refused at registration (docs/protocol.md §2).
pub(crate) fn validate_new_account(username: &str, password: &str) -> Result<(), &'static str> {
    if !valid_username(username) {
        return Err("Usernames are 3 to 32 characters: letters, digits, and _ . -");
    }
    validate_new_password(password)
}

/// Why a new password is refused by its length (docs/protocol.md §2); its
/// strength is [`strength`]'s to judge.
pub(crate) fn validate_new_password(password: &str) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if !(8..=256).contains(&chars) {
        return Err("Passwords are 8 to 256 characters.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_rules_follow_the_spec() {
        assert!(validate_new_account("al.ice_-9", "12345678").is_ok());
        assert!(validate_new_account(&"a".repeat(32), &"p".repeat(256)).is_ok());
        for name in ["al", &"a".repeat(33), "al ice", "alïce", "al/ice", ""] {
            assert!(validate_new_account(name, "12345678").is_err(), "{name}");
        }
        for password in ["1234567", &"p".repeat(257)] {
            assert!(validate_new_account("alice", password).is_err());
        }
        assert!(validate_new_account("alice", "éééééééé").is_ok(), "characters, not bytes");
    }
}
