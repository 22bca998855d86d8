//! The broker's address records: per network, name -> MAC -> IPv4 (and the
//! IPv6 address the MAC forms in the network's /64, where it has one),
//! kept in the broker's state directory so a VM that comes back under the
//! same name gets the same address across VM restarts, broker restarts
//! (even after SIGKILL) and upgrades (docs/config.md, "Names and
//! addresses").
//!
//! A name is either **granted** (the client gave it: `run --name`, `open(...,
//! name=)`, the VZ `acquire` request) or **claimed** (a guest's DHCP host
//! name). A granted name held by a running VM is refused to a second one; a
//! claim is served only when no record holds the name, and never displaces
//! a granted name. Names are served (`addrs_for_name`, `name_for_addr`)
//! only while their VM is active; a granted name keeps its address after
//! the VM goes (so it gets it back), a claimed one is forgotten.
//!
//! Addresses: an explicit `dhcpReservations` entry wins; otherwise the
//! record's address; otherwise the lowest free address of the DHCP range
//! (gateway + 1 .. broadcast - 1) that no record, reservation or
//! [`Book::avoid`]ed address holds. When the range is full the inactive
//! record seen longest ago gives its address up. Two records never hold one
//! address.
//!
//! Storage: one JSON file per network, `<data dir>/names/<network>.json`
//! (the data directory outlasts a reboot: `broker::launch::data_dir`),
//! written to a temporary file, synced and renamed over the old one after
//! every change, and only then: a call that changes no record (a VM renewing
//! its address, a name asked for again, a book opened on an up-to-date file)
//! writes nothing. A record's `last_seen` alone is written again once it has
//! moved [`LAST_SEEN_REFRESH_SECS`] or more from the file's, so the file's
//! `last_seen` lags by less than that; it only orders which inactive record
//! gives its address up when the range is full. The file carries
//! [`VERSION`]; a file of a newer version is left untouched (the book then
//! lives in memory only, and says so). A file still in the state directory,
//! where records were kept before, is moved to the data directory when its
//! network is first opened and the data directory has none
//! ([`migrate`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Ipv4Subnet, Ipv6Prefix, MacAddr};

/// The version of the file format this build writes (and the newest it reads).
pub const VERSION: u32 = 1;
/// How far a record's `last_seen` may move from the file's before the file
/// is written for that alone (an hour: DHCP renews a lease of the default
/// hour every half hour, so a running VM costs at most one write an hour).
pub const LAST_SEEN_REFRESH_SECS: u64 = 3600;
pub use crate::config::BASE_DOMAIN;
/// The name the gateway (the host) has in every network's domain.
pub const HOST_NAME: &str = "host";

/// Whose a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameKind {
    /// Given by the client; the broker's to grant.
    Granted,
    /// A guest's DHCP host name; served only while nothing else holds it.
    Claimed,
}

impl NameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NameKind::Granted => "granted",
            NameKind::Claimed => "claimed",
        }
    }
}

/// One VM's record on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name and whose it is; `None`: a VM known only by its MAC.
    pub name: Option<(String, NameKind)>,
    pub mac: MacAddr,
    pub ipv4: Ipv4Addr,
    /// The MAC's EUI-64 address in the network's /64, if it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// A VM holds it now (not persisted: after a restart nothing is active
    /// until its VM comes back).
    pub active: bool,
    /// Seconds since the epoch when a VM last held it.
    pub last_seen: u64,
}

impl Entry {
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|(n, _)| n.as_str())
    }

    pub fn kind(&self) -> Option<NameKind> {
        self.name.as_ref().map(|(_, k)| *k)
    }
}

/// Why a name or an address could not be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("name {name:?} is held on network {network:?} by a running VM ({mac}, {addr}); choose another name or stop that VM")]
    NameHeld { name: String, network: String, mac: MacAddr, addr: Ipv4Addr },
    #[error("name {name:?} is not a DNS label (1-63 letters, digits and '-', not starting or ending with '-')")]
    BadName { name: String },
    #[error("name {name:?} is the host's own name on network {network:?}")]
    Reserved { name: String, network: String },
    #[error("network {network:?} has no free address left in {range}")]
    Full { network: String, range: String },
}

/// Why the records file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("address records {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("address records {path}: not valid JSON of this format: {detail}")]
    Format { path: String, detail: String },
    #[error("address records {path} are version {found}, newer than this broker's {VERSION}; the file is left as it is and addresses are kept in memory only")]
    Newer { path: String, found: u32 },
}

/// What a granted name came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// The record already held this name (the VM came back).
    pub returning: bool,
}

