//! Where the native broker's configuration comes from. Python stays the one
//! reader of YAML: at start the broker runs `PYTHON -m vmnet_rs networks
//! resolve [FILE]`, which prints the validated configuration with every
//! default filled in (JSON in the file's shape), and the broker reads that
//! with the core's own validator. `--config-json FILE` skips Python.
//!
//! The last configuration that resolved is kept in the state directory. When
//! a later start finds the file no longer valid (or Python missing), the
//! broker starts on that last good configuration and reports why
//! (`config_error` in the status reply, and the log); with no last good one
//! it refuses to start.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmnet_rs::config::FileConfig;

/// The name of the last good configuration inside the state directory.
pub const LAST_GOOD_FILE: &str = "config.last-good.json";

/// A configuration to serve, and why it is not the file's current content
/// if it is not.
#[derive(Debug)]
pub struct Resolved {
    pub file: FileConfig,
    /// What it was read from (the YAML file, the JSON file, or the built-ins).
    pub source: String,
    /// Set when the broker runs on the last good configuration (or the
    /// built-ins) because the file could not be resolved now.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    #[error("read the configuration {path}: {source}")]
    ReadJson {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] vmnet_rs::ConfigError),
    #[error("{message}\n(no earlier configuration of {path} is kept in {state_dir}, so the broker cannot start: fix what is named above; `vmnet-rs networks check {path}` checks the file, --python names the Python that has vmnet_rs)")]
    Unresolved { message: String, path: String, state_dir: String },
}

/// The Python that resolves `--config`: `explicit`, else `python3` or
/// `python` beside this executable (a virtualenv's bin/), else `python3`
/// on PATH.
pub fn find_python(explicit: Option<&Path>, exe_dir: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(dir) = exe_dir {
        for name in ["python3", "python"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("python3")
}

/// Reads an already-resolved configuration (`--config-json`).
pub fn from_json_file(path: &Path) -> Result<Resolved, ConfigSourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigSourceError::ReadJson { path: path.display().to_string(), source })?;
    let file = FileConfig::from_json(&text, &path.display().to_string())?;
    Ok(Resolved { file, source: path.display().to_string(), error: None })
}

/// Resolves `config` (None: Python's search path) through `python`, keeping
/// or falling back to the last good configuration in `state_dir`.
pub fn resolve(python: &Path, config: Option<&Path>, state_dir: &Path) -> Result<Resolved, ConfigSourceError> {
    let label = config.map(|p| p.display().to_string()).unwrap_or_else(|| "the default configuration search path".into());
    let last_good = state_dir.join(LAST_GOOD_FILE);
    match run_resolve(python, config) {
        Ok(json) => {
            let file = FileConfig::from_json(&json, &format!("{label} (as resolved by {})", python.display()))?;
            if let Err(e) = save_last_good(&last_good, &label, &file) {
                log::warn!("could not keep the configuration in {}: {e}", last_good.display());
            }
            Ok(Resolved { file, source: label, error: None })
        }
        Err(message) => {
            let message = format!("configuration {label} not loaded: {message}");
            if let Some(file) = load_last_good(&last_good, &label) {
                log::error!("{message}");
                log::warn!("serving the last good configuration of {label} (kept in {})", last_good.display());
                let source = format!("{label} (last good, kept in {})", last_good.display());
                return Ok(Resolved { file, source, error: Some(message) });
            }
            if config.is_none() {
                // No file was asked for: the built-ins are a configuration.
                log::error!("{message}");
                log::warn!("serving the built-in networks and default settings");
                return Ok(Resolved { file: FileConfig::default(), source: "built-in defaults".into(), error: Some(message) });
            }
            Err(ConfigSourceError::Unresolved { message, path: label, state_dir: state_dir.display().to_string() })
        }
    }
}

/// Runs `python -m vmnet_rs networks resolve [config]`; returns the JSON it
/// printed, or every line of the failure.
fn run_resolve(python: &Path, config: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "vmnet_rs", "networks", "resolve"]);
    if let Some(c) = config {
        cmd.arg(c);
    }
    let out = cmd.output().map_err(|e| {
        format!("could not run {}: {e} (give the Python that has vmnet_rs installed with --python, or pass a resolved file with --config-json)", python.display())
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().map(|l| l.strip_prefix("vmnet-rs: ").unwrap_or(l)).filter(|l| !l.trim().is_empty()).collect();
        let detail = if lines.is_empty() { format!("{} exited with {}", python.display(), out.status) } else { lines.join("\n") };
        return Err(detail);
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{} printed a configuration that is not UTF-8", python.display()))
}

fn save_last_good(path: &Path, label: &str, file: &FileConfig) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let config: serde_json::Value = serde_json::from_str(&file.to_json()).map_err(std::io::Error::other)?;
    let doc = serde_json::json!({"asked": label, "config": config});
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, doc.to_string())?;
    std::fs::rename(&tmp, path)
}

