//! Who is on the other end: client addresses (behind trusted proxies) and
//! origins (the cross-origin policy). Pure functions over addresses and
//! headers, used by the configuration, the HTTP routes and the upgrade.
//!
//! Client address, for throttling: the TCP peer, or, when the peer is one of
//! `TRUSTED_PROXIES`, the address the proxy reports in `X-Forwarded-For`.
//! Behind a load balancer every request comes from the balancer's address;
//! counting failures per that address would lock everyone out after a few
//! dozen typos. `X-Forwarded-For` is only believed from listed proxies
//! (anyone can send the header), and it is read from the right: the last
//! address a trusted proxy did not add is the client.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use http::{header, HeaderMap};

/// The unit a client is counted in for throttling: an IPv4 address, or an
/// IPv6 /64 (a single host is routinely given a whole /64 and can use any
/// address in it). IPv4-mapped IPv6 addresses count as their IPv4 address.
pub(crate) fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// One hop of `X-Forwarded-For`: an address, possibly with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:443`) or brackets (`[2001:db8::1]`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The client address of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub IpAddr);

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `::1`, `192.168.1.7` (a single address).
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = ((prefix / 8) as usize, prefix % 8);
    a[..bytes] == b[..bytes] && (bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0)
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(pub Vec<Network>);

impl TrustedProxies {
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request that came from `peer`.
    pub(crate) fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let mut client = peer.ip();
        if !self.trusts(client) {
            return ClientAddr(client);
        }
        let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
        let hops: Vec<&str> = hops.map(str::trim).collect();
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last address we could trust.
                None => break,
            }
        }
        ClientAddr(client)
    }
}

/// Canonical form of an origin: lowercase scheme and host, no trailing slash,
/// no default port. `None` if it is not `http(s)://host[:port]`.
pub(crate) fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/');
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let host = rest.to_ascii_lowercase();
    let host = host.strip_suffix(default_port).unwrap_or(&host);
    Some(format!("{scheme}://{host}"))
}

/// Whether the browser says the request comes from another site's page
/// (`Sec-Fetch-Site: cross-site`, or `same-site`: another origin of the
/// same registrable domain). A navigation the user started (`none`: typed,
/// a bookmark), one from this origin's pages, and a request from no
/// browser (no header) are not.
pub(crate) fn from_another_site(sec_fetch_site: Option<&str>) -> bool {
    sec_fetch_site.is_some_and(|v| v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site"))
}

/// A request from another site, refused (403) on every unsafe method and on
/// the WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrossOrigin;

/// The cross-origin policy.
///
/// The session cookie is `SameSite=Lax`, which already keeps it off
/// cross-site POSTs in current browsers; this check does not rely on that.
/// A request is refused when the browser says it is `cross-site`
/// (`Sec-Fetch-Site`) or names an `Origin` that is neither `PUBLIC_ORIGIN`
/// nor in `ALLOWED_ORIGINS`. Requests with neither header (scripts, CLI
/// clients) pass: they carry no ambient browser credentials to abuse.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    allowed: BTreeSet<String>,
}

impl OriginPolicy {
    /// `explicit` is whether `PUBLIC_ORIGIN` was configured. When it was not
    /// and the server listens on loopback, the loopback names of the same
    /// port (`localhost`, `127.0.0.1`, `[::1]`) are accepted too: a browser
    /// pointed at `http://localhost:8080` must be able to log in to a default
    /// `cargo run`.
    pub(crate) fn new(public_origin: &str, extra: &[String], bound: SocketAddr, explicit: bool, tls: bool) -> Self {
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
    pub(crate) fn origins(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }

    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), CrossOrigin> {
        if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) {
            return Err(CrossOrigin);
        }
        match headers.get(header::ORIGIN) {
            None => Ok(()),
            Some(origin) => {
                let origin = origin.to_str().ok().and_then(normalize_origin);
                match origin {
                    Some(origin) if self.allowed.contains(&origin) => Ok(()),
                    // Includes `Origin: null` (sandboxed frames, some redirects).
                    _ => Err(CrossOrigin),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")) && !net.contains(ip("10.2.0.1")));
        assert!(Network::parse("10.0.0.0/12").unwrap().contains(ip("10.15.255.255")));
        assert!(!Network::parse("10.0.0.0/12").unwrap().contains(ip("10.16.0.0")));
        assert!(Network::parse("127.0.0.1").unwrap().contains(ip("::ffff:127.0.0.1")));
        assert!(Network::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129"] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies(vec![Network::parse("10.0.0.0/8").unwrap()]);
        let from_proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let from_client: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        assert_eq!(proxies.client(from_proxy, &xff("198.51.100.7")).0, ip("198.51.100.7"));
        // The client may put anything first; the proxy's own hop is the truth.
        assert_eq!(proxies.client(from_proxy, &xff("1.2.3.4, 198.51.100.7, 10.0.0.9")).0, ip("198.51.100.7"));
        assert_eq!(proxies.client(from_client, &xff("198.51.100.7")).0, ip("203.0.113.9"), "spoofed header ignored");
        assert_eq!(proxies.client(from_proxy, &HeaderMap::new()).0, ip("10.0.0.5"));
        assert_eq!(proxies.client(from_proxy, &xff("garbage")).0, ip("10.0.0.5"));
        assert_eq!(TrustedProxies::default().client(from_proxy, &xff("198.51.100.7")).0, ip("10.0.0.5"));
        // Hops written with ports or brackets are addresses all the same.
        assert_eq!(proxies.client(from_proxy, &xff("198.51.100.7:4711")).0, ip("198.51.100.7"));
        assert_eq!(proxies.client(from_proxy, &xff("[2001:db8::7]:443")).0, ip("2001:db8::7"));
        assert_eq!(proxies.client(from_proxy, &xff("[2001:db8::8]")).0, ip("2001:db8::8"));
        assert_eq!(proxies.client(from_proxy, &xff("2001:db8::9, 10.0.0.3:80")).0, ip("2001:db8::9"));
    }

    #[test]
    fn clients_are_counted_per_ipv4_address_and_per_ipv6_slash_64() {
        assert_eq!(address_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(address_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(address_key(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(address_key(ip("2001:db8:1:2::")), address_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(address_key(ip("2001:db8:1:2::")), address_key(ip("2001:db8:1:3::")));
    }

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

    #[test]
    fn origins_are_normalized() {
        assert_eq!(normalize_origin("HTTPS://Chat.Example.com:443/").unwrap(), "https://chat.example.com");
        assert_eq!(normalize_origin("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(normalize_origin("http://a:80").unwrap(), "http://a");
        assert!(normalize_origin("ftp://a").is_none());
        assert!(normalize_origin("http://a/path").is_none());
    }
}