/// A DNS label: what a name must be to stand in `<name>.<network>.<domain>`.
pub fn valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The fully qualified name of `name` in `domain` (`alpha` + `shared.vmnet.internal`).
pub fn fqdn(name: &str, domain: &str) -> String {
    format!("{name}.{domain}")
}

/// A network's domain unless its `domain` key names another: `<network>.vmnet.internal`.
pub fn default_domain(network: &str) -> String {
    crate::config::NetworkConfig::lima_default().dns_domain(network)
}

/// The MAC's modified EUI-64 address in a /64 prefix (what SLAAC forms);
/// `None` for other prefix lengths.
pub fn eui64(prefix: &Ipv6Prefix, mac: MacAddr) -> Option<Ipv6Addr> {
    if prefix.prefix_len() != 64 {
        return None;
    }
    let m = mac.octets();
    let mut o = prefix.addr().octets();
    o[8..].copy_from_slice(&[m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    Some(Ipv6Addr::from(o))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The file format (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileV1 {
    version: u32,
    network: String,
    subnet: String,
    entries: Vec<FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<NameKind>,
    mac: String,
    ipv4: Ipv4Addr,
    last_seen: u64,
}

impl FileV1 {
    /// Whether `self` (what the file holds) says what `now` says, but for
    /// `last_seen`s that moved less than [`LAST_SEEN_REFRESH_SECS`].
    fn holds(&self, now: &FileV1) -> bool {
        let same = |a: &FileEntry, b: &FileEntry| {
            (&a.name, a.kind, &a.mac, a.ipv4) == (&b.name, b.kind, &b.mac, b.ipv4) && a.last_seen.abs_diff(b.last_seen) < LAST_SEEN_REFRESH_SECS
        };
        (self.version, &self.network, &self.subnet) == (now.version, &now.network, &now.subnet)
            && self.entries.len() == now.entries.len()
            && self.entries.iter().zip(&now.entries).all(|(a, b)| same(a, b))
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The records of one network.
#[derive(Debug)]
pub struct Book {
    network: String,
    subnet: Ipv4Subnet,
    v6: Option<Ipv6Prefix>,
    reservations: Vec<(MacAddr, Ipv4Addr)>,
    entries: Vec<Entry>,
    /// Addresses held outside the records (e.g. dnsmasq's own leases).
    avoid: BTreeSet<Ipv4Addr>,
    /// Where it is saved; `None`: memory only.
    path: Option<PathBuf>,
    /// What the file at `path` holds, as this book last read or wrote it;
    /// `None`: nothing known (no file yet, or the last write failed).
    on_disk: Option<FileV1>,
}

impl Book {
    /// The path of network `network`'s records under `state_dir`.
    pub fn path(state_dir: &Path, network: &str) -> PathBuf {
        state_dir.join("names").join(format!("{network}.json"))
    }

    /// A book kept in memory only.
    pub fn in_memory(network: &str, subnet: Ipv4Subnet, v6: Option<Ipv6Prefix>, reservations: &[(MacAddr, Ipv4Addr)]) -> Book {
        Book {
            network: network.to_owned(),
            subnet,
            v6,
            reservations: reservations.to_vec(),
            entries: Vec::new(),
            avoid: BTreeSet::new(),
            path: None,
            on_disk: None,
        }
    }

    /// Reads network `network`'s records from `state_dir` (none yet: an
    /// empty book saved there). Records that no longer fit the network
    /// (outside the subnet, the gateway, or an address another MAC's
    /// reservation now holds) are dropped, and the file written without
    /// them; they get a new address next time. A file that needs no change
    /// is not written.
    pub fn open(state_dir: &Path, network: &str, subnet: Ipv4Subnet, v6: Option<Ipv6Prefix>, reservations: &[(MacAddr, Ipv4Addr)]) -> Result<Book, Error> {
        let path = Self::path(state_dir, network);
        let shown = path.display().to_string();
        let mut book = Book::in_memory(network, subnet, v6, reservations);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Io { path: shown, source: e }),
        };
        if let Some(text) = text {
            let version: VersionOnly = serde_json::from_str(&text).map_err(|e| Error::Format { path: shown.clone(), detail: e.to_string() })?;
            if version.version > VERSION {
                return Err(Error::Newer { path: shown, found: version.version });
            }
            let file: FileV1 = serde_json::from_str(&text).map_err(|e| Error::Format { path: shown.clone(), detail: e.to_string() })?;
            book.on_disk = Some(file.clone());
            for e in file.entries {
                let Some(mac) = MacAddr::parse(&e.mac) else { continue };
                let name = match (e.name, e.kind) {
                    (Some(n), Some(k)) if valid_label(&n) => Some((n, k)),
                    _ => None,
                };
                let entry = Entry { name, mac, ipv4: e.ipv4, ipv6: v6.as_ref().and_then(|p| eui64(p, mac)), active: false, last_seen: e.last_seen };
                if book.fits(&entry) {
                    book.entries.push(entry);
                }
            }
        }
        book.path = Some(path);
        book.save()?;
        Ok(book)
    }

    /// Whether a loaded entry may stay: a usable address of the subnet that
    /// no other MAC's reservation and no earlier entry holds, a name no
    /// earlier entry holds.
    fn fits(&self, e: &Entry) -> bool {
        self.subnet.is_client_address(e.ipv4)
            && !self.reservations.iter().any(|(m, a)| *a == e.ipv4 && *m != e.mac)
            && !self.entries.iter().any(|o| o.ipv4 == e.ipv4 || o.mac == e.mac || (e.name().is_some() && o.name() == e.name()))
    }

    /// The records as the file holds them.
    fn to_file(&self) -> FileV1 {
        FileV1 {
            version: VERSION,
            network: self.network.clone(),
            subnet: self.subnet.to_string(),
            entries: self
                .entries
                .iter()
                .map(|e| FileEntry {
                    name: e.name().map(str::to_owned),
                    kind: e.kind(),
                    mac: e.mac.to_string(),
                    ipv4: e.ipv4,
                    last_seen: e.last_seen,
                })
                .collect(),
        }
    }

    /// Writes the records if they changed since the file was last read or
    /// written (atomically: a temporary file, synced, renamed over the old).
    pub fn save(&mut self) -> Result<(), Error> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        let file = self.to_file();
        if self.on_disk.as_ref().is_some_and(|d| d.holds(&file)) {
            return Ok(());
        }
        let shown = || path.display().to_string();
        let text = serde_json::to_string_pretty(&file).map_err(|e| Error::Format { path: shown(), detail: e.to_string() })? + "\n";
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        }
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        // Until the write is known to have happened, nothing is known of
        // the file: after a failed write the next call writes again.
        self.on_disk = None;
        write().map_err(|e| Error::Io { path: shown(), source: e })?;
        self.on_disk = Some(file);
        Ok(())
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn subnet(&self) -> Ipv4Subnet {
        self.subnet
    }

    /// Every record, in the order they were made.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether the book is saved to disk.
    pub fn persistent(&self) -> bool {
        self.path.is_some()
    }

    /// Addresses held outside the records (replaces the earlier set); new
    /// addresses are never chosen among them.
    pub fn avoid(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        self.avoid = addrs.into_iter().collect();
    }

    fn reservation(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.reservations.iter().find(|(m, _)| *m == mac).map(|(_, a)| *a)
    }

    fn index_of_name(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name() == Some(name))
    }

    fn index_of_mac(&self, mac: MacAddr) -> Option<usize> {
        self.entries.iter().position(|e| e.mac == mac)
    }

    /// The lowest free address of the DHCP range, or the address of the
    /// inactive entry seen longest ago (which is then removed).
    fn allocate(&mut self) -> Result<Ipv4Addr, Refusal> {
        let (first, last) = self.subnet.dhcp_range();
        let free = (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from).find(|a| {
            !self.avoid.contains(a) && !self.reservations.iter().any(|(_, r)| r == a) && !self.entries.iter().any(|e| e.ipv4 == *a)
        });
        if let Some(a) = free {
            return Ok(a);
        }
        let oldest = self.entries.iter().enumerate().filter(|(_, e)| !e.active).min_by_key(|(_, e)| e.last_seen).map(|(i, _)| i);
        match oldest {
            Some(i) => Ok(self.entries.remove(i).ipv4),
            None => Err(Refusal::Full { network: self.network.clone(), range: format!("{first}-{last}") }),
        }
    }

    /// The address a record for `mac` gets: its reservation, else `keep`
    /// (the record's own), else a new one.
    fn address(&mut self, mac: MacAddr, keep: Option<Ipv4Addr>) -> Result<Ipv4Addr, Refusal> {
        match (self.reservation(mac), keep) {
            (Some(r), _) => Ok(r),
            (None, Some(a)) => Ok(a),
            (None, None) => self.allocate(),
        }
    }

    fn entry(&self, name: Option<(String, NameKind)>, mac: MacAddr, ipv4: Ipv4Addr) -> Entry {
        Entry { name, mac, ipv4, ipv6: self.v6.as_ref().and_then(|p| eui64(p, mac)), active: true, last_seen: now() }
    }

    /// Removes the record of `mac` unless it is the one at `keep`; returns
    /// the index `keep` has afterwards.
    fn drop_other_of_mac(&mut self, mac: MacAddr, keep: Option<usize>) -> Option<usize> {
        match self.index_of_mac(mac) {
            Some(i) if Some(i) != keep => {
                self.entries.remove(i);
                keep.map(|k| if k > i { k - 1 } else { k })
            }
            _ => keep,
        }
    }

    /// Grants the client-given `name` to the VM with `mac` and makes the
    /// record active. The name's earlier record (same or another MAC, not
    /// active) gives its address; a name a running VM holds under a granted
    /// name is refused; a claim on it is taken away. Saved before returning.
    pub fn grant(&mut self, name: &str, mac: MacAddr) -> Result<Grant, Refusal> {
        if !valid_label(name) {
            return Err(Refusal::BadName { name: name.to_owned() });
        }
        if name.eq_ignore_ascii_case(HOST_NAME) {
            return Err(Refusal::Reserved { name: name.to_owned(), network: self.network.clone() });
        }
        let held = self.index_of_name(name);
        if let Some(i) = held {
            let e = &self.entries[i];
            if e.active && e.kind() == Some(NameKind::Granted) && e.mac != mac {
                return Err(Refusal::NameHeld { name: name.to_owned(), network: self.network.clone(), mac: e.mac, addr: e.ipv4 });
            }
        }
        // A claim (by another MAC) yields to the grant: it loses the name, keeps its address.
        let held = match held {
            Some(i) if self.entries[i].kind() == Some(NameKind::Claimed) && self.entries[i].mac != mac => {
                self.entries[i].name = None;
                None
            }
            other => other,
        };
        let returning = held.is_some();
        let keep = held.map(|i| self.entries[i].ipv4).or_else(|| self.index_of_mac(mac).map(|i| self.entries[i].ipv4));
        let held = self.drop_other_of_mac(mac, held);
        if let Some(i) = held {
            self.entries.remove(i);
        }
        let ipv4 = self.address(mac, keep.filter(|a| !self.reservations.iter().any(|(m, r)| r == a && *m != mac)))?;
        let entry = self.entry(Some((name.to_owned(), NameKind::Granted)), mac, ipv4);
        let grant = Grant { name: name.to_owned(), ipv4, ipv6: entry.ipv6, returning };
        self.entries.push(entry);
        self.save_logged();
        Ok(grant)
    }

    /// The address for the VM with `mac` asking by DHCP (assign or renew),
    /// with the host name it sent, if any: its record's address, else a new
    /// one. A hint becomes a claimed name when no record holds that name; a
    /// record with a granted name keeps it. `None` when no address is free.
    pub fn address_for_mac(&mut self, mac: MacAddr, hostname_hint: Option<&str>) -> Option<Ipv4Addr> {
        let hint = hostname_hint.filter(|h| valid_label(h) && !h.eq_ignore_ascii_case(HOST_NAME));
        let i = match self.index_of_mac(mac) {
            Some(i) => i,
            None => {
                let ipv4 = self.address(mac, None).ok()?;
                let e = self.entry(None, mac, ipv4);
                self.entries.push(e);
                self.entries.len() - 1
            }
        };
        if let Some(r) = self.reservation(mac) {
            self.entries[i].ipv4 = r;
        }
        let e = &self.entries[i];
        let wants_claim = e.kind() != Some(NameKind::Granted) && hint.is_some_and(|h| e.name() != Some(h));
        if wants_claim {
            let h = hint.unwrap_or_default();
            if self.index_of_name(h).is_none() {
                self.entries[i].name = Some((h.to_owned(), NameKind::Claimed));
            }
        }
        let e = &mut self.entries[i];
        e.active = true;
        e.last_seen = now();
        let a = e.ipv4;
        self.save_logged();
        Some(a)
    }

    /// Marks the record of `mac` as no longer held: a claimed name is
    /// forgotten, a granted name keeps its address for when it comes back.
    pub fn release(&mut self, mac: MacAddr) {
        if let Some(i) = self.index_of_mac(mac) {
            let e = &mut self.entries[i];
            e.active = false;
            e.last_seen = now();
            if e.kind() == Some(NameKind::Claimed) {
                e.name = None;
            }
            self.save_logged();
        }
    }

    /// The active record of `name` (case-insensitive, as DNS compares).
    pub fn lookup(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.active && e.name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }

    /// The addresses `name` answers with while its VM is active (IPv4 first).
    pub fn addrs_for_name(&self, name: &str) -> Vec<IpAddr> {
        self.lookup(name).map(|e| std::iter::once(IpAddr::V4(e.ipv4)).chain(e.ipv6.map(IpAddr::V6)).collect()).unwrap_or_default()
    }

    /// The name an active record has at `addr` (for reverse lookups).
    pub fn name_for_addr(&self, addr: IpAddr) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.active)
            .find(|e| match addr {
                IpAddr::V4(a) => e.ipv4 == a,
                IpAddr::V6(a) => e.ipv6 == Some(a),
            })
            .and_then(|e| e.name())
    }

    fn save_logged(&mut self) {
        if let Err(e) = self.save() {
            log::warn!("{e}");
        }
    }
}

