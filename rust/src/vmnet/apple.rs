//! The macOS backend: a [`Network`] is a `vmnet_network_ref` (macOS 26), an
//! [`Interface`](super::Interface) is a vmnet interface started on it.
//!
//! `create_network` replays the steps `mapping::configuration_steps` derives
//! from the config, calls `vmnet_network_create`, copies the serialization
//! and reads back the subnet and IPv6 prefix vmnet chose. The serialization
//! is handed to clients as the XPC object vmnet returned: `serialization()`
//! gives a tag naming it (`xpc::apple::object::Kept`), which the transport
//! replaces with the object itself. Interfaces
//! (`apple/interface.rs`) start on a fresh network object deserialized from
//! that serialization, so stopping one never releases the broker's own.
//! `apple/vz.rs` builds a Virtualization.framework attachment for clients.
//!
//! Liveness: vmnet has no query for it. A network is alive while the host
//! interface that holds its gateway address, once seen, is still there
//! (`getifaddrs`, read each time the broker's monitor asks;
//! `vmnet/host_interface.rs` decides).
//!
//! Threads: network creation runs on the caller's thread (the broker's
//! serial request queue); vmnet itself runs its blocks on the serial
//! dispatch queues each interface owns. Ownership: every CF ref is released
//! once by [`CfRef`], every XPC object once by `xpc::apple::object::Object`.

mod ffi;
mod interface;
// Virtualization.framework (objc2 class calls) is not in the model build.
#[cfg(target_os = "macos")]
pub mod vz;

use std::ffi::{c_void, CString};
use std::net::IpAddr;
use std::ptr::NonNull;
use std::sync::Mutex;

use super::host_interface::{gateway_of, HostInterfaceWatch, IfAddr};
use super::mapping::{self, Status, Step};
use super::{BackendOptions, Error, Interface, InterfaceDesc, Network, NetworkState};
use crate::config::NetworkConfig;
use crate::xpc::apple::object::{self, Kept, Object};
use crate::xpc::Dict;

pub use interface::VmnetInterface;

/// One owned reference to a CoreFoundation-style vmnet object
/// (configuration or network), released with `CFRelease` exactly once.
pub(crate) struct CfRef<T>(NonNull<T>);

impl<T> CfRef<T> {
    /// # Safety
    /// `ptr` must be NULL or a +1 CF reference the caller owns.
    pub(crate) unsafe fn from_owned(ptr: *mut T) -> Option<CfRef<T>> {
        NonNull::new(ptr).map(CfRef)
    }

    pub(crate) fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T> Drop for CfRef<T> {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference (type invariant).
        unsafe { ffi::CFRelease(self.0.as_ptr() as *const c_void) }
    }
}

// SAFETY: vmnet network and configuration objects are CF objects with atomic
// reference counts; a network is read-only after creation (its getters and
// `create_with_serialization` may be called from any thread [?]), and a
// configuration is only used by the thread that created it.
unsafe impl<T> Send for CfRef<T> {}
// SAFETY: see `Send`.
unsafe impl<T> Sync for CfRef<T> {}

fn in_addr(addr: std::net::Ipv4Addr) -> libc::in_addr {
    libc::in_addr { s_addr: u32::from(addr).to_be() }
}

fn in6_addr(addr: std::net::Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: addr.octets() }
}

fn check(step: &Step, raw: ffi::vmnet_return_t) -> Result<(), Error> {
    let status = Status::from_raw(raw);
    if status.is_success() {
        Ok(())
    } else {
        Err(mapping::status_error(step.to_string(), status))
    }
}

