//! launchd's socket hand-over (launch.h, macOS 10.10):
//! `launch_activate_socket(name, &fds, &cnt)` gives the job the sockets
//! launchd created for its plist's `Sockets` key `name`: 0 with a
//! malloc(3)ed array of descriptors the caller owns; ENOENT for a name the
//! plist lacks; ESRCH when the process is not a launchd job; EALREADY when
//! the name was activated before.
//!
//! A test makes this process a job with sockets by
//! `vmnet_model_launchd_socket(name, fd)` (launchd keeps its own copy of
//! each socket, as it does of the ones it created).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use crate::control::called;

struct Job {
    sockets: HashMap<CString, (Vec<OwnedFd>, bool)>,
}

fn job() -> &'static Mutex<Option<Job>> {
    static J: OnceLock<Mutex<Option<Job>>> = OnceLock::new();
    J.get_or_init(|| Mutex::new(None))
}

/// Makes this process a launchd job holding a duplicate of `fd` under its
/// `Sockets` key `name`.
#[no_mangle]
pub extern "C" fn vmnet_model_launchd_socket(name: *const c_char, fd: c_int) {
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_owned();
    // SAFETY: F_DUPFD_CLOEXEC on the caller's fd; the copy is launchd's.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(dup >= 0, "vmnet_model_launchd_socket: bad fd");
    // SAFETY: a fresh descriptor.
    let own = unsafe { OwnedFd::from_raw_fd(dup) };
    let mut j = job().lock().unwrap_or_else(|e| e.into_inner());
    let j = j.get_or_insert_with(|| Job { sockets: HashMap::new() });
    j.sockets.entry(name).or_insert_with(|| (Vec::new(), false)).0.push(own);
}

/// launch.h `launch_activate_socket`.
#[no_mangle]
pub extern "C" fn launch_activate_socket(name: *const c_char, fds: *mut *mut c_int, cnt: *mut usize) -> c_int {
    called("launch_activate_socket");
    if name.is_null() || fds.is_null() || cnt.is_null() {
        crate::misuse("launch_activate_socket", "NULL argument (launch.h: name, fds and cnt are required)");
    }
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) };
    let mut j = job().lock().unwrap_or_else(|e| e.into_inner());
    let Some(j) = j.as_mut() else { return libc::ESRCH };
    let Some((sockets, activated)) = j.sockets.get_mut(name) else { return libc::ENOENT };
    if *activated {
        return libc::EALREADY;
    }
    *activated = true;
    // SAFETY: malloc for the caller to free(3).
    let array = unsafe { libc::malloc(sockets.len().max(1) * std::mem::size_of::<c_int>()) }.cast::<c_int>();
    for (i, s) in sockets.iter().enumerate() {
        // SAFETY: a duplicate the caller owns, into the array's slot i.
        unsafe {
            let d = libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0);
            *array.add(i) = OwnedFd::from_raw_fd(d).into_raw_fd();
        }
    }
    // SAFETY: the caller's out-pointers.
    unsafe {
        *fds = array;
        *cnt = sockets.len();
    }
    0
}
