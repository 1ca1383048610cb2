//! Configuration, read once at start from the environment (and `.env`).
//!
//! Every variable is listed with its default in `.env.example`; docs/protocol.md §1
//! fixes the documented ones. A value that does not parse, or a number
//! outside its range, is an error that names the variable: a typo must not
//! silently fall back to a default, and no value may overflow later.
//!
//! [`Config`] is a list of sections, each read on its own; the rules that
//! tie variables of different sections together are checked once all are
//! read ([`Config::from_lookup`]).

use std::{collections::HashMap, net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

use crate::net::{normalize_origin, Network};

/// The whole runtime configuration, by section.
#[derive(Debug, Clone)]
pub struct Config {
    pub log_format: LogFormat,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub sessions: SessionsConfig,
    pub tokens: TokensConfig,
    pub throttle: ThrottleConfig,
    pub signup: SignupConfig,
    pub connections: ConnectionsConfig,
    pub sockets: SocketsConfig,
    pub chat: ChatConfig,
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where the instance listens, who it answers as, and how it stops.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen_addr: SocketAddr,
    /// `None` means "derived from the bound address" (see [`ServerConfig::resolve_origin`]).
    pub public_origin: Option<String>,
    pub allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client (for throttling).
    pub trusted_proxies: Vec<Network>,
    /// `None` means "true when the public origin is https".
    pub cookie_secure: Option<bool>,
    pub tls: Option<TlsPaths>,
    /// Serve plain HTTP on a non-loopback address although `PUBLIC_ORIGIN`
    /// is not https (see [`ServerConfig::check`]).
    pub allow_insecure_http: bool,
    /// Where `GET /metrics` (Prometheus text) is served; `None`: nowhere,
    /// and nothing is recorded. Never the public listener.
    pub metrics_addr: Option<SocketAddr>,
    /// How long graceful shutdown waits for sockets and requests to finish.
    pub shutdown_grace: Duration,
    /// How long `/readyz` says 503 before a graceful shutdown closes
    /// anything, so that load balancers stop sending upgrades first.
    pub shutdown_drain: Duration,
}

/// Both halves of a TLS identity; present only when both variables are set.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which store backs users, sessions, events and history, and how durable
/// an append must be before it is acknowledged.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: BackendChoice,
    pub redis_url: Option<String>,
    /// Replicas an appended message must reach before it is acknowledged
    /// (`WAIT`, `REDIS_WAIT_REPLICAS`). `None`: 1 on a Redis Cluster, 0 (no
    /// wait) on a single Redis.
    pub wait_replicas: Option<u32>,
    /// How long an append waits for them before the sender is told the
    /// message may or may not be stored (`REDIS_WAIT_TIMEOUT_MS`).
    pub wait_timeout: Duration,
}

/// Which store backs users, sessions, events and history (`PALAVER_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Redis at `REDIS_URL` if set (required), else try the local default and
    /// fall back to the in-process backend.
    Auto,
    /// Redis is required.
    Redis,
    /// The in-process backend: one instance, nothing survives a restart.
    Memory,
}

/// How long a session lives, and how its sockets learn that it ends.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    /// Idle lifetime (`SESSION_TTL_SECS`).
    pub ttl: Duration,
    /// Absolute lifetime, counted from sign-in (`SESSION_MAX_LIFETIME_SECS`).
    pub max_lifetime: Duration,
    /// A "keep me signed in" session's idle lifetime (`LONG_SESSION_TTL_SECS`).
    pub long_ttl: Duration,
    /// A "keep me signed in" session's absolute lifetime
    /// (`LONG_SESSION_MAX_LIFETIME_SECS`).
    pub long_max_lifetime: Duration,
    /// How long before a socket's deadline it is asked to reauthenticate
    /// (`REAUTH_WARNING_SECS`); it depends on the token lifetime too, so
    /// [`Config::from_lookup`] decides it once every section is read.
    pub reauth_warning: Duration,
    /// Period of the sweep that re-checks every open socket's session
    /// (`REVALIDATE_INTERVAL_SECS`).
    pub revalidate_interval: Duration,
}

