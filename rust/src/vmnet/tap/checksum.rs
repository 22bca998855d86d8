//! The Internet checksum (RFC 1071): one's-complement sums over bytes and
//! the IPv4/IPv6 pseudo-headers TCP and UDP include, as the TAP offload
//! code needs them.

/// Adds `data` to the running one's-complement sum `acc` (unfolded; big-
/// endian 16-bit words, an odd last byte padded with zero).
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Sum the four 16-bit words of w without overflow.
        acc += (w >> 48) + ((w >> 32) & 0xffff) + ((w >> 16) & 0xffff) + (w & 0xffff);
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data` (folded and complemented), as stored in a header.
pub fn of(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// The sum of the pseudo-header TCP/UDP add over IPv4 (RFC 793): source,
/// destination, protocol and the L4 length.
pub fn pseudo_v4(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u64 {
    add(add(0, src), dst) + u64::from(proto) + l4_len as u64
}

/// The same over IPv6 (RFC 8200 §8.1): addresses, a 32-bit length, the
/// next-header value.
pub fn pseudo_v6(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u64 {
    add(add(0, src), dst) + u64::from(proto) + (l4_len as u64 & 0xffff) + (l4_len as u64 >> 16)
}

/// The TCP pseudo-header sum of a segment whose IP header starts at `ip`
/// (IPv6 when `v6`, else IPv4 without options: the addresses sit at fixed
/// offsets) and whose TCP header and payload are `l4_len` bytes.
pub fn pseudo_tcp(ip: &[u8], v6: bool, l4_len: usize) -> u64 {
    if v6 {
        pseudo_v6(&ip[8..24], &ip[24..40], 6, l4_len)
    } else {
        pseudo_v4(&ip[12..16], &ip[16..20], 6, l4_len)
    }
}

/// Recomputes the header checksum of the IPv4 header `ip` (its IHL bytes)
/// in place.
pub fn set_ipv4_header(ip: &mut [u8]) {
    ip[10] = 0;
    ip[11] = 0;
    let c = of(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain RFC 1071 loop, word by word, as a reference.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for i in (0..data.len()).step_by(2) {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            s += hi | lo;
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn matches_the_word_by_word_sum_at_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
        for start in 0..9 {
            for end in start..data.len() {
                assert_eq!(of(&data[start..end]), reference(&data[start..end]), "{start}..{end}");
            }
        }
        assert_eq!(of(&[0xff; 4096]), reference(&[0xff; 4096]));
    }

    #[test]
    fn an_ipv4_header_checksum_verifies_to_zero() {
        // RFC 1071's worked example shape: a 20-byte header.
        let mut ip = [0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7];
        let given = [ip[10], ip[11]];
        set_ipv4_header(&mut ip);
        assert_eq!([ip[10], ip[11]], given);
        assert_eq!(of(&ip), 0);
    }
}
