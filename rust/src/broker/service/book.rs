//! Where the service's answers come from: the [`AddressBook`] (name -> MAC
//! -> address), and [`MemoryBook`], one held in memory (the unit tests',
//! and the one a network without persisted records uses).
//!
//! The book decides addresses; the DHCP and DNS code only asks. A MAC keeps
//! the address it was given for as long as the book lives, released or not
//! (a released lease stops serving its name, not its address), so a guest
//! that restarts gets the address it had.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::{normalize_name, BookEntry};
use crate::config::MacAddr;

/// The service's view of the network's address records.
pub trait AddressBook: Send {
    /// The address of `mac`: the one it holds, or else `requested` when that
    /// is free in the pool, or else a free one (`None`: the pool is full).
    /// `hostname` is the guest's own DHCP host name: a claim, served as its
    /// name only when no other holds it.
    fn address_for(&mut self, mac: MacAddr, hostname: Option<&str>, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr>;

    /// `mac`'s lease ended (DHCP RELEASE): its name is no longer served.
    fn release(&mut self, mac: MacAddr);

    /// The name (short, without the domain) `addr` is served under.
    fn name_of(&self, addr: IpAddr) -> Option<String>;

    /// The addresses served under `name` (short, without the domain).
    fn addresses_of(&self, name: &str) -> Vec<IpAddr>;

    /// Every record, for `status`.
    fn entries(&self) -> Vec<BookEntry>;
}

#[derive(Clone, Debug)]
struct Entry {
    address: Ipv4Addr,
    name: Option<String>,
    leased: bool,
}

/// An [`AddressBook`] in memory over one pool of addresses; fixed entries
/// (`dhcpReservations`) win over everything else.
#[derive(Clone, Debug)]
pub struct MemoryBook {
    first: u32,
    last: u32,
    fixed: BTreeMap<[u8; 6], Ipv4Addr>,
    entries: BTreeMap<[u8; 6], Entry>,
}

impl MemoryBook {
    /// A book leasing `first..=last`, with `fixed` (MAC, address) entries.
    pub fn new((first, last): (Ipv4Addr, Ipv4Addr), fixed: &[([u8; 6], Ipv4Addr)]) -> MemoryBook {
        MemoryBook { first: first.into(), last: last.into(), fixed: fixed.iter().copied().collect(), entries: BTreeMap::new() }
    }

    fn in_pool(&self, a: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(a))
    }

    fn taken(&self, a: Ipv4Addr) -> bool {
        self.fixed.values().any(|f| *f == a) || self.entries.values().any(|e| e.address == a)
    }

    /// Whether a name is served by another MAC than `mac`.
    fn name_held(&self, name: &str, mac: &[u8; 6]) -> bool {
        self.entries.iter().any(|(m, e)| m != mac && e.leased && e.name.as_deref() == Some(name))
    }
}

impl AddressBook for MemoryBook {
    fn address_for(&mut self, mac: MacAddr, hostname: Option<&str>, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let claim = hostname.map(normalize_name).filter(|n| !n.is_empty() && !self.name_held(n, &mac.0));
        if let Some(e) = self.entries.get_mut(&mac.0) {
            e.leased = true;
            if claim.is_some() {
                e.name = claim;
            }
            return Some(e.address);
        }
        let address = match self.fixed.get(&mac.0) {
            Some(a) => *a,
            None => match requested.filter(|r| self.in_pool(*r) && !self.taken(*r)) {
                Some(r) => r,
                None => (self.first..=self.last).map(Ipv4Addr::from).find(|a| !self.taken(*a))?,
            },
        };
        self.entries.insert(mac.0, Entry { address, name: claim, leased: true });
        Some(address)
    }

    fn release(&mut self, mac: MacAddr) {
        if let Some(e) = self.entries.get_mut(&mac.0) {
            e.leased = false;
        }
    }

    fn name_of(&self, addr: IpAddr) -> Option<String> {
        let IpAddr::V4(v4) = addr else { return None };
        self.entries.values().find(|e| e.leased && e.address == v4).and_then(|e| e.name.clone())
    }

    fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        let name = normalize_name(name);
        self.entries.values().filter(|e| e.leased && e.name.as_deref() == Some(name.as_str())).map(|e| IpAddr::V4(e.address)).collect()
    }

    fn entries(&self) -> Vec<BookEntry> {
        self.entries
            .iter()
            .map(|(mac, e)| BookEntry { mac: MacAddr(*mac).to_string(), address: e.address, name: e.name.clone(), leased: e.leased })
            .collect()
    }
}
