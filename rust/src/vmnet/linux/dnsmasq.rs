//! The network's dnsmasq: DHCP, DNS proxy and router advertisements, one
//! process per network, bound to the network's bridge only.
//!
//! Threads: a [`Supervisor`] owns one thread, named `dnsmasq-<bridge>`,
//! which starts dnsmasq, restarts it if it dies (with a growing pause, so a
//! dnsmasq that cannot start does not spin), and stops it when told. dnsmasq
//! is started from that thread with `PR_SET_PDEATHSIG` = SIGTERM, so it dies
//! with the thread, and so with the broker even on SIGKILL; the thread only
//! ends after dnsmasq is stopped.
//!
//! Invariants: dnsmasq reads no configuration file but its arguments
//! (`--conf-file=/dev/null`), answers only on the bridge
//! (`--interface --bind-interfaces --except-interface=lo`), and has no
//! upstream DNS server unless the operator names a resolv file
//! ([`RESOLV_FILE_ENV`]). Its lease file and pid file live in the backend's
//! state directory.

use std::fs::File;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::plan::Plan;
use crate::config::MacAddr;
use crate::vmnet::{FixedHost, Lease};

/// The environment variable naming a resolv.conf-style file whose servers
/// the DNS proxy forwards to (e.g. `/etc/resolv.conf`). Unset: no upstream,
/// the proxy answers only what it knows (DHCP client names).
pub const RESOLV_FILE_ENV: &str = "VMNET_RS_DNS_RESOLV_FILE";
/// DHCP lease time handed to clients.
pub const LEASE_TIME: &str = "1h";
/// How long dnsmasq gets to write its pid file (it does so once its sockets
/// are bound) before the start counts as failed. Generous: a loaded 2-core
/// machine can take seconds to start a process.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the supervisor checks on dnsmasq.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// First pause before a restart; doubled per quick death, up to the max.
const RESTART_DELAY_MIN: Duration = Duration::from_millis(500);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(30);
/// A dnsmasq that ran this long before dying is restarted without delay growth.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How long a stopped dnsmasq gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start dnsmasq: {0} (install dnsmasq, e.g. apt-get install dnsmasq-base)")]
    Spawn(#[source] std::io::Error),
    #[error("dnsmasq exited at start ({status}): {log}")]
    Exited { status: String, log: String },
    #[error("dnsmasq did not become ready within {0:?}; see {1}")]
    NotReady(Duration, String),
    #[error("could not start the dnsmasq supervisor thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Where dnsmasq keeps its files.
#[derive(Clone, Debug)]
pub struct Files {
    pub leases: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
    /// `--dhcp-hostsfile`: the broker's fixed addresses (`mac,ip[,name]`).
    pub hosts: PathBuf,
    /// `--addn-hosts`: the broker's names (`ip fqdn name`).
    pub names: PathBuf,
}

/// Whether the network needs a dnsmasq at all.
pub fn needed(plan: &Plan) -> bool {
    plan.dhcp || plan.dns_proxy || (plan.router_advertisement && plan.v6.is_some())
}

/// dnsmasq's argv (without the program) for `plan` on `bridge`. `resolv_file`
/// is the upstream server list, `None` for none.
pub fn args(plan: &Plan, bridge: &str, files: &Files, resolv_file: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--log-facility=-".into(),
        format!("--pid-file={}", files.pid.display()),
        format!("--interface={bridge}"),
        "--bind-interfaces".into(),
        "--except-interface=lo".into(),
        "--no-hosts".into(),
    ];
    if plan.dns_proxy {
        match resolv_file {
            Some(f) => a.push(format!("--resolv-file={f}")),
            None => a.push("--no-resolv".into()),
        }
        // The network's names: never forwarded; the host is the gateway;
        // the broker's names from a file re-read on SIGHUP (write_fixed).
        let d = &plan.domain;
        a.push(format!("--domain={d}"));
        a.push(format!("--local=/{d}/"));
        let mut host = format!("--host-record=host.{d},{}", plan.v4.gateway());
        if let Some(p) = &plan.v6 {
            host.push_str(&format!(",{}", p.gateway()));
        }
        a.push(host);
        a.push(format!("--addn-hosts={}", files.names.display()));
    } else {
        a.push("--port=0".into());
    }
    if plan.dhcp {
        let (start, end) = plan.v4.dhcp_range();
        a.push(format!("--dhcp-range={start},{end},{},{LEASE_TIME}", plan.v4.netmask()));
        a.push(format!("--dhcp-leasefile={}", files.leases.display()));
        a.push("--dhcp-authoritative".into());
        a.push("--dhcp-no-override".into());
        if plan.forwards_out() {
            a.push(format!("--dhcp-option=option:router,{}", plan.v4.gateway()));
        } else {
            // Host mode: the gateway leads nowhere; give no default route.
            a.push("--dhcp-option=option:router".into());
        }
        if plan.dns_proxy {
            a.push(format!("--dhcp-option=option:dns-server,{}", plan.v4.gateway()));
        } else {
            a.push("--dhcp-option=option:dns-server".into());
        }
        if plan.mtu != 1500 {
            a.push(format!("--dhcp-option=option:mtu,{}", plan.mtu));
        }
        for (mac, ip) in &plan.reservations {
            a.push(format!("--dhcp-host={mac},{ip}"));
        }
        a.push(format!("--dhcp-hostsfile={}", files.hosts.display()));
    }
    if let (true, Some(p)) = (plan.router_advertisement, &plan.v6) {
        a.push("--enable-ra".into());
        let kind = if plan.dhcp && plan.dns_proxy { "ra-stateless" } else { "ra-only" };
        a.push(format!("--dhcp-range={},{kind},{}", p.addr(), p.prefix_len()));
        // Host mode: announce the prefix but not a default router.
        let lifetime = if plan.forwards_out() { "" } else { ",0" };
        a.push(format!("--ra-param={bridge},mtu:{},60{lifetime}", plan.mtu));
    }
    a
}

