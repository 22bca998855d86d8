//! What tests ask the model (not Apple API; every name starts with
//! `vmnet_model_`): wait for queued work to finish, list what is still
//! alive, advertise a Mach service as launchd would, set who the next
//! client is, and record which Apple functions were called.
//!
//! Calls made are appended, one name a line, to the file named by
//! `VMNET_RS_APPLE_MODEL_CALLS` when the process exits (scripts/apple-model
//! counts them across the test processes).

use std::collections::BTreeSet;
use std::ffi::{c_char, CStr, CString};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn calls() -> &'static Mutex<BTreeSet<&'static str>> {
    static C: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    C.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function with atexit(3).
        unsafe { libc::atexit(write_calls) };
        Mutex::new(BTreeSet::new())
    })
}

/// Notes that Apple function `name` was called.
pub fn called(name: &'static str) {
    calls().lock().unwrap_or_else(|e| e.into_inner()).insert(name);
}

extern "C" fn write_calls() {
    let Some(path) = std::env::var_os("VMNET_RS_APPLE_MODEL_CALLS") else { return };
    let names: Vec<&str> = calls().lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(names.iter().map(|n| format!("{n}\n")).collect::<String>().as_bytes());
    }
}

/// Mach service names launchd advertises for this job (its plist's
/// `MachServices`); `xpc_listener_create` refuses any other.
pub fn advertised(name: &CStr) -> bool {
    services().lock().unwrap_or_else(|e| e.into_inner()).contains(name)
}

fn services() -> &'static Mutex<BTreeSet<CString>> {
    static S: OnceLock<Mutex<BTreeSet<CString>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Who the next session's client is, as the kernel would tell the listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub cdhash: [u8; 20],
}

/// This process as the model's kernel sees it: its own ids and a CDHash
/// fixed for the model (code signing itself is not modelled).
pub fn own_identity() -> Identity {
    // SAFETY: plain id getters.
    let (uid, gid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
    Identity { uid, gid, pid, cdhash: *b"vmnet-rs apple model" }
}

fn next_client() -> &'static Mutex<Option<Identity>> {
    static N: OnceLock<Mutex<Option<Identity>>> = OnceLock::new();
    N.get_or_init(|| Mutex::new(None))
}

/// The identity of the client of a session opened now.
pub fn client_identity() -> Identity {
    next_client().lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(own_identity)
}

/// Waits up to `timeout_ms` until no submitted work is pending; false if
/// some still was.
#[no_mangle]
pub extern "C" fn vmnet_model_settle(timeout_ms: u32) -> bool {
    crate::dispatch::settle(Duration::from_millis(timeout_ms.into()))
}

/// What is still alive, as text (empty when nothing): XPC objects by type
/// and dispatch queues by label. The caller frees it with free(3).
#[no_mangle]
pub extern "C" fn vmnet_model_leak_report() -> *mut c_char {
    let mut parts: Vec<String> =
        crate::object::live_by_type().into_iter().map(|(ty, n)| format!("{n} xpc {ty}")).collect();
    parts.extend(crate::cf::live());
    parts.extend(crate::vmnet::live());
    for label in crate::dispatch::live_queues() {
        parts.push(format!("dispatch queue {label:?}"));
    }
    let text = CString::new(parts.join(", ")).unwrap_or_default();
    // SAFETY: strdup of a NUL-terminated string.
    unsafe { libc::strdup(text.as_ptr()) }
}

/// Advertises Mach service `name` as launchd does for a job whose plist
/// lists it in `MachServices`.
#[no_mangle]
pub extern "C" fn vmnet_model_launchd_advertise(name: *const c_char) {
    // SAFETY: a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name) }.to_owned();
    services().lock().unwrap_or_else(|e| e.into_inner()).insert(name);
}

/// Makes the next sessions' client look like another process (`uid`,
/// `gid`, `pid`, the 20-byte `cdhash`), or this one again with NULL.
#[no_mangle]
pub extern "C" fn vmnet_model_set_client(uid: u32, gid: u32, pid: i32, cdhash: *const u8) {
    let next = if cdhash.is_null() {
        None
    } else {
        let mut h = [0u8; 20];
        // SAFETY: the caller passes 20 readable bytes.
        h.copy_from_slice(unsafe { std::slice::from_raw_parts(cdhash, 20) });
        Some(Identity { uid, gid, pid, cdhash: h })
    };
    *next_client().lock().unwrap_or_else(|e| e.into_inner()) = next;
}

/// The model's CDHash of this process (what `csops` answers).
#[no_mangle]
pub extern "C" fn vmnet_model_own_cdhash(out: *mut u8) {
    let h = own_identity().cdhash;
    // SAFETY: the caller passes 20 writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), out, 20) };
}

/// bsd/sys/codesign.h (XNU) `csops`: `CS_OPS_CDHASH` (5) copies this
/// process's CDHash (the model's fixed one) into `useraddr`; other
/// operations fail with ENOTSUP.
#[no_mangle]
pub extern "C" fn csops(pid: libc::pid_t, ops: u32, useraddr: *mut std::ffi::c_void, usersize: usize) -> libc::c_int {
    called("csops");
    let me = own_identity();
    if ops != 5 || (pid != 0 && pid != me.pid) {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = libc::ENOTSUP };
        return -1;
    }
    if usersize < 20 {
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = libc::ERANGE };
        return -1;
    }
    // SAFETY: the caller passes `usersize` >= 20 writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(me.cdhash.as_ptr(), useraddr.cast::<u8>(), 20) };
    0
}
