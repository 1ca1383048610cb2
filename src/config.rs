//! Configuration, read once at start from the environment (and `.env`).
//!
//! Every variable is listed with its default in `.env.example`; docs/protocol.md §1
//! fixes the documented ones. A value that does not parse is an error that
//! names the variable: a typo must not silently fall back to a default.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use crate::net::{normalize_origin, Network};

/// Which store backs users, sessions, events and history.
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

/// Both halves of a TLS identity; present only when both variables are set.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The whole runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub redis_url: Option<String>,
    pub backend: BackendChoice,
    /// `None` means "derived from the bound address" (see [`Config::resolve_origin`]).
    pub public_origin: Option<String>,
    pub allowed_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` names the client (for throttling).
    pub trusted_proxies: Vec<Network>,
    /// `None` means "true when the public origin is https".
    pub cookie_secure: Option<bool>,
    pub session_ttl: Duration,
    pub session_max_lifetime: Duration,
    pub reauth_warning: Duration,
    pub revalidate_interval: Duration,
    pub login_max_failures: u32,
    pub login_window: Duration,
    pub tls: Option<TlsPaths>,
    /// Open WebSockets one instance accepts before answering 503.
    pub max_connections: usize,
    /// Sustained `send` frames per second one socket may make.
    pub message_rate: f64,
    /// How many `send` frames a socket may burst above the rate.
    pub message_burst: u32,
    /// Approximate number of messages kept per room (`XADD MAXLEN ~`).
    pub history_max_len: u64,
    /// How long a `send`'s `client_id` is remembered, so that a resend is
    /// acknowledged with the first id instead of being stored twice.
    pub send_dedupe_window: Duration,
    /// Server ping period on every socket.
    pub ws_ping_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is dropped.
    pub ws_idle_timeout: Duration,
    /// How long an instance's presence entries live without a heartbeat.
    pub presence_ttl: Duration,
    /// How long graceful shutdown waits for sockets and requests to finish.
    pub shutdown_grace: Duration,
    /// A connection with no request in flight for this long is closed.
    pub http_idle_timeout: Duration,
    /// HTTP/1 request headers must arrive within this (hyper counts from the
    /// previous response on a kept-alive connection).
    pub http_header_timeout: Duration,
    /// A request, its body included, must be answered within this (408).
    pub http_request_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// Open connections, HTTP and WebSocket together; the effective cap is
    /// also kept below the open-file limit.
    pub max_open_connections: usize,
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
        let vars = Vars { get: &get };

        let backend = match get("PALAVER_BACKEND").as_deref() {
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

        let public_origin = match get("PUBLIC_ORIGIN") {
            Some(origin) => Some(normalize_origin(&origin).ok_or_else(|| ConfigError {
                name: "PUBLIC_ORIGIN",
                value: origin.clone(),
                reason: "expected scheme://host[:port], e.g. https://chat.example.com".into(),
            })?),
            None => None,
        };
        let allowed_origins =
            vars.list("ALLOWED_ORIGINS", "each entry must be scheme://host[:port]", normalize_origin)?;
        let trusted_proxies = vars.list(
            "TRUSTED_PROXIES",
            "each entry must be an IP address or a network like 10.0.0.0/8",
            Network::parse,
        )?;

        let tls = match (get("TLS_CERT"), get("TLS_KEY")) {
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

        let config = Config {
            listen_addr: vars.parse("LISTEN_ADDR", "127.0.0.1:8080")?,
            redis_url: get("REDIS_URL"),
            backend,
            public_origin,
            allowed_origins,
            trusted_proxies,
            cookie_secure: match get("COOKIE_SECURE") {
                Some(_) => Some(vars.flag("COOKIE_SECURE")?),
                None => None,
            },
            session_ttl: vars.secs("SESSION_TTL_SECS", 1800)?,
            session_max_lifetime: vars.secs("SESSION_MAX_LIFETIME_SECS", 43200)?,
            reauth_warning: vars.secs("REAUTH_WARNING_SECS", 60)?,
            revalidate_interval: vars.secs("REVALIDATE_INTERVAL_SECS", 30)?,
            login_max_failures: vars.parse("LOGIN_MAX_FAILURES", "10")?,
            login_window: vars.secs("LOGIN_WINDOW_SECS", 900)?,
            tls,
            max_connections: vars.parse("MAX_CONNECTIONS", "50000")?,
            message_rate: vars.parse("MESSAGE_RATE_PER_SEC", "10")?,
            message_burst: vars.parse("MESSAGE_BURST", "20")?,
            history_max_len: vars.parse("HISTORY_MAX_LEN", "10000")?,
            send_dedupe_window: vars.secs("SEND_DEDUPE_SECS", 120)?,
            ws_ping_interval: vars.secs("WS_PING_INTERVAL_SECS", 20)?,
            ws_idle_timeout: vars.secs("WS_IDLE_TIMEOUT_SECS", 60)?,
            presence_ttl: vars.secs("PRESENCE_TTL_SECS", 45)?,
            shutdown_grace: vars.secs("SHUTDOWN_GRACE_SECS", 5)?,
            http_idle_timeout: vars.secs("HTTP_IDLE_TIMEOUT_SECS", 30)?,
            http_header_timeout: vars.secs("HTTP_HEADER_TIMEOUT_SECS", 10)?,
            http_request_timeout: vars.secs("HTTP_REQUEST_TIMEOUT_SECS", 30)?,
            tls_handshake_timeout: vars.secs("TLS_HANDSHAKE_TIMEOUT_SECS", 10)?,
            max_open_connections: vars.parse("MAX_OPEN_CONNECTIONS", "60000")?,
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |name, value: String, reason: &str| Err(ConfigError { name, value, reason: reason.into() });
        if self.session_ttl.is_zero() {
            return bad("SESSION_TTL_SECS", "0".into(), "must be at least 1");
        }
        if self.session_max_lifetime.is_zero() {
            return bad("SESSION_MAX_LIFETIME_SECS", "0".into(), "must be at least 1");
        }
        if self.revalidate_interval.is_zero() {
            return bad("REVALIDATE_INTERVAL_SECS", "0".into(), "must be at least 1");
        }
        if self.login_max_failures == 0 {
            return bad("LOGIN_MAX_FAILURES", "0".into(), "must be at least 1");
        }
        if self.login_window.is_zero() {
            return bad("LOGIN_WINDOW_SECS", "0".into(), "must be at least 1");
        }
        if !(self.message_rate > 0.0 && self.message_rate.is_finite()) {
            return bad("MESSAGE_RATE_PER_SEC", self.message_rate.to_string(), "must be above 0");
        }
        if self.send_dedupe_window.is_zero() {
            return bad("SEND_DEDUPE_SECS", "0".into(), "must be at least 1");
        }
        if self.message_burst == 0 {
            return bad("MESSAGE_BURST", "0".into(), "must be at least 1");
        }
        if self.ws_ping_interval.is_zero() || self.ws_idle_timeout <= self.ws_ping_interval {
            return bad(
                "WS_IDLE_TIMEOUT_SECS",
                self.ws_idle_timeout.as_secs().to_string(),
                "must be longer than WS_PING_INTERVAL_SECS (and that at least 1)",
            );
        }
        if self.presence_ttl < Duration::from_secs(3) {
            return bad("PRESENCE_TTL_SECS", self.presence_ttl.as_secs().to_string(), "must be at least 3");
        }
        for (name, value) in [
            ("HTTP_IDLE_TIMEOUT_SECS", self.http_idle_timeout),
            ("HTTP_HEADER_TIMEOUT_SECS", self.http_header_timeout),
            ("HTTP_REQUEST_TIMEOUT_SECS", self.http_request_timeout),
            ("TLS_HANDSHAKE_TIMEOUT_SECS", self.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return bad(name, "0".into(), "must be at least 1");
            }
        }
        if self.max_open_connections == 0 {
            return bad("MAX_OPEN_CONNECTIONS", "0".into(), "must be at least 1");
        }
        Ok(())
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

/// Typed access to the raw variables, with errors naming the variable.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    fn parse<T>(&self, name: &'static str, default: &str) -> Result<T, ConfigError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let value = (self.get)(name).unwrap_or_else(|| default.to_owned());
        value.parse().map_err(|err: T::Err| ConfigError { name, value, reason: err.to_string() })
    }

    /// A comma-separated list, each entry parsed by `parse`; unset is empty.
    fn list<T>(
        &self,
        name: &'static str,
        reason: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<T>, ConfigError> {
        let value = (self.get)(name).unwrap_or_default();
        value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                parse(entry).ok_or_else(|| ConfigError { name, value: entry.to_owned(), reason: reason.into() })
            })
            .collect()
    }

    fn secs(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse::<u64>(name, &default.to_string()).map(Duration::from_secs)
    }

    fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        let value = (self.get)(name).unwrap_or_default();
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError { name, value, reason: "expected true or false".into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.backend, BackendChoice::Auto);
        assert_eq!(c.session_ttl, Duration::from_secs(1800));
        assert_eq!(c.session_max_lifetime, Duration::from_secs(43200));
        assert_eq!(c.reauth_warning, Duration::from_secs(60));
        assert_eq!(c.revalidate_interval, Duration::from_secs(30));
        assert_eq!(c.login_max_failures, 10);
        assert_eq!(c.login_window, Duration::from_secs(900));
        assert_eq!(c.max_connections, 50_000);
        assert_eq!(c.http_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_open_connections, 60_000);
        assert!(c.tls.is_none() && c.redis_url.is_none() && c.cookie_secure.is_none());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = config(&[("SESSION_TTL_SECS", "soon")]).unwrap_err();
        assert_eq!(err.name, "SESSION_TTL_SECS");
        assert!(err.to_string().contains("soon"));
        assert_eq!(config(&[("PALAVER_BACKEND", "sqlite")]).unwrap_err().name, "PALAVER_BACKEND");
        assert_eq!(config(&[("TLS_CERT", "/x.pem")]).unwrap_err().name, "TLS_CERT");
        assert_eq!(config(&[("PUBLIC_ORIGIN", "example.com")]).unwrap_err().name, "PUBLIC_ORIGIN");
        assert_eq!(config(&[("TRUSTED_PROXIES", "10.0.0.1, lb")]).unwrap_err().name, "TRUSTED_PROXIES");
        assert_eq!(config(&[("TRUSTED_PROXIES", "10.0.0.0/8,::1")]).unwrap().trusted_proxies.len(), 2);
    }

    #[test]
    fn connection_limits_must_be_at_least_one() {
        for name in [
            "HTTP_IDLE_TIMEOUT_SECS",
            "HTTP_HEADER_TIMEOUT_SECS",
            "HTTP_REQUEST_TIMEOUT_SECS",
            "TLS_HANDSHAKE_TIMEOUT_SECS",
            "MAX_OPEN_CONNECTIONS",
        ] {
            let err = config(&[(name, "0")]).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().contains("at least 1"), "{err}");
            assert_eq!(config(&[(name, "-1")]).unwrap_err().name, name);
            assert!(config(&[(name, "7")]).is_ok());
        }
    }

    #[test]
    fn extra_origins_are_normalized() {
        let c = config(&[("ALLOWED_ORIGINS", "http://a:1, https://b ")]).unwrap();
        assert_eq!(c.allowed_origins, vec!["http://a:1", "https://b"]);
    }

    #[test]
    fn the_default_origin_follows_the_bound_address() {
        let c = config(&[]).unwrap();
        assert_eq!(c.resolve_origin("127.0.0.1:4000".parse().unwrap()), "http://127.0.0.1:4000");
        let c = config(&[("PUBLIC_ORIGIN", "https://chat.example.com")]).unwrap();
        assert_eq!(c.resolve_origin("127.0.0.1:4000".parse().unwrap()), "https://chat.example.com");
    }
}
