//! The network's nftables table: forwarding policy, NAT and port forwards.
//!
//! One table per network, family `inet`, named by
//! [`naming::table_name`](super::naming::table_name) and owned by vmnet-rs
//! alone: nothing else writes to it, and tearing the network down deletes
//! the whole table, so no rule outlives its network. The ruleset is written
//! as nft's own script language and applied with `nft -f -`, which the
//! kernel commits as one transaction: either every rule is in or none is.
//!
//! Limits: a base chain's `accept` only ends evaluation in its own table; a
//! `drop` in another table (a host firewall with a forward policy of drop)
//! still drops. Such hosts need a rule of their own for the bridge. Bridged
//! traffic between ports of the same bridge does not reach these chains
//! (unless `br_netfilter` is loaded; a rule lets it through then), so
//! isolation is done by the bridge itself (isolated ports).
//!
//! Runs on the thread that creates or tears down the network.

use std::net::IpAddr;

use super::cmd::{self, run};
use super::plan::Plan;
use crate::config::Protocol;

/// The ruleset that creates table `table` for network `plan` on bridge
/// `bridge`. Pure, so it is tested as text.
pub fn ruleset(plan: &Plan, bridge: &str, table: &str) -> String {
    let br = quote(bridge);
    let mut forward = vec![format!("iifname {br} oifname {br} accept")];
    let out_if = plan.external_interface.as_deref().map(|e| format!(" oifname {}", quote(e))).unwrap_or_default();
    if plan.forwards_out() {
        // With externalInterface, traffic leaves through that link only.
        forward.push(format!("iifname {br}{out_if} ip saddr {} accept", plan.v4.cidr()));
        if let Some(p) = &plan.v6 {
            forward.push(format!("iifname {br}{out_if} ip6 saddr {} accept", p.cidr()));
        }
        forward.push(format!("iifname {br} drop"));
        forward.push(format!("oifname {br} ct state established,related accept"));
        if !plan.forwards.is_empty() {
            forward.push(format!("oifname {br} ct status dnat accept"));
        }
        forward.push(format!("oifname {br} drop"));
    } else {
        // Host mode: nothing leaves the network and nothing enters it by
        // forwarding, even if the host forwards between its other links.
        forward.push(format!("iifname {br} drop"));
        forward.push(format!("oifname {br} drop"));
    }

    let mut postrouting = Vec::new();
    if plan.forwards_out() && plan.nat44 {
        let net = plan.v4.cidr();
        postrouting.push(format!("ip saddr {net} ip daddr != {net}{out_if} masquerade"));
    }
    if let (true, true, Some(p)) = (plan.forwards_out(), plan.nat66, &plan.v6) {
        let net = p.cidr();
        postrouting.push(format!("ip6 saddr {net} ip6 daddr != {net}{out_if} masquerade"));
    }

    let mut dnat = Vec::new();
    for f in &plan.forwards {
        let proto = match f.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let (family, target, lo) = match f.internal {
            IpAddr::V4(ip) => ("ip", format!("{ip}:{}", f.internal_port), "127.0.0.0/8"),
            IpAddr::V6(ip) => ("ip6", format!("[{ip}]:{}", f.internal_port), "::1"),
        };
        dnat.push(format!("{family} daddr != {lo} fib daddr type local {proto} dport {} dnat {family} to {target}", f.external_port));
    }

    let mut s = format!("table inet {table} {{\n");
    s += &chain("forward", "type filter hook forward priority filter; policy accept;", &forward);
    if !postrouting.is_empty() {
        s += &chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", &postrouting);
    }
    if !dnat.is_empty() {
        let inbound: Vec<String> = dnat.iter().map(|r| format!("iifname != {br} {r}")).collect();
        s += &chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", &inbound);
        // Connections the host itself opens to one of its addresses.
        s += &chain("output", "type nat hook output priority -100; policy accept;", &dnat);
    }
    s += "}\n";
    s
}

fn chain(name: &str, head: &str, rules: &[String]) -> String {
    let mut s = format!("\tchain {name} {{\n\t\t{head}\n");
    for r in rules {
        s += &format!("\t\t{r}\n");
    }
    s += "\t}\n";
    s
}

/// A quoted nft string (interface names are checked to hold no quote).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', ""))
}

/// Applies `script` in one transaction.
pub fn apply(script: &str) -> Result<(), cmd::Error> {
    run(&["nft", "-f", "-"], Some(script))?;
    Ok(())
}

