//! The Lua scripts, one file each in `scripts/`. Multi-step operations are
//! scripts: atomic, and one round trip each. On a cluster a script may only
//! touch keys of one hash slot (docs/cluster.md).
//!
//! Each script is named once, in the list at the bottom: the list makes
//! both the field a call names ([`SCRIPTS`]`.append_store`) and what
//! [`Scripts::all`] returns, which is what is loaded after the script cache
//! was found empty. A script cannot be called without being in the list
//! (there is no field), nor be in the list without its file
//! (`include_str!`); a test holds the list and the folder to each other.

use std::sync::LazyLock;

/// A Lua script run by digest, loaded on first use (or after a Redis restart
/// or a failover emptied the script cache).
pub struct Script {
    /// Its file's name, and for metrics the command label of its calls.
    pub name: &'static str,
    pub source: &'static str,
    pub sha: String,
}

impl Script {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self { name, source, sha: fred::util::sha1_hash(source) }
    }
}

/// Declares every script once: `name` is `scripts/name.lua`, or that file
/// followed by what `= source` adds.
macro_rules! scripts {
    ($($name:ident $(= $tail:expr)?),* $(,)?) => {
        /// Every script, by name.
        pub struct Scripts {
            $(pub $name: Script,)*
        }

        impl Scripts {
            fn new() -> Self {
                Self {
                    $($name: Script::new(
                        stringify!($name),
                        concat!(include_str!(concat!("scripts/", stringify!($name), ".lua")) $(, $tail)?),
                    ),)*
                }
            }

            /// Every script of the list.
            pub fn all(&self) -> Vec<&Script> {
                vec![$(&self.$name),*]
            }
        }
    };
}

scripts! {
    index_add,
    index_take_all,
    session_delete,
    ticket_take,
    user_create,
    counter_get,
    counter_incr,
    counter_decr,
    append_check,
    append_take,
    append_store,
    append_confirm,
    append_at_once = concat!(
        "\ncheck = function(KEYS, ARGV)\n",
        include_str!("scripts/append_check.lua"),
        "end\ntake = function(KEYS, ARGV)\n",
        include_str!("scripts/append_take.lua"),
        "end\nstore = function(KEYS, ARGV)\n",
        include_str!("scripts/append_store.lua"),
        "end\nreturn main()\n",
    ),
    open_room,
    open_room_user,
    token_find,
    token_read,
    token_update,
    mark_read,
    mention_note,
    wake,
    presence_update,
    presence_online,
    room_state,
    room_create,
    room_add,
    room_remove,
    room_members,
    room_fence,
    private_reserve,
    private_release,
    direct_note,
    direct_list,
    user_set,
    device_put,
    device_touch,
    device_move,
    device_list,
    device_drop,
    events_record,
    events_failure,
    invite_create,
    invite_spend,
    invite_give_back,
    secret_share,
    unread_page,
}

/// The scripts, with their digests computed once.
pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(Scripts::new);

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_list_holds_exactly_the_scripts_in_the_folder() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/redis/scripts");
        let files: BTreeSet<String> = std::fs::read_dir(folder)
            .expect("the scripts folder")
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "lua"))
            .map(|path| path.file_stem().expect("a file name").to_string_lossy().into_owned())
            .collect();
        let listed: BTreeSet<String> = SCRIPTS.all().iter().map(|s| s.name.to_owned()).collect();
        assert_eq!(SCRIPTS.all().len(), listed.len(), "a script listed twice");
        let unlisted: Vec<&String> = files.difference(&listed).collect();
        let missing: Vec<&String> = listed.difference(&files).collect();
        assert!(unlisted.is_empty(), "scripts/*.lua not in the list (never loaded): {unlisted:?}");
        assert!(missing.is_empty(), "listed scripts without a file: {missing:?}");
    }

    #[test]
    fn every_script_opens_with_a_comment_that_says_what_it_takes_and_returns() {
        for script in SCRIPTS.all() {
            assert!(script.source.starts_with("-- "), "{}.lua", script.name);
        }
    }
}
