//! Bindings for `vmnet.rs`: a `Network` created in this process from its
//! JSON configuration, its TAP ports, its leases, and crash clean-up.
//!
//! Every call that creates, waits on or tears down host state releases the
//! GIL. Errors map to `vmnet_rs.errors`: a refused configuration raises
//! `ConfigError`, anything else `NetworkError`.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::errors::Error;
use crate::config::NetworkConfig;
use crate::vmnet::{self, BackendOptions, Lease, Network};

fn lease_dicts<'py>(py: Python<'py>, leases: Vec<Lease>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for l in leases {
        let d = PyDict::new(py);
        d.set_item("mac", l.mac)?;
        d.set_item("address", l.address)?;
        d.set_item("hostname", l.hostname)?;
        d.set_item("expires", l.expires)?;
        list.append(d)?;
    }
    Ok(list)
}

/// A live network owned by this process; closing it (or dropping it) tears
/// it down.
#[pyclass(name = "Network", module = "vmnet_rs._native")]
pub struct PyNetwork {
    name: String,
    inner: Option<Box<dyn Network>>,
}

impl PyNetwork {
    fn live(&self) -> PyResult<&dyn Network> {
        self.inner.as_deref().ok_or_else(|| Error::NetworkState(format!("network {:?} is closed", self.name)).into())
    }
}

#[pymethods]
impl PyNetwork {
    /// Creates network `name` from `config_json` (one network entry, Lima's
    /// camelCase keys; absent keys take Lima's defaults), recording what it creates in
    /// `state_dir`. `repair`: the pieces put back when the host removes
    /// them (`None`: all, as the broker's default `repair` setting).
    #[new]
    #[pyo3(signature = (name, config_json, state_dir, repair=None))]
    fn new(py: Python<'_>, name: String, config_json: &str, state_dir: PathBuf, repair: Option<Vec<String>>) -> PyResult<Self> {
        let config = NetworkConfig::from_json(config_json, "config_json", &name)?;
        let mut options = BackendOptions { state_dir, ..Default::default() };
        if let Some(pieces) = repair {
            options.repair.pieces = pieces;
        }
        let n = name.clone();
        let inner = py.detach(move || vmnet::create_network(&n, &config, &options))?;
        Ok(PyNetwork { name, inner: Some(inner) })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// `{"subnet", "ipv6_prefix", "device"}` as the network actually got them.
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.live()?.state();
        let d = PyDict::new(py);
        d.set_item("subnet", s.subnet)?;
        d.set_item("ipv6_prefix", s.ipv6_prefix)?;
        d.set_item("device", s.device)?;
        Ok(d)
    }

    fn is_alive(&self, py: Python<'_>) -> bool {
        match &self.inner {
            Some(n) => py.detach(|| n.is_alive()),
            None => false,
        }
    }

    /// The DHCP leases: a list of `{"mac", "address", "hostname", "expires"}`.
    fn leases<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let leases = self.live()?.leases()?;
        lease_dicts(py, leases)
    }

    /// Opens a TAP port on the network and returns `(fd, name)`; the caller
    /// owns the fd (the port goes when it is closed). `mac` is the MAC the
    /// VM will use (`aa:bb:cc:dd:ee:ff`).
    #[cfg(target_os = "linux")]
    #[pyo3(signature = (mac=None, isolation=false, vnet_hdr=false))]
    fn start_tap(&self, py: Python<'_>, mac: Option<&str>, isolation: bool, vnet_hdr: bool) -> PyResult<(i32, String)> {
        use std::os::fd::IntoRawFd;
        let mac = mac.map(super::config::mac_arg).transpose()?;
        let desc = vmnet::InterfaceDesc { mac, isolation, offload: vnet_hdr };
        let net = self.live()?;
        let tap = py.detach(|| net.start_tap(&desc, vnet_hdr))?;
        let name = tap.name().to_string();
        Ok((tap.into_fd().into_raw_fd(), name))
    }

    /// Tears the network down. Idempotent.
    fn close(&mut self, py: Python<'_>) {
        if let Some(n) = self.inner.take() {
            py.detach(move || drop(n));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            Some(n) => format!("<Network {:?} on {}>", self.name, n.state().device),
            None => format!("<Network {:?} closed>", self.name),
        }
    }
}

/// Removes what crashed earlier runs left (networks recorded in `state_dir`
/// whose creating process is gone); returns a line per thing removed.
#[pyfunction]
fn cleanup_stale_networks(py: Python<'_>, state_dir: PathBuf) -> PyResult<Vec<String>> {
    let options = BackendOptions { state_dir, ..Default::default() };
    py.detach(move || vmnet::cleanup_stale(&options)).map_err(PyErr::from)
}

/// The DHCP leases of network `name` recorded in `state_dir`, read from its
/// lease file (the network may belong to another process, e.g. the broker).
#[pyfunction]
fn network_leases<'py>(py: Python<'py>, name: &str, state_dir: PathBuf) -> PyResult<Bound<'py, PyList>> {
    #[cfg(target_os = "linux")]
    {
        let leases = vmnet::linux::read_leases(name, &BackendOptions { state_dir, ..Default::default() })?;
        lease_dicts(py, leases)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (py, state_dir);
        Err(Error::NetworkState(format!("leases of network {name:?}: only the Linux backend keeps a lease file; ask the broker")).into())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    #[cfg(target_os = "linux")]
    m.add("DEFAULT_NETWORK_STATE_DIR", vmnet::linux::DEFAULT_STATE_DIR)?;
    #[cfg(not(target_os = "linux"))]
    m.add("DEFAULT_NETWORK_STATE_DIR", "")?;
    m.add_class::<PyNetwork>()?;
    m.add_function(wrap_pyfunction!(cleanup_stale_networks, m)?)?;
    m.add_function(wrap_pyfunction!(network_leases, m)?)?;
    Ok(())
}
