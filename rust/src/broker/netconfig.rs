//! Network configurations as the broker meets them: JSON from clients
//! (Lima's `networks.yaml` entry, or ours), Lima's defaults for missing
//! fields, and the comparison that names every difference.
//!
//! Pure functions; run on the request thread under the broker lock.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::config::{Mode, NetworkConfig};

/// Lima's defaults for a mode (platform-facts §6.1): everything on, MTU
/// 1500, router advertisement off in host mode; no subnet (the platform
/// picks).
pub fn defaults(mode: Mode) -> NetworkConfig {
    NetworkConfig {
        mode,
        dhcp: true,
        dns_proxy: true,
        mtu: 1500,
        nat44: true,
        nat66: true,
        router_advertisement: mode == Mode::Shared,
        subnet: None,
        ipv6_prefix: None,
        port_forwarding: Vec::new(),
        dhcp_reservations: Vec::new(),
        external_interface: None,
        isolation: false,
        offload: false,
    }
}

/// The networks a broker knows without a config file: Lima's `shared`
/// (192.168.107.0/24, NAT) and `host` (192.168.108.0/24, host-only).
pub fn builtin_networks() -> BTreeMap<String, NetworkConfig> {
    let mut shared = defaults(Mode::Shared);
    shared.subnet = Some("192.168.107.1/24".into());
    let mut host = defaults(Mode::Host);
    host.subnet = Some("192.168.108.1/24".into());
    BTreeMap::from([("shared".to_owned(), shared), ("host".to_owned(), host)])
}

/// Parses a network configuration sent as JSON. Missing fields take Lima's
/// defaults for the mode (`mode` defaults to shared); unknown fields,
/// wrong types and bad values are errors naming the field.
pub fn parse_json(bytes: &[u8]) -> Result<NetworkConfig, String> {
    let value: Json = serde_json::from_slice(bytes).map_err(|e| format!("configuration is not valid JSON: {e}"))?;
    let Json::Object(given) = value else {
        return Err("configuration must be a JSON object".into());
    };
    let mode = match given.get("mode") {
        None | Some(Json::Null) => Mode::Shared,
        Some(m) => serde_json::from_value(m.clone()).map_err(|_| format!("configuration mode {m} is not \"shared\" or \"host\""))?,
    };
    let Json::Object(mut merged) = serde_json::to_value(defaults(mode)).map_err(|e| e.to_string())? else {
        return Err("internal: defaults are not an object".into());
    };
    for (k, v) in given {
        if !merged.contains_key(&k) {
            let known: Vec<&str> = merged.keys().map(String::as_str).collect();
            return Err(format!("unknown configuration field {k:?} (known: {})", known.join(", ")));
        }
        if !v.is_null() {
            // Try the field alone first, so a wrong type names its field
            // (serde's message does not).
            let mut probe = merged.clone();
            probe.insert(k.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<NetworkConfig>(Json::Object(probe)) {
                return Err(format!("configuration field {k:?}: {e}"));
            }
            merged.insert(k, v);
        }
    }
    let config: NetworkConfig = serde_json::from_value(Json::Object(merged)).map_err(|e| format!("configuration: {e}"))?;
    if config.mtu < 576 || config.mtu > 65_535 {
        return Err(format!("configuration mtu {} is outside 576..65535", config.mtu));
    }
    Ok(config)
}

/// The configuration as JSON bytes (camelCase, as Lima writes it).
pub fn to_json(config: &NetworkConfig) -> Vec<u8> {
    serde_json::to_vec(config).unwrap_or_default()
}

fn fields(config: &NetworkConfig) -> Map<String, Json> {
    match serde_json::to_value(config) {
        Ok(Json::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Every field where `requested` differs from `live`, as
/// `"mtu: 1500 (live) vs 9000 (requested)"`. A subnet or IPv6 prefix the
/// request leaves unset is not a difference (the platform chose it).
pub fn differences(live: &NetworkConfig, requested: &NetworkConfig) -> Vec<String> {
    let (a, b) = (fields(live), fields(requested));
    let mut out = Vec::new();
    for (key, want) in &b {
        let have = a.get(key).unwrap_or(&Json::Null);
        if want.is_null() && matches!(key.as_str(), "subnet" | "ipv6Prefix" | "externalInterface") {
            continue;
        }
        if have != want {
            out.push(format!("{key}: {have} (live) vs {want} (requested)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lima_entry_gets_defaults() {
        let c = parse_json(br#"{"mode":"host","subnet":"192.168.108.1/24"}"#).unwrap();
        assert_eq!(c.mode, Mode::Host);
        assert!(c.dhcp && !c.router_advertisement);
        assert_eq!(c.mtu, 1500);
        assert_eq!(c, builtin_networks()["host"]);
    }

    #[test]
    fn bad_json_names_the_field() {
        assert!(parse_json(b"[1]").unwrap_err().contains("object"));
        assert!(parse_json(b"{").unwrap_err().contains("JSON"));
        assert!(parse_json(br#"{"colour":"red"}"#).unwrap_err().contains("colour"));
        assert!(parse_json(br#"{"mode":"bridged"}"#).unwrap_err().contains("bridged"));
        assert!(parse_json(br#"{"mtu":"big"}"#).unwrap_err().contains("mtu"));
        assert!(parse_json(br#"{"mtu":10}"#).unwrap_err().contains("576"));
    }

    #[test]
    fn differences_name_both_sides() {
        let live = builtin_networks()["shared"].clone();
        let mut req = live.clone();
        assert!(differences(&live, &req).is_empty());
        req.mtu = 9000;
        req.subnet = None;
        let d = differences(&live, &req);
        assert_eq!(d, vec!["mtu: 1500 (live) vs 9000 (requested)".to_owned()]);
        let round = parse_json(&to_json(&live)).unwrap();
        assert_eq!(round, live);
    }
}
