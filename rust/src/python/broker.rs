//! Bindings for `broker.rs` and the transport clients: `_native.Broker` (an
//! in-process broker on native threads, serving the Unix socket on Linux or
//! a Mach service on macOS) and `_native.Client` (one connection or XPC
//! session). Every call that can wait releases the GIL. The Python wrappers
//! with the public API are in `vmnet_rs/broker.py`.

use std::os::fd::IntoRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyString};

use super::errors::Error;
use crate::broker::launch::{self, Launch, LaunchArgs};
use crate::broker;
use crate::config::{EndpointKind, FileConfig};
use crate::xpc::{self, Dict, Value};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBroker>()?;
    m.add_class::<PyClient>()?;
    m.add("DEFAULT_SOCKET", xpc::DEFAULT_SOCKET_PATH)?;
    m.add("SOCKET_ENV", xpc::SOCKET_ENV)?;
    m.add("DEFAULT_MACH_SERVICE", crate::config::DEFAULT_MACH_SERVICE)?;
    m.add("STATE_DIR_ENV", launch::STATE_DIR_ENV)?;
    let codes = PyDict::new(m.py());
    for (name, value) in broker::protocol::code::ALL {
        codes.set_item(name, value)?;
    }
    m.add("ERROR_CODES", codes)?;
    let suffixes = PyDict::new(m.py());
    for kind in EndpointKind::ALL {
        suffixes.set_item(kind.as_str(), kind.suffix())?;
    }
    m.add("ENDPOINT_SUFFIXES", suffixes)?;
    // The receive queue (datagrams) the broker gives a datagram endpoint
    // socket (docs/endpoints.md, "The receive queue").
    m.add("DATAGRAM_QUEUE_FRAMES", crate::broker::endpoints::QUEUE_FRAMES)?;
    m.add_function(wrap_pyfunction!(default_state_dir, m)?)?;
    m.add_function(wrap_pyfunction!(default_data_dir, m)?)?;
    m.add_function(wrap_pyfunction!(socket_path, m)?)?;
    m.add_function(wrap_pyfunction!(endpoint_dir, m)?)?;
    m.add_function(wrap_pyfunction!(endpoint_path, m)?)?;
    Ok(())
}

/// The broker's state directory: `explicit`, else $VMNET_RS_STATE_DIR, else
/// the platform's (`broker::launch::state_dir`).
#[pyfunction]
#[pyo3(signature = (explicit=None))]
fn default_state_dir(explicit: Option<PathBuf>) -> String {
    launch::state_dir(explicit.as_deref()).display().to_string()
}

/// The broker's data directory (the address records, the resolver
/// markers): `explicit`, else $VMNET_RS_DATA_DIR, else `configured` (the
/// configuration's `dataDir`), else as `broker::launch::data_dir` decides.
#[pyfunction]
#[pyo3(signature = (explicit=None, configured=""))]
fn default_data_dir(explicit: Option<PathBuf>, configured: &str) -> String {
    launch::data_dir(explicit.as_deref(), configured, None).display().to_string()
}

/// The broker socket: `explicit`, else $VMNET_RS_SOCKET, else `configured`
/// (`broker::launch::socket_path`).
#[pyfunction]
#[pyo3(signature = (explicit=None, configured=xpc::DEFAULT_SOCKET_PATH))]
fn socket_path(explicit: Option<PathBuf>, configured: &str) -> String {
    launch::socket_path(explicit.as_deref(), configured).display().to_string()
}

/// The endpoint directory of a broker on `socket`: `explicit`, else
/// `configured` (the config's `endpointDir`), else the platform default
/// (`macos` None: this platform; `home` None: $HOME).
#[pyfunction]
#[pyo3(signature = (explicit, configured, socket, macos=None, home=None))]
fn endpoint_dir(explicit: Option<PathBuf>, configured: &str, socket: PathBuf, macos: Option<bool>, home: Option<PathBuf>) -> String {
    let home = home.or_else(|| std::env::var_os("HOME").map(PathBuf::from));
    let macos = macos.unwrap_or(cfg!(target_os = "macos"));
    launch::endpoint_dir_for(explicit.as_deref(), configured, &socket, macos, home.as_deref()).display().to_string()
}

