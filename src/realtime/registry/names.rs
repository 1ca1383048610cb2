//! Presence names: who has a socket in one room on this instance.
//!
//! Each name counts its sockets: a user with two tabs in a room is one
//! name, and leaves when the last of them closes. The registry moves the
//! counts as sockets register and go, under the lock its fan-outs are made
//! under, so presence reads the membership messages are delivered to.

use std::{collections::BTreeMap, sync::Arc};

/// The names with sockets in one room, sorted, each with how many.
#[derive(Debug, Default)]
pub(super) struct Names(BTreeMap<Arc<str>, usize>);

impl Names {
    pub(super) fn join(&mut self, name: Arc<str>) {
        *self.0.entry(name).or_default() += 1;
    }

    pub(super) fn leave(&mut self, name: &str) {
        if let Some(count) = self.0.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(name);
            }
        }
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The names, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|name| &**name)
    }
}

#[cfg(test)]
mod tests {
    use tower_sessions::session::Id;

    use crate::{
        model::{RoomName, UserId},
        realtime::registry::{
            tests::{join_as, CAPS},
            Registry,
        },
    };

    #[test]
    fn presence_counts_sockets_per_user() {
        let reg = Registry::new(CAPS);
        let room = RoomName::lobby();
        let a = join_as(&reg, Id(1), UserId::new_v4(), "al", "lobby", 1);
        let b = join_as(&reg, Id(2), UserId::new_v4(), "al", "lobby", 1);
        let _c = join_as(&reg, Id(3), UserId::new_v4(), "bo", "lobby", 1);
        assert_eq!(reg.local_names(&room), ["al", "bo"]);
        reg.remove(a.id);
        assert!(reg.is_online(&room, "al"));
        reg.remove(b.id);
        assert!(!reg.is_online(&room, "al"));
        assert_eq!(reg.presence_pairs(), [(room, "bo".to_string())]);
    }
}