/// The text of the `--dhcp-hostsfile` and `--addn-hosts` files for `hosts`
/// in `domain`: every MAC its address (and its name, which dnsmasq then
/// prefers to the one the client sends), except MACs in `reserved` (their
/// `--dhcp-host` argument already fixes them); every named host
/// `ip fqdn name`, so forward and reverse lookups answer with the FQDN.
pub fn fixed_text(hosts: &[FixedHost], domain: &str, reserved: &[String]) -> (String, String) {
    let mut dhcp = String::new();
    let mut names = String::new();
    for h in hosts {
        let mac = h.mac.to_string();
        if !reserved.contains(&mac) {
            match &h.name {
                Some(n) => dhcp.push_str(&format!("{mac},{},{n}\n", h.ipv4)),
                None => dhcp.push_str(&format!("{mac},{}\n", h.ipv4)),
            }
        }
        if let Some(n) = &h.name {
            names.push_str(&format!("{} {n}.{domain} {n}\n", h.ipv4));
            if let Some(v6) = h.ipv6 {
                names.push_str(&format!("{v6} {n}.{domain} {n}\n"));
            }
        }
    }
    (dhcp, names)
}

/// Writes the fixed entries (each file replaced atomically) and, when
/// dnsmasq runs (`pid`), tells it to re-read them (SIGHUP).
pub fn write_fixed(files: &Files, hosts: &[FixedHost], domain: &str, reserved: &[String], pid: Option<u32>) -> std::io::Result<()> {
    let (dhcp, names) = fixed_text(hosts, domain, reserved);
    for (path, text) in [(&files.hosts, dhcp), (&files.names, names)] {
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, text)?;
        // dnsmasq re-reads them as its own user (nobody): readable by all
        // (names and addresses the network's DNS serves anyway).
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, path)?;
    }
    if let Some(pid) = pid {
        // SAFETY: kill with the pid of the dnsmasq this network's supervisor started.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ends the DHCP lease of `host` in the network's dnsmasq (on `bridge`)
/// with `dhcp_release` (dnsmasq-utils), so the name it carries is no
/// longer served; the address stays `host`'s by its fixed entry.
pub fn release_lease(bridge: &str, host: &FixedHost) -> Result<(), String> {
    release(bridge, host.ipv4, host.mac, None)
}

/// Ends the DHCP lease of `addr` held by `mac` (and `client_id`, in the
/// lease file's colon-separated hex, when the client sent one: dnsmasq
/// matches a release by it) with `dhcp_release` (dnsmasq-utils).
pub fn release(bridge: &str, addr: Ipv4Addr, mac: MacAddr, client_id: Option<&str>) -> Result<(), String> {
    let mut args = vec![bridge.to_owned(), addr.to_string(), mac.to_string()];
    args.extend(client_id.map(str::to_owned));
    let out = Command::new("dhcp_release")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run dhcp_release (install dnsmasq-utils): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("dhcp_release {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// One lease of the lease file that carries a host name (a claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub address: Ipv4Addr,
    pub hostname: String,
    /// The client id, as the lease file writes it; `None`: the client sent none.
    pub client_id: Option<String>,
}

/// The IPv4 leases of `mac` in lease-file `text` that carry a host name.
pub fn claims_of(text: &str, mac: MacAddr) -> Vec<Claim> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[0] == "duid" || f[3] == "*" || f[1].parse::<MacAddr>().ok() != Some(mac) {
                return None;
            }
            Some(Claim {
                address: f[2].parse().ok()?,
                hostname: f[3].to_owned(),
                client_id: f.get(4).filter(|c| **c != "*").map(|c| (*c).to_owned()),
            })
        })
        .collect()
}