/// Every network's book, opened on first use (the broker holds one,
/// behind its lock).
#[derive(Debug, Default)]
pub struct Records {
    /// The data directory; `None`: memory only.
    dir: Option<PathBuf>,
    /// Where records were kept before (the state directory), moved from.
    legacy: Option<PathBuf>,
    books: BTreeMap<String, Book>,
}

/// Moves network `network`'s records file from `from` (a directory records
/// were kept in before) to `to` when `to` has none: copied to a temporary
/// file, synced, renamed into place, and only then removed from `from`.
/// Returns whether a file was moved.
pub fn migrate(from: &Path, to: &Path, network: &str) -> Result<bool, Error> {
    let (old, new) = (Book::path(from, network), Book::path(to, network));
    if old == new || new.exists() || !old.exists() {
        return Ok(false);
    }
    fn io(p: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| Error::Io { path: p.display().to_string(), source: e }
    }
    let dir = new.parent().unwrap_or(to);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = new.with_extension("json.tmp");
    let copy = || -> std::io::Result<()> {
        std::fs::copy(&old, &tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &new)
    };
    copy().map_err(io(&new))?;
    std::fs::remove_file(&old).map_err(io(&old))?;
    Ok(true)
}

impl Records {
    /// Records kept in `dir` (`None`: memory only), taking over those found
    /// in `legacy` (where they were kept before) on first use.
    pub fn new(dir: Option<&Path>, legacy: Option<&Path>) -> Records {
        Records { dir: dir.map(Path::to_path_buf), legacy: legacy.map(Path::to_path_buf), books: BTreeMap::new() }
    }

