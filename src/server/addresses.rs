//! Open connections per client address (`MAX_CONNECTIONS_PER_ADDRESS`), so
//! that one host cannot hold the whole connection cap.
//!
//! A client is counted as the throttles count it ([`address_key`]: an IPv4
//! address, or an IPv6 /64). What a proxy in front means here: a connection
//! from one of `TRUSTED_PROXIES` carries the requests of many clients one
//! after another (the proxy's pool), so it is not counted when it is
//! accepted (its clients are the proxy's to limit); once it upgrades to a
//! WebSocket it is one client's for its whole life, and is counted against
//! the client its `X-Forwarded-For` names. Every other connection is
//! counted against its TCP peer from the moment it is accepted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use crate::net::address_key;

/// How many connections each client address has open.
pub struct Addresses {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Addresses {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, open: Mutex::default() })
    }

    /// A place for one more connection of the client at `ip`, or `None`
    /// when it has `max` open already.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot { addresses: self.clone(), key })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap().get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One open connection of a client address; given back when dropped.
pub struct Slot {
    addresses: Arc<Addresses>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.addresses.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Where a connection keeps its slot: taken at accept for a direct
/// connection, at its upgrade for one through a trusted proxy. Shared by
/// the connection's stream (which an upgraded WebSocket keeps) and its
/// service, so the slot lasts as long as the longer of the two.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<Option<Slot>>>);

impl Held {
    pub fn new(slot: Option<Slot>) -> Self {
        Self(Arc::new(Mutex::new(slot)))
    }

    pub fn put(&self, slot: Slot) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_places_back_as_its_connections_close_and_others_are_apart() {
        let addresses = Addresses::new(2);
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let first = addresses.take(a).expect("one");
        let _second = addresses.take(a).expect("two");
        assert!(addresses.take(a).is_none(), "a third is refused");
        assert!(addresses.take("203.0.113.8".parse().unwrap()).is_some(), "another address is apart");
        drop(first);
        assert!(addresses.take(a).is_some(), "a place given back is taken again");
        assert_eq!(addresses.open("203.0.113.8".parse().unwrap()), 0, "forgotten once none is open");
    }

    #[test]
    fn an_ipv6_64_and_an_ipv4_mapped_address_count_as_the_throttles_count_them() {
        let addresses = Addresses::new(1);
        let _one = addresses.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(addresses.take("2001:db8:1:2::ffff".parse().unwrap()).is_none(), "the same /64");
        assert!(addresses.take("2001:db8:1:3::1".parse().unwrap()).is_some(), "another /64");
        let _v4 = addresses.take("192.0.2.1".parse().unwrap()).unwrap();
        assert!(addresses.take("::ffff:192.0.2.1".parse().unwrap()).is_none(), "mapped is the same");
    }

    #[test]
    fn a_held_slot_lasts_as_long_as_its_last_holder() {
        let addresses = Addresses::new(1);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let stream = Held::default();
        let service = stream.clone();
        service.put(addresses.take(ip).unwrap());
        drop(service);
        assert_eq!(addresses.open(ip), 1, "the upgraded stream still holds it");
        drop(stream);
        assert_eq!(addresses.open(ip), 0);
    }
}
