//! The bookkeeping of repairs: per network and piece, whether it is present,
//! how often it was put back, and whether it is left alone (repairs of it
//! are off, or something keeps removing it), with one log line per event.
//!
//! Pure apart from the log and the clock (passed in, so the no-fight rule is
//! tested without waiting). Shared behind a mutex by the network's watcher
//! thread, its dnsmasq supervisor thread and `status` (through
//! [`Guard::health`]).
//!
//! The no-fight rule: a piece found missing more than `limit` times within
//! `window` is left alone for `window`, logged once with the program that
//! seems to manage it; after that it is put back again (and counted afresh).
//! A piece that comes back on its own while left alone is simply present.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::RepairSettings;
use crate::vmnet::PieceHealth;

/// What the caller should do about a missing piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put it back, then call [`Guard::repaired`] (or [`Guard::failed`]).
    Repair,
    /// Leave it: repairs of it are off or another program manages it.
    Leave,
}

#[derive(Debug, Default)]
struct Piece {
    /// Missing since the last check that found it (one outage, one count).
    missing: Option<String>,
    /// When each recent outage began (within the window).
    removals: VecDeque<Instant>,
    repairs: u64,
    /// Left alone until then, and why.
    left_alone: Option<(Instant, String)>,
    /// A failed repair of this outage was logged already.
    failure_logged: bool,
}

/// Repairs of one network; see the module header.
#[derive(Debug)]
pub struct Guard {
    network: String,
    settings: RepairSettings,
    pieces: BTreeMap<&'static str, Piece>,
}

impl Guard {
    /// `pieces`: the pieces this network has (of `config::REPAIR_PIECES`).
    pub fn new(network: &str, settings: RepairSettings, pieces: &[&'static str]) -> Guard {
        Guard { network: network.into(), settings, pieces: pieces.iter().map(|p| (*p, Piece::default())).collect() }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.settings.window)
    }

    /// `piece` is missing (`what`: e.g. "address 10.0.0.1/24 on vmr-x");
    /// `manager` names who seems to manage it, for the no-fight log line.
    pub fn missing(&mut self, piece: &'static str, what: &str, manager: &dyn Fn() -> String, now: Instant) -> Action {
        let network = self.network.clone();
        let window = self.window();
        let limit = self.settings.limit as usize;
        let repairs_on = self.settings.repairs(piece);
        let p = self.pieces.entry(piece).or_default();
        let new_outage = p.missing.is_none();
        p.missing = Some(what.to_string());
        if !repairs_on {
            if new_outage {
                log::warn!("network {network}: {what} is missing; not put back (repairs of {piece} are off in the broker's repair setting)");
            }
            return Action::Leave;
        }
        if let Some((until, _)) = &p.left_alone {
            if now < *until {
                return Action::Leave;
            }
            p.left_alone = None;
            p.removals.clear();
        }
        if new_outage {
            p.failure_logged = false;
            while p.removals.front().is_some_and(|t| now.duration_since(*t) > window) {
                p.removals.pop_front();
            }
            p.removals.push_back(now);
            if p.removals.len() > limit {
                let who = manager();
                let why = format!("removed {} times within {}s: another program manages it ({who})", p.removals.len(), window.as_secs());
                log::warn!("network {network}: {what} {why}; leaving {piece} alone for {}s (status and doctor show it)", window.as_secs());
                p.left_alone = Some((now + window, why));
                return Action::Leave;
            }
        }
        Action::Repair
    }

    /// `piece` was put back: one log line, one count.
    pub fn repaired(&mut self, piece: &'static str, restored: &str) {
        let network = self.network.clone();
        let p = self.pieces.entry(piece).or_default();
        let what = p.missing.take().unwrap_or_else(|| piece.to_string());
        p.repairs += 1;
        log::warn!("network {network}: repaired {piece}: {what} was missing; restored {restored} (repair {} of {piece})", p.repairs);
    }

    /// Putting `piece` back failed (logged once per outage; tried again at
    /// the next check).
    pub fn failed(&mut self, piece: &'static str, error: &str) {
        let network = self.network.clone();
        let p = self.pieces.entry(piece).or_default();
        if !p.failure_logged {
            p.failure_logged = true;
            let what = p.missing.clone().unwrap_or_default();
            log::warn!("network {network}: could not put back {what}: {error}; trying again at the next check");
        }
    }

