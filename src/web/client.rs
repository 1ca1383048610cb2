//! Who the client is, for login throttling: the TCP peer, or, when the peer
//! is one of `TRUSTED_PROXIES`, the address the proxy reports in
//! `X-Forwarded-For`.
//!
//! Behind a load balancer every request comes from the balancer's address;
//! counting failures per that address would lock everyone out after a few
//! dozen typos. `X-Forwarded-For` is only believed from listed proxies
//! (anyone can send the header), and it is read from the right: the last
//! address a trusted proxy did not add is the client.

use std::net::{IpAddr, SocketAddr};

use warp::http::HeaderMap;

/// The client address of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

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

    pub fn contains(&self, ip: IpAddr) -> bool {
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
pub struct TrustedProxies(pub Vec<Network>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request that came from `peer`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let mut client = peer.ip();
        if !self.trusts(client) {
            return ClientAddr(client);
        }
        let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
        let hops: Vec<&str> = hops.map(str::trim).collect();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last address we could trust.
                Err(_) => break,
            }
        }
        ClientAddr(client)
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
    }
}
