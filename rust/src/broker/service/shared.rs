//! The broker's address records (`broker/records.rs`) as the service's
//! [`AddressBook`], so one model of addresses serves the networks dnsmasq
//! answers for and those the broker's own port answers for: a name the
//! broker granted (`run --name`) is served by the port, an address the
//! port gave is the one the records keep across VM and broker restarts, and
//! `resolve`, `status` and `leases` see the same records.
//!
//! The records live in the broker's state, behind its one lock; every call
//! here takes that lock for the length of one lookup, from the port's
//! thread. The port holds nothing else while it waits for the lock, and a
//! port dropped under the lock does not wait for its thread (`port.rs`), so
//! the two never wait on each other.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::{AddressBook, BookEntry};
use crate::broker::records::Book;
use crate::broker::state::State;
use crate::config::MacAddr;

/// Runs a function on the broker's state under its lock; `false` when the
/// broker is gone.
pub type WithState = Arc<dyn Fn(&mut dyn FnMut(&mut State)) -> bool + Send + Sync>;

/// One network's records, reached through [`WithState`].
pub struct SharedBook {
    with: WithState,
    network: String,
}

impl SharedBook {
    pub fn new(with: WithState, network: &str) -> SharedBook {
        SharedBook { with, network: network.into() }
    }

    /// `f` on the network's book; `None` when the broker or the network is
    /// gone.
    fn on_book<T>(&self, f: impl FnOnce(&mut Book) -> T) -> Option<T> {
        let mut f = Some(f);
        let mut out = None;
        (self.with)(&mut |st: &mut State| {
            if let (Some(f), Some(book)) = (f.take(), st.book(&self.network)) {
                out = Some(f(book));
            }
        });
        out
    }
}

impl AddressBook for SharedBook {
    fn address_for(&mut self, mac: MacAddr, hostname: Option<&str>, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.on_book(|b| AddressBook::address_for(b, mac, hostname, requested)).flatten()
    }

    fn release(&mut self, mac: MacAddr) {
        self.on_book(|b| AddressBook::release(b, mac));
    }

    fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.on_book(|b| AddressBook::name_of(b, addr)).flatten()
    }

    fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        self.on_book(|b| AddressBook::addresses_of(b, name)).unwrap_or_default()
    }

    fn entries(&self) -> Vec<BookEntry> {
        self.on_book(|b| AddressBook::entries(b)).unwrap_or_default()
    }
}
