//! Bindings for `config.rs`: validation of JSON produced by the Python side.

use pyo3::prelude::*;

use super::errors;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = (m, errors::config_error);
    Ok(())
}