/// Access tokens (docs/protocol.md §5).
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// The PKCS#8 PEM of the Ed25519 signing key (`TOKEN_SIGNING_KEY`;
    /// `None`: one is generated and shared through the store).
    pub signing_key: Option<PathBuf>,
    /// Public keys of earlier signing keys still accepted (`TOKEN_PREVIOUS_KEYS`).
    pub previous_keys: Vec<PathBuf>,
    /// `ACCESS_TOKEN_TTL_SECS`.
    pub access_ttl: Duration,
    /// A spent refresh token presented again within this gets the same
    /// successor (a retry, a second tab); after it, the session ends
    /// (`REFRESH_REUSE_GRACE_SECS`).
    pub refresh_reuse_grace: Duration,
}

/// How many guesses and registrations one client may make.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Sign-in attempts per (user name, client) and window, a successful
    /// one forgiven (`LOGIN_MAX_FAILURES`).
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// Registrations one client may attempt per window, a successful one
    /// forgiven (`REGISTER_MAX_PER_ADDRESS`).
    pub register_max_per_address: u32,
    /// Successful registrations one client may make per window when anyone
    /// may sign up (`REGISTER_MAX_SUCCESSES_PER_ADDRESS`).
    pub register_max_successes_per_address: u32,
    pub register_window: Duration,
}

/// Who may sign up, and who may invite.
#[derive(Debug, Clone)]
pub struct SignupConfig {
    /// `REGISTRATION`.
    pub registration: Registration,
    /// Signed-in users may make invite links on /account (`INVITES_BY_USERS`).
    pub invites_by_users: bool,
    /// Invite links one user may make per day (`INVITES_PER_USER_PER_DAY`).
    pub invites_per_user_per_day: u32,
}

/// Who may sign up (`REGISTRATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Anyone who reaches `/register`.
    Open,
    /// Whoever has a valid invite code.
    Invite,
}

/// What a connection, HTTP or WebSocket, may hold and how long it may wait.
#[derive(Debug, Clone)]
pub struct ConnectionsConfig {
    /// Open connections, HTTP and WebSocket together; the effective cap is
    /// also kept below the open-file limit (`MAX_OPEN_CONNECTIONS`).
    pub max_open: usize,
    /// Open connections one client address may hold; a trusted proxy's are
    /// counted against the client they are for once they upgrade
    /// (`MAX_CONNECTIONS_PER_ADDRESS`).
    pub max_per_address: usize,
    /// Each socket's send buffer (`SO_SNDBUF`), so that a peer that does not
    /// read holds little kernel memory; `None`: the kernel sizes it (up to
    /// 4 MiB by default) (`TCP_SEND_BUFFER_BYTES`, 0 for `None`).
    pub send_buffer: Option<usize>,
    /// A connection with no request in flight for this long is closed.
    pub http_idle_timeout: Duration,
    /// HTTP/1 request headers must arrive within this (hyper counts from the
    /// previous response on a kept-alive connection).
    pub http_header_timeout: Duration,
    /// A request, its body included, must be answered within this (408).
    pub http_request_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

/// How many WebSockets may be open, and what one socket may do.
#[derive(Debug, Clone)]
pub struct SocketsConfig {
    /// Open WebSockets one instance accepts before answering 503
    /// (`MAX_CONNECTIONS`); at start it is lowered below the connection cap,
    /// which keeps a share for HTTP (`server::websocket_cap`).
    pub max_connections: usize,
    /// Open WebSockets one user, or one session, may have on an instance
    /// before upgrades answer 429 (`MAX_SOCKETS_PER_USER`, `MAX_SOCKETS_PER_SESSION`).
    pub max_per_user: usize,
    pub max_per_session: usize,
    /// Sustained `send` frames per second one socket may make.
    pub message_rate: f64,
    /// How many `send` frames a socket may burst above the rate.
    pub message_burst: u32,
    /// Server ping period on every socket (`WS_PING_INTERVAL_SECS`).
    pub ping_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is dropped
    /// (`WS_IDLE_TIMEOUT_SECS`).
    pub idle_timeout: Duration,
    /// Bytes this instance's sockets may be reading from the store at once
    /// for what they missed (replays, unread counts), as estimated before
    /// each read: a burst of replays waits its turn instead of queueing
    /// everyone's commands behind megabytes of history
    /// (`REPLAY_READ_BUDGET_BYTES`).
    pub replay_read_budget: u32,
    /// Upgrades this instance answers at once: beyond them an upgrade is
    /// answered 503 with `Retry-After` straight away, rather than queued
    /// behind the others until its client gives up (`MAX_PENDING_UPGRADES`).
    pub max_pending_upgrades: usize,
    /// The longest `Retry-After` such a 503 gives; each is drawn uniformly
    /// from 1 s to this (`UPGRADE_RETRY_AFTER_MAX_SECS`).
    pub upgrade_retry_after_max: Duration,
}

/// Rooms, their history, and what one user may do with them.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Approximate number of messages kept per room (`XADD MAXLEN ~`).
    pub history_max_len: u64,
    /// The most messages one page of `GET /chat/{room}/history` holds.
    pub history_page_max: usize,
    /// How many mentions of a user their mention inbox keeps (the newest):
    /// how mentions in rooms they never opened reach them.
    pub mention_inbox_len: usize,
    /// Sustained messages per second one user may send across all their
    /// sockets, and the burst above it.
    pub user_message_rate: f64,
    pub user_message_burst: u32,
    /// New rooms one user may open per hour.
    pub rooms_per_user_per_hour: u32,
    /// How long a room with no message and no visit lives on.
    pub room_ttl: Duration,
    /// How long a `send`'s `client_id` is remembered, so that a resend is
    /// acknowledged with the first id instead of being stored twice
    /// (`SEND_DEDUPE_SECS`).
    pub send_dedupe_window: Duration,
    /// How long an instance's presence entries live without a heartbeat.
    pub presence_ttl: Duration,
    /// Members one private room may have.
    pub max_room_members: u32,
    /// Private rooms one user may be a member of.
    pub max_private_rooms_per_user: u32,
    /// Direct conversations one user may start per hour (a first message
    /// into a conversation with someone new).
    pub direct_per_user_per_hour: u32,
}