/// Makes one configuration call.
fn apply_step(v: &ffi::Vmnet, cfg: &CfRef<ffi::vmnet_network_configuration>, step: &Step) -> Result<(), Error> {
    let c = cfg.as_ptr();
    // SAFETY: (all calls) `c` is a live configuration; pointers passed point
    // to locals that outlive the call.
    unsafe {
        match step {
            Step::Create { .. } => Ok(()),
            Step::SetExternalInterface(name) => {
                let name = CString::new(name.as_str())
                    .map_err(|_| Error::Platform { op: step.to_string(), source: "name contains a NUL byte".into() })?;
                check(step, (v.f.vmnet_network_configuration_set_external_interface)(c, name.as_ptr()))
            }
            Step::DisableNat44 => {
                (v.f.vmnet_network_configuration_disable_nat44)(c);
                Ok(())
            }
            Step::DisableNat66 => {
                (v.f.vmnet_network_configuration_disable_nat66)(c);
                Ok(())
            }
            Step::DisableDhcp => {
                (v.f.vmnet_network_configuration_disable_dhcp)(c);
                Ok(())
            }
            Step::DisableDnsProxy => {
                (v.f.vmnet_network_configuration_disable_dns_proxy)(c);
                Ok(())
            }
            Step::DisableRouterAdvertisement => {
                (v.f.vmnet_network_configuration_disable_router_advertisement)(c);
                Ok(())
            }
            Step::SetIpv4Subnet { first_host, mask } => {
                let (a, m) = (in_addr(*first_host), in_addr(*mask));
                check(step, (v.f.vmnet_network_configuration_set_ipv4_subnet)(c, &a, &m))
            }
            Step::SetIpv6Prefix { prefix, len } => {
                let p = in6_addr(*prefix);
                check(step, (v.f.vmnet_network_configuration_set_ipv6_prefix)(c, &p, *len))
            }
            Step::SetMtu(mtu) => check(step, (v.f.vmnet_network_configuration_set_mtu)(c, *mtu)),
            Step::AddPortForwardingRule { protocol, family, internal_port, external_port, internal_address } => {
                let (v4, v6);
                let addr: *const c_void = match internal_address {
                    IpAddr::V4(a) => {
                        v4 = in_addr(*a);
                        &v4 as *const libc::in_addr as *const c_void
                    }
                    IpAddr::V6(a) => {
                        v6 = in6_addr(*a);
                        &v6 as *const libc::in6_addr as *const c_void
                    }
                };
                check(
                    step,
                    (v.f.vmnet_network_configuration_add_port_forwarding_rule)(
                        c,
                        *protocol,
                        *family,
                        *internal_port,
                        *external_port,
                        addr,
                    ),
                )
            }
            Step::AddDhcpReservation { mac, address } => {
                let (e, a) = (ffi::ether_addr { octet: *mac }, in_addr(*address));
                check(step, (v.f.vmnet_network_configuration_add_dhcp_reservation)(c, &e, &a))
            }
        }
    }
}

/// A live `vmnet_network_ref` and what was learnt about it at creation.
pub struct VmnetNetwork {
    name: String,
    config: NetworkConfig,
    /// Held for the network's life (releasing it ends the network); its
    /// serialization is what interfaces start on.
    #[allow(dead_code)]
    network: CfRef<ffi::vmnet_network>,
    serialization: Object,
    /// The serialization kept for the transport while the network lives.
    kept: Kept,
    state: NetworkState,
    /// The host interface, once seen (is_alive).
    watch: Mutex<HostInterfaceWatch>,
}

impl VmnetNetwork {
    /// The raw serialization, for callers in this process that use it as XPC.
    pub fn serialization_object(&self) -> &Object {
        &self.serialization
    }
}

/// Creates the network described by `config`. All-or-nothing: on any error
/// every object made so far is released.
pub fn create_network(name: &str, config: &NetworkConfig, options: &BackendOptions) -> Result<Box<dyn Network>, Error> {
    let _ = options;
    // A subnet the host already uses (an interface's address inside it)
    // would collide; say which network and which interface, before creating.
    if let (Some(subnet), Some(entries)) = (config.subnet(), interface_addresses()) {
        if let Some(iface) = crate::vmnet::host_interface::subnet_collision(&entries, &subnet) {
            return Err(Error::Platform {
                op: format!("create network {name}"),
                source: format!("subnet {subnet} of network {name} overlaps the address of host interface {iface}; choose another subnet").into(),
            });
        }
    }
    let steps = mapping::configuration_steps(config);
    let v = ffi::vmnet()?;
    let Some(Step::Create { mode }) = steps.first() else {
        return Err(Error::Platform { op: "plan vmnet configuration".into(), source: "no create step".into() });
    };

    let mut raw_status: ffi::vmnet_return_t = 0;
    // SAFETY: plain mode value and a valid status out-pointer; +1 or NULL.
    let cfg = unsafe { CfRef::from_owned((v.f.vmnet_network_configuration_create)(*mode, &mut raw_status)) }
        .ok_or_else(|| mapping::network_create_error(steps[0].to_string(), Status::from_raw(raw_status)))?;
    for step in &steps[1..] {
        apply_step(v, &cfg, step)?;
    }

    let mut raw_status: ffi::vmnet_return_t = 0;
    // SAFETY: `cfg` is live; +1 or NULL.
    let network = unsafe { CfRef::from_owned((v.f.vmnet_network_create)(cfg.as_ptr(), &mut raw_status)) }
        .ok_or_else(|| mapping::network_create_error(format!("vmnet_network_create({name})"), Status::from_raw(raw_status)))?;
    drop(cfg);

    let mut raw_status: ffi::vmnet_return_t = 0;
    // SAFETY: `network` is live; the result is a +1 XPC object or NULL.
    let serialization =
        unsafe { Object::from_owned((v.f.vmnet_network_copy_serialization)(network.as_ptr(), &mut raw_status)) }
            .ok_or_else(|| mapping::status_error("vmnet_network_copy_serialization", Status::from_raw(raw_status)))?;

    let state = read_state(v, &network)?;
    log::info!("vmnet network {name} created: {} {:?}", state.subnet, state.ipv6_prefix);
    // vmnet_network_get_ipv4_subnet (vmnet/vmnet.h, read by read_state) says
    // what vmnet really gave; it may differ from the subnet asked for.
    if let Some(changed) = crate::vmnet::host_interface::subnet_changed(name, config.subnet(), &state.subnet) {
        log::warn!("{changed}");
    }
    // The broker passes the object itself on; whether its Dict form would
    // rebuild it unchanged matters only to clients that rebuild it.
    // SAFETY: the serialization is a live XPC object.
    match unsafe { object::round_trips(serialization.as_ptr()) } {
        Ok(true) => log::debug!("vmnet network {name}: the serialization survives a round trip through Dict"),
        Ok(false) => log::warn!("vmnet network {name}: the serialization changes in a round trip through Dict; clients that rebuild it may fail"),
        Err(e) => log::warn!("vmnet network {name}: the serialization cannot be converted to Dict ({e}); clients that rebuild it will fail"),
    }
    let kept = Kept::new(&serialization);
    let watch = Mutex::new(HostInterfaceWatch::new());
    Ok(Box::new(VmnetNetwork { name: name.to_owned(), config: config.clone(), network, serialization, kept, state, watch }))
}

