//! The `vmnet_rs.errors` exception classes, imported once for the native
//! module: every binding raises by type (`ConfigError::new_err(message)`),
//! never by naming a class in a string. The classes are defined in Python
//! (`python/vmnet_rs/errors.py`) so `except vmnet_rs.VmnetError` catches
//! what either side raises.

use pyo3::import_exception;
use pyo3::PyErr;

import_exception!(vmnet_rs.errors, ConfigError);
import_exception!(vmnet_rs.errors, NetworkError);
import_exception!(vmnet_rs.errors, AdaptorError);
import_exception!(vmnet_rs.errors, BrokerError);
import_exception!(vmnet_rs.errors, BrokerUnavailableError);

pub fn config_error(err: crate::config::ConfigError) -> PyErr {
    ConfigError::new_err(err.message)
}
