//! The host resolver's registration of a network's name domain, made again
//! each time the broker creates the network's bridge or puts it back
//! (Linux; docs/config.md, "Names and addresses").
//!
//! On Linux `vmnet-rs install --resolver` sets systemd-resolved per-link DNS
//! on the bridge (`resolvectl dns BRIDGE GATEWAY`, `resolvectl domain BRIDGE
//! ~DOMAIN`). Such a setting goes with the link: a bridge the broker makes
//! again (after an idle teardown, a restart) has none. So the install step
//! also leaves a marker per network, `<data dir>/resolver/<network>.json`
//! (the network's domain and DNS server as registered), and the broker,
//! having made the bridge, runs the same two commands when the marker still
//! fits the network ([`decide`]); a marker whose gateway or domain no longer
//! fits is left alone and logged (run the install step again). The network's
//! watcher does the same after it put the bridge back up or gave it its
//! gateway address again (`vmnet::BridgeRestored`): whatever took the link
//! down may have reset what the host kept for it, and the commands only set
//! what the marker says. `vmnet-rs uninstall` removes the markers (and
//! reverts the bridges that exist), so nothing is registered after it. The
//! marker is read afresh each time. The commands run on a thread of their
//! own, outside the broker's lock and the watcher's loop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `vmnet-rs install --resolver` registered for one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub network: String,
    /// The name domain (`shared.vmnet.internal`).
    pub domain: String,
    /// The DNS server registered for it: the network's gateway.
    pub dns: Ipv4Addr,
}

/// The marker of `network` under the data directory.
pub fn marker_path(data_dir: &Path, network: &str) -> PathBuf {
    data_dir.join("resolver").join(format!("{network}.json"))
}

/// What the broker does about a bridge it just made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not registered: nothing to do.
    None,
    /// Registered, but not for the network as it is now, or it cannot be
    /// done here: the reason, logged.
    Skip(String),
    /// The commands to run, in order.
    Apply(Vec<Vec<String>>),
}

/// The decision for network `network`, made now on `bridge` with `gateway`
/// and `domain`, given its marker (if any) and whether `resolvectl` is there.
pub fn decide(marker: Option<&Marker>, network: &str, bridge: &str, gateway: Option<Ipv4Addr>, domain: &str, resolvectl: bool) -> Decision {
    let Some(m) = marker else { return Decision::None };
    if m.network != network {
        return Decision::Skip(format!("the resolver marker of network {network} names network {}; run `vmnet-rs install --resolver` again", m.network));
    }
    if gateway != Some(m.dns) || m.domain != domain {
        let now = gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into());
        return Decision::Skip(format!(
            "network {network} was registered with the host's resolver as {} at {}, but is {domain} at {now} now; run `vmnet-rs install --resolver` again",
            m.domain, m.dns
        ));
    }
    if !resolvectl {
        return Decision::Skip(format!("network {network} is registered with the host's resolver, but resolvectl is not on PATH (systemd-resolved): its bridge {bridge} gets no per-link DNS"));
    }
    let dns = m.dns.to_string();
    Decision::Apply(vec![
        vec!["resolvectl".into(), "dns".into(), bridge.into(), dns],
        vec!["resolvectl".into(), "domain".into(), bridge.into(), format!("~{domain}")],
    ])
}

/// Reads `network`'s marker from `data_dir` (absent: `None`; unreadable: logged, `None`).
pub fn read_marker(data_dir: &Path, network: &str) -> Option<Marker> {
    let path = marker_path(data_dir, network);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("resolver marker {}: {e}", path.display());
            return None;
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| log::warn!("resolver marker {}: not valid JSON of this format ({e}); run `vmnet-rs install --resolver` again", path.display()))
        .ok()
}

