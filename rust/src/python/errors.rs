//! The one path from a Rust error to a Python exception.
//!
//! The exception classes are defined in Python (`python/vmnet_rs/errors.py`,
//! rooted at `VmnetError`) so `except vmnet_rs.VmnetError` catches what
//! either side raises; they are imported here once. Every binding returns
//! [`Error`] (or an error of a lower layer, which `?` converts), naming the
//! operation that failed and keeping its cause with `#[source]`; the
//! `From<...> for PyErr` impls below are the only place a Python exception
//! is made from an error. Which class a failure raises:
//!
//! | failure | class |
//! |---|---|
//! | a configuration refused by the validator, or a bad argument | `ConfigError` |
//! | a network or TAP that cannot be made or used | `NetworkError` |
//! | a relay that cannot start | `AdaptorError` |
//! | no broker answers | `BrokerUnavailableError` |
//! | anything else the broker or its transport reports | `BrokerError` |

use pyo3::import_exception;
use pyo3::PyErr;

use crate::{broker, config, vmnet, xpc};

import_exception!(vmnet_rs.errors, ConfigError);
import_exception!(vmnet_rs.errors, NetworkError);
import_exception!(vmnet_rs.errors, AdaptorError);
import_exception!(vmnet_rs.errors, BrokerError);
import_exception!(vmnet_rs.errors, BrokerUnavailableError);

/// A cause kept as it is, whatever layer it came from.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A failure of a binding: the operation, and the cause where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument the binding cannot use (no cause: the text says what to give).
    #[error("{0}")]
    Argument(String),
    /// A configuration the validator refused.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A network or TAP operation failed.
    #[error("{op}: {source}")]
    Network {
        op: String,
        #[source]
        source: Cause,
    },
    /// A network object that can no longer be used (closed, or a backend
    /// without the operation).
    #[error("{0}")]
    NetworkState(String),
    /// A relay could not start.
    #[error("{op}: {source}")]
    Adaptor {
        op: String,
        #[source]
        source: Cause,
    },
    /// A relay object that can no longer be used.
    #[error("{0}")]
    AdaptorState(String),
    /// A broker object that cannot do what was asked.
    #[error("{0}")]
    BrokerState(String),
}

impl Error {
    /// `map_err(Error::network("create network x"))`: a network failure of `op`.
    pub fn network<E: Into<Cause>>(op: impl Into<String>) -> impl FnOnce(E) -> Error {
        let op = op.into();
        move |e| Error::Network { op, source: e.into() }
    }

    /// `map_err(Error::adaptor("start a stream adaptor"))`: a relay failure of `op`.
    pub fn adaptor<E: Into<Cause>>(op: impl Into<String>) -> impl FnOnce(E) -> Error {
        let op = op.into();
        move |e| Error::Adaptor { op, source: e.into() }
    }
}

/// A refused configuration somewhere in `cause`'s chain (a network the
/// platform would not make because of its configuration).
fn config_in_chain<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a config::ConfigError> {
    let mut next = Some(cause);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<config::ConfigError>() {
            return Some(c);
        }
        if let Some(vmnet::Error::Config(c)) = e.downcast_ref::<vmnet::Error>() {
            return Some(c);
        }
        next = e.source();
    }
    None
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match &err {
            Error::Argument(m) => ConfigError::new_err(m.clone()),
            Error::Config(c) => ConfigError::new_err(c.message.clone()),
            Error::Network { source, .. } => match config_in_chain(source.as_ref()) {
                Some(c) => ConfigError::new_err(c.message.clone()),
                None => NetworkError::new_err(err.to_string()),
            },
            Error::NetworkState(m) => NetworkError::new_err(m.clone()),
            Error::Adaptor { .. } => AdaptorError::new_err(err.to_string()),
            Error::AdaptorState(m) => AdaptorError::new_err(m.clone()),
            Error::BrokerState(m) => BrokerError::new_err(m.clone()),
        }
    }
}

impl From<config::ConfigError> for PyErr {
    fn from(err: config::ConfigError) -> PyErr {
        ConfigError::new_err(err.message)
    }
}

impl From<vmnet::Error> for PyErr {
    fn from(err: vmnet::Error) -> PyErr {
        match err {
            vmnet::Error::Config(e) => e.into(),
            other => NetworkError::new_err(other.to_string()),
        }
    }
}

impl From<xpc::Error> for PyErr {
    fn from(err: xpc::Error) -> PyErr {
        match err {
            xpc::Error::Unavailable(m) => BrokerUnavailableError::new_err(m),
            other => BrokerError::new_err(other.to_string()),
        }
    }
}

impl From<broker::Error> for PyErr {
    fn from(err: broker::Error) -> PyErr {
        BrokerError::new_err(err.to_string())
    }
}