    /// `piece` is present (as made, put back, or back on its own).
    pub fn present(&mut self, piece: &'static str) {
        if let Some(p) = self.pieces.get_mut(piece) {
            p.missing = None;
        }
    }

    /// Total repairs of all pieces.
    pub fn total_repairs(&self) -> u64 {
        self.pieces.values().map(|p| p.repairs).sum()
    }

    /// Every piece as last seen.
    pub fn health(&self, now: Instant) -> Vec<PieceHealth> {
        self.pieces
            .iter()
            .map(|(name, p)| {
                let left_alone = match &p.left_alone {
                    Some((until, why)) if now < *until => Some(format!("{why}; left alone for {}s more", until.duration_since(now).as_secs())),
                    _ if !self.settings.repairs(name) => Some("repairs are off in the broker's repair setting; only reported".to_string()),
                    _ => None,
                };
                PieceHealth { piece: name.to_string(), ok: p.missing.is_none(), missing: p.missing.clone(), repairs: p.repairs, left_alone }
            })
            .collect()
    }
}

/// Who else manages the host's network, as far as can be seen: a running
/// firewalld, else `fallback`.
pub fn other_manager(fallback: &str) -> String {
    match find_process("firewalld") {
        Some(pid) => format!("firewalld, pid {pid}"),
        None => fallback.to_string(),
    }
}

/// The pid of a process whose name (`/proc/PID/comm`) is `name`.
fn find_process(name: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(pieces: Vec<&str>) -> Guard {
        let settings = RepairSettings { pieces: pieces.into_iter().map(String::from).collect(), limit: 2, window: 60 };
        Guard::new("n", settings, &["table", "address"])
    }

    #[test]
    fn one_outage_counts_once_and_a_repair_is_counted() {
        let mut g = guard(vec!["table", "address"]);
        let t = Instant::now();
        let who = || "x".to_string();
        assert_eq!(g.missing("table", "table inet t", &who, t), Action::Repair);
        // Seen again before the repair finished: the same outage.
        assert_eq!(g.missing("table", "table inet t", &who, t), Action::Repair);
        assert!(!g.health(t)[1].ok);
        g.repaired("table", "table inet t (6 rules)");
        let h = g.health(t);
        assert_eq!((h[1].piece.as_str(), h[1].ok, h[1].repairs), ("table", true, 1));
        assert_eq!(g.total_repairs(), 1);
    }

    #[test]
    fn a_piece_removed_too_often_is_left_alone_then_tried_again() {
        let mut g = guard(vec!["table", "address"]);
        let t = Instant::now();
        let who = || "firewalld, pid 7".to_string();
        for i in 0..2 {
            assert_eq!(g.missing("table", "table", &who, t + Duration::from_secs(i)), Action::Repair);
            g.repaired("table", "table");
        }
        // The third removal within 60 s is more than the limit of 2.
        assert_eq!(g.missing("table", "table", &who, t + Duration::from_secs(3)), Action::Leave);
        let h = g.health(t + Duration::from_secs(3));
        assert!(h[1].left_alone.as_deref().unwrap().contains("firewalld, pid 7"), "{h:?}");
        assert!(!h[1].ok);
        assert_eq!(g.missing("table", "table", &who, t + Duration::from_secs(30)), Action::Leave);
        // Another piece is not affected.
        assert_eq!(g.missing("address", "address", &who, t + Duration::from_secs(30)), Action::Repair);
        // After the window it is put back again.
        assert_eq!(g.missing("table", "table", &who, t + Duration::from_secs(64)), Action::Repair);
        assert!(g.health(t + Duration::from_secs(64))[1].left_alone.is_none());
    }

    #[test]
    fn removals_outside_the_window_do_not_count() {
        let mut g = guard(vec!["table"]);
        let t = Instant::now();
        let who = || String::new();
        for i in 0..5 {
            assert_eq!(g.missing("table", "table", &who, t + Duration::from_secs(61 * i)), Action::Repair);
            g.repaired("table", "table");
        }
        assert_eq!(g.total_repairs(), 5);
    }

    #[test]
    fn repairs_off_only_reports() {
        let mut g = guard(vec!["address"]);
        let t = Instant::now();
        assert_eq!(g.missing("table", "table", &|| String::new(), t), Action::Leave);
        let h = g.health(t);
        assert!(h[1].left_alone.as_deref().unwrap().contains("repairs are off"), "{h:?}");
        g.present("table");
        assert!(g.health(t)[1].ok);
    }
}