    /// Network `network`'s book, read from the state directory the first
    /// time (or when its subnet changed). A file that cannot be used is
    /// logged and left alone; the book then lives in memory.
    pub fn book(&mut self, network: &str, subnet: Ipv4Subnet, v6: Option<Ipv6Prefix>, reservations: &[(MacAddr, Ipv4Addr)]) -> &mut Book {
        let stale = self.books.get(network).is_some_and(|b| b.subnet != subnet || b.v6 != v6 || b.reservations != reservations);
        if stale {
            self.books.remove(network);
        }
        let dir = self.dir.clone();
        let legacy = self.legacy.clone();
        self.books.entry(network.to_owned()).or_insert_with(|| match dir {
            Some(d) => {
                if let Some(from) = legacy {
                    match migrate(&from, &d, network) {
                        Ok(true) => log::info!("address records of network {network:?} moved from {} to {}", Book::path(&from, network).display(), Book::path(&d, network).display()),
                        Ok(false) => {}
                        Err(e) => log::warn!("{e}; the records stay where they are and this network starts a new file"),
                    }
                }
                Book::open(&d, network, subnet, v6, reservations).unwrap_or_else(|e| {
                log::warn!("{e}");
                Book::in_memory(network, subnet, v6, reservations)
            })
            }
            None => Book::in_memory(network, subnet, v6, reservations),
        })
    }

