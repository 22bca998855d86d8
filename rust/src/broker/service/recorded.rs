//! The broker's address records (`broker/records.rs`) as the service's
//! [`AddressBook`], so one model of addresses serves the networks dnsmasq
//! answers for and those the broker's own port answers for: the address
//! the port gives a MAC is the one the records keep in the state
//! directory, across VM restarts and broker restarts (SIGKILL included).

use std::net::{IpAddr, Ipv4Addr};

use super::{normalize_name, AddressBook, BookEntry};
use crate::broker::records::Book;
use crate::config::MacAddr;

impl AddressBook for Book {
    /// The records decide: the MAC's record, its reservation, or a new
    /// address; the address the client asks for has no say. The records
    /// are written only when this changes them (a new MAC, a new claim), so
    /// a known MAC's answer does not wait for the disk.
    fn address_for(&mut self, mac: MacAddr, hostname: Option<&str>, _requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.address_for_mac(mac, hostname.map(normalize_name).as_deref())
    }

    fn release(&mut self, mac: MacAddr) {
        Book::release(self, mac);
    }

    fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.name_for_addr(addr).map(str::to_owned)
    }

    fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        self.addrs_for_name(name)
    }

    fn entries(&self) -> Vec<BookEntry> {
        Book::entries(self).iter().map(|e| BookEntry { mac: e.mac.to_string(), address: e.ipv4, name: e.name().map(str::to_owned), leased: e.active }).collect()
    }
}
