//! Darwin facts the macOS transport reads, as plain functions so they are
//! tested on every OS: the caller in an `audit_token_t`, and the
//! `kern.osproductversion` string.

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
}