/// A variable that is present but unusable.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the defaults are valid")
    }
}

impl Config {
    /// Reads `.env` (if present; real environment variables win) and then the
    /// environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth a warning only,
        // because the environment may already hold everything.
        if let Err(err) = dotenvy::dotenv() {
            if !err.not_found() {
                eprintln!("warning: ignoring unreadable .env: {err}");
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds a config from explicit values, as tests and tools do.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| vars.get(name).cloned())
    }

    /// Builds a config from any `name -> value` lookup; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let vars = Vars { lookup: &get };
        let mut config = Config {
            log_format: LogFormat::read(&vars)?,
            server: ServerConfig::read(&vars)?,
            store: StoreConfig::read(&vars)?,
            sessions: SessionsConfig::read(&vars)?,
            tokens: TokensConfig::read(&vars)?,
            throttle: ThrottleConfig::read(&vars)?,
            signup: SignupConfig::read(&vars)?,
            connections: ConnectionsConfig::read(&vars)?,
            sockets: SocketsConfig::read(&vars)?,
            chat: ChatConfig::read(&vars)?,
        };
        // The rules between variables, once each is in its range.
        let explicit_warning = vars.secs_if_set("REAUTH_WARNING_SECS", 1..=YEAR)?;
        config.sessions.reauth_warning = config.resolve_reauth_warning(explicit_warning)?;
        config.sockets.check()?;
        config.server.check()?;
        Ok(config)
    }

    /// Every credential whose expiry can be a socket's deadline, with its
    /// lifetime.
    fn credential_lifetimes(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        [("SESSION_TTL_SECS", self.sessions.ttl), ("ACCESS_TOKEN_TTL_SECS", self.tokens.access_ttl)].into_iter()
    }

    /// `REAUTH_WARNING_SECS` (docs/protocol.md §1.1): unset, 60 s or half the
    /// shortest credential lifetime, whichever is shorter (exactly half: a
    /// 1-second TTL is warned 500 ms before); set, it must be shorter than
    /// that lifetime, or sockets would be warned all the time.
    fn resolve_reauth_warning(&self, explicit: Option<Duration>) -> Result<Duration, ConfigError> {
        let (shortest_name, shortest) =
            self.credential_lifetimes().min_by_key(|(_, lifetime)| *lifetime).expect("sessions have a lifetime");
        match explicit {
            None => Ok(DEFAULT_REAUTH_WARNING.min(shortest / 2)),
            Some(warning) if warning < shortest => Ok(warning),
            Some(warning) => Err(ConfigError {
                name: "REAUTH_WARNING_SECS",
                value: warning.as_secs().to_string(),
                reason: format!(
                    "must be shorter than {shortest_name}={}, the shortest credential lifetime; \
                     lower it, or leave it unset for half of that",
                    shortest.as_secs()
                ),
            }),
        }
    }
}

