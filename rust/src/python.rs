//! The PyO3 module `vmnet_rs._native`.
//!
//! Each layer's bindings live in `python/<layer>.rs`; this file registers
//! them. Exceptions are defined in Python (`vmnet_rs/errors.py`) and raised
//! through `python/errors.rs`, the one place that maps Rust errors.

use pyo3::prelude::*;

mod config;
mod errors;
mod network;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    config::register(m)?;
    network::register(m)?;
    Ok(())
}
