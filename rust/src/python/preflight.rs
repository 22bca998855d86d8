//! Bindings for `vmnet/preflight.rs`: the platform backend's preconditions,
//! for `vmnet-rs broker` (refuses to start without them) and `vmnet-rs doctor`
//! (shows each); the Linux bridge name of a network.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Every precondition as a dict: name, ok, detail, fix.
#[pyfunction]
fn preflight_checks(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    crate::vmnet::preflight::checks()
        .into_iter()
        .map(|c| {
            let d = PyDict::new(py);
            d.set_item("name", c.name)?;
            d.set_item("ok", c.ok)?;
            d.set_item("detail", c.detail)?;
            d.set_item("fix", c.fix)?;
            Ok(d)
        })
        .collect()
}

/// Linux: the bridge device of network `name` (so `vmnet-rs doctor` can tell
/// a network's own route from a colliding one).
#[cfg(target_os = "linux")]
#[pyfunction]
fn bridge_name(name: &str) -> String {
    crate::vmnet::linux::bridge_name(name)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(preflight_checks, m)?)?;
    #[cfg(target_os = "linux")]
    m.add_function(wrap_pyfunction!(bridge_name, m)?)?;
    Ok(())
}
