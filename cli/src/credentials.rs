//! The credentials file: which server, who, and the tokens. It is the one
//! place the current refresh token lives, and the server spends a refresh
//! token when it answers a refresh, so every rotation is written back at once
//! and atomically (a crash leaves the old file or the new one, never half of
//! either), readable by its owner only.

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    api::{Api, ApiError, TokenPair},
    json,
};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The server that issued the tokens (its base URL); they go nowhere else.
    pub server: String,
    pub username: String,
    pub access_token: String,
    /// Unix ms: when the access token was asked for plus its `expires_in`, so
    /// a slow answer makes it look shorter-lived, never longer.
    pub access_expires_at: u64,
    pub refresh_token: String,
    /// Unix ms, the session's own expiry as the server last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expires_at: Option<u64>,
    /// The server each user last logged in to with this file, so that
    /// `login USER` goes back there, and a password goes nowhere else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub servers: BTreeMap<String, String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("access_token", &"[redacted]")
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token", &"[redacted]")
            .field("session_expires_at", &self.session_expires_at)
            .field("servers", &self.servers)
            .finish()
    }
}

/// Refresh the access token when it has less than this left (ms).
pub const REFRESH_MARGIN_MS: u64 = 60_000;

impl Credentials {
    /// New credentials from a sign-in asked for at `asked_at` (unix ms).
    pub fn new(server: &str, username: &str, pair: TokenPair, asked_at: u64) -> Credentials {
        let mut creds = Credentials {
            server: server.to_owned(),
            username: username.to_owned(),
            access_token: String::new(),
            access_expires_at: 0,
            refresh_token: String::new(),
            session_expires_at: None,
            servers: BTreeMap::from([(username.to_owned(), server.to_owned())]),
        };
        creds.rotate(pair, asked_at);
        creds
    }

    /// The server `username` last logged in to with this file, else the one
    /// these credentials are for (the last one used).
    pub fn server_of(&self, username: &str) -> &str {
        self.servers.get(username).unwrap_or(&self.server)
    }

    /// Keeps what `earlier` (the file this login replaces) knew of the
    /// servers of other users.
    pub fn remember(&mut self, earlier: Option<Credentials>) {
        if let Some(earlier) = earlier {
            for (user, server) in earlier.servers {
                self.servers.entry(user).or_insert(server);
            }
        }
    }

    /// Takes a refreshed pair asked for at `asked_at` (unix ms).
    pub fn rotate(&mut self, pair: TokenPair, asked_at: u64) {
        self.access_token = pair.access_token;
        self.access_expires_at = asked_at.saturating_add(pair.expires_in.saturating_mul(1000));
        self.refresh_token = pair.refresh_token;
        if pair.session_expires_at.is_some() {
            self.session_expires_at = pair.session_expires_at;
        }
    }

    /// Whether the access token should be refreshed before use at `now`.
    pub fn needs_refresh(&self, now: u64) -> bool {
        self.access_expires_at < now.saturating_add(REFRESH_MARGIN_MS)
    }
}

/// The credentials file's path: `PALAVER_CREDENTIALS`, else
/// `$XDG_CONFIG_HOME/palaver/credentials.json` (an absolute one, as the XDG
/// spec asks), else `$HOME/.config/palaver/credentials.json`.
pub fn path_from(lookup: impl Fn(&str) -> Option<String>) -> Result<PathBuf, String> {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
    if let Some(p) = get("PALAVER_CREDENTIALS") {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = get("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(dir.join("palaver").join("credentials.json"));
    }
    if let Some(home) = get("HOME") {
        return Ok(PathBuf::from(home).join(".config").join("palaver").join("credentials.json"));
    }
    Err("no place for the credentials file: set PALAVER_CREDENTIALS, XDG_CONFIG_HOME or HOME".into())
}

/// Reads the file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> Result<Option<Credentials>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{} is damaged ({}); log in again", path.display(), json::describe(&e)))
}

