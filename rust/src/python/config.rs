//! Bindings for `config.rs`: the one validator, for the JSON the Python side
//! makes from YAML.
//!
//! Python parses YAML and hands the document over as JSON; these functions
//! validate it with the same rules the broker applies and return the
//! normalised JSON (defaults and built-ins filled in). `check_config` returns
//! the problems as structured JSON (the loader adds YAML lines by key path);
//! the `validate_*` functions raise `vmnet_rs.errors.ConfigError`, one
//! problem per line of its message. Validation is quick and never blocks, so the GIL is kept.

use pyo3::prelude::*;

use super::errors::Error;
use crate::config::{self, FileConfig, NetworkConfig};

/// Parses a MAC address argument with the configuration's rules
/// ([`config::parse_mac`]); anything else raises `ConfigError`.
pub fn mac_arg(text: &str) -> PyResult<[u8; 6]> {
    config::parse_mac(text).ok_or_else(|| Error::Argument(format!("MAC {text:?} is not of the form aa:bb:cc:dd:ee:ff")).into())
}

/// Validates a whole configuration document (the file's shape, as JSON) and
/// returns it normalised, with defaults and the built-in networks filled in.
#[pyfunction]
fn validate_config(json_text: &str, source: &str) -> PyResult<String> {
    FileConfig::from_json(json_text, source)
        .map(|c| c.to_json())
        .map_err(PyErr::from)
}

/// Validates one network entry (absent keys take Lima's defaults) and returns
/// it normalised. With `lima=True`, Go-style empty values (`""`, `0`, `null`)
/// also mean "unset", as in the `Configuration` a Lima client sends.
#[pyfunction]
#[pyo3(signature = (json_text, source, name, lima = false))]
fn validate_network(json_text: &str, source: &str, name: &str, lima: bool) -> PyResult<String> {
    let parsed = if lima {
        NetworkConfig::from_lima_json(json_text, source, name)
    } else {
        NetworkConfig::from_json(json_text, source, name)
    };
    parsed.map(|c| c.to_json()).map_err(PyErr::from)
}

/// Checks a whole configuration document (the file's shape, as JSON) and
/// returns JSON `{"config": <normalised document or null>, "problems": [...]}`,
/// each problem with `source`, `section`, `network`, `key`, `path` (from the
/// document's root), `what`, `allowed`, `hint` and `detail` (the message
/// without its source). This is the one validator; Python only adds lines.
#[pyfunction]
fn check_config(json_text: &str, source: &str) -> String {
    let (config, problems) = match FileConfig::from_json(json_text, source) {
        Ok(c) => (serde_json::to_value(&c).unwrap_or(serde_json::Value::Null), Vec::new()),
        Err(e) if e.problems.is_empty() => {
            // Not a document at all (invalid JSON): one problem with the message.
            let what = e.message.strip_prefix(&format!("{source}: ")).unwrap_or(&e.message).to_string();
            let p = config::Problem {
                source: source.to_string(),
                section: config::Section::Top,
                network: None,
                key: None,
                path: Vec::new(),
                what,
                allowed: None,
                hint: None,
            };
            (serde_json::Value::Null, vec![p])
        }
        Err(e) => (serde_json::Value::Null, e.problems),
    };
    let problems: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            v["detail"] = serde_json::Value::String(p.detail());
            v
        })
        .collect();
    serde_json::json!({ "config": config, "problems": problems }).to_string()
}

/// A VM's MAC by the configuration's one rule (`config/limits.rs`):
/// `(normalised, None)`, or `(None, why)` with why one of `"syntax"` (not
/// six hex pairs), `"multicast"` or `"zero"`, so callers word their own
/// message but never their own rule.
#[pyfunction]
fn check_mac(text: &str) -> (Option<String>, Option<&'static str>) {
    match config::parse_mac(text) {
        None => (None, Some("syntax")),
        Some(mac) if mac == [0; 6] => (None, Some("zero")),
        Some(mac) if !config::usable_mac(&mac) => (None, Some("multicast")),
        Some(mac) => (Some(config::format_mac(&mac)), None),
    }
}

/// `key: a != b` lines for each key where two network entries (normalised
/// JSON, as from `validate_network`) differ.
#[pyfunction]
fn network_differences(a_json: &str, b_json: &str) -> PyResult<Vec<String>> {
    let a = NetworkConfig::from_json(a_json, "first", "a")?;
    let b = NetworkConfig::from_json(b_json, "second", "b")?;
    Ok(a.differences(&b))
}

/// The embedded defaults (broker settings, built-in `shared` and `host`) as JSON.
#[pyfunction]
fn default_config_json() -> String {
    FileConfig::default().to_json()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(validate_config, m)?)?;
    m.add_function(wrap_pyfunction!(check_config, m)?)?;
    m.add_function(wrap_pyfunction!(check_mac, m)?)?;
    m.add_function(wrap_pyfunction!(validate_network, m)?)?;
    m.add_function(wrap_pyfunction!(network_differences, m)?)?;
    m.add_function(wrap_pyfunction!(default_config_json, m)?)?;
    Ok(())
}
