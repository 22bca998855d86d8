//! VM names on live networks: granting a client-given name with a lease,
//! giving the network's DHCP/DNS server its fixed entries, answering
//! `resolve`, and the names `status` shows (docs/config.md, "Names and
//! addresses"; the records themselves are `records.rs`).
//!
//! Runs under the broker's state lock, like everything that touches
//! networks. A name is `<name>.<domain>` with the network's `domain` key
//! (default `<network>.vmnet.internal`); `host.<domain>` is the gateway.
//! A granted name lives in the records; a claimed one is a DHCP host name
//! the network's server saw (Linux: dnsmasq's lease file) that no granted
//! name holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::protocol::{code, Failure};
use super::records::{self, Book, NameKind, Refusal};
use super::state::State;
use crate::config::MacAddr;
use crate::vmnet::FixedHost;

/// One name as `resolve` and `status` give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub network: String,
    pub name: String,
    pub fqdn: String,
    /// `granted`, `claimed`, or `host` (the gateway).
    pub kind: &'static str,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<MacAddr>,
}

/// A name the client asked for (`name` in `open`/`acquire`): a DNS label.
pub fn check_requested(name: &str) -> Result<(), Failure> {
    if records::valid_label(name) {
        Ok(())
    } else {
        Err(Failure::invalid(format!(
            "name {name:?} is not a DNS label: use 1 to 63 letters, digits and \"-\" (not first or last), like \"alpha\""
        )))
    }
}

impl State {
    /// The records of live network `network`, opened for its subnet, IPv6
    /// prefix and reservations as they are now.
    pub fn book(&mut self, network: &str) -> Option<&mut Book> {
        let e = self.networks.get(network)?;
        let s = e.network.state();
        let subnet = s.ipv4_subnet().or(e.config.subnet())?;
        let v6 = s.ipv6_prefix.as_deref().and_then(|p| p.parse().ok()).or(e.config.ipv6_prefix());
        let reservations: Vec<(MacAddr, Ipv4Addr)> = e.config.dhcp_reservations().iter().map(|r| (r.mac, r.address)).collect();
        Some(self.records.book(network, subnet, v6, &reservations))
    }

    /// The domain of live network `network`'s names.
    pub fn domain(&self, network: &str) -> Option<String> {
        self.networks.get(network).map(|e| e.config.dns_domain(network))
    }

    /// Grants `name` on live network `network` to the VM with `mac` and
    /// gives the network's server the new entries. Refused (`NAME_TAKEN`)
    /// when a running VM holds the name.
    pub fn grant_name(&mut self, network: &str, name: &str, mac: MacAddr) -> Result<records::Grant, Failure> {
        self.check_name_free(network, name)?;
        // Addresses the network's server handed out by itself are not given again.
        let dynamic: Vec<Ipv4Addr> = self
            .networks
            .get(network)
            .and_then(|e| e.network.leases().ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.mac.parse::<MacAddr>().ok() != Some(mac))
            .filter_map(|l| l.address.parse().ok())
            .collect();
        // The broker's own DHCP/DNS port holds one address (broker/service.rs).
        let service = self.networks.get(network).filter(|e| e.service.is_some()).and_then(|e| e.network.state().ipv4_subnet()).map(super::service::service_address);
        let book = self.book(network).ok_or_else(|| Failure::new(code::NOT_FOUND, format!("network {network} is not live or has no IPv4 subnet yet")))?;
        let known: Vec<Ipv4Addr> = book.entries().iter().map(|e| e.ipv4).collect();
        book.avoid(dynamic.into_iter().filter(|a| !known.contains(a)).chain(service));
        let grant = book.grant(name, mac).map_err(|r| match r {
            Refusal::NameHeld { .. } | Refusal::Reserved { .. } => Failure::new(code::NAME_TAKEN, r.to_string()),
            Refusal::BadName { .. } => Failure::invalid(r.to_string()),
            Refusal::Full { .. } => Failure::new(code::LIMIT, r.to_string()),
        })?;
        self.publish(network);
        Ok(grant)
    }