/// The number of chains and rules `ruleset` (as [`ruleset`] writes it) makes.
pub fn shape(ruleset: &str) -> (usize, usize) {
    let chains = ruleset.lines().filter(|l| l.starts_with("\tchain ")).count();
    let lines = ruleset.lines().filter(|l| l.starts_with("\t\t")).count();
    // Each chain's first line is its hook, not a rule.
    (chains, lines - chains)
}

/// The chains and rules table `inet table` holds now; `None` if it is gone.
pub fn live_shape(table: &str) -> Option<(usize, usize)> {
    let out = run(&["nft", "-j", "list", "table", "inet", table], None).ok()?;
    parse_shape(&out)
}

/// Counts the chains and rules of `nft -j list table` output.
pub fn parse_shape(json: &str) -> Option<(usize, usize)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let count = |k: &str| items.iter().filter(|i| i.get(k).is_some()).count();
    (count("table") > 0).then(|| (count("chain"), count("rule")))
}

/// Puts table `table` back as `ruleset` makes it, in one transaction: made
/// if missing, emptied of whatever is left, filled again. Other tables are
/// not touched.
pub fn replace(table: &str, ruleset: &str) -> Result<(), cmd::Error> {
    apply(&format!("add table inet {table}\ndelete table inet {table}\n{ruleset}"))
}

pub fn table_exists(table: &str) -> bool {
    run(&["nft", "list", "table", "inet", table], None).is_ok()
}

pub fn delete_table(table: &str) -> Result<(), cmd::Error> {
    run(&["nft", "delete", "table", "inet", table], None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use crate::vmnet::linux::plan::{tests::config_with, Plan};

    fn plan(c: &crate::config::NetworkConfig) -> Plan {
        Plan::new("t", c, c.subnet().unwrap(), &[]).unwrap()
    }

    #[test]
    fn shared_ruleset_masquerades_and_forwards() {
        let c = config_with(json!({
            "ipv6Prefix": "fd00:1::/64",
            "externalInterface": "eth0",
            "portForwarding": [
                {"protocol": "tcp", "externalPort": 8080, "internalAddress": "10.77.0.5", "internalPort": 80},
                {"protocol": "udp", "externalPort": 5353, "internalAddress": "fd00:1::5", "internalPort": 53, "addressFamily": "ipv6"},
            ],
        }));
        let s = ruleset(&plan(&c), "vmr-t", "vmnet_rs_t");
        assert!(s.starts_with("table inet vmnet_rs_t {\n"), "{s}");
        assert!(s.contains("iifname \"vmr-t\" oifname \"eth0\" ip saddr 10.77.0.0/24 accept"), "{s}");
        assert!(s.contains("ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname \"eth0\" masquerade"), "{s}");
        assert!(s.contains("ip6 saddr fd00:1::/64 ip6 daddr != fd00:1::/64 oifname \"eth0\" masquerade"), "{s}");
        assert!(s.contains("iifname != \"vmr-t\" ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat ip to 10.77.0.5:80"), "{s}");
        assert!(s.contains("ip6 daddr != ::1 fib daddr type local udp dport 5353 dnat ip6 to [fd00:1::5]:53"), "{s}");
        assert!(s.contains("oifname \"vmr-t\" ct status dnat accept"), "{s}");
        // Every opened brace is closed.
        assert_eq!(s.matches('{').count(), s.matches('}').count());
        // forward (7 rules), postrouting (2), prerouting (2), output (2).
        assert_eq!(shape(&s), (4, 13));
    }

    #[test]
    fn live_shape_counts_chains_and_rules() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "t"}},
            {"chain": {"name": "c"}}, {"rule": {"chain": "c"}}, {"rule": {"chain": "c"}}]}"#;
        assert_eq!(parse_shape(json), Some((1, 2)));
        assert_eq!(parse_shape(r#"{"nftables": [{"metainfo": {}}]}"#), None);
        assert_eq!(parse_shape("Error"), None);
    }

    #[test]
    fn nat_off_means_no_masquerade() {
        let c = config_with(json!({"nat44": false}));
        let s = ruleset(&plan(&c), "vmr-t", "vmnet_rs_t");
        assert!(!s.contains("masquerade"), "{s}");
        assert!(!s.contains("postrouting"), "{s}");
    }

    #[test]
    fn host_ruleset_drops_all_forwarding() {
        let c = config_with(json!({"mode": "host"}));
        let s = ruleset(&plan(&c), "vmr-t", "vmnet_rs_t");
        assert!(s.contains("iifname \"vmr-t\" drop"), "{s}");
        assert!(s.contains("oifname \"vmr-t\" drop"), "{s}");
        assert!(!s.contains("masquerade"), "{s}");
        assert!(!s.contains("saddr"), "{s}");
    }
}
