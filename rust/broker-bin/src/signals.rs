//! SIGTERM (systemd, launchd) and SIGINT (Ctrl-C) stop the broker the way
//! its own shutdown does: every network torn down, every lease released.
//!
//! Both signals are blocked in every thread (call [`block`] before any
//! thread starts, so the threads inherit the mask) and one thread takes
//! them with `sigwait(2)`: no code runs in a signal handler.

use std::sync::Arc;

use vmnet_rs::broker::Core;

/// Why the broker stopped, in the words of `vmnet-rs broker`.
pub const TERMINATED: &str = "terminated (SIGTERM)";
pub const INTERRUPTED: &str = "interrupted (Ctrl-C)";

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set we pass; sigaddset adds valid
    // signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in this thread and the threads it starts later.
pub fn block() -> std::io::Result<()> {
    let set = stop_set();
    // SAFETY: `set` is initialised; the old mask is not wanted (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Starts the thread that turns the first SIGTERM or SIGINT into a stop of
/// `core` (a second one while stopping is ignored: teardown finishes).
pub fn forward_to(core: Arc<Core>) -> std::io::Result<()> {
    std::thread::Builder::new().name("vmnet-rs-signals".into()).spawn(move || loop {
        let set = stop_set();
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and blocked in every thread; `sig` is
        // a valid out-pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc == 0 {
            core.request_exit(if sig == libc::SIGTERM { TERMINATED } else { INTERRUPTED });
        }
    })?;
    Ok(())
}
