//! Network configurations as the broker meets them: JSON from clients
//! (Lima's `networks.yaml` entry, or ours), parsed and validated by
//! `config.rs`, and the comparison that names both sides of every
//! difference.
//!
//! Pure functions; run on the request thread under the broker lock.

use std::collections::BTreeMap;

use crate::config::{FileConfig, NetworkConfig};

/// The networks a broker knows without a config file: Lima's `shared`
/// (192.168.107.0/24, NAT) and `host` (192.168.108.0/24, host-only).
pub fn builtin_networks() -> BTreeMap<String, NetworkConfig> {
    FileConfig::default().networks
}

/// Parses a network configuration sent as JSON (`lima`: Lima's Go
/// `omitempty` style, where empty strings and 0 mean unset). Missing fields
/// take Lima's defaults; every problem is named (one per line).
pub fn parse_json(bytes: &[u8], name: &str, lima: bool) -> Result<NetworkConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the configuration is not UTF-8 JSON".to_owned())?;
    let source = "request";
    let parsed = if lima { NetworkConfig::from_lima_json(text, source, name) } else { NetworkConfig::from_json(text, source, name) };
    parsed.map_err(|e| e.message.lines().collect::<Vec<_>>().join("; "))
}

/// The configuration as JSON bytes (camelCase, every key present).
pub fn to_json(config: &NetworkConfig) -> Vec<u8> {
    config.to_json().into_bytes()
}

/// Every key where `requested` differs from `reference`, as
/// `"mtu: 1500 != 9000"` (reference first). A subnet, IPv6 prefix or
/// external interface the request leaves unset is not a difference (the
/// platform chose it).
pub fn differences(reference: &NetworkConfig, requested: &NetworkConfig) -> Vec<String> {
    let req = requested.with_chosen(reference.subnet(), reference.ipv6_prefix(), reference.external_interface());
    reference.differences(&req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    #[test]
    fn lima_entry_gets_defaults() {
        let c = parse_json(br#"{"mode":"host","subnet":"192.168.108.0/24","mtu":0,"routerAdvertisement":false}"#, "host", true).unwrap();
        assert_eq!(c.mode(), Mode::Host);
        assert!(c.dhcp() && !c.router_advertisement());
        assert_eq!(c, builtin_networks()["host"]);
    }

    #[test]
    fn bad_json_names_the_field() {
        assert!(!parse_json(b"[1]", "x", false).unwrap_err().is_empty());
        assert!(parse_json(b"{", "x", false).unwrap_err().contains("JSON"));
        assert!(parse_json(br#"{"colour":"red"}"#, "x", false).unwrap_err().contains("colour"));
        assert!(parse_json(br#"{"mode":"bridged"}"#, "x", false).unwrap_err().contains("bridged"));
        assert!(parse_json(br#"{"mtu":"big"}"#, "x", false).unwrap_err().contains("mtu"));
    }

    #[test]
    fn differences_name_both_sides() {
        let live = builtin_networks()["shared"].clone();
        assert!(differences(&live, &live.clone()).is_empty());
        let req = NetworkConfig::test(serde_json::json!({"mtu": 9000}));
        assert_eq!(differences(&live, &req), vec!["mtu: 1500 != 9000".to_owned()]);
        let round = parse_json(&to_json(&live), "shared", false).unwrap();
        assert_eq!(round, live);
    }
}
