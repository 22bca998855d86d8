//! Bindings for `config.rs`: validation of JSON produced by the Python side.
//!
//! Python parses YAML and hands the document over as JSON; these functions
//! validate it with the same rules the broker applies and return the
//! normalised JSON (defaults and built-ins filled in). Problems raise
//! `vmnet_rs.errors.ConfigError`, one problem per line of its message.
//! Validation is quick and never blocks, so the GIL is kept.

use std::collections::BTreeMap;

use pyo3::prelude::*;

use super::errors;
use crate::config::{self, FileConfig, NetworkConfig};

/// Parses a MAC address argument with the configuration's rules
/// ([`config::parse_mac`]); anything else raises `ConfigError`.
pub fn mac_arg(py: Python<'_>, text: &str) -> PyResult<[u8; 6]> {
    config::parse_mac(text).ok_or_else(|| errors::raise(py, "ConfigError", format!("MAC {text:?} is not of the form aa:bb:cc:dd:ee:ff")))
}

/// Validates a whole configuration document (the file's shape, as JSON) and
/// returns it normalised, with defaults and the built-in networks filled in.
#[pyfunction]
fn validate_config(py: Python<'_>, json_text: &str, source: &str) -> PyResult<String> {
    FileConfig::from_json(json_text, source)
        .map(|c| c.to_json())
        .map_err(|e| errors::config_error(py, e))
}

/// Validates one network entry (absent keys take Lima's defaults) and returns
/// it normalised. With `lima=True`, Go-style empty values (`""`, `0`, `null`)
/// also mean "unset", as in the `Configuration` a Lima client sends.
#[pyfunction]
#[pyo3(signature = (json_text, source, name, lima = false))]
fn validate_network(py: Python<'_>, json_text: &str, source: &str, name: &str, lima: bool) -> PyResult<String> {
    let parsed = if lima {
        NetworkConfig::from_lima_json(json_text, source, name)
    } else {
        NetworkConfig::from_json(json_text, source, name)
    };
    parsed.map(|c| c.to_json()).map_err(|e| errors::config_error(py, e))
}

/// `key: a != b` lines for each key where two network entries (normalised
/// JSON, as from `validate_network`) differ.
#[pyfunction]
fn network_differences(py: Python<'_>, a_json: &str, b_json: &str) -> PyResult<Vec<String>> {
    let a = NetworkConfig::from_json(a_json, "first", "a").map_err(|e| errors::config_error(py, e))?;
    let b = NetworkConfig::from_json(b_json, "second", "b").map_err(|e| errors::config_error(py, e))?;
    Ok(a.differences(&b))
}

/// The embedded defaults (broker settings, built-in `shared` and `host`) as JSON.
#[pyfunction]
fn default_config_json() -> String {
    FileConfig::default().to_json()
}

/// The keys each section accepts, in documented order, so the Python checks
/// and the Rust ones agree: `top`, `ignored_top`, `network`, `port_forward`,
/// `dhcp_reservation`, `broker`.
#[pyfunction]
fn config_keys() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("top", config::TOP_KEYS.to_vec()),
        ("ignored_top", config::IGNORED_TOP_KEYS.to_vec()),
        ("network", config::NETWORK_KEYS.to_vec()),
        ("port_forward", config::PORT_FORWARD_KEYS.to_vec()),
        ("dhcp_reservation", config::DHCP_RESERVATION_KEYS.to_vec()),
        ("broker", config::BROKER_KEYS.to_vec()),
    ])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(validate_network, m)?)?;
    m.add_function(wrap_pyfunction!(network_differences, m)?)?;
    m.add_function(wrap_pyfunction!(default_config_json, m)?)?;
    m.add_function(wrap_pyfunction!(config_keys, m)?)?;
    Ok(())
}
