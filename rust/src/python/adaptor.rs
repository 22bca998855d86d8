//! Bindings for `adaptor.rs`: `_native.Adaptor` (a relay on a TAP given by
//! name or fd, or on a port of a network this object creates and keeps),
//! and the benchmark's native hot loops (`bench_*`, see `adaptor/bench.rs`).
//!
//! Every call that can wait (creating networks and TAPs, stopping, waiting,
//! running a benchmark flow) releases the GIL. Errors: a bad argument raises
//! `ConfigError`; a network or TAP that cannot be made `NetworkError`; a
//! relay that cannot start `AdaptorError`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::config::mac_arg;
use super::errors::Error;
use crate::adaptor::{Adaptor, DirectionStats, Kind, Options};
use crate::vmnet::{self, InterfaceInfo, Network};

/// A close-on-exec duplicate of a caller's fd, owned by us.
fn dup_fd(fd: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on a caller-supplied fd; it fails cleanly if
    // the fd is not open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: dup is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn stats_dict<'py>(py: Python<'py>, s: &DirectionStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in s.named() {
        d.set_item(name, value)?;
    }
    Ok(d)
}

/// A packet relay between a VM socket (`fileno()`) and a TAP or network port.
#[pyclass(name = "Adaptor", module = "vmnet_rs._native")]
pub struct PyAdaptor {
    kind: Kind,
    adaptor: Option<Adaptor>,
    vm: Option<OwnedFd>,
    /// A network this object created (broker-free path); dropped after the relay.
    network: Option<Box<dyn Network>>,
    network_name: Option<String>,
    subnet: Option<String>,
    device: Option<String>,
    info: InterfaceInfo,
}

// Fields drop in order: the relay stops before the VM end closes and
// before a network this object created is torn down.

struct Started {
    interface: Box<dyn vmnet::Interface>,
    device: Option<String>,
    network: Option<Box<dyn Network>>,
    subnet: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn open_interface(
    tap: Option<String>,
    tap_fd: Option<i32>,
    netns: Option<String>,
    network: Option<String>,
    config_json: Option<String>,
    state_dir: Option<PathBuf>,
    mac: Option<[u8; 6]>,
    vnet_hdr: bool,
    tap_offload: bool,
) -> Result<Started, Error> {
    if let Some(name) = network {
        let config_json = config_json.ok_or_else(|| Error::Argument(format!("network {name:?}: a configuration (config_json) is needed to create it")))?;
        let config = crate::NetworkConfig::from_json(&config_json, "config_json", &name)?;
        #[cfg(target_os = "linux")]
        let default_dir = PathBuf::from(vmnet::linux::DEFAULT_STATE_DIR);
        #[cfg(not(target_os = "linux"))]
        let default_dir = std::env::temp_dir().join("vmnet-rs");
        let options = vmnet::BackendOptions { state_dir: state_dir.unwrap_or(default_dir), ..Default::default() };
        let net = vmnet::create_network(&name, &config, &options).map_err(Error::network(format!("create network {name:?}")))?;
        let desc = vmnet::InterfaceDesc { mac, isolation: false, offload: vnet_hdr };
        let interface = net.start_interface(&desc).map_err(Error::network(format!("start a port on network {name:?}")))?;
        let state = net.state();
        return Ok(Started { interface, device: None, subnet: Some(state.subnet), network: Some(net) });
    }
    #[cfg(target_os = "linux")]
    {
        use vmnet::tap::Tap;
        // tap_offload: the TAP speaks virtio-net headers to the kernel, the
        // relay plain frames (as a broker's relayed port, tap.rs).
        let with_header = vnet_hdr || tap_offload;
        let mut t = match (tap, tap_fd) {
            (Some(name), None) => match &netns {
                Some(ns) => Tap::create_in_netns(ns, &name, with_header),
                None => Tap::create(&name, with_header),
            }
            .map_err(Error::network(format!("create or attach TAP {name:?} (needs CAP_NET_ADMIN and /dev/net/tun)")))?,
            (None, Some(fd)) => {
                let owned = dup_fd(fd).map_err(Error::network(format!("duplicate tap_fd {fd}")))?;
                Tap::from_fd(owned).map_err(Error::network(format!("tap_fd {fd} is not a usable TAP device")))?
            }
            _ => unreachable!("checked by the caller"),
        };
        if tap_offload {
            let name = t.name().to_string();
            t.offload_in_userspace().map_err(Error::network(format!("turn on the offloads of TAP {name:?} (tap_offload)")))?;
        }
        t.set_peer_mac(mac.unwrap_or_else(|| crate::config::MacAddr::random().0));
        let device = Some(t.name().to_string());
        Ok(Started { interface: Box::new(t), device, network: None, subnet: None })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tap, tap_fd, netns, mac, vnet_hdr, tap_offload);
        Err(Error::NetworkState("TAP devices exist only on Linux; use network=... instead".into()))
    }
}

