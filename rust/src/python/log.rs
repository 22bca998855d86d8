//! Rust `log` records to stderr, for the Python process. The CLI's `-v`
//! picks the level through `_native.set_log_level`; before that nothing is
//! logged. Runs on whichever thread logs; writes one line per record.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;
/// 0 off, 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static LEVEL: AtomicUsize = AtomicUsize::new(0);

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        (metadata.level() as usize) <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_lowercase();
            let _ = writeln!(std::io::stderr().lock(), "vmnet-rs: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// Sets the native log level: "off", "error", "warning", "info", "debug", "trace".
#[pyfunction]
fn set_log_level(level: &str) -> PyResult<()> {
    let filter = match level.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warning" | "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown log level {other:?}"))),
    };
    // Fails only if a logger is already set (ours, from an earlier call).
    let _ = log::set_logger(&LOGGER);
    LEVEL.store(filter as usize, Ordering::Relaxed);
    log::set_max_level(filter);
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    Ok(())
}