/// The socket path of `network`'s endpoint of `kind` ("stream" or
/// "datagram") under `dir`.
#[pyfunction]
fn endpoint_path(dir: PathBuf, network: &str, kind: &str) -> PyResult<String> {
    let kind = EndpointKind::parse(kind).ok_or_else(|| Error::Argument(format!("endpoint kind {kind:?} is not stream or datagram")))?;
    Ok(broker::endpoints::endpoint_path(&dir, network, kind).display().to_string())
}

/// Python `dict` -> message. Values: str, bool, int (int64), bytes, dict.
fn to_dict(d: &Bound<'_, PyDict>, depth: usize) -> PyResult<Dict> {
    if depth > 8 {
        return Err(PyTypeError::new_err("message nested deeper than 8 dictionaries"));
    }
    let mut out = Dict::new();
    for (k, v) in d.iter() {
        let key: String = k.extract().map_err(|_| PyTypeError::new_err("message keys must be str"))?;
        let value = if v.is_instance_of::<PyBool>() {
            Value::Bool(v.extract()?)
        } else if v.is_instance_of::<PyInt>() {
            Value::Int(v.extract().map_err(|_| PyTypeError::new_err(format!("{key}: int does not fit in int64")))?)
        } else if v.is_instance_of::<PyString>() {
            Value::String(v.extract()?)
        } else if let Ok(b) = v.cast::<PyBytes>() {
            Value::Data(b.as_bytes().to_vec())
        } else if let Ok(sub) = v.cast::<PyDict>() {
            Value::Dict(to_dict(sub, depth + 1)?)
        } else {
            return Err(PyTypeError::new_err(format!("{key}: cannot send a {} in a message", v.get_type().name()?)));
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// Message -> Python `dict`; fds become ints the caller owns.
fn from_dict<'py>(py: Python<'py>, d: Dict) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let entries: Vec<(String, Value)> = {
        let mut d = d;
        let keys: Vec<String> = d.iter().map(|(k, _)| k.clone()).collect();
        keys.into_iter().filter_map(|k| d.remove(&k).map(|v| (k, v))).collect()
    };
    for (k, v) in entries {
        match v {
            Value::String(s) => out.set_item(k, s)?,
            Value::Int(i) => out.set_item(k, i)?,
            Value::Bool(b) => out.set_item(k, b)?,
            Value::Data(b) => out.set_item(k, PyBytes::new(py, &b))?,
            Value::Dict(sub) => out.set_item(k, from_dict(py, sub)?)?,
            Value::Fd(fd) => out.set_item(k, fd.into_raw_fd())?,
        }
    }
    Ok(out)
}

/// An in-process broker serving a Unix socket.
#[pyclass(name = "Broker", module = "vmnet_rs._native", frozen)]
pub struct PyBroker {
    /// Its options and where it serves (Linux: the socket path; macOS: the
    /// Mach service name), decided by `broker::launch` as for `vmnet-rs-broker`.
    launch: Launch,
    running: Mutex<Option<broker::Broker>>,
}

#[pymethods]
impl PyBroker {
    /// Every default below is `broker::launch`'s (the same as
    /// `vmnet-rs-broker`'s). socket: path (None: $VMNET_RS_SOCKET, else the
    /// config's `socket`); config_json:
    /// the whole configuration in the file's shape (`{"broker": {...},
    /// "vmnet": {...}}`, as `vmnet_rs.config.Config.to_json()` writes it;
    /// None: the built-ins); idle_timeout overrides the settings' (seconds,
    /// 0 = never); backend: "platform" or "hub" (test double); state_dir:
    /// the Linux backend's records; mach_service (macOS): the service to
    /// serve (None: the settings' `machService`); code_signing_requirement
    /// (macOS): a requirement every caller must satisfy;
    /// lima_serialization_rule (macOS): before 26.2, serialization only for
    /// callers with the broker's own CDHash; endpoints: serve each
    /// configured network's socket paths (docs/endpoints.md) under
    /// endpoint_dir (None: the config's `endpointDir`, else the platform
    /// default); config_source: the file config_json came from, named in
    /// refusals (None: the built-ins); exit_when_idle: exit by itself when
    /// idle even if not started on demand (None: when idle_timeout is given);
    /// host_dns (Linux): the DNS proxy forwards to the host's resolvers unless
    /// $VMNET_RS_DNS_RESOLV_FILE chose (the broker command's default).
    #[new]
    #[pyo3(signature = (socket=None, config_json=None, idle_timeout=None, backend="platform", state_dir=None, monitor_interval=1.0, mach_service=None, code_signing_requirement=None, lima_serialization_rule=false, endpoints=false, endpoint_dir=None, config_source=None, exit_when_idle=None, host_dns=false, data_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        socket: Option<PathBuf>,
        config_json: Option<&str>,
        idle_timeout: Option<u64>,
        backend: &str,
        state_dir: Option<PathBuf>,
        monitor_interval: f64,
        mach_service: Option<String>,
        code_signing_requirement: Option<String>,
        lima_serialization_rule: bool,
        endpoints: bool,
        endpoint_dir: Option<PathBuf>,
        config_source: Option<String>,
        exit_when_idle: Option<bool>,
        host_dns: bool,
        data_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let config = config_json.map(|text| FileConfig::from_json(text, "broker configuration")).transpose()?;
        let args = LaunchArgs {
            config,
            config_source,
            config_error: None,
            socket,
            mach_service,
            state_dir,
            data_dir,
            idle_timeout,
            exit_when_idle,
            backend: Some(backend.to_owned()),
            monitor_interval: Some(monitor_interval),
            code_signing_requirement,
            lima_serialization_rule,
            endpoints,
            endpoint_dir,
            host_dns,
        };
        let l = launch::launch(args).map_err(|e| Error::Argument(e.to_string()))?;
        Ok(PyBroker { launch: l, running: Mutex::new(None) })
    }

    /// Binds the socket (or takes systemd's) and starts serving. Raises
    /// BrokerError if it is already running or the socket is taken.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().is_some_and(|b| b.core().exit_reason().is_none()) {
            return Err(Error::BrokerState("the broker is already running".into()).into());
        }
        let l = self.launch.clone();
        let b = py.detach(move || l.start())?;
        *running = Some(b);
        Ok(())
    }

    /// Stops serving and releases every network; `reason` is logged, with
    /// every VM that loses its network. Idempotent.
    #[pyo3(signature = (reason=None))]
    fn stop(&self, py: Python<'_>, reason: Option<String>) {
        let b = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(b) = b {
            py.detach(move || b.stop_because(reason.as_deref().unwrap_or("stopped by its owner")));
        }
    }

    /// Waits up to `timeout` seconds (None: forever) for the broker to stop
    /// by itself (idle, shutdown command); returns why, or None if it is
    /// still running (or was never started).
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> Option<String> {
        let core = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.core().clone())?;
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        py.detach(move || core.wait(timeout))
    }

    /// True between start() and the broker stopping.
    #[getter]
    fn running(&self) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|b| b.core().exit_reason().is_none())
    }

    /// The socket path (Linux) or Mach service (macOS) served.
    #[getter]
    fn socket(&self) -> String {
        self.launch.endpoint.clone()
    }

    /// Network -> {"stream": path, "datagram": path} of the endpoints served
    /// (empty before start or without endpoints).
    #[getter]
    fn endpoints(&self) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
        let core = self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|b| b.core().clone());
        core.map(|c| {
            c.endpoint_paths()
                .into_iter()
                .map(|(n, kinds)| (n, kinds.into_iter().map(|(k, p)| (k.as_str().to_owned(), p.display().to_string())).collect()))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The line a broker prints once it serves (`Core::start_line`: where it
    /// listens, its networks, whether and when it exits by itself); the pid
    /// and endpoint also before start.
    #[getter]
    fn start_line(&self) -> String {
        match self.running.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(b) => b.start_line(),
            None => broker::start_line(&self.launch.endpoint),
        }
    }

    /// The DNS proxy's upstream file this broker sets at start (Linux, with
    /// host_dns), or None.
    #[getter]
    fn dns_resolv_file(&self) -> Option<String> {
        self.launch.dns_resolv_file.as_ref().map(|p| p.display().to_string())
    }

    #[getter]
    fn idle_timeout(&self) -> u64 {
        self.launch.options.settings.idle_timeout
    }
}

/// One connection to a broker.
#[pyclass(name = "Client", module = "vmnet_rs._native", frozen)]
pub struct PyClient {
    inner: Mutex<Option<Conn>>,
    socket: String,
}

/// One connection, by platform.
enum Conn {
    #[cfg(target_os = "linux")]
    Unix(xpc::unix::Client),
    #[cfg(target_os = "macos")]
    Mach(xpc::apple::Client),
}

impl Conn {
    fn request(&mut self, message: &Dict) -> Result<Dict, xpc::Error> {
        match self {
            #[cfg(target_os = "linux")]
            Conn::Unix(c) => c.request(message),
            #[cfg(target_os = "macos")]
            Conn::Mach(c) => c.request(message),
        }
    }

    fn request_raw(&mut self, data: &[u8]) -> Result<Dict, xpc::Error> {
        match self {
            #[cfg(target_os = "linux")]
            Conn::Unix(c) => c.request_raw(data, &[]),
            #[cfg(target_os = "macos")]
            Conn::Mach(_) => {
                let _ = data;
                Err(xpc::Error::Transport("raw records exist only on the Unix socket transport".into()))
            }
        }
    }
}

#[pymethods]
impl PyClient {
    /// Connects to `socket` (Linux; None: $VMNET_RS_SOCKET, else the
    /// default) or opens a session to `mach_service` (macOS; None: the
    /// default service). Raises BrokerUnavailableError when nothing answers.
    #[new]
    #[pyo3(signature = (socket=None, timeout=None, mach_service=None))]
    fn new(py: Python<'_>, socket: Option<PathBuf>, timeout: Option<f64>, mach_service: Option<String>) -> PyResult<Self> {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.001)));
        #[cfg(target_os = "linux")]
        let (conn, endpoint) = {
            let _ = mach_service;
            let path = xpc::unix::socket_path(socket.as_deref());
            let client = py.detach(|| xpc::unix::Client::connect(&path))?;
            client.set_timeout(timeout)?;
            (Conn::Unix(client), path.display().to_string())
        };
        #[cfg(target_os = "macos")]
        let (conn, endpoint) = {
            let _ = socket;
            let service = mach_service.unwrap_or_else(|| crate::config::DEFAULT_MACH_SERVICE.to_owned());
            let client = py.detach(|| xpc::apple::Client::connect(&service, false))?;
            client.set_timeout(timeout)?;
            (Conn::Mach(client), service)
        };
        Ok(PyClient { inner: Mutex::new(Some(conn)), socket: endpoint })
    }

    /// Sends a message (dict of str/int/bool/bytes/dict) and returns the
    /// reply; fds in the reply are ints the caller owns.
    fn request<'py>(&self, py: Python<'py>, message: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyDict>> {
        let msg = to_dict(message, 1)?;
        let reply = self.with_client(py, move |c| c.request(&msg))?;
        from_dict(py, reply)
    }

    /// Sends raw bytes as one record (for testing the broker's decoder).
    fn request_raw<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyDict>> {
        let reply = self.with_client(py, move |c| c.request_raw(&data))?;
        from_dict(py, reply)
    }

    /// Closes the connection (the broker releases its leases). Idempotent.
    fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The connection's socket fd (Linux), to poll for the broker going
    /// away; None on macOS, where the connection is an XPC session.
    fn fileno(&self) -> Option<i32> {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            #[cfg(target_os = "linux")]
            Some(Conn::Unix(c)) => Some(c.raw_fd()),
            _ => None,
        }
    }

    /// Hands the connection's socket fd (close-on-exec) to the caller, who
    /// then owns it and, with it, the leases; the client is closed. Linux
    /// only: an XPC session cannot be passed on (BrokerError on macOS).
    fn detach(&self) -> PyResult<i32> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.take() {
            #[cfg(target_os = "linux")]
            Some(Conn::Unix(c)) => Ok(c.into_fd().into_raw_fd()),
            #[cfg(target_os = "macos")]
            Some(conn) => {
                *guard = Some(conn);
                Err(Error::BrokerState("the broker connection is an XPC session, which cannot be passed to another process".into()).into())
            }
            None => Err(Error::BrokerState(format!("the connection to the broker on {} is closed", self.socket)).into()),
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    #[getter]
    fn socket(&self) -> String {
        self.socket.clone()
    }
}

impl PyClient {
    fn with_client<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Conn) -> Result<T, xpc::Error> + Send) -> PyResult<T> {
        let result = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_mut().map(f)
        });
        match result {
            None => Err(Error::BrokerState(format!("the connection to the broker on {} is closed", self.socket)).into()),
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e.into()),
        }
    }
}