/// The first directory above `path` that dnsmasq cannot pass once it has
/// dropped root for its own user (`nobody`): one not open to others
/// (`o+x`). dnsmasq re-reads the fixed entries (`write_fixed`) after
/// dropping root, so such a directory keeps names and fixed addresses from
/// it. `None` when the broker is not root (dnsmasq keeps its user) or every
/// directory is passable.
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    path.ancestors().skip(1).find(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 == 0)).map(Path::to_path_buf)
}

/// Parses a dnsmasq lease file (`expiry mac ip hostname client-id` lines;
/// the `duid` line and DHCPv6 entries are skipped).
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[0] == "duid" || !f[2].contains('.') {
                return None;
            }
            Some(Lease {
                expires: f[0].parse().ok()?,
                mac: f[1].to_ascii_lowercase(),
                address: f[2].to_string(),
                hostname: (f[3] != "*").then(|| f[3].to_string()),
            })
        })
        .collect()
}

/// Reads `path`'s leases; a missing file means none yet.
pub fn read_leases(path: &Path) -> std::io::Result<Vec<Lease>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse_leases(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// What the owner of a [`Supervisor`] is told and asked, from the
/// supervisor thread.
pub struct Hooks {
    /// Each new pid, first and after every restart.
    pub on_pid: Box<dyn Fn(u32) + Send>,
    /// dnsmasq died (`what`: which one and how); may it be started again
    /// now? Asked before each attempt; false: asked again later.
    pub may_restart: Box<dyn Fn(&str) -> bool + Send>,
    /// dnsmasq runs again, with this pid.
    pub restarted: Box<dyn Fn(u32) + Send>,
}

/// Keeps one dnsmasq running; see the module header.
pub struct Supervisor {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pid: Arc<AtomicU32>,
}

impl Supervisor {
    /// Starts dnsmasq with `args` and returns once it is ready (its pid file
    /// written) or has failed; `hooks` are called from the supervisor
    /// thread.
    pub fn start(name: &str, args: Vec<String>, files: Files, hooks: Hooks) -> Result<Supervisor, Error> {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let pid = Arc::new(AtomicU32::new(0));
        let pid2 = pid.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dnsmasq-{name}"))
            .spawn(move || supervise(args, files, stop_rx, ready_tx, pid2, hooks))
            .map_err(Error::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Supervisor { stop: Some(stop_tx), thread: Some(thread), pid }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Exited { status: "supervisor ended".into(), log: String::new() })
            }
        }
    }

    /// The pid of the running dnsmasq (0 while it is being restarted).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops dnsmasq and the thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(args: &[String], files: &Files) -> Result<Child, Error> {
    let _ = std::fs::remove_file(&files.pid);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&files.log).map_err(Error::Spawn)?;
    let mut cmd = Command::new("dnsmasq");
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone().map_err(Error::Spawn)?).stderr(log);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl and getppid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent thread may have gone between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited before dnsmasq started"));
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(Error::Spawn)
}

/// Waits for `child` to write its pid file.
fn wait_ready(child: &mut Child, files: &Files) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let want = child.id().to_string();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Exited { status: status.to_string(), log: log_tail(&files.log) });
        }
        if std::fs::read_to_string(&files.pid).map(|s| s.trim() == want).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            stop_child(child);
            return Err(Error::NotReady(READY_TIMEOUT, files.log.display().to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().rev().take(3).collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        format!("no output (see {})", path.display())
    } else {
        tail.join(" / ")
    }
}

