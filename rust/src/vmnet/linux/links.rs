//! Links, addresses, routes and sysctls of the current network namespace.
//!
//! These steps run a handful of times per network, so they go through `ip`
//! (iproute2, the kernel's own reference netlink client, already required,
//! with machine-readable output via `-j`). The per-port steps, on the path a
//! VM waits on, go over netlink without a fork (`rtnl`). Lookups that are on
//! every path use the libc call instead (`if_nametoindex`).
//!
//! Runs on the calling thread and acts on that thread's network namespace.
//! Every function either does all it says or returns the tool's error.

use std::ffi::CString;
use std::net::IpAddr;

use super::cmd::{self, run};
use super::plan::Route;

/// The ifindex of link `name` in this namespace, if it exists.
pub fn link_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Creates bridge `name` with a fixed MAC (so the gateway's MAC does not
/// change as ports come and go), STP off and no forwarding delay, down.
pub fn create_bridge(name: &str, mac: &str, mtu: u32) -> Result<(), cmd::Error> {
    let mtu = mtu.to_string();
    run(&["ip", "link", "add", "name", name, "address", mac, "mtu", &mtu, "type", "bridge", "stp_state", "0", "forward_delay", "0"], None)?;
    Ok(())
}

/// Adds `cidr` to `dev`; IPv6 addresses skip duplicate address detection so
/// they are usable at once (the bridge is ours; nothing else has them).
pub fn add_address(dev: &str, cidr: &str) -> Result<(), cmd::Error> {
    if cidr.contains(':') {
        run(&["ip", "-6", "addr", "add", cidr, "dev", dev, "nodad"], None)?;
    } else {
        run(&["ip", "addr", "add", cidr, "dev", dev], None)?;
    }
    Ok(())
}

pub fn set_up(dev: &str) -> Result<(), cmd::Error> {
    run(&["ip", "link", "set", "dev", dev, "up"], None)?;
    Ok(())
}

/// Takes link `name` off its bridge and sets it down.
pub fn unplug(name: &str) -> Result<(), cmd::Error> {
    run(&["ip", "link", "set", "dev", name, "nomaster", "down"], None)?;
    Ok(())
}

/// Whether link `name` is administratively up (`IFF_UP` in
/// `/sys/class/net/NAME/flags`, include/uapi/linux/if.h).
pub fn is_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & libc::IFF_UP as u32 != 0)
}

/// The addresses of `dev` as `addr/prefix` (from `ip -j addr show`).
pub fn addresses(dev: &str) -> Result<Vec<String>, cmd::Error> {
    Ok(parse_addresses(&run(&["ip", "-j", "addr", "show", "dev", dev], None)?))
}

/// Parses `ip -j addr show` output into `addr/prefix` strings.
pub fn parse_addresses(json: &str) -> Vec<String> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    links
        .iter()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|a| Some(format!("{}/{}", a.get("local")?.as_str()?, a.get("prefixlen")?.as_u64()?)))
        .collect()
}

pub fn delete_link(name: &str) -> Result<(), cmd::Error> {
    run(&["ip", "link", "del", "dev", name], None)?;
    Ok(())
}

/// Whether `name` is a bridge (from `ip -j -d link show`).
pub fn is_bridge(name: &str) -> bool {
    let Ok(out) = run(&["ip", "-j", "-d", "link", "show", "dev", name], None) else { return false };
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.get(0)?.get("linkinfo")?.get("info_kind")?.as_str().map(|k| k == "bridge"))
        .unwrap_or(false)
}

/// The IPv4 and IPv6 routes of the main table.
pub fn routes() -> Result<Vec<Route>, cmd::Error> {
    let mut all = parse_routes(&run(&["ip", "-j", "-4", "route", "show", "table", "main"], None)?);
    // A kernel without IPv6 has no IPv6 routes to collide with (and adding
    // an IPv6 prefix fails later with the kernel's own error).
    if let Ok(out) = run(&["ip", "-j", "-6", "route", "show", "table", "main"], None) {
        all.extend(parse_routes(&out));
    }
    Ok(all)
}

/// Parses `ip -j route` output; entries it cannot read are skipped.
pub fn parse_routes(json: &str) -> Vec<Route> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    items
        .iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?;
            let dev = r.get("dev").and_then(|d| d.as_str()).unwrap_or("?").to_string();
            if dst == "default" {
                return None;
            }
            let (addr, prefix) = match dst.split_once('/') {
                Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
                None => {
                    let a = dst.parse::<IpAddr>().ok()?;
                    (a, if a.is_ipv4() { 32 } else { 128 })
                }
            };
            Some(Route { dst: addr, prefix, dev })
        })
        .collect()
}

/// Writes a sysctl of this namespace (`net/ipv4/ip_forward` style path).
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        let json = r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0"},
            {"dst":"10.0.0.0/16","dev":"eth9","protocol":"kernel"},
            {"dst":"10.1.2.3","dev":"tun0"},
            {"dst":"fd00::/64","dev":"br0"},
            {"dst":"garbage"}]"#;
        let r = parse_routes(json);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].describe(), "10.0.0.0/16 dev eth9");
        assert_eq!(r[1].describe(), "10.1.2.3/32 dev tun0");
        assert_eq!(r[2].describe(), "fd00::/64 dev br0");
        assert!(parse_routes("not json").is_empty());
    }

    #[test]
    fn addresses_parse() {
        let json = r#"[{"ifname":"vmr-x","addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24},
            {"family":"inet6","local":"fd00::1","prefixlen":64}]}]"#;
        assert_eq!(parse_addresses(json), vec!["10.0.0.1/24", "fd00::1/64"]);
        assert!(parse_addresses("[]").is_empty());
    }
}
