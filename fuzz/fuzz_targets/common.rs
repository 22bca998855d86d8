//! Helpers the fuzz targets share: the Internet checksum written out word
//! by word (RFC 1071), independent of the crate's own, to check what the
//! code under test computed; and seed writing.

#![allow(dead_code)]

/// The one's-complement sum of `data` (big-endian words, an odd last byte
/// padded with zero) added to `acc`, folded to 16 bits, not complemented.
pub fn sum(acc: u32, data: &[u8]) -> u16 {
    let mut s = acc;
    for pair in data.chunks(2) {
        let w = u32::from(pair[0]) << 8 | u32::from(pair.get(1).copied().unwrap_or(0));
        s += w;
        s = (s & 0xffff) + (s >> 16);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum TCP and UDP add (RFC 793, RFC 8200 §8.1): both
/// addresses (4 or 16 bytes each), the protocol and the L4 length.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u32 {
    let s = sum(sum(0, src).into(), dst);
    u32::from(s) + u32::from(proto) + (l4_len as u32 & 0xffff) + (l4_len as u32 >> 16)
}

/// Whether the L4 checksum of `l4` (the TCP or UDP header and payload)
/// verifies under the pseudo-header sum `pseudo`.
pub fn l4_checksum_ok(pseudo: u32, l4: &[u8]) -> bool {
    sum(pseudo, l4) == 0xffff
}

/// The value to store in a checksum field that holds zero while summed.
pub fn checksum(acc: u32, data: &[u8]) -> u16 {
    !sum(acc, data)
}

/// With `VMNET_RS_FUZZ_WRITE_SEEDS=DIR` set, writes each `(name, bytes)`
/// as `DIR/seed-<name>` (once, at start-up, before libFuzzer reads DIR).
pub fn write_seeds(seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("VMNET_RS_FUZZ_WRITE_SEEDS") else { return };
    let dir = std::path::Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create seed directory {}: {e}", dir.display()));
    for (name, bytes) in seeds() {
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}
