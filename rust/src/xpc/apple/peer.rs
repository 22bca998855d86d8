//! Who is calling, and whether they may: the macOS peer checks.
//!
//! - [`identify`]: uid/gid/pid of the sender of one message, from its remote
//!   connection (`xpc_connection_get_euid` & co.) or, failing that, from the
//!   private `xpc_dictionary_get_audit_token` looked up at run time.
//! - [`own_cdhash`]: this executable's CDHash via the private `csops`.
//! - [`SameCdhash`]: an LWCR peer requirement `{cdhash: <own>}` (Lima's
//!   rule), usable on a listener or per message.
//! - [`os_version`] reads `kern.osproductversion` and `kern.osrelease`
//!   (`darwin::macos_version`: "16.0" on 26 for older-SDK binaries).
//!
//! Called on the listener's queue and at start-up; no state of its own.

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use super::ffi;
use super::object::{take_rich_error, to_xpc, Object};
use crate::xpc::darwin;
use crate::xpc::{Dict, Error, Peer, Value};

/// The sender of `message`, or `None` when neither source knows it.
///
/// # Safety
/// `message` must be a live XPC dictionary received from a peer.
pub unsafe fn identify(message: ffi::xpc_object_t, connection: u64) -> Option<Peer> {
    // SAFETY: caller's contract; the connection is borrowed from the message.
    let remote = unsafe { ffi::xpc_dictionary_get_remote_connection(message) };
    if !remote.is_null() {
        // SAFETY: `remote` is a live connection for as long as `message` is.
        return Some(unsafe {
            Peer {
                uid: ffi::xpc_connection_get_euid(remote),
                gid: ffi::xpc_connection_get_egid(remote),
                pid: ffi::xpc_connection_get_pid(remote),
                connection,
            }
        });
    }
    let get = audit_token_fn()?;
    let mut token = [0u32; 8];
    // SAFETY: the looked-up function has the declared signature (XNU libxpc)
    // and writes one audit_token_t.
    unsafe { get(message, &mut token) };
    if token == [0; 8] {
        return None;
    }
    Some(darwin::peer_from_audit_token(&token, connection))
}

fn audit_token_fn() -> Option<ffi::GetAuditToken> {
    static FN: OnceLock<Option<ffi::GetAuditToken>> = OnceLock::new();
    *FN.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"xpc_dictionary_get_audit_token".as_ptr()) };
        if sym.is_null() {
            None
        } else {
            // SAFETY: the symbol is libxpc's function of this signature.
            Some(unsafe { std::mem::transmute::<*mut c_void, ffi::GetAuditToken>(sym) })
        }
    })
}

/// This executable's CDHash (20 bytes), or an error saying why not (an
/// unsigned binary has none: sign it, e.g. with `vmnet-rs install`).
pub fn own_cdhash() -> Result<[u8; ffi::CDHASH_LEN], Error> {
    let mut hash = [0u8; ffi::CDHASH_LEN];
    // SAFETY: csops writes at most `hash.len()` bytes into `hash`.
    let rc = unsafe { ffi::csops(libc::getpid(), ffi::CS_OPS_CDHASH, hash.as_mut_ptr().cast(), hash.len()) };
    if rc != 0 {
        return Err(Error::Io {
            op: "csops(CS_OPS_CDHASH) on this executable",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(hash)
}

/// The macOS version as (major, minor, patch), from `kern.osproductversion`
/// and `kern.osrelease` (see `darwin::macos_version`).
pub fn os_version() -> Option<(u32, u32, u32)> {
    let product = sysctl_string(c"kern.osproductversion");
    let darwin = sysctl_string(c"kern.osrelease");
    darwin::macos_version(product.as_deref(), darwin.as_deref())
}

/// A string sysctl (sys/sysctl.h `sysctlbyname`), or `None`.
fn sysctl_string(name: &CStr) -> Option<String> {
    let mut buf = [0u8; 64];
    let mut len = buf.len();
    // SAFETY: sysctlbyname writes at most `len` bytes into `buf`.
    let rc = unsafe {
        crate::darwin_shim::sysctlbyname(name.as_ptr(), buf.as_mut_ptr().cast(), &mut len, std::ptr::null_mut(), 0)
    };
    if rc != 0 {
        return None;
    }
    let text = CStr::from_bytes_until_nul(&buf[..len.min(buf.len())]).ok()?.to_str().ok()?;
    Some(text.to_owned())
}

/// An `xpc_peer_requirement_t` matching only executables with `cdhash`.
pub struct SameCdhash {
    requirement: Object,
}

impl SameCdhash {
    pub fn new(cdhash: &[u8; ffi::CDHASH_LEN]) -> Result<SameCdhash, Error> {
        let lwcr = to_xpc(&Dict::new().with("cdhash", Value::Data(cdhash.to_vec())))?;
        let x = ffi::xpc()?;
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: `lwcr` is a live dictionary; the result is +1 (or NULL with
        // a +1 error).
        let req = unsafe { (x.xpc_peer_requirement_create_lwcr)(lwcr.as_ptr(), &mut err) };
        // SAFETY: `req` is NULL or ours.
        match unsafe { Object::from_owned(req) } {
            Some(requirement) => {
                // SAFETY: `err` is NULL or ours.
                unsafe { take_rich_error(err) };
                Ok(SameCdhash { requirement })
            }
            None => {
                // SAFETY: `err` is NULL or ours.
                let text = unsafe { take_rich_error(err) }.map(|(t, _)| t).unwrap_or_default();
                Err(Error::Transport(format!("xpc_peer_requirement_create_lwcr({{cdhash}}) failed: {text}")))
            }
        }
    }

    pub fn as_ptr(&self) -> ffi::xpc_peer_requirement_t {
        self.requirement.as_ptr()
    }

    /// Whether the sender of `message` satisfies the requirement.
    ///
    /// # Safety
    /// `message` must be a live XPC dictionary received from a peer.
    pub unsafe fn matches(&self, message: ffi::xpc_object_t) -> Result<(), String> {
        // The table loaded when `self` was made.
        let x = ffi::xpc().map_err(|e| e.to_string())?;
        let mut err: ffi::xpc_rich_error_t = std::ptr::null_mut();
        // SAFETY: both objects are live; `err` receives NULL or a +1 error.
        let ok = unsafe { (x.xpc_peer_requirement_match_received_message)(self.as_ptr(), message, &mut err) };
        // SAFETY: `err` is NULL or ours.
        let text = unsafe { take_rich_error(err) }.map(|(t, _)| t);
        if ok {
            Ok(())
        } else {
            Err(text.unwrap_or_else(|| "the caller is not the same executable (CDHash differs)".into()))
        }
    }
}