impl LogFormat {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        match vars.get("LOG_FORMAT").as_deref() {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => {
                Err(ConfigError { name: "LOG_FORMAT", value: other.to_owned(), reason: "expected text or json".into() })
            }
        }
    }
}

impl ServerConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        let public_origin = match vars.get("PUBLIC_ORIGIN") {
            Some(origin) => Some(normalize_origin(&origin).ok_or_else(|| ConfigError {
                name: "PUBLIC_ORIGIN",
                value: origin.clone(),
                reason: "expected scheme://host[:port], e.g. https://chat.example.com".into(),
            })?),
            None => None,
        };
        let tls = match (vars.get("TLS_CERT"), vars.get("TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsPaths { cert: cert.into(), key: key.into() }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError {
                    name: "TLS_CERT",
                    value: String::new(),
                    reason: "TLS_CERT and TLS_KEY must be set together".into(),
                })
            }
        };
        Ok(ServerConfig {
            listen_addr: vars.parse("LISTEN_ADDR", "127.0.0.1:8080")?,
            public_origin,
            allowed_origins: vars.list(
                "ALLOWED_ORIGINS",
                "each entry must be scheme://host[:port]",
                normalize_origin,
            )?,
            trusted_proxies: vars.list(
                "TRUSTED_PROXIES",
                "each entry must be an IP address or a network like 10.0.0.0/8",
                Network::parse,
            )?,
            cookie_secure: match vars.get("COOKIE_SECURE") {
                Some(_) => Some(vars.flag("COOKIE_SECURE")?),
                None => None,
            },
            tls,
            allow_insecure_http: vars.flag_or("ALLOW_INSECURE_HTTP", false)?,
            metrics_addr: match vars.get("METRICS_ADDR") {
                Some(_) => Some(vars.parse("METRICS_ADDR", "")?),
                None => None,
            },
            // Zero: close at once, without waiting.
            shutdown_grace: vars.secs("SHUTDOWN_GRACE_SECS", 5, 0..=HOUR)?,
            shutdown_drain: vars.secs("SHUTDOWN_DRAIN_SECS", 0, 0..=HOUR)?,
        })
    }

    /// Plain HTTP beyond loopback only when asked for: session cookies
    /// would cross the network in clear text.
    fn check(&self) -> Result<(), ConfigError> {
        if self.cleartext_beyond_loopback() && !self.allow_insecure_http {
            return Err(ConfigError {
                name: "LISTEN_ADDR",
                value: self.listen_addr.to_string(),
                reason: "not a loopback address and no TLS, so session cookies would cross the network in clear \
                         text. If TLS ends at a proxy in front, set PUBLIC_ORIGIN=https://<its host>; to serve \
                         plain HTTP anyway, set ALLOW_INSECURE_HTTP=true (or set TLS_CERT and TLS_KEY)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Whether session cookies would cross a network in clear text: plain
    /// HTTP on a non-loopback address, and no sign that TLS ends at a proxy
    /// in front (an https public origin). Refused unless ALLOW_INSECURE_HTTP.
    pub fn cleartext_beyond_loopback(&self) -> bool {
        let loopback = self.listen_addr.ip().to_canonical().is_loopback();
        let https_origin = self.public_origin.as_deref().is_some_and(|o| o.starts_with("https://"));
        !loopback && self.tls.is_none() && !https_origin
    }

    /// The origin browsers use, once the bound address is known.
    pub fn resolve_origin(&self, bound: SocketAddr) -> String {
        match &self.public_origin {
            Some(origin) => origin.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                normalize_origin(&format!("{scheme}://{bound}")).expect("a socket address is a valid host")
            }
        }
    }
}

impl StoreConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        let backend = match vars.get("PALAVER_BACKEND").as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("redis") => BackendChoice::Redis,
            Some("memory") => BackendChoice::Memory,
            Some(other) => {
                return Err(ConfigError {
                    name: "PALAVER_BACKEND",
                    value: other.to_owned(),
                    reason: "expected auto, redis or memory".into(),
                })
            }
        };
        Ok(StoreConfig {
            backend,
            redis_url: vars.get("REDIS_URL"),
            // A cluster shard rarely has more than a few replicas; 0 turns
            // waiting off.
            wait_replicas: match vars.get("REDIS_WAIT_REPLICAS") {
                Some(_) => Some(vars.number("REDIS_WAIT_REPLICAS", 0, 0..=16)?),
                None => None,
            },
            // Below the 2 s after which any store command counts as failed.
            wait_timeout: Duration::from_millis(vars.number("REDIS_WAIT_TIMEOUT_MS", 500, 1..=1500)?),
        })
    }
}

