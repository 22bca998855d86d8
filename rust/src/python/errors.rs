//! Rust errors to `vmnet_rs.errors` exceptions, in one place.

use pyo3::prelude::*;

/// Raises `vmnet_rs.errors.<class_name>(message)`.
pub fn raise(py: Python<'_>, class_name: &str, message: String) -> PyErr {
    match py
        .import("vmnet_rs.errors")
        .and_then(|m| m.getattr(class_name))
    {
        Ok(cls) => PyErr::from_value(match cls.call1((message.clone(),)) {
            Ok(exc) => exc,
            Err(e) => return e,
        }),
        Err(e) => e,
    }
}

pub fn config_error(py: Python<'_>, err: crate::config::ConfigError) -> PyErr {
    raise(py, "ConfigError", err.message)
}
