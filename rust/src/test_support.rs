//! Helpers shared by the unit tests (compiled for tests only).

use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds until it holds; panics naming `what`
/// once `timeout` has passed. The one way Rust tests wait for something.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