    /// The book of a network opened earlier.
    pub fn get(&self, network: &str) -> Option<&Book> {
        self.books.get(network)
    }

    pub fn get_mut(&mut self, network: &str) -> Option<&mut Book> {
        self.books.get_mut(network)
    }

    /// [`Book::address_for_mac`] on an opened network (`None` otherwise).
    pub fn address_for_mac(&mut self, network: &str, mac: MacAddr, hostname_hint: Option<&str>) -> Option<Ipv4Addr> {
        self.books.get_mut(network)?.address_for_mac(mac, hostname_hint)
    }

    /// [`Book::name_for_addr`] on an opened network.
    pub fn name_for_addr(&self, network: &str, addr: IpAddr) -> Option<&str> {
        self.books.get(network)?.name_for_addr(addr)
    }

    /// [`Book::addrs_for_name`] on an opened network.
    pub fn addrs_for_name(&self, network: &str, name: &str) -> Vec<IpAddr> {
        self.books.get(network).map(|b| b.addrs_for_name(name)).unwrap_or_default()
    }

    /// [`Book::release`] on an opened network.
    pub fn release(&mut self, network: &str, mac: MacAddr) {
        if let Some(b) = self.books.get_mut(network) {
            b.release(mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("vmnet-rs-records-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn subnet() -> Ipv4Subnet {
        "192.168.105.1/24".parse().unwrap()
    }

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, last])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 105, last)
    }

    #[test]
    fn grant_survives_reopen_release_and_a_new_mac() {
        let d = Dir::new("reopen");
        let mut b = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap();
        let g = b.grant("alpha", mac(1)).unwrap();
        assert_eq!(g.ipv4, ip(2));
        assert!(!g.returning);
        assert_eq!(b.grant("beta", mac(2)).unwrap().ipv4, ip(3));
        assert_eq!(b.addrs_for_name("ALPHA"), vec![IpAddr::V4(ip(2))]);
        assert_eq!(b.name_for_addr(IpAddr::V4(ip(3))), Some("beta"));
        b.release(mac(1));
        assert!(b.addrs_for_name("alpha").is_empty(), "a released name is not served");
        drop(b);
        // As after a broker restart (or SIGKILL: every change was saved).
        let mut b = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap();
        assert!(b.lookup("beta").is_none(), "nothing is active after a restart");
        let g = b.grant("alpha", mac(9)).unwrap();
        assert_eq!((g.ipv4, g.returning), (ip(2), true), "the name keeps its address even under another MAC");
        assert_eq!(b.address_for_mac(mac(2), None), Some(ip(3)), "beta's MAC renews its address");
        assert_eq!(b.name_for_addr(IpAddr::V4(ip(3))), Some("beta"));
        assert_eq!(b.entries().len(), 2);
    }

    #[test]
    fn a_held_name_is_refused_and_a_claim_never_displaces_a_grant() {
        let mut b = Book::in_memory("shared", subnet(), None, &[]);
        b.grant("alpha", mac(1)).unwrap();
        let err = b.grant("alpha", mac(2)).unwrap_err();
        assert!(matches!(err, Refusal::NameHeld { .. }), "{err:?}");
        assert!(err.to_string().contains("\"alpha\"") && err.to_string().contains("shared"), "{err}");
        // A DHCP client calling itself alpha gets an address but not the name.
        let a = b.address_for_mac(mac(3), Some("alpha")).unwrap();
        assert_ne!(a, ip(2));
        assert_eq!(b.addrs_for_name("alpha"), vec![IpAddr::V4(ip(2))]);
        assert_eq!(b.name_for_addr(IpAddr::V4(a)), None);
        // A free name is claimed, and shown as claimed.
        let c = b.address_for_mac(mac(4), Some("gamma")).unwrap();
        assert_eq!(b.lookup("gamma").map(|e| (e.ipv4, e.kind())), Some((c, Some(NameKind::Claimed))));
        // A grant takes a claimed name; the claimant keeps its address.
        let g = b.grant("gamma", mac(5)).unwrap();
        assert_ne!(g.ipv4, c);
        assert_eq!(b.lookup("gamma").map(|e| e.kind()), Some(Some(NameKind::Granted)));
        assert_eq!(b.address_for_mac(mac(4), Some("gamma")), Some(c));
        assert_eq!(b.lookup("gamma").unwrap().mac, mac(5));
        // Released claims are forgotten.
        b.address_for_mac(mac(6), Some("delta")).unwrap();
        b.release(mac(6));
        assert!(b.entries().iter().all(|e| e.name() != Some("delta")));
        assert!(matches!(b.grant("host", mac(7)), Err(Refusal::Reserved { .. })));
        assert!(matches!(b.grant("-x", mac(7)), Err(Refusal::BadName { .. })));
        assert!(b.grant("alpha", mac(1)).unwrap().returning, "the holder may ask again");
    }

    #[test]
    fn reservations_win_and_no_address_is_given_twice() {
        let res = [(mac(1), ip(50)), (mac(2), ip(2))];
        let mut b = Book::in_memory("shared", subnet(), None, &res);
        assert_eq!(b.grant("alpha", mac(1)).unwrap().ipv4, ip(50));
        b.avoid([ip(3)]);
        assert_eq!(b.grant("beta", mac(3)).unwrap().ipv4, ip(4), "skips a reserved and an avoided address");
        assert_eq!(b.address_for_mac(mac(2), None), Some(ip(2)));
        let mut seen = BTreeSet::new();
        for i in 10..=200u8 {
            let a = b.address_for_mac(mac(i), None).unwrap();
            assert!(seen.insert(a), "{a} given twice");
        }
        let all: Vec<Ipv4Addr> = b.entries().iter().map(|e| e.ipv4).collect();
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), all.len());
    }

    #[test]
    fn a_full_range_reuses_the_oldest_inactive_record() {
        let mut b = Book::in_memory("tiny", Ipv4Subnet::parse("10.9.0.1/29", 1, 30).unwrap(), None, &[]);
        // .2 .. .6: five addresses.
        for i in 1..=5 {
            b.address_for_mac(mac(i), None).unwrap();
        }
        assert_eq!(b.address_for_mac(mac(6), None), None);
        assert!(matches!(b.grant("x", mac(7)), Err(Refusal::Full { .. })));
        b.entries.iter_mut().for_each(|e| e.last_seen = 100 + u64::from(e.mac.0[5]));
        b.entries[2].active = false;
        b.entries[3].active = false;
        assert_eq!(b.address_for_mac(mac(6), None), Some(Ipv4Addr::new(10, 9, 0, 4)));
    }

    #[test]
    fn the_file_is_versioned_and_a_newer_or_broken_one_is_left_alone() {
        let d = Dir::new("version");
        let path = Book::path(&d.0, "shared");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r#"{"version": 2, "future": true}"#).unwrap();
        let err = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap_err();
        assert!(matches!(err, Error::Newer { found: 2, .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"version": 2, "future": true}"#);
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(Book::open(&d.0, "shared", subnet(), None, &[]), Err(Error::Format { .. })));
        // Version 1, with records that no longer fit the network: dropped.
        std::fs::write(
            &path,
            r#"{"version":1,"network":"shared","subnet":"192.168.105.1/24","entries":[
              {"name":"alpha","kind":"granted","mac":"52:54:00:00:00:01","ipv4":"192.168.105.7","last_seen":5},
              {"name":"beta","kind":"granted","mac":"52:54:00:00:00:02","ipv4":"10.0.0.2","last_seen":5},
              {"name":"alpha","kind":"claimed","mac":"52:54:00:00:00:03","ipv4":"192.168.105.8","last_seen":5},
              {"mac":"52:54:00:00:00:04","ipv4":"192.168.105.9","last_seen":5}]}"#,
        )
        .unwrap();
        let b = Book::open(&d.0, "shared", subnet(), None, &[(mac(4), ip(20))]).unwrap();
        let kept: Vec<(Option<&str>, Ipv4Addr)> = b.entries().iter().map(|e| (e.name(), e.ipv4)).collect();
        assert_eq!(kept, vec![(Some("alpha"), ip(7)), (None, ip(9))]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1") && !text.contains("beta"), "{text}");
    }

    /// The file is written when a record changes and only then: a MAC
    /// renewing its address, a name asked for again, a release that
    /// changes nothing on disk and a book opened on an up-to-date file
    /// leave it as it is (the same inode: every write renames a new file
    /// over it); what was written survives a reopen.
    #[test]
    fn the_file_is_written_only_when_a_record_changes() {
        use std::os::unix::fs::MetadataExt;
        let d = Dir::new("unchanged");
        let path = Book::path(&d.0, "shared");
        let stamp = || {
            let m = std::fs::metadata(&path).unwrap();
            (m.ino(), m.mtime(), m.mtime_nsec(), std::fs::read_to_string(&path).unwrap())
        };
        let mut b = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap();
        let empty = stamp();
        assert_eq!(b.address_for_mac(mac(1), Some("alpha")), Some(ip(2)));
        let first = stamp();
        assert_ne!(first.0, empty.0, "a new MAC is written");
        assert_eq!(b.address_for_mac(mac(1), Some("alpha")), Some(ip(2)));
        assert_eq!(b.address_for_mac(mac(1), None), Some(ip(2)));
        assert_eq!(stamp(), first, "a MAC renewing its record writes nothing");
        // A new claim is a change.
        assert_eq!(b.address_for_mac(mac(1), Some("alef")), Some(ip(2)));
        let claimed = stamp();
        assert_ne!(claimed.0, first.0);
        assert!(claimed.3.contains("\"alef\""), "{}", claimed.3);
        // A grant is written; the same grant again is not.
        assert_eq!(b.grant("beta", mac(2)).unwrap().ipv4, ip(3));
        let granted = stamp();
        assert_ne!(granted.0, claimed.0);
        assert!(b.grant("beta", mac(2)).unwrap().returning);
        assert_eq!(stamp(), granted, "a name asked for again writes nothing");
        // A granted name's release changes nothing the file holds (its time
        // moved less than LAST_SEEN_REFRESH_SECS); a claim's release does.
        b.release(mac(2));
        assert_eq!(stamp(), granted);
        b.release(mac(1));
        let released = stamp();
        assert_ne!(released.0, granted.0);
        assert!(!released.3.contains("alef"), "{}", released.3);
        // A time that moved far enough is written on the next call.
        b.on_disk.as_mut().unwrap().entries[0].last_seen -= LAST_SEEN_REFRESH_SECS;
        assert_eq!(b.address_for_mac(mac(1), None), Some(ip(2)));
        let refreshed = stamp();
        assert_ne!(refreshed.0, released.0);
        drop(b);
        // Reopened on an up-to-date file: nothing written, every record kept.
        let mut b = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap();
        assert_eq!(stamp(), refreshed, "opening an up-to-date file writes nothing");
        assert_eq!(b.entries().iter().map(|e| (e.mac, e.ipv4, e.name())).collect::<Vec<_>>(), vec![(mac(1), ip(2), None), (mac(2), ip(3), Some("beta"))]);
        assert_eq!(b.address_for_mac(mac(1), None), Some(ip(2)));
        assert_eq!(b.grant("beta", mac(2)).unwrap().ipv4, ip(3));
        // A new MAC after the reopen is written and read back.
        assert_eq!(b.address_for_mac(mac(3), None), Some(ip(4)));
        assert_ne!(stamp().0, refreshed.0);
        drop(b);
        let b = Book::open(&d.0, "shared", subnet(), None, &[]).unwrap();
        assert_eq!(b.entries().iter().find(|e| e.mac == mac(3)).map(|e| e.ipv4), Some(ip(4)));
    }

    #[test]
    fn records_open_each_network_once_and_persist_it() {
        let d = Dir::new("records");
        let mut r = Records::new(Some(&d.0), None);
        assert_eq!(r.address_for_mac("shared", mac(1), Some("alpha")), None, "an unopened network has no book");
        r.book("shared", subnet(), None, &[]);
        assert_eq!(r.address_for_mac("shared", mac(1), Some("alpha")), Some(ip(2)));
        assert_eq!(r.addrs_for_name("shared", "alpha"), vec![IpAddr::V4(ip(2))]);
        assert_eq!(r.name_for_addr("shared", IpAddr::V4(ip(2))), Some("alpha"));
        r.release("shared", mac(1));
        assert!(r.addrs_for_name("shared", "alpha").is_empty());
        let mut r = Records::new(Some(&d.0), None);
        assert_eq!(r.book("shared", subnet(), None, &[]).address_for_mac(mac(1), None), Some(ip(2)), "the MAC keeps its address");
        assert!(r.get("shared").unwrap().persistent());
    }

    #[test]
    fn records_left_in_the_state_directory_move_to_the_data_directory() {
        let (state, data) = (Dir::new("legacy-state"), Dir::new("legacy-data"));
        let mut old = Book::open(&state.0, "shared", subnet(), None, &[]).unwrap();
        let g = old.grant("alpha", mac(7)).unwrap();
        drop(old);
        let mut r = Records::new(Some(&data.0), Some(&state.0));
        let b = r.book("shared", subnet(), None, &[]);
        assert_eq!(b.entries().iter().find(|e| e.name() == Some("alpha")).map(|e| e.ipv4), Some(g.ipv4), "the name keeps its address");
        assert!(Book::path(&data.0, "shared").exists());
        assert!(!Book::path(&state.0, "shared").exists(), "moved, not copied");
        // A data directory that has the network's file already is not overwritten.
        let mut other = Book::open(&state.0, "shared", subnet(), None, &[]).unwrap();
        other.grant("beta", mac(8)).unwrap();
        assert!(!migrate(&state.0, &data.0, "shared").unwrap());
        let b = Book::open(&data.0, "shared", subnet(), None, &[]).unwrap();
        assert!(b.entries().iter().all(|e| e.name() != Some("beta")));
    }

    #[test]
    fn ipv6_is_the_macs_eui64_in_the_prefix() {
        let p: Ipv6Prefix = "fd00:1:2:3::/64".parse().unwrap();
        let mut b = Book::in_memory("v6", subnet(), Some(p), &[]);
        let g = b.grant("alpha", MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])).unwrap();
        let want: Ipv6Addr = "fd00:1:2:3:5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(g.ipv6, Some(want));
        assert_eq!(b.addrs_for_name("alpha"), vec![IpAddr::V4(g.ipv4), IpAddr::V6(want)]);
        assert_eq!(b.name_for_addr(IpAddr::V6(want)), Some("alpha"));
        assert_eq!(fqdn("alpha", &default_domain("shared")), "alpha.shared.vmnet.internal");
    }
}