impl SessionsConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(SessionsConfig {
            // Expiries are now + TTL, as i64 milliseconds and as calendar
            // dates (`time`, Redis EXAT, cookie Max-Age): a year keeps every
            // such sum far from overflow.
            ttl: vars.secs("SESSION_TTL_SECS", 1800, 1..=YEAR)?,
            max_lifetime: vars.secs("SESSION_MAX_LIFETIME_SECS", 43200, 1..=YEAR)?,
            long_ttl: vars.secs("LONG_SESSION_TTL_SECS", 30 * DAY, 1..=YEAR)?,
            long_max_lifetime: vars.secs("LONG_SESSION_MAX_LIFETIME_SECS", 90 * DAY, 1..=YEAR)?,
            // Decided in `Config::from_lookup`, from the credential lifetimes.
            reauth_warning: Duration::ZERO,
            // Also how long a revoked session's socket may outlive it (§4).
            revalidate_interval: vars.secs("REVALIDATE_INTERVAL_SECS", 30, 1..=DAY)?,
        })
    }
}

impl TokensConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(TokensConfig {
            signing_key: vars.get("TOKEN_SIGNING_KEY").map(PathBuf::from),
            previous_keys: vars.list("TOKEN_PREVIOUS_KEYS", "each entry is a path", |p| Some(PathBuf::from(p)))?,
            access_ttl: vars.secs("ACCESS_TOKEN_TTL_SECS", 300, 1..=DAY)?,
            refresh_reuse_grace: vars.secs("REFRESH_REUSE_GRACE_SECS", 10, 1..=HOUR)?,
        })
    }
}

impl ThrottleConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(ThrottleConfig {
            login_max_failures: vars.number("LOGIN_MAX_FAILURES", 10, 1..=1_000_000)?,
            login_window: vars.secs("LOGIN_WINDOW_SECS", 900, 1..=DAY)?,
            register_max_per_address: vars.number("REGISTER_MAX_PER_ADDRESS", 10, 1..=1_000_000)?,
            // An office of a hundred behind one address signs up in one window.
            register_max_successes_per_address: vars.number(
                "REGISTER_MAX_SUCCESSES_PER_ADDRESS",
                100,
                1..=1_000_000,
            )?,
            register_window: vars.secs("REGISTER_WINDOW_SECS", 3600, 1..=DAY)?,
        })
    }
}

impl SignupConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        let registration = match vars.get("REGISTRATION").as_deref() {
            None | Some("open") => Registration::Open,
            Some("invite") => Registration::Invite,
            Some(other) => {
                return Err(ConfigError {
                    name: "REGISTRATION",
                    value: other.to_owned(),
                    reason: "expected open or invite".into(),
                })
            }
        };
        Ok(SignupConfig {
            registration,
            invites_by_users: vars.flag_or("INVITES_BY_USERS", true)?,
            invites_per_user_per_day: vars.number("INVITES_PER_USER_PER_DAY", 10, 1..=1000)?,
        })
    }
}

