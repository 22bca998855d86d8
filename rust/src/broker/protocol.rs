//! The broker protocol's vocabulary (docs/protocol.md): error codes, typed
//! access to request keys with errors that name the key and the type, and
//! the reply shapes of the two request styles.
//!
//! Pure functions; run on request threads.

use crate::config::{self, MacAddr};
use crate::xpc::{Dict, Value};

/// The protocol revision `version` reports.
pub const PROTOCOL_VERSION: i64 = 1;

/// Error codes (int64 `error` in replies). 3-7 are nirs/vmnet-broker's
/// (docs/protocol.md lists them); 8 and up are ours.
pub mod code {
    pub const NOT_ALLOWED: i64 = 3;
    pub const INVALID_REQUEST: i64 = 4;
    pub const NOT_FOUND: i64 = 5;
    pub const CREATE_FAILURE: i64 = 6;
    pub const INTERNAL_ERROR: i64 = 7;
    /// The request's configuration differs from the live network's.
    pub const CONFIG_MISMATCH: i64 = 8;
    /// A per-connection limit was reached.
    pub const LIMIT: i64 = 9;
    /// The name asked for is held on the network by a running VM.
    pub const NAME_TAKEN: i64 = 10;

    /// Every code by its name (the Python package reads them from here).
    pub const ALL: [(&str, i64); 8] = [
        ("NOT_ALLOWED", NOT_ALLOWED),
        ("INVALID_REQUEST", INVALID_REQUEST),
        ("NOT_FOUND", NOT_FOUND),
        ("CREATE_FAILURE", CREATE_FAILURE),
        ("INTERNAL_ERROR", INTERNAL_ERROR),
        ("CONFIG_MISMATCH", CONFIG_MISMATCH),
        ("LIMIT", LIMIT),
        ("NAME_TAKEN", NAME_TAKEN),
    ];
}

/// A refused request: a code and a message saying what was asked, what went
/// wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i64,
    pub message: String,
}

impl Failure {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(code::INVALID_REQUEST, message)
    }

    /// The reply to a `command` request: `{error: code, message}`.
    pub fn command_reply(&self) -> Dict {
        Dict::new().with("error", Value::Int(self.code)).with("message", Value::String(self.message.clone()))
    }

    /// The reply to a Lima-style request: `{Error: message}` alone.
    pub fn lima_reply(&self) -> Dict {
        Dict::new().with("Error", Value::String(self.message.clone()))
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Int(_) => "int64",
        Value::Bool(_) => "bool",
        Value::Data(_) => "data",
        Value::Dict(_) => "dictionary",
        Value::Fd(_) => "file descriptor",
    }
}

fn wrong_type(key: &str, want: &str, got: &Value) -> Failure {
    Failure::invalid(format!("key {key:?} must be {want}, got {}", type_name(got)))
}

/// Typed, optional access to request keys; a present key of the wrong type
/// is an error naming both types.
pub struct Args<'a>(pub &'a Dict);

impl Args<'_> {
    pub fn str(&self, key: &str) -> Result<Option<&str>, Failure> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong_type(key, "a string", v)),
        }
    }

    pub fn required_str(&self, key: &str, what: &str) -> Result<&str, Failure> {
        self.str(key)?.ok_or_else(|| Failure::invalid(format!("missing {key} key ({what})")))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Failure> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(key, "a bool", v)),
        }
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, Failure> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(v) => Err(wrong_type(key, "an int64", v)),
        }
    }

    /// Data, or (for convenience of hand-written clients) a string.
    pub fn json(&self, key: &str) -> Result<Option<&[u8]>, Failure> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Data(d)) => Ok(Some(d)),
            Some(Value::String(s)) => Ok(Some(s.as_bytes())),
            Some(v) => Err(wrong_type(key, "data (JSON)", v)),
        }
    }

    pub fn dict(&self, key: &str) -> Result<Option<&Dict>, Failure> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Dict(d)) => Ok(Some(d)),
            Some(v) => Err(wrong_type(key, "a dictionary", v)),
        }
    }
}

/// Checks a network name by the configuration's rule
/// ([`config::valid_network_name`]), so every name a configuration file
/// accepts can be asked for.
pub fn check_network_name(name: &str) -> Result<(), Failure> {
    if config::valid_network_name(name) {
        Ok(())
    } else {
        Err(Failure::invalid(format!("network name {name:?} is not valid; {}", config::NETWORK_NAME_RULE)))
    }
}

/// A VM's MAC from a request (`MacAddr::parse`); refuses multicast
/// addresses.
pub fn parse_mac(text: &str) -> Result<[u8; 6], Failure> {
    let mac = MacAddr::parse(text)
        .ok_or_else(|| Failure::invalid(format!("mac {text:?} is not six hex bytes like 52:54:00:12:34:56")))?;
    if !config::usable_mac(&mac.0) {
        return Err(Failure::invalid(format!("mac {text} is a multicast or all-zero address; a VM needs a unicast one")));
    }
    Ok(mac.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_types_name_key_and_types() {
        let d = Dict::new().with("network", Value::Int(3));
        let e = Args(&d).str("network").unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);
        assert_eq!(e.message, "key \"network\" must be a string, got int64");
        assert!(Args(&d).required_str("nope", "the network name").unwrap_err().message.contains("missing nope"));
    }

    #[test]
    fn macs_and_names() {
        assert_eq!(parse_mac("52:54:00:AB:cd:01").unwrap(), [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("52:54:00:ab:cd").is_err());
        assert!(parse_mac("52:54:00:ab:cd:zz").is_err());
        assert!(check_network_name("shared").is_ok());
        assert!(check_network_name("../x").is_err());
        assert!(check_network_name("").is_err());
        assert!(check_network_name(&"a".repeat(63)).is_ok());
        assert!(check_network_name(&"a".repeat(64)).is_err());
    }
}