    /// Refuses (`NAME_TAKEN`) a name a lease on `network` holds: a second
    /// VM asking for it, even one with the same MAC (`vmnet-rs run` derives
    /// the MAC from the name).
    pub fn check_name_free(&self, network: &str, name: &str) -> Result<(), Failure> {
        match self.leases.values().find(|l| l.network == network && l.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(name))) {
            Some(l) => Err(Failure::new(
                code::NAME_TAKEN,
                format!("name {name:?} is held on network {network} by {} (lease {}); choose another name or stop that VM", l.holder(), l.id),
            )),
            None => Ok(()),
        }
    }

    /// The VM with `mac` left network `network`: its name is no longer served.
    pub fn release_name(&mut self, network: &str, mac: MacAddr) {
        self.records.release(network, mac);
        self.publish(network);
    }

    /// The VM with `mac` that held no granted name left network `network`:
    /// a name its guest claimed (its DHCP host name) is no longer served.
    /// The network's DHCP server is told to end the leases of `mac` that
    /// carry a host name (Linux: `dhcp_release`), so dnsmasq drops the name
    /// now instead of when the lease expires; the address stays the MAC's
    /// by its record. Nothing is done while another lease on the network
    /// has the same MAC (the VM is still there).
    pub fn release_claim(&mut self, network: &str, mac: MacAddr) {
        let mac_text = mac.to_string();
        if self.leases.values().any(|l| l.network == network && l.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&mac_text))) {
            return;
        }
        self.records.release(network, mac);
        let Some(entry) = self.networks.get(network) else { return };
        match entry.network.release_claims(mac) {
            Ok(0) => {}
            Ok(n) => log::info!("network {network}: {n} DHCP lease(s) of {mac} ended with its port; the name its guest claimed is no longer served"),
            Err(e) => log::debug!("network {network}: {e}"),
        }
    }

    /// Gives live network `network`'s DHCP/DNS server the records: every
    /// recorded MAC its address, every active granted name. A backend
    /// that takes no entries is left alone (logged once per network).
    pub fn publish(&mut self, network: &str) {
        let Some(book) = self.book(network) else { return };
        let hosts: Vec<FixedHost> = book
            .entries()
            .iter()
            .map(|e| FixedHost {
                mac: e.mac,
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                name: (e.active && e.kind() == Some(NameKind::Granted)).then(|| e.name().unwrap_or_default().to_owned()),
            })
            .collect();
        let Some(entry) = self.networks.get(network) else { return };
        if let Err(e) = entry.network.set_fixed_hosts(&hosts) {
            log::debug!("network {network}: {e}");
        }
    }

    /// Every name on live network `network`: the gateway's, the granted
    /// ones whose VM is active, and the claims of the network's server
    /// that no granted name holds.
    pub fn names_on(&mut self, network: &str) -> Vec<Answer> {
        let Some(domain) = self.domain(network) else { return Vec::new() };
        let s = self.networks[network].network.state();
        let gateway = s.ipv4_subnet().map(|s| s.gateway());
        let gateway6 = s.ipv6_prefix.as_deref().and_then(|p| p.parse::<crate::config::Ipv6Prefix>().ok()).map(|p| p.gateway());
        let dhcp = self.networks[network].network.leases().unwrap_or_default();
        let mut out = vec![Answer {
            network: network.to_owned(),
            name: records::HOST_NAME.into(),
            fqdn: records::fqdn(records::HOST_NAME, &domain),
            kind: "host",
            ipv4: gateway,
            ipv6: gateway6,
            mac: None,
        }];
        let Some(book) = self.book(network) else { return out };
        for e in book.entries().iter().filter(|e| e.active) {
            if let Some((name, kind)) = &e.name {
                out.push(Answer {
                    network: network.to_owned(),
                    name: name.clone(),
                    fqdn: records::fqdn(name, &domain),
                    kind: kind.as_str(),
                    ipv4: Some(e.ipv4),
                    ipv6: e.ipv6,
                    mac: Some(e.mac),
                });
            }
        }
        for l in dhcp {
            let Some(h) = l.hostname.filter(|h| records::valid_label(h)) else { continue };
            let mac = l.mac.parse::<MacAddr>().ok();
            if out.iter().any(|a| a.name.eq_ignore_ascii_case(&h) || (a.mac.is_some() && a.mac == mac)) {
                continue;
            }
            out.push(Answer {
                network: network.to_owned(),
                fqdn: records::fqdn(&h, &domain),
                name: h,
                kind: NameKind::Claimed.as_str(),
                ipv4: l.address.parse().ok(),
                ipv6: None,
                mac,
            });
        }
        out
    }

    /// What `query` names: `NAME` on any live network, `NAME.NETWORK`,
    /// `NAME.<domain>` (a trailing dot allowed), or an address (its name).
    pub fn resolve(&mut self, query: &str) -> Vec<Answer> {
        let q = query.trim_end_matches('.').to_ascii_lowercase();
        let networks: Vec<String> = self.networks.keys().cloned().collect();
        let mut out = Vec::new();
        for n in networks {
            let domain = self.domain(&n).unwrap_or_default();
            let addr: Option<IpAddr> = q.parse().ok();
            let short = q.strip_suffix(&format!(".{domain}")).or_else(|| q.strip_suffix(&format!(".{n}"))).unwrap_or(&q).to_owned();
            out.extend(self.names_on(&n).into_iter().filter(|a| match addr {
                Some(IpAddr::V4(x)) => a.ipv4 == Some(x),
                Some(IpAddr::V6(x)) => a.ipv6 == Some(x),
                None => a.name.eq_ignore_ascii_case(&short),
            }));
        }
        out
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn requested_names_are_labels() {
        assert!(check_requested("alpha-2").is_ok());
        let e = check_requested("al pha").unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert!(e.message.contains("\"al pha\""), "{}", e.message);
    }
}
