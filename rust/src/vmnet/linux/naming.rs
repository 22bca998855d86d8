//! Names of what a network owns on the host: its bridge, its TAPs, its
//! nftables table and its files in the state directory.
//!
//! Pure functions, called by whichever thread creates the network.
//! Invariants: every link name fits in IFNAMSIZ - 1 (15) bytes; two different
//! network names never map to the same bridge, TAP prefix or table (a name
//! that has to be shortened or cleaned up carries a hash of the full name,
//! and hashed names have a length no plain name can have); the hash is
//! FNV-1a, stable across runs and builds, so a later run finds what an
//! earlier one made.

/// Longest Linux link name (IFNAMSIZ - 1).
pub const MAX_LINK_NAME_BYTES: usize = 15;

/// Every bridge vmnet-rs creates starts with this.
pub const BRIDGE_PREFIX: &str = "vmr-";
/// Every TAP vmnet-rs creates starts with this.
pub const TAP_PREFIX: &str = "vmt";
/// Every nftables table vmnet-rs creates starts with this.
pub const TABLE_PREFIX: &str = "vmnet_rs_";

/// Network names kept verbatim in the bridge name up to this length; longer
/// ones are shortened and hashed (`vmr-` + 10 = 14 < 15 = hashed length).
const PLAIN_NAME_MAX_BYTES: usize = MAX_LINK_NAME_BYTES - BRIDGE_PREFIX.len() - 1;

/// 32-bit FNV-1a.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn is_link_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The bridge for network `name`: `vmr-<name>` when the name is short and
/// made of `[A-Za-z0-9_-]`, else `vmr-<first 6 safe chars>-<4 hex of hash>`
/// (always exactly 15 bytes, so it never equals a plain one).
pub fn bridge_name(name: &str) -> String {
    if !name.is_empty() && name.len() <= PLAIN_NAME_MAX_BYTES && name.chars().all(is_link_safe) {
        return format!("{BRIDGE_PREFIX}{name}");
    }
    let head: String = name.chars().filter(|c| is_link_safe(*c)).take(6).collect();
    let head = format!("{head:_<6}");
    let out = format!("{BRIDGE_PREFIX}{head}-{:04x}", fnv1a32(name.as_bytes()) & 0xffff);
    debug_assert_eq!(out.len(), MAX_LINK_NAME_BYTES);
    out
}

/// The `n`-th TAP name of network `name`: `vmt<6 hex of hash>-<n>`. Fits in
/// 15 bytes for `n` < 100000 (callers wrap the counter).
pub fn tap_name(name: &str, n: u32) -> String {
    format!("{TAP_PREFIX}{:06x}-{}", fnv1a32(name.as_bytes()) & 0xff_ffff, n % 100_000)
}

/// The nftables table (family `inet`) of network `name`: `vmnet_rs_<name>`
/// when the name is a valid nft identifier body, else the cleaned name plus
/// `_h<8 hex of hash>`.
pub fn table_name(name: &str) -> String {
    let plain = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && !name.contains("_h") {
        return format!("{TABLE_PREFIX}{name}");
    }
    let clean: String = name.chars().take(48).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{TABLE_PREFIX}{clean}_h{:08x}", fnv1a32(name.as_bytes()))
}

/// A file name for network `name` in the state directory (`<stem>.<ext>`);
/// names that are not plain file names are hashed.
pub fn state_file_name(name: &str, ext: &str) -> String {
    let plain = !name.is_empty() && name.len() <= 64 && name.chars().all(is_link_safe) && !name.starts_with('-');
    if plain {
        format!("{name}.{ext}")
    } else {
        let clean: String = name.chars().filter(|c| is_link_safe(*c)).take(32).collect();
        format!("{clean}~{:08x}.{ext}", fnv1a32(name.as_bytes()))
    }
}

/// A locally administered unicast MAC derived from `seed` (stable).
pub fn derived_mac(seed: &str) -> [u8; 6] {
    let a = fnv1a32(seed.as_bytes()).to_be_bytes();
    let b = fnv1a32(format!("{seed}/mac").as_bytes()).to_be_bytes();
    // QEMU-style 52:54 prefix: locally administered, unicast.
    [0x52, 0x54, a[0] ^ b[3], a[1], a[2], a[3] ^ b[0]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn short_names_stay_readable() {
        assert_eq!(bridge_name("shared"), "vmr-shared");
        assert_eq!(bridge_name("a_b-c"), "vmr-a_b-c");
        assert_eq!(table_name("shared"), "vmnet_rs_shared");
    }

    #[test]
    fn long_or_odd_names_are_hashed_and_fit() {
        for name in ["a-very-long-network-name", "with space", "dots.are.bad", "ünïcode", "", "exactly11ch"] {
            let b = bridge_name(name);
            assert_eq!(b.len(), MAX_LINK_NAME_BYTES, "{name:?} -> {b}");
            assert!(b.starts_with(BRIDGE_PREFIX));
            assert!(b.chars().all(is_link_safe));
        }
        assert!(table_name("a-b").starts_with("vmnet_rs_a_b_h"));
    }

    #[test]
    fn names_do_not_collide() {
        let names = ["shared", "a-very-long-network-name-1", "a-very-long-network-name-2", "a-b", "a_b", "a.b", "a b", "x_hdeadbeef"];
        let bridges: HashSet<_> = names.iter().map(|n| bridge_name(n)).collect();
        let tables: HashSet<_> = names.iter().map(|n| table_name(n)).collect();
        let taps: HashSet<_> = names.iter().map(|n| tap_name(n, 0)).collect();
        let files: HashSet<_> = names.iter().map(|n| state_file_name(n, "json")).collect();
        assert_eq!(bridges.len(), names.len());
        assert_eq!(tables.len(), names.len());
        assert_eq!(taps.len(), names.len());
        assert_eq!(files.len(), names.len());
        // A hashed bridge name never equals a plain one: plain ones are shorter.
        assert!(bridge_name("abcdefghij").len() < MAX_LINK_NAME_BYTES);
    }

    #[test]
    fn tap_names_fit() {
        assert!(tap_name("anything at all", 99_999).len() <= MAX_LINK_NAME_BYTES);
        assert_ne!(tap_name("n", 1), tap_name("n", 2));
    }

    #[test]
    fn state_files_are_plain_file_names() {
        assert_eq!(state_file_name("shared", "json"), "shared.json");
        let f = state_file_name("../etc/passwd", "json");
        assert!(!f.contains('/'), "{f}");
    }

    #[test]
    fn macs_round_trip() {
        use crate::config::{format_mac, parse_mac};
        let mac = derived_mac("vmr-shared");
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("52:54:00:AB:cd:0F"), Some([0x52, 0x54, 0, 0xab, 0xcd, 0x0f]));
        assert_eq!(parse_mac("52:54:00:ab:cd"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:zz"), None);
    }
}
