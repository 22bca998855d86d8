//! Darwin facts the macOS transport reads, as plain functions so they are
//! tested on every OS: the caller in an `audit_token_t`, and the
//! macOS version from `kern.osproductversion` and `kern.osrelease`.

use super::Peer;

/// A peer from an `audit_token_t` (8 × u32; bsm/libbsm.h: [0] auid,
/// [1] euid, [2] egid, [3] ruid, [4] rgid, [5] pid, [6] asid, [7] pid
/// version).
pub fn peer_from_audit_token(token: &[u32; 8], connection: u64) -> Peer {
    Peer { uid: token[1], gid: token[2], pid: token[5] as i32, connection }
}

/// `kern.osproductversion` ("26.1", "26.2.1") as (major, minor, patch).
pub fn parse_os_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    let patch = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// The macOS version from `kern.osproductversion` (`product`) and
/// `kern.osrelease` (`darwin`, the kernel's "25.2.0").
///
/// On macOS 26 a process whose binary records an SDK older than 26 reads
/// `kern.osproductversion` as the compatibility string "16.0" (XNU
/// `kern_sysctl.c`; docs/macos.md), which says neither 26 nor its minor
/// version; `kern.osrelease` is not rewritten. From Darwin 25 (macOS 26) on,
/// macOS's major is Darwin's plus one and the minors agree (25.2 is 26.2),
/// so the kernel release decides there. Before that the product string is
/// right (and the minors did not always agree); a product string of 16
/// with no usable kernel release still means 26.
pub fn macos_version(product: Option<&str>, darwin: Option<&str>) -> Option<(u32, u32, u32)> {
    if let Some((major, minor, patch)) = darwin.and_then(parse_os_version) {
        if major >= 25 {
            return Some((major + 1, minor, patch));
        }
    }
    match product.and_then(parse_os_version)? {
        (16, minor, patch) => Some((26, minor, patch)),
        v => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_tokens_and_os_versions() {
        let token = [501, 502, 20, 503, 21, 4242, 100_001, 7];
        assert_eq!(peer_from_audit_token(&token, 9), Peer { uid: 502, gid: 20, pid: 4242, connection: 9 });
        assert_eq!(parse_os_version("26.1"), Some((26, 1, 0)));
        assert_eq!(parse_os_version("26.2.1\n"), Some((26, 2, 1)));
        assert_eq!(parse_os_version("26.x"), None);
        assert_eq!(parse_os_version("1.2.3.4"), None);
    }

    #[test]
    fn macos_26_is_26_even_when_the_product_string_says_16() {
        // A binary built with an older SDK on macOS 26.2: "16.0" and Darwin 25.2.
        assert_eq!(macos_version(Some("16.0"), Some("25.2.0")), Some((26, 2, 0)));
        assert_eq!(macos_version(Some("16.0"), Some("25.0.0")), Some((26, 0, 0)));
        // A current SDK: both agree.
        assert_eq!(macos_version(Some("26.2"), Some("25.2.0")), Some((26, 2, 0)));
        assert_eq!(macos_version(Some("26.1"), Some("25.1.0")), Some((26, 1, 0)));
        // Without a kernel release, 16 still means 26.
        assert_eq!(macos_version(Some("16.0"), None), Some((26, 0, 0)));
        // Before 26 the product string decides (15.1 is Darwin 24.1).
        assert_eq!(macos_version(Some("15.1"), Some("24.1.0")), Some((15, 1, 0)));
        assert_eq!(macos_version(None, Some("24.1.0")), None);
        assert_eq!(macos_version(None, None), None);
    }
}
