//! The PyO3 module `vmnet_rs._native`.
//!
//! Each layer's bindings live in `python/<layer>.rs`; this file registers
//! them. Exceptions are defined in Python (`vmnet_rs/errors.py`) and raised
//! through `python/errors.rs`, the one place that maps Rust errors.

use pyo3::prelude::*;

mod adaptor;
#[cfg(any(target_os = "linux", target_os = "macos"))]
mod broker;
mod config;
mod errors;
mod log;
mod network;
mod preflight;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    adaptor::register(m)?;
    config::register(m)?;
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    broker::register(m)?;
    log::register(m)?;
    network::register(m)?;
    preflight::register(m)?;
    Ok(())
}