fn stop_child(child: &mut Child) {
    // SAFETY: kill with a pid we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn supervise(
    args: Vec<String>,
    files: Files,
    stop: mpsc::Receiver<()>,
    ready: mpsc::Sender<Result<(), Error>>,
    pid: Arc<AtomicU32>,
    hooks: Hooks,
) {
    let start = || spawn(&args, &files).and_then(|mut c| wait_ready(&mut c, &files).map(|()| c));
    let mut child = match start() {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let first = child.as_ref().map(Child::id).unwrap_or(0);
    pid.store(first, Ordering::SeqCst);
    (hooks.on_pid)(first);
    let mut died = String::new();
    let _ = ready.send(Ok(()));
    let mut started = Instant::now();
    let mut delay = RESTART_DELAY_MIN;
    let mut restart_at = Instant::now();
    loop {
        if stop.recv_timeout(POLL_INTERVAL) != Err(RecvTimeoutError::Timeout) {
            if let Some(c) = child.as_mut() {
                stop_child(c);
            }
            pid.store(0, Ordering::SeqCst);
            let _ = std::fs::remove_file(&files.pid);
            return;
        }
        match child.as_mut() {
            Some(c) => {
                let Ok(Some(status)) = c.try_wait() else { continue };
                died = format!("dnsmasq (pid {}, {status})", c.id());
                child = None;
                pid.store(0, Ordering::SeqCst);
                if started.elapsed() >= HEALTHY_RUN {
                    delay = RESTART_DELAY_MIN;
                }
                // The restart's own line says what was missing and what came back.
                log::debug!("{died} exited: {}; restarting in {delay:?}", log_tail(&files.log));
                restart_at = Instant::now() + delay;
                delay = (delay * 2).min(RESTART_DELAY_MAX);
            }
            None if Instant::now() >= restart_at && !(hooks.may_restart)(&died) => {
                // Left alone for now (repairs off, or something keeps stopping it).
                restart_at = Instant::now() + POLL_INTERVAL;
            }
            None if Instant::now() >= restart_at => match start() {
                Ok(c) => {
                    pid.store(c.id(), Ordering::SeqCst);
                    (hooks.on_pid)(c.id());
                    (hooks.restarted)(c.id());
                    child = Some(c);
                    started = Instant::now();
                }
                Err(e) => {
                    log::warn!("restarting dnsmasq failed: {e}; trying again in {delay:?}");
                    restart_at = Instant::now() + delay;
                    delay = (delay * 2).min(RESTART_DELAY_MAX);
                }
            },
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use crate::vmnet::linux::plan::tests::config_with;

    fn files() -> Files {
        Files { leases: "/s/n.leases".into(), pid: "/s/n.pid".into(), log: "/s/n.log".into(), hosts: "/s/n.dhcp-hosts".into(), names: "/s/n.hosts".into() }
    }

    fn plan(c: &crate::config::NetworkConfig) -> Plan {
        Plan::new("t", c, c.subnet().unwrap(), &[]).unwrap()
    }

    #[test]
    fn broker_addresses_need_no_dnsmasq_but_for_router_advertisements() {
        let c = config_with(json!({"addresses": "broker"}));
        assert!(!needed(&plan(&c)), "the broker's port answers DHCP and DNS");
        let c = config_with(json!({"addresses": "broker", "ipv6Prefix": "fd00:77::/64"}));
        let a = args(&plan(&c), "vmr-t", &files(), None);
        assert!(needed(&plan(&c)));
        assert!(a.contains(&"--port=0".to_string()) && a.iter().any(|x| x.ends_with(",ra-only,64")), "{a:?}");
        assert!(!a.iter().any(|x| x.starts_with("--dhcp-leasefile")), "{a:?}");
    }

    #[test]
    fn shared_args() {
        let c = config_with(json!({"dhcpReservations": [{"mac": "52:54:00:00:00:01", "address": "10.77.0.9"}]}));
        let a = args(&plan(&c), "vmr-t", &files(), None);
        for want in [
            "--interface=vmr-t",
            "--bind-interfaces",
            "--except-interface=lo",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--dhcp-range=10.77.0.2,10.77.0.254,255.255.255.0,1h",
            "--dhcp-leasefile=/s/n.leases",
            "--dhcp-host=52:54:00:00:00:01,10.77.0.9",
            "--dhcp-option=option:router,10.77.0.1",
            "--pid-file=/s/n.pid",
            "--domain=t.vmnet.internal",
            "--local=/t.vmnet.internal/",
            "--host-record=host.t.vmnet.internal,10.77.0.1",
            "--addn-hosts=/s/n.hosts",
            "--dhcp-hostsfile=/s/n.dhcp-hosts",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--server") || x.starts_with("--port")), "{a:?}");
        assert!(!a.iter().any(|x| x == "--enable-ra"), "no IPv6 prefix, no RA: {a:?}");
    }

    #[test]
    fn claims_are_the_named_ipv4_leases_of_a_mac() {
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        let text = "1700000000 52:54:00:aa:00:01 10.77.0.5 gamma 01:52:54:00:aa:00:01\n\
                    1700000000 52:54:00:aa:00:01 10.77.0.6 * *\n\
                    1700000000 52:54:00:AA:00:02 10.77.0.7 delta *\n\
                    duid 00:01:00:01:2c:00:00:00:52:54:00:aa:00:01\n\
                    1700000000 52:54:00:aa:00:01 fd00::5 gamma 00:01:02\n";
        assert_eq!(
            claims_of(text, mac("52:54:00:aa:00:01")),
            vec![Claim { address: "10.77.0.5".parse().unwrap(), hostname: "gamma".into(), client_id: Some("01:52:54:00:aa:00:01".into()) }]
        );
        assert_eq!(claims_of(text, mac("52:54:00:aa:00:02")).iter().map(|c| (c.hostname.as_str(), c.client_id.clone())).collect::<Vec<_>>(), vec![("delta", None)]);
        assert!(claims_of(text, mac("52:54:00:aa:00:03")).is_empty());
    }

    #[test]
    fn switches_are_honoured() {
        let switches = json!({"dnsProxy": false, "dhcp": false, "mode": "host", "routerAdvertisement": true, "ipv6Prefix": "fd00:5::/64"});
        let c = config_with(switches.clone());
        let p = plan(&c);
        assert!(needed(&p));
        let a = args(&p, "vmr-t", &files(), None);
        assert!(a.iter().any(|x| x == "--port=0"), "{a:?}");
        assert!(!a.iter().any(|x| x.starts_with("--dhcp-range=10.")), "{a:?}");
        assert!(a.iter().any(|x| x == "--enable-ra"), "{a:?}");
        assert!(a.iter().any(|x| x == "--dhcp-range=fd00:5::,ra-only,64"), "{a:?}");
        assert!(a.iter().any(|x| x == "--ra-param=vmr-t,mtu:1500,60,0"), "{a:?}");
        let mut off = switches;
        off["routerAdvertisement"] = json!(false);
        assert!(!needed(&plan(&config_with(off))));
    }

    #[test]
    fn resolv_file_is_used_only_when_given() {
        let a = args(&plan(&config_with(json!({}))), "vmr-t", &files(), Some("/etc/resolv.conf"));
        assert!(a.iter().any(|x| x == "--resolv-file=/etc/resolv.conf"));
        assert!(!a.iter().any(|x| x == "--no-resolv"));
    }

    #[test]
    fn fixed_entries_name_hosts_forward_and_reverse() {
        let mac = |s: &str| s.parse::<crate::config::MacAddr>().unwrap();
        let hosts = [
            FixedHost { mac: mac("52:54:00:00:00:01"), ipv4: "10.77.0.2".parse().unwrap(), ipv6: Some("fd00::1".parse().unwrap()), name: Some("alpha".into()) },
            FixedHost { mac: mac("52:54:00:00:00:02"), ipv4: "10.77.0.3".parse().unwrap(), ipv6: None, name: None },
            FixedHost { mac: mac("52:54:00:00:00:03"), ipv4: "10.77.0.9".parse().unwrap(), ipv6: None, name: Some("res".into()) },
        ];
        let (dhcp, names) = fixed_text(&hosts, "lab.internal", &["52:54:00:00:00:03".into()]);
        assert_eq!(dhcp, "52:54:00:00:00:01,10.77.0.2,alpha\n52:54:00:00:00:02,10.77.0.3\n");
        assert_eq!(names, "10.77.0.2 alpha.lab.internal alpha\nfd00::1 alpha.lab.internal alpha\n10.77.0.9 res.lab.internal res\n");
    }

    #[test]
    fn leases_parse() {
        let text = "1764100000 52:54:00:AA:bb:01 10.77.0.50 vm1 01:52:54:00:aa:bb:01\n\
                    1764100001 52:54:00:aa:bb:02 10.77.0.51 * *\n\
                    duid 00:01:00:01:2c:aa\n\
                    1764100002 1234 fd00::5 * 00:01\n\
                    garbage\n";
        let l = parse_leases(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], Lease { expires: 1_764_100_000, mac: "52:54:00:aa:bb:01".parse().unwrap(), address: "10.77.0.50".parse().unwrap(), hostname: Some("vm1".into()) });
        assert_eq!(l[1].hostname, None);
    }
}