#[pymethods]
impl PyAdaptor {
    /// Starts a relay of `kind` ("datagram", "datagram_next", "stream") on
    /// exactly one of: TAP `tap` (created, or attached if it exists; inside
    /// network namespace `netns` if given), an open TAP fd `tap_fd` (dup'd),
    /// or a new port on network `network`, created here from `config_json`
    /// and kept alive by this object. `tap_offload` (with a TAP) opens it
    /// as a broker opens a relayed port's TAP: offloads on towards the
    /// kernel, segmented and merged in user space, plain frames to the VM.
    #[new]
    #[pyo3(signature = (kind, *, tap=None, tap_fd=None, netns=None, network=None, config_json=None, state_dir=None, mac=None, vnet_hdr=false, tap_offload=false, send_buffer_bytes=None, recv_buffer_bytes=None, vm_socket_fd=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        kind: &str,
        tap: Option<String>,
        tap_fd: Option<i32>,
        netns: Option<String>,
        network: Option<String>,
        config_json: Option<String>,
        state_dir: Option<PathBuf>,
        mac: Option<&str>,
        vnet_hdr: bool,
        tap_offload: bool,
        send_buffer_bytes: Option<usize>,
        recv_buffer_bytes: Option<usize>,
        vm_socket_fd: Option<i32>,
    ) -> PyResult<Self> {
        let k = Kind::parse(kind).ok_or_else(|| {
            Error::Argument(format!("adaptor kind {kind:?} is not one of datagram, datagram_next, stream"))
        })?;
        let given = [tap.is_some(), tap_fd.is_some(), network.is_some()].iter().filter(|b| **b).count();
        if given != 1 {
            return Err(Error::Argument("give exactly one of tap=NAME, tap_fd=FD or network=NAME".into()).into());
        }
        if netns.is_some() && tap.is_none() {
            return Err(Error::Argument("netns= applies only with tap=NAME".into()).into());
        }
        if tap_offload && network.is_some() {
            return Err(Error::Argument("tap_offload= applies only with tap=NAME or tap_fd=FD (a network's port follows the network's offload setting)".into()).into());
        }
        if tap_offload && vnet_hdr {
            return Err(Error::Argument("give at most one of vnet_hdr=True (the VM speaks virtio-net headers) and tap_offload=True (the relay does the offloads)".into()).into());
        }
        let mac = mac.map(mac_arg).transpose()?;
        let network_name = network.clone();
        let netns_for_socket = netns.clone();
        let started = py
            .detach(move || open_interface(tap, tap_fd, netns, network, config_json, state_dir, mac, vnet_hdr, tap_offload))
            ?;
        let info = started.interface.info().clone();
        let options = Options { send_buffer_bytes, recv_buffer_bytes };
        let (adaptor, vm) = match vm_socket_fd {
            None => {
                let interface = started.interface;
                let start = move || Adaptor::start(interface, k, &options);
                // With netns, the socketpair is made inside the namespace too,
                // so it gets that namespace's unix socket settings
                // (net.unix.max_dgram_qlen).
                let result = match &netns_for_socket {
                    #[cfg(target_os = "linux")]
                    Some(ns) => py
                        .detach(|| vmnet::tap::in_netns(ns, start))
                        .map_err(Error::adaptor(format!("start a {kind} adaptor in network namespace {ns}")))?,
                    _ => start(),
                };
                let (a, vm) = result.map_err(Error::adaptor(format!("start a {kind} adaptor")))?;
                (a, Some(vm))
            }
            Some(fd) => {
                let socket = dup_fd(fd).map_err(Error::adaptor(format!("duplicate vm_socket_fd {fd}")))?;
                let a = Adaptor::start_with_socket(started.interface, k, socket, &options)
                    .map_err(Error::adaptor(format!("start a {kind} adaptor on fd {fd}")))?;
                (a, None)
            }
        };
        Ok(PyAdaptor {
            kind: k,
            adaptor: Some(adaptor),
            vm,
            network: started.network,
            network_name,
            subnet: started.subnet,
            device: started.device,
            info,
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The VM end of the socket (owned by this object; dup it to keep it).
    fn fileno(&self) -> PyResult<i32> {
        self.vm.as_ref().map(|fd| fd.as_raw_fd()).ok_or_else(|| Error::AdaptorState("the adaptor is closed or its VM end was detached".into()).into())
    }

    /// Hands the VM end over: returns its fd, now owned by the caller, and
    /// stops holding it, so the relay sees the VM's close (EOF) once every
    /// copy is closed.
    fn detach(&mut self) -> PyResult<i32> {
        use std::os::fd::IntoRawFd;
        self.vm.take().map(|fd| fd.into_raw_fd()).ok_or_else(|| Error::AdaptorState("the VM end was already detached or the adaptor is closed".into()).into())
    }

    /// `{"mac", "mtu", "max_frame_bytes", "offload", "kind", "device",
    /// "network", "subnet", "send_buffer_bytes", "recv_buffer_bytes",
    /// "batched"}`.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("mac", crate::config::format_mac(&self.info.mac))?;
        d.set_item("mtu", self.info.mtu)?;
        d.set_item("max_frame_bytes", self.info.max_frame_bytes)?;
        d.set_item("offload", self.info.offload)?;
        d.set_item("kind", self.kind.as_str())?;
        d.set_item("device", self.device.clone())?;
        d.set_item("network", self.network_name.clone())?;
        d.set_item("subnet", self.subnet.clone())?;
        let buffers = self.adaptor.as_ref().map(|a| a.socket_buffers()).unwrap_or_default();
        d.set_item("send_buffer_bytes", buffers.send_bytes)?;
        d.set_item("recv_buffer_bytes", buffers.recv_bytes)?;
        d.set_item("batched", self.kind != Kind::Datagram && (self.kind == Kind::Stream || crate::adaptor::batched_datagrams_available()))?;
        Ok(d)
    }

    /// `{"host_to_vm": {...}, "vm_to_host": {...}}`, each with packets,
    /// bytes, batches, drops, waits, errors, malformed, runts, refused.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.adaptor.as_ref().map(|a| a.stats()).unwrap_or_default();
        let d = PyDict::new(py);
        d.set_item("host_to_vm", stats_dict(py, &s.host_to_vm)?)?;
        d.set_item("vm_to_host", stats_dict(py, &s.vm_to_host)?)?;
        Ok(d)
    }

    fn is_running(&self) -> bool {
        self.adaptor.as_ref().is_some_and(|a| a.is_running())
    }

    /// Why the relay ended (None while it runs).
    fn end_reason(&self) -> Option<String> {
        self.adaptor.as_ref().and_then(|a| a.end_reason()).map(|r| r.to_string())
    }

    /// Waits up to `timeout` seconds for the relay to end by itself.
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        match &self.adaptor {
            Some(a) => py.detach(|| a.wait(Duration::from_secs_f64(timeout.max(0.0)))),
            None => true,
        }
    }

    /// Stops the relay, closes the VM end and tears down a network this
    /// object created. Idempotent.
    fn close(&mut self, py: Python<'_>) {
        let adaptor = self.adaptor.take();
        let vm = self.vm.take();
        let network = self.network.take();
        py.detach(move || {
            if let Some(mut a) = adaptor {
                a.stop();
            }
            drop(vm);
            drop(network);
        });
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        let on = self.device.clone().or_else(|| self.network_name.clone()).unwrap_or_default();
        let state = if self.adaptor.is_none() { "closed" } else if self.is_running() { "running" } else { "ended" };
        format!("<Adaptor {} on {on} {state}>", self.kind.as_str())
    }
}

