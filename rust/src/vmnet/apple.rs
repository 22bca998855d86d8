//! (placeholder until the backend lands)

use super::{BackendOptions, Error, Network};
use crate::config::NetworkConfig;

pub fn create_network(name: &str, config: &NetworkConfig, options: &BackendOptions) -> Result<Box<dyn Network>, Error> {
    let _ = (name, config, options);
    Err(Error::Platform { op: "create network".into(), detail: "backend not built yet".into() })
}

pub fn cleanup_stale(options: &BackendOptions) -> Result<Vec<String>, Error> {
    let _ = options;
    Ok(Vec::new())
}
