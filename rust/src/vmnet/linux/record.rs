//! The record of what one network created, kept as a JSON file in the
//! backend's state directory, so a later run can remove what a crashed one
//! left.
//!
//! Written before the first link is created and removed after the last
//! thing is deleted, so a crash at any point leaves a record naming
//! everything that may exist. Written by the creating thread and by the
//! dnsmasq supervisor (new pid after a restart); each write replaces the
//! file atomically (write to a temporary file, then rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const RECORD_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub name: String,
    pub bridge: String,
    /// nftables table, family `inet`.
    pub table: String,
    /// The network namespace it lives in (`net:[inode]`).
    pub netns: String,
    /// The process that created it, and that process's start time (clock
    /// ticks since boot), so a recycled pid is not taken for the owner.
    pub owner_pid: u32,
    pub owner_start: u64,
    #[serde(default)]
    pub dnsmasq_pid: Option<u32>,
}

impl Record {
    /// Whether the process that created the network still runs.
    pub fn owner_alive(&self) -> bool {
        process_start_time(self.owner_pid) == Some(self.owner_start)
    }
}

pub fn write(path: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

pub fn read(path: &Path) -> std::io::Result<Record> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// The record files in `dir` (`*.json`), sorted; a missing dir has none.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    out.sort();
    Ok(out)
}

/// The calling thread's network namespace, `net:[inode]`.
pub fn current_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net").map(|p| p.display().to_string()).unwrap_or_default()
}

/// A process's start time (field 22 of `/proc/PID/stat`), if it runs.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` runs dnsmasq serving `bridge` (so a recycled pid is never
/// killed by mistake).
pub fn is_our_dnsmasq(pid: u32, bridge: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want = format!("--interface={bridge}");
    args.first().is_some_and(|a| a.ends_with(b"dnsmasq")) && args.contains(&want.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_liveness() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let rec = Record {
            version: RECORD_VERSION,
            name: "n".into(),
            bridge: "vmr-n".into(),
            table: "vmnet_rs_n".into(),
            netns: current_netns(),
            owner_pid: me,
            owner_start: process_start_time(me).unwrap(),
            dnsmasq_pid: None,
        };
        let path = dir.join("n.json");
        write(&path, &rec).unwrap();
        assert_eq!(read(&path).unwrap(), rec);
        assert_eq!(list(&dir).unwrap(), vec![path.clone()]);
        assert!(rec.owner_alive());
        assert!(!Record { owner_start: rec.owner_start + 1, ..rec.clone() }.owner_alive());
        assert!(!is_our_dnsmasq(me, "vmr-n"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(list(&dir).unwrap().is_empty());
        assert!(current_netns().starts_with("net:["));
    }
}