/// Registers network `network`'s domain again on its new or restored
/// `bridge` if its marker in `data_dir` says so ([`decide`]); the commands
/// run on a thread of their own and their failures are logged.
pub fn reapply(data_dir: &Path, network: &str, bridge: &str, gateway: Option<Ipv4Addr>, domain: &str) {
    let marker = read_marker(data_dir, network);
    match decide(marker.as_ref(), network, bridge, gateway, domain, marker.is_some() && crate::vmnet::preflight::which("resolvectl").is_some()) {
        Decision::None => log::debug!(
            "network {network}: no resolver marker ({}); bridge {bridge} is not registered with the host's resolver",
            marker_path(data_dir, network).display()
        ),
        Decision::Skip(why) => log::warn!("{why}"),
        Decision::Apply(commands) => {
            let (name, bridge) = (network.to_owned(), bridge.to_owned());
            let spawned = std::thread::Builder::new().name("vmnet-rs-resolver".into()).spawn(move || {
                for c in &commands {
                    match std::process::Command::new(&c[0]).args(&c[1..]).stdin(std::process::Stdio::null()).output() {
                        Ok(o) if o.status.success() => {}
                        Ok(o) => {
                            log::warn!("network {name}: `{}` failed ({}): {}", c.join(" "), o.status, String::from_utf8_lossy(&o.stderr).trim());
                            return;
                        }
                        Err(e) => {
                            log::warn!("network {name}: could not run `{}`: {e}", c.join(" "));
                            return;
                        }
                    }
                }
                log::info!("network {name}: name domain registered again with the host's resolver on bridge {bridge}");
            });
            if let Err(e) = spawned {
                log::warn!("network {network}: could not start the resolver registration: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker() -> Marker {
        Marker { network: "shared".into(), domain: "shared.vmnet.internal".into(), dns: "192.168.105.1".parse().unwrap() }
    }

    #[test]
    fn a_registered_network_is_registered_again_on_its_new_bridge() {
        let gw = Some("192.168.105.1".parse().unwrap());
        assert_eq!(decide(None, "shared", "vmr-shared", gw, "shared.vmnet.internal", true), Decision::None);
        assert_eq!(
            decide(Some(&marker()), "shared", "vmr-shared", gw, "shared.vmnet.internal", true),
            Decision::Apply(vec![
                vec!["resolvectl".into(), "dns".into(), "vmr-shared".into(), "192.168.105.1".into()],
                vec!["resolvectl".into(), "domain".into(), "vmr-shared".into(), "~shared.vmnet.internal".into()],
            ])
        );
    }

    #[test]
    fn a_marker_that_no_longer_fits_or_no_resolvectl_is_a_visible_skip() {
        let gw = Some("192.168.105.1".parse().unwrap());
        let other = Some("10.9.0.1".parse().unwrap());
        let skip = |d: Decision| match d {
            Decision::Skip(why) => why,
            d => panic!("not a skip: {d:?}"),
        };
        assert!(skip(decide(Some(&marker()), "shared", "vmr-shared", other, "shared.vmnet.internal", true)).contains("at 10.9.0.1 now; run `vmnet-rs install --resolver` again"));
        assert!(skip(decide(Some(&marker()), "shared", "vmr-shared", gw, "lab.example.internal", true)).contains("is lab.example.internal"));
        assert!(skip(decide(Some(&marker()), "shared", "vmr-shared", None, "shared.vmnet.internal", true)).contains("at none now"));
        assert!(skip(decide(Some(&marker()), "lab", "vmr-lab", gw, "shared.vmnet.internal", true)).contains("names network shared"));
        assert!(skip(decide(Some(&marker()), "shared", "vmr-shared", gw, "shared.vmnet.internal", false)).contains("resolvectl is not on PATH"));
    }

    #[test]
    fn markers_are_read_from_the_data_directory() {
        let dir = std::env::temp_dir().join(format!("vmnet-rs-resolver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read_marker(&dir, "shared"), None);
        std::fs::create_dir_all(dir.join("resolver")).unwrap();
        std::fs::write(marker_path(&dir, "shared"), serde_json::to_string(&marker()).unwrap()).unwrap();
        assert_eq!(read_marker(&dir, "shared"), Some(marker()));
        std::fs::write(marker_path(&dir, "shared"), "{").unwrap();
        assert_eq!(read_marker(&dir, "shared"), None, "a broken marker is logged, not used");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
