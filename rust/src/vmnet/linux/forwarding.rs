//! IP forwarding, turned on while a network needs it and given back as it
//! was found.
//!
//! A network that forwards out (shared mode) needs `net.ipv4.ip_forward`
//! (and, with an IPv6 prefix, `net.ipv6.conf.all.forwarding`) on. When the
//! backend turns one on, it writes the value it found to
//! `<state dir>/forwarding.found` first, so a broker that crashed still knows
//! it after a restart. When the last network of this process (and state
//! directory) that needs it goes, or at the next start with none, the found
//! value is written back, unless the value is no longer the one set (then
//! something else changed it since, and its word stands).
//!
//! Process-wide: a count per state directory and sysctl, behind one mutex;
//! any thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::links;

/// The sysctl for IPv4 forwarding (under /proc/sys).
pub const IPV4: &str = "net/ipv4/ip_forward";
/// The sysctl for IPv6 forwarding.
pub const IPV6: &str = "net/ipv6/conf/all/forwarding";
/// The value that means on.
const ON: &str = "1";
/// Not `.json`: the network records are the `*.json` files of the directory.
const RECORD_FILE: &str = "forwarding.found";

/// One sysctl the backend turned on: what it found, what it set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    pub found: String,
    pub set: String,
}

/// Networks of this process using each (state dir, sysctl).
static USERS: Mutex<BTreeMap<(PathBuf, &'static str), usize>> = Mutex::new(BTreeMap::new());

fn record_path(dir: &Path) -> PathBuf {
    dir.join(RECORD_FILE)
}

fn read_record(dir: &Path) -> BTreeMap<String, Found> {
    std::fs::read_to_string(record_path(dir)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn write_record(dir: &Path, rec: &BTreeMap<String, Found>) -> std::io::Result<()> {
    let path = record_path(dir);
    if rec.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("found.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(rec).map_err(std::io::Error::other)? + "\n")?;
    std::fs::rename(&tmp, &path)
}

/// The sysctl's value now (trimmed), `None` if it cannot be read.
pub fn read(key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{key}")).ok().map(|s| s.trim().to_string())
}

/// `net/ipv4/ip_forward` as `net.ipv4.ip_forward`.
pub fn dotted(key: &str) -> String {
    key.replace('/', ".")
}

/// A network needs `key` on: turns it on, first recording what was found
/// (unless a record from an earlier run already holds the value found then).
pub fn acquire(dir: &Path, key: &'static str) -> std::io::Result<()> {
    let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let now = read(key).unwrap_or_default();
    if now != ON {
        let mut rec = read_record(dir);
        if !rec.contains_key(key) {
            rec.insert(key.to_string(), Found { found: now.clone(), set: ON.into() });
            write_record(dir, &rec)?;
        }
        links::write_sysctl(key, ON)?;
        log::info!("turned {} on (it was {now}; given back when the last network that needs it goes)", dotted(key));
    }
    *users.entry((dir.to_path_buf(), key)).or_default() += 1;
    Ok(())
}

/// A network that needed `key` went: when it was the last, gives back the
/// value found. Returns the line logged, if anything was done.
pub fn release(dir: &Path, key: &'static str) -> Option<String> {
    let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let n = users.entry((dir.to_path_buf(), key)).or_default();
    *n = n.saturating_sub(1);
    if *n > 0 {
        return None;
    }
    users.remove(&(dir.to_path_buf(), key));
    give_back(dir, key)
}

/// Gives back what a broker that is gone turned on (at start, before any
/// network exists); one line per sysctl handled.
pub fn give_back_stale(dir: &Path) -> Vec<String> {
    let users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let keys: Vec<&'static str> = [IPV4, IPV6].into_iter().filter(|k| !users.contains_key(&(dir.to_path_buf(), *k))).collect();
    keys.into_iter().filter_map(|k| give_back(dir, k)).collect()
}

fn give_back(dir: &Path, key: &'static str) -> Option<String> {
    let mut rec = read_record(dir);
    let found = rec.remove(key)?;
    let now = read(key).unwrap_or_default();
    let line = if now == found.set {
        match links::write_sysctl(key, &found.found) {
            Ok(()) => format!("gave {} back: {} as found before the broker turned it on", dotted(key), found.found),
            Err(e) => format!("could not give {} back ({}, as found): {e}", dotted(key), found.found),
        }
    } else {
        format!("left {} at {now}: something else changed it since the broker set it to {} (it was {} before)", dotted(key), found.set, found.found)
    };
    if let Err(e) = write_record(dir, &rec) {
        log::warn!("could not update {}: {e}", record_path(dir).display());
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_empties_to_nothing() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rec = BTreeMap::new();
        rec.insert(IPV4.to_string(), Found { found: "0".into(), set: "1".into() });
        write_record(&dir, &rec).unwrap();
        assert_eq!(read_record(&dir), rec);
        write_record(&dir, &BTreeMap::new()).unwrap();
        assert!(!record_path(&dir).exists());
        assert_eq!(dotted(IPV6), "net.ipv6.conf.all.forwarding");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