impl ConnectionsConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(ConnectionsConfig {
            // Kept below the open-file limit at start in any case.
            max_open: vars.number("MAX_OPEN_CONNECTIONS", 60_000, 1..=10_000_000)?,
            // A few hundred users behind one NAT with a few connections each;
            // one sixtieth of the default cap.
            max_per_address: vars.number("MAX_CONNECTIONS_PER_ADDRESS", 1000, 1..=10_000_000)?,
            // 128 KiB in flight: over 1 MB/s to a peer 100 ms away, and a
            // thirtieth of what the kernel would queue for one that never
            // reads. Zero leaves it to the kernel.
            send_buffer: match vars.number("TCP_SEND_BUFFER_BYTES", 131_072, 0..=64 * 1024 * 1024)? {
                0 => None,
                bytes => Some(bytes),
            },
            http_idle_timeout: vars.secs("HTTP_IDLE_TIMEOUT_SECS", 30, 1..=DAY)?,
            http_header_timeout: vars.secs("HTTP_HEADER_TIMEOUT_SECS", 10, 1..=HOUR)?,
            http_request_timeout: vars.secs("HTTP_REQUEST_TIMEOUT_SECS", 30, 1..=HOUR)?,
            tls_handshake_timeout: vars.secs("TLS_HANDSHAKE_TIMEOUT_SECS", 10, 1..=HOUR)?,
        })
    }
}

impl SocketsConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(SocketsConfig {
            // Far above any open-files limit.
            max_connections: vars.number("MAX_CONNECTIONS", 50_000, 1..=10_000_000)?,
            max_per_user: vars.number("MAX_SOCKETS_PER_USER", 30, 1..=10_000_000)?,
            max_per_session: vars.number("MAX_SOCKETS_PER_SESSION", 10, 1..=10_000_000)?,
            message_rate: vars.rate("MESSAGE_RATE_PER_SEC", 10.0, 10_000.0)?,
            message_burst: vars.number("MESSAGE_BURST", 20, 1..=100_000)?,
            ping_interval: vars.secs("WS_PING_INTERVAL_SECS", 20, 1..=HOUR)?,
            idle_timeout: vars.secs("WS_IDLE_TIMEOUT_SECS", 60, 1..=DAY)?,
            // Four replay pages of the longest messages (2,000 characters),
            // or dozens of short ones: the store's work of a millisecond or
            // two, which is all a bystander's command can find queued
            // before it.
            replay_read_budget: vars.number("REPLAY_READ_BUDGET_BYTES", 262_144, 1..=1 << 30)?,
            // Shedding costs the clients turned away their Retry-After, so
            // it starts only past what the instance answers in time: a
            // restart's storm of 15,000 clients peaked between 2,048 and
            // 4,096 in flight here and was answered within 1.6 s (p99) with
            // none shed, while a cap of 512 or 2,048 held the last clients
            // back 7.5 s instead of 2.3 (BENCHMARKS.md, reconnect storms).
            // Never off: a bigger storm, or a slow store, is when it is needed.
            max_pending_upgrades: vars.number("MAX_PENDING_UPGRADES", 4096, 1..=10_000_000)?,
            // 15,000 clients turned away come back over 1 to 5 s: about
            // 3,000 a second, well within what one instance answers.
            upgrade_retry_after_max: vars.secs("UPGRADE_RETRY_AFTER_MAX_SECS", 5, 1..=HOUR)?,
        })
    }

    /// The idle timeout must outlast the ping interval: a healthy socket
    /// is silent between pings.
    fn check(&self) -> Result<(), ConfigError> {
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError {
                name: "WS_IDLE_TIMEOUT_SECS",
                value: self.idle_timeout.as_secs().to_string(),
                reason: "must be longer than WS_PING_INTERVAL_SECS".into(),
            });
        }
        Ok(())
    }
}