fn read_state(v: &ffi::Vmnet, network: &CfRef<ffi::vmnet_network>) -> Result<NetworkState, Error> {
    let mut subnet = libc::in_addr { s_addr: 0 };
    let mut mask = libc::in_addr { s_addr: 0 };
    let mut prefix = libc::in6_addr { s6_addr: [0; 16] };
    let mut prefix_len: u8 = 0;
    // SAFETY: `network` is live; the out-pointers are valid locals.
    unsafe {
        (v.f.vmnet_network_get_ipv4_subnet)(network.as_ptr(), &mut subnet, &mut mask);
        (v.f.vmnet_network_get_ipv6_prefix)(network.as_ptr(), &mut prefix, &mut prefix_len);
    }
    let v4 = |a: libc::in_addr| std::net::Ipv4Addr::from(u32::from_be(a.s_addr));
    let v6 = std::net::Ipv6Addr::from(prefix.s6_addr);
    Ok(mapping::network_state(v4(subnet), v4(mask), Some((v6, prefix_len)))?)
}

impl Network for VmnetNetwork {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &NetworkConfig {
        &self.config
    }

    fn state(&self) -> NetworkState {
        self.state.clone()
    }

    /// A tag naming the kept serialization: converted to XPC (the broker's
    /// reply), it becomes the object vmnet returned, unchanged. Valid in this
    /// process while the network lives.
    fn serialization(&self) -> Result<Dict, Error> {
        Ok(self.kept.tag())
    }

    fn start_interface(&self, desc: &InterfaceDesc) -> Result<Box<dyn Interface>, Error> {
        VmnetInterface::start(&self.name, &self.serialization, desc, &self.config)
            .map(|i| Box::new(i) as Box<dyn Interface>)
    }

    /// False once the host interface that held the gateway address, seen
    /// before, is gone. Unknown (no gateway, `getifaddrs` failed) is alive.
    fn is_alive(&self) -> bool {
        let Some(gateway) = gateway_of(&self.state.subnet) else { return true };
        let Some(entries) = interface_addresses() else { return true };
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        let alive = watch.observe(&entries, gateway);
        if !alive {
            log::warn!("vmnet network {}: its host interface {} is gone", self.name, watch.seen().unwrap_or("?"));
        }
        alive
    }
}

/// Every IPv4/IPv6 address of every host interface (ifaddrs.h
/// `getifaddrs`), or `None` when it fails.
fn interface_addresses() -> Option<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is an entry of the list getifaddrs returned, live
        // until freeifaddrs; its name is a C string and its address (if
        // any) a sockaddr of the family it names.
        unsafe {
            let entry = &*cur;
            let addr = entry.ifa_addr;
            if !addr.is_null() {
                let ip = match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                };
                if let Some(addr) = ip {
                    let name = std::ffi::CStr::from_ptr(entry.ifa_name).to_string_lossy().into_owned();
                    out.push(IfAddr { name, addr });
                }
            }
            cur = entry.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}

/// Nothing to clean up on macOS: vmnet networks die with the process that
/// created them.
pub fn cleanup_stale(options: &BackendOptions) -> Result<Vec<String>, Error> {
    let _ = options;
    Ok(Vec::new())
}