/// Benchmark parts (Linux): TAPs in namespaces, the per-frame baseline
/// relay and the native generator/sink flows.
#[cfg(target_os = "linux")]
mod bench {
    use super::*;
    use crate::adaptor::bench::{self as b, Flow, Framing, PerFrameRelay};
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;

    /// Creates (or attaches to) TAP `name` inside network namespace `netns`
    /// and returns its fd; the caller owns it (the TAP goes when it closes).
    #[pyfunction]
    pub fn bench_open_tap(py: Python<'_>, netns: String, name: String) -> PyResult<i32> {
        let tap = py
            .detach(move || vmnet::tap::Tap::create_in_netns(&netns, &name, false))
            .map_err(Error::network("create a benchmark TAP"))?;
        Ok(tap.into_fd().into_raw_fd())
    }

    /// The per-frame baseline relay on a TAP fd (dup'd): `fileno()` is its VM end.
    #[pyclass(name = "BenchPerFrameRelay", module = "vmnet_rs._native")]
    pub struct PyPerFrameRelay {
        relay: Option<PerFrameRelay>,
        vm: Option<OwnedFd>,
    }

    #[pymethods]
    impl PyPerFrameRelay {
        /// `netns`: make the socketpair inside that namespace (its unix
        /// socket settings apply), as `Adaptor(netns=...)` does.
        #[new]
        #[pyo3(signature = (tap_fd, netns=None))]
        fn new(py: Python<'_>, tap_fd: i32, netns: Option<String>) -> PyResult<Self> {
            let tap = dup_fd(tap_fd).map_err(Error::adaptor(format!("duplicate tap_fd {tap_fd}")))?;
            let started = match netns {
                Some(ns) => py.detach(move || vmnet::tap::in_netns(&ns, move || PerFrameRelay::start(tap))).and_then(|r| r),
                None => PerFrameRelay::start(tap),
            };
            let (relay, vm) = started.map_err(Error::adaptor("start the per-frame relay"))?;
            Ok(PyPerFrameRelay { relay: Some(relay), vm: Some(vm) })
        }