impl ChatConfig {
    fn read(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(ChatConfig {
            history_max_len: vars.number("HISTORY_MAX_LEN", 10_000, 1..=100_000_000)?,
            history_page_max: vars.number("HISTORY_PAGE_MAX", 100, 1..=1000)?,
            mention_inbox_len: vars.number("MENTION_INBOX_LEN", 100, 1..=10_000)?,
            user_message_rate: vars.rate("USER_MESSAGE_RATE_PER_SEC", 20.0, 100_000.0)?,
            user_message_burst: vars.number("USER_MESSAGE_BURST", 40, 1..=1_000_000)?,
            rooms_per_user_per_hour: vars.number("ROOMS_PER_USER_PER_HOUR", 10, 1..=1_000_000)?,
            // Rooms are forgotten this long after their last use: up to a year.
            room_ttl: vars.secs("ROOM_TTL_SECS", 30 * DAY, 1..=YEAR)?,
            send_dedupe_window: vars.secs("SEND_DEDUPE_SECS", 120, 1..=DAY)?,
            // The heartbeat runs every third of it, at least once a second.
            presence_ttl: vars.secs("PRESENCE_TTL_SECS", 45, 3..=DAY)?,
            max_room_members: vars.number("MAX_ROOM_MEMBERS", 1000, 2..=100_000)?,
            max_private_rooms_per_user: vars.number("MAX_PRIVATE_ROOMS_PER_USER", 200, 1..=100_000)?,
            direct_per_user_per_hour: vars.number("DIRECT_PER_USER_PER_HOUR", 20, 1..=1_000_000)?,
        })
    }
}

/// `REAUTH_WARNING_SECS` when unset and every credential lives over 2 minutes.
const DEFAULT_REAUTH_WARNING: Duration = Duration::from_secs(60);

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;

/// Typed access to the raw variables, with errors naming the variable.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// The raw value, trimmed; `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    fn parse<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let value = self.get(name).unwrap_or_else(|| default.to_owned());
        value.parse().map_err(|err: T::Err| ConfigError { name, value, reason: err.to_string() })
    }

    /// A comma-separated list, each entry parsed by `parse`; unset is empty.
    fn list<T>(
        &self,
        name: &'static str,
        reason: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ConfigError> {
        let value = self.get(name).unwrap_or_default();
        value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                parse(entry).ok_or_else(|| ConfigError { name, value: entry.to_owned(), reason: reason.into() })
            })
            .collect()
    }

    /// A whole number in `range`; unset is `default`.
    fn number<T>(&self, name: &'static str, default: T, range: RangeInclusive<T>) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(value) = self.get(name) else { return Ok(default) };
        let (low, high) = (range.start(), range.end());
        match value.parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            Ok(_) => Err(ConfigError { name, value, reason: format!("must be between {low} and {high}") }),
            Err(_) => {
                Err(ConfigError { name, value, reason: format!("must be a whole number between {low} and {high}") })
            }
        }
    }

    /// Whole seconds in `range`; unset is `default`.
    fn secs(&self, name: &'static str, default: u64, range: RangeInclusive<u64>) -> Result<Duration, ConfigError> {
        self.number(name, default, range).map(Duration::from_secs)
    }

    /// Whole seconds in `range`, or `None` when unset.
    fn secs_if_set(&self, name: &'static str, range: RangeInclusive<u64>) -> Result<Option<Duration>, ConfigError> {
        match self.get(name) {
            Some(_) => self.secs(name, 0, range).map(Some),
            None => Ok(None),
        }
    }

    /// A number of events per second: above 0 and at most `max` (so finite).
    fn rate(&self, name: &'static str, default: f64, max: f64) -> Result<f64, ConfigError> {
        let Some(value) = self.get(name) else { return Ok(default) };
        match value.parse::<f64>() {
            Ok(rate) if rate > 0.0 && rate <= max => Ok(rate),
            _ => Err(ConfigError { name, value, reason: format!("must be a number above 0 and at most {max}") }),
        }
    }

    fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            Some(_) => self.flag(name),
            None => Ok(default),
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let value = self.get(name).unwrap_or_default();
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError { name, value, reason: "expected true or false".into() }),
        }
    }
}

#[cfg(test)]
mod tests;