/// The last good configuration, if one was kept for the same `label`.
fn load_last_good(path: &Path, label: &str) -> Option<FileConfig> {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if doc.get("asked")?.as_str()? != label {
        return None;
    }
    FileConfig::from_json(&doc.get("config")?.to_string(), &path.display().to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmnet-rs-config-source-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A stand-in for Python: a shell script that prints `out` (or fails
    /// with `err` on stderr) for `-m vmnet_rs networks resolve FILE`.
    fn fake_python(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("python3");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    const GOOD: &str = r#"{"broker":{"idleTimeout":7},"vmnet":{"lab":{"mode":"host","subnet":"10.9.0.1/24"}}}"#;

    #[test]
    fn a_bad_edit_keeps_the_last_good_configuration() {
        let dir = temp_dir("last-good");
        let cfg = Path::new("/etc/n.yaml");
        let py = fake_python(&dir, &format!("[ \"$4\" = resolve ] && [ \"$5\" = /etc/n.yaml ] || exit 9\necho '{GOOD}'"));
        let r = resolve(&py, Some(cfg), &dir.join("state")).unwrap();
        assert!(r.error.is_none());
        assert_eq!(r.file.broker.idle_timeout, 7);
        assert!(r.file.networks.contains_key("lab") && r.file.networks.contains_key("shared"));
        // The file no longer validates: the broker keeps the last good one and says why.
        let py = fake_python(&dir, "echo 'vmnet-rs: /etc/n.yaml: vmnet.lab.mtu: 70000 is not between 1280 and 9000' >&2; exit 2");
        let r = resolve(&py, Some(cfg), &dir.join("state")).unwrap();
        assert_eq!(r.file.broker.idle_timeout, 7);
        let e = r.error.unwrap();
        assert!(e.contains("/etc/n.yaml: vmnet.lab.mtu: 70000"), "{e}");
        assert!(!e.contains("vmnet-rs: "), "{e}");
        // Another file has no last good configuration: refuse, saying what to do.
        let e = resolve(&py, Some(Path::new("/etc/other.yaml")), &dir.join("state")).unwrap_err().to_string();
        assert!(e.contains("cannot start") && e.contains("vmnet-rs networks check /etc/other.yaml"), "{e}");
    }

    #[test]
    fn no_python_and_no_file_serves_the_builtins() {
        let dir = temp_dir("no-python");
        let r = resolve(&dir.join("missing-python"), None, &dir.join("state")).unwrap();
        assert!(r.error.unwrap().contains("could not run"));
        assert_eq!(r.file, FileConfig::default());
        let e = resolve(&dir.join("missing-python"), Some(Path::new("/x.yaml")), &dir.join("state")).unwrap_err().to_string();
        assert!(e.contains("--python") && e.contains("--config-json"), "{e}");
    }

    #[test]
    fn config_json_is_validated_by_the_core() {
        let dir = temp_dir("json");
        let p = dir.join("c.json");
        std::fs::write(&p, r#"{"vmnet":{"lab":{"mode":"host","mtu":70000}}}"#).unwrap();
        let e = from_json_file(&p).unwrap_err().to_string();
        assert!(e.contains("mtu") && e.contains(&p.display().to_string()), "{e}");
        assert!(from_json_file(&dir.join("none.json")).unwrap_err().to_string().starts_with("read the configuration"));
    }

    #[test]
    fn python_beside_the_executable_wins_over_path() {
        let dir = temp_dir("find");
        assert_eq!(find_python(None, Some(&dir)), PathBuf::from("python3"));
        let py = fake_python(&dir, "true");
        assert_eq!(find_python(None, Some(&dir)), py);
        assert_eq!(find_python(Some(Path::new("/opt/py")), Some(&dir)), PathBuf::from("/opt/py"));
    }
}
