//! Cross-origin protection for every POST and for the WebSocket upgrade.
//!
//! The session cookie is `SameSite=Lax`, which already keeps it off
//! cross-site POSTs in current browsers; this check does not rely on that.
//! A request is refused when the browser says it is `cross-site`
//! (`Sec-Fetch-Site`) or names an `Origin` that is neither `PUBLIC_ORIGIN`
//! nor in `ALLOWED_ORIGINS`. Requests with neither header (scripts, CLI
//! clients) pass: they carry no ambient browser credentials to abuse.

use std::{collections::BTreeSet, net::SocketAddr};

use warp::{
    http::{header, HeaderMap},
    Filter, Rejection,
};

use super::with_state;
use crate::{config::normalize_origin, error::Error, state::SharedState};

/// Refuses (403) a cross-origin request; for every POST route.
pub fn same_origin(state: SharedState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_state(state))
        .and_then(|headers: HeaderMap, state: SharedState| async move {
            state.origins.check(&headers).map_err(Rejection::from)
        })
        .untuple_one()
}

#[derive(Debug, Clone)]
pub struct OriginPolicy {
    allowed: BTreeSet<String>,
}

impl OriginPolicy {
    /// `explicit` is whether `PUBLIC_ORIGIN` was configured. When it was not
    /// and the server listens on loopback, the loopback names of the same
    /// port (`localhost`, `127.0.0.1`, `[::1]`) are accepted too: a browser
    /// pointed at `http://localhost:8080` must be able to log in to a default
    /// `cargo run`.
    pub fn new(public_origin: &str, extra: &[String], bound: SocketAddr, explicit: bool, tls: bool) -> Self {
        let mut allowed: BTreeSet<String> = extra.iter().cloned().collect();
        allowed.insert(public_origin.to_owned());
        if !explicit && bound.ip().is_loopback() {
            let scheme = if tls { "https" } else { "http" };
            for host in ["localhost", "127.0.0.1", "[::1]"] {
                allowed.extend(normalize_origin(&format!("{scheme}://{host}:{}", bound.port())));
            }
        }
        Self { allowed }
    }

    /// The accepted origins, normalized.
    pub fn origins(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), Error> {
        if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
            return Err(Error::CrossOrigin);
        }
        match headers.get(header::ORIGIN) {
            None => Ok(()),
            Some(origin) => {
                let origin = origin.to_str().ok().and_then(normalize_origin);
                match origin {
                    Some(origin) if self.allowed.contains(&origin) => Ok(()),
                    // Includes `Origin: null` (sandboxed frames, some redirects).
                    _ => Err(Error::CrossOrigin),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn only_known_origins_pass() {
        let policy = OriginPolicy::new(
            "https://chat.example.com",
            &["https://b.example.com".into()],
            "0.0.0.0:443".parse().unwrap(),
            true,
            true,
        );
        assert!(policy.check(&headers(&[])).is_ok(), "scripts send neither header");
        assert!(policy.check(&headers(&[("origin", "https://chat.example.com")])).is_ok());
        assert!(policy.check(&headers(&[("origin", "https://CHAT.example.com:443")])).is_ok());
        assert!(policy.check(&headers(&[("origin", "https://b.example.com")])).is_ok());
        assert!(policy.check(&headers(&[("origin", "https://evil.example")])).is_err());
        assert!(policy.check(&headers(&[("origin", "null")])).is_err());
        assert!(policy.check(&headers(&[("origin", "http://chat.example.com")])).is_err(), "scheme matters");
        assert!(policy.check(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(policy.check(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
    }

    #[test]
    fn a_default_loopback_origin_accepts_its_aliases() {
        let bound = "127.0.0.1:8080".parse().unwrap();
        let policy = OriginPolicy::new("http://127.0.0.1:8080", &[], bound, false, false);
        assert!(policy.check(&headers(&[("origin", "http://localhost:8080")])).is_ok());
        assert!(policy.check(&headers(&[("origin", "http://localhost:8081")])).is_err());
        let explicit = OriginPolicy::new("http://127.0.0.1:8080", &[], bound, true, false);
        assert!(explicit.check(&headers(&[("origin", "http://localhost:8080")])).is_err());
    }
}