        fn fileno(&self) -> PyResult<i32> {
            self.vm.as_ref().map(|f| f.as_raw_fd()).ok_or_else(|| Error::AdaptorState("the relay is closed".into()).into())
        }

        /// Frames moved: `(vm_to_host, host_to_vm)`.
        fn counters(&self) -> (u64, u64) {
            self.relay.as_ref().map_or((0, 0), |r| (r.counters.vm_to_host.load(Ordering::Relaxed), r.counters.host_to_vm.load(Ordering::Relaxed)))
        }

        fn close(&mut self, py: Python<'_>) {
            let (relay, vm) = (self.relay.take(), self.vm.take());
            py.detach(move || {
                drop(relay);
                drop(vm);
            });
        }
    }

    /// Runs generator -> sink flows at once for `seconds`. Each flow is
    /// `(source_fd, source_framing, sink_fd, sink_framing, src_mac,
    /// dst_mac)`, framings `datagram`, `stream` or `tap`; fds are dup'd.
    /// Returns `{"window_s", "process_cpu_s", "flows": [{"sent",
    /// "received", "received_in_window", "bytes_in_window", "reordered",
    /// "generator_cpu_s", "sink_cpu_s"}]}`.
    #[pyfunction]
    pub fn bench_flows<'py>(
        py: Python<'py>,
        flows: Vec<(i32, String, i32, String, String, String)>,
        frame_bytes: usize,
        seconds: f64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut specs = Vec::new();
        for (src, src_framing, dst, dst_framing, src_mac, dst_mac) in flows {
            let framing = |s: &str| Framing::parse(s).ok_or_else(|| Error::Argument(format!("framing {s:?} is not datagram, stream or tap")));
            let fd = |f: i32| dup_fd(f).map_err(Error::adaptor(format!("duplicate fd {f}")));
            specs.push(Flow {
                source: fd(src)?,
                source_framing: framing(&src_framing)?,
                sink: fd(dst)?,
                sink_framing: framing(&dst_framing)?,
                src_mac: mac_arg(&src_mac)?,
                dst_mac: mac_arg(&dst_mac)?,
            });
        }
        let window = Duration::from_secs_f64(seconds.max(0.01));
        let r = py.detach(move || b::run_flows(specs, frame_bytes, window)).map_err(Error::adaptor("benchmark flows"))?;
        let d = PyDict::new(py);
        d.set_item("window_s", r.window_s)?;
        d.set_item("process_cpu_s", r.process_cpu_s)?;
        let list = pyo3::types::PyList::empty(py);
        for f in &r.flows {
            let fd = PyDict::new(py);
            fd.set_item("sent", f.sent)?;
            fd.set_item("received", f.received)?;
            fd.set_item("received_in_window", f.received_in_window)?;
            fd.set_item("bytes_in_window", f.bytes_in_window)?;
            fd.set_item("reordered", f.reordered)?;
            fd.set_item("generator_cpu_s", f.generator_cpu_s)?;
            fd.set_item("sink_cpu_s", f.sink_cpu_s)?;
            list.append(fd)?;
        }
        d.set_item("flows", list)?;
        Ok(d)
    }
}

/// Whether a broker here opens relayed ports' TAPs with the user-space
/// offload (`VMNET_RS_TAP_OFFLOAD`, read in `vmnet::tap`).
#[cfg(target_os = "linux")]
#[pyfunction]
fn tap_userspace_offload_wanted() -> bool {
    vmnet::tap::userspace_offload_wanted()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAdaptor>()?;
    #[cfg(target_os = "linux")]
    {
        m.add_class::<bench::PyPerFrameRelay>()?;
        m.add_function(wrap_pyfunction!(bench::bench_open_tap, m)?)?;
        m.add_function(wrap_pyfunction!(bench::bench_flows, m)?)?;
        m.add_function(wrap_pyfunction!(tap_userspace_offload_wanted, m)?)?;
    }
    Ok(())
}
