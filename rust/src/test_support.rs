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

/// Runs `f` on a new thread that first moves into a fresh, empty network
/// namespace of its own (`unshare(CLONE_NEWNET)` changes only that thread),
/// so what `f` creates never touches the host's network; panics in `f`
/// come back to the caller. Needs root: without it the caller's test fails
/// saying so (such tests are `#[ignore]`d, and run as root with `--ignored`).
pub(crate) fn in_fresh_netns(f: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for a network namespace: run --ignored tests as root");
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new,
        // empty network namespace; the host's network is never touched.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
        f();
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