/// Replaces the file atomically: a new file with mode 0600 beside it, written
/// and synced, then renamed over the old one. The directory is made (0700)
/// when missing.
pub fn save(path: &Path, creds: &Credentials) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::other("the credentials path names no file"))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), uuid::Uuid::new_v4().simple()));
    let mut json = serde_json::to_vec_pretty(creds).map_err(io::Error::other)?;
    json.push(b'\n');
    let written = (|| {
        // create_new: never write into a file someone else put there.
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask may have taken bits away; 0600 exactly.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is synced.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Deletes the file; `Ok(false)` when there was none.
pub fn delete(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The outcome of [`refresh`]: the credentials to use from now on.
pub struct Refreshed {
    pub creds: Credentials,
    /// Whether they were written back; when not, the file still holds a spent
    /// refresh token, and the caller must say so.
    pub saved: io::Result<()>,
}

/// Gets a new access token, and writes the rotated refresh token back at once.
///
/// `file_token` is the refresh token this process last read from or wrote to
/// the file. If the file now holds another one, another palaver-cli with the
/// same file has rotated it: that successor is taken instead of presenting
/// the spent token again (which the server treats as theft once its grace
/// window is over, ending the session). When the taken access token is
/// still fresh, no request is made, unless `force` (the server asked for a
/// reauthentication, and only a refresh slides the session).
pub async fn refresh(
    api: &Api,
    path: &Path,
    mut creds: Credentials,
    file_token: &str,
    force: bool,
) -> Result<Refreshed, ApiError> {
    if let Ok(Some(on_disk)) = load(path) {
        if on_disk.refresh_token != file_token && on_disk.server == creds.server && on_disk.username == creds.username {
            creds = on_disk;
            if !force && !creds.needs_refresh(now_ms()) {
                return Ok(Refreshed { creds, saved: Ok(()) });
            }
        }
    }
    let asked = now_ms();
    let pair = api.refresh(&creds.refresh_token).await?;
    creds.rotate(pair, asked);
    let saved = save(path, &creds);
    Ok(Refreshed { creds, saved })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let p = std::env::temp_dir().join(format!("palaver-cli-test-{}", uuid::Uuid::new_v4().simple()));
            fs::create_dir(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pair(access: &str, refresh: &str, expires_in: u64) -> TokenPair {
        TokenPair {
            access_token: access.into(),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh.into(),
            session_expires_at: Some(99_000),
        }
    }

    fn creds() -> Credentials {
        Credentials::new("http://127.0.0.1:8080", "alice", pair("AT-secret", "RT-secret", 300), 1_000)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_access_expiry_counts_from_when_it_was_asked_for() {
        let mut c = creds();
        assert_eq!(c.access_expires_at, 301_000);
        assert!(!c.needs_refresh(241_000 - 1));
        assert!(c.needs_refresh(241_001));
        c.rotate(TokenPair { session_expires_at: None, ..pair("AT2", "RT2", 60) }, 500_000);
        assert_eq!((c.access_token.as_str(), c.refresh_token.as_str()), ("AT2", "RT2"));
        assert_eq!(c.access_expires_at, 560_000);
        assert_eq!(c.session_expires_at, Some(99_000), "kept when the answer has none");
    }

    #[test]
    fn saved_files_are_private_and_read_back_the_same() {
        let dir = TempDir::new();
        let path = dir.0.join("nested").join("credentials.json");
        save(&path, &creds()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(load(&path).unwrap(), Some(creds()));
    }

    #[test]
    fn saving_replaces_the_file_whole_and_leaves_no_temporary_behind() {
        let dir = TempDir::new();
        let path = dir.0.join("credentials.json");
        // An old file that anyone could read: the replacement is a new file, 0600.
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let old_inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        let mut c = creds();
        c.rotate(pair("AT2", "RT2", 300), 2_000);
        save(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap(), Some(c));
        assert_eq!(mode(&path), 0o600);
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()), old_inode, "renamed over");
        let names: Vec<_> = fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("credentials.json")]);
    }

    #[test]
    fn a_failed_save_keeps_the_old_file() {
        let dir = TempDir::new();
        // The target is a directory: the rename fails, the temporary goes away.
        let path = dir.0.join("credentials.json");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), "x").unwrap();
        assert!(save(&path, &creds()).is_err());
        assert!(path.join("keep").exists());
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn missing_files_are_none_and_damaged_ones_say_so_without_their_content() {
        let dir = TempDir::new();
        let path = dir.0.join("credentials.json");
        assert_eq!(load(&path).unwrap(), None);
        assert!(!delete(&path).unwrap());
        fs::write(&path, r#"{"server":"x","username":"a","access_token":"AT-secret","access_expires_at":"RT-secret"}"#)
            .unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("damaged") && err.contains("log in again"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(delete(&path).unwrap());
        assert!(!path.exists());
    }

    #[test]
    fn each_user_goes_back_to_the_server_they_last_logged_in_to() {
        let alice = creds();
        assert_eq!(alice.server_of("alice"), "http://127.0.0.1:8080");
        let mut bob = Credentials::new("https://chat.example", "bob", pair("AT-b", "RT-b", 300), 1_000);
        bob.remember(Some(alice));
        assert_eq!(bob.server_of("bob"), "https://chat.example");
        assert_eq!(bob.server_of("alice"), "http://127.0.0.1:8080");
        assert_eq!(bob.server_of("carol"), "https://chat.example", "a stranger: the last one used");
        let mut again = Credentials::new("https://other.example", "bob", pair("AT-c", "RT-c", 300), 1_000);
        again.remember(Some(bob));
        assert_eq!(again.server_of("bob"), "https://other.example", "the newest login wins");
        assert_eq!(again.server_of("alice"), "http://127.0.0.1:8080");
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        let shown = format!("{:?}", creds());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("alice"));
    }

    #[test]
    fn the_path_is_the_override_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            path_from(env(&[("PALAVER_CREDENTIALS", "/x/c.json"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/x/c.json")
        );
        assert_eq!(
            path_from(env(&[("XDG_CONFIG_HOME", "/cfg"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/cfg/palaver/credentials.json")
        );
        // Empty or relative XDG_CONFIG_HOME is ignored, as the spec says.
        for xdg in ["", "rel"] {
            let lookup = move |k: &str| match k {
                "XDG_CONFIG_HOME" => Some(xdg.to_string()),
                "HOME" => Some("/h".to_string()),
                _ => None,
            };
            assert_eq!(path_from(lookup).unwrap(), PathBuf::from("/h/.config/palaver/credentials.json"));
        }
        assert!(path_from(env(&[])).is_err());
    }
}
