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

use super::errors;
use crate::broker::{self, Backend, BrokerOptions};
use crate::config::FileConfig;
use crate::xpc::{self, Dict, Value};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBroker>()?;
    m.add_class::<PyClient>()?;
    m.add("DEFAULT_SOCKET", xpc::DEFAULT_SOCKET_PATH)?;
    Ok(())
}

fn broker_error(message: String) -> PyErr {
    errors::BrokerError::new_err(message)
}

fn transport_error(e: xpc::Error) -> PyErr {
    match e {
        xpc::Error::Unavailable(m) => errors::BrokerUnavailableError::new_err(m),
        other => broker_error(other.to_string()),
    }
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
    options: BrokerOptions,
    /// Linux: the socket path; macOS: the Mach service name.
    endpoint: String,
    running: Mutex<Option<broker::Broker>>,
}

#[pymethods]
impl PyBroker {
    /// socket: path (None: $VMNET_RS_SOCKET, else the default); config_json:
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
    /// idle even if not started on demand (None: when idle_timeout is given).
    #[new]
    #[pyo3(signature = (socket=None, config_json=None, idle_timeout=None, backend="platform", state_dir=None, monitor_interval=1.0, mach_service=None, code_signing_requirement=None, lima_serialization_rule=false, endpoints=false, endpoint_dir=None, config_source=None, exit_when_idle=None))]
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
    ) -> PyResult<Self> {
        let mut options = BrokerOptions::new();
        options.config_source = config_source;
        options.exit_when_idle = exit_when_idle.unwrap_or(idle_timeout.is_some());
        if let Some(text) = config_json {
            let file = FileConfig::from_json(text, "broker configuration").map_err(|e| errors::config_error(e))?;
            options.settings = file.broker;
            options.networks = file.networks;
        }
        if let Some(t) = idle_timeout {
            options.settings.idle_timeout = t;
        }
        options.backend = Backend::parse(backend)
            .ok_or_else(|| errors::ConfigError::new_err(format!("unknown backend {backend:?} (platform or hub)")))?;
        if let Some(d) = state_dir {
            options.backend_options.state_dir = d;
        }
        if !(monitor_interval > 0.0 && monitor_interval < 3600.0) {
            return Err(errors::ConfigError::new_err(format!("monitor_interval {monitor_interval} must be in (0, 3600) seconds")));
        }
        options.monitor_interval = Duration::from_secs_f64(monitor_interval);
        options.code_signing_requirement = code_signing_requirement;
        options.lima_serialization_rule = lima_serialization_rule;
        #[cfg(target_os = "linux")]
        let endpoint = {
            let _ = mach_service;
            xpc::unix::socket_path(socket.as_deref()).display().to_string()
        };
        #[cfg(target_os = "macos")]
        let endpoint = {
            let _ = socket;
            mach_service.unwrap_or_else(|| options.settings.mach_service.clone())
        };
        if endpoints {
            let configured = Some(PathBuf::from(&options.settings.endpoint_dir)).filter(|p| !p.as_os_str().is_empty());
            #[cfg(target_os = "linux")]
            let default = broker::endpoints::default_dir(std::path::Path::new(&endpoint));
            #[cfg(target_os = "macos")]
            let default = broker::endpoints::default_dir(std::path::Path::new(""));
            options.endpoint_dir = Some(endpoint_dir.or(configured).unwrap_or(default));
        } else if endpoint_dir.is_some() {
            return Err(errors::ConfigError::new_err("endpoint_dir given with endpoints=False: turn endpoints on or leave the directory out"));
        }
        Ok(PyBroker { options, endpoint, running: Mutex::new(None) })
    }

    /// Binds the socket (or takes systemd's) and starts serving. Raises
    /// BrokerError if it is already running or the socket is taken.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().is_some_and(|b| b.core().exit_reason().is_none()) {
            return Err(broker_error("the broker is already running".into()));
        }
        let options = self.options.clone();
        let endpoint = self.endpoint.clone();
        let b = py
            .detach(move || -> Result<broker::Broker, broker::Error> {
                #[cfg(target_os = "linux")]
                return broker::Broker::start_unix(options, xpc::unix::Socket::open(std::path::Path::new(&endpoint))?);
                #[cfg(target_os = "macos")]
                return broker::Broker::start_mach(options, &endpoint);
            })
            .map_err(|e| broker_error(e.to_string()))?;
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
        self.endpoint.clone()
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
            None => broker::start_line(&self.endpoint),
        }
    }

    #[getter]
    fn idle_timeout(&self) -> u64 {
        self.options.settings.idle_timeout
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
            let client = py.detach(|| xpc::unix::Client::connect(&path)).map_err(|e| transport_error(e))?;
            client.set_timeout(timeout).map_err(|e| transport_error(e))?;
            (Conn::Unix(client), path.display().to_string())
        };
        #[cfg(target_os = "macos")]
        let (conn, endpoint) = {
            let _ = socket;
            let service = mach_service.unwrap_or_else(|| crate::config::DEFAULT_MACH_SERVICE.to_owned());
            let client = py.detach(|| xpc::apple::Client::connect(&service, false)).map_err(|e| transport_error(e))?;
            client.set_timeout(timeout).map_err(|e| transport_error(e))?;
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
                Err(broker_error("the broker connection is an XPC session, which cannot be passed to another process".into()))
            }
            None => Err(broker_error(format!("the connection to the broker on {} is closed", self.socket))),
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
            None => Err(broker_error(format!("the connection to the broker on {} is closed", self.socket))),
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(transport_error(e)),
        }
    }
}
