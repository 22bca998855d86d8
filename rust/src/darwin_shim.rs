//! The Darwin kernel calls the Apple modules make, in one place: on macOS
//! they are libc's; in the model build (`apple_api` on Linux, docs/macos.md
//! "The model") they meet the Linux kernel, which has no such calls, and
//! answer as the modelled macOS would. This is the only code the model
//! build has that macOS does not; its logic is pure and tested here, its
//! kernel behaviour only on a Mac (docs/macos.md, things to try first).
//!
//! - `sa_family_t`: Darwin's 8-bit width.
//! - `fcntl(F_SETNOSIGPIPE)`: accepted, as Darwin does.
//! - `MSG_DONTWAIT`: Darwin's value, for the calls the model answers
//!   (`recvmsg_x`/`sendmsg_x`); calls that reach the Linux kernel keep
//!   Linux's.
//! - `VMNET_FRAMEWORK`: the path vmnet.framework is loaded from.
//! - `sysctlbyname` (sys/sysctl.h): the model answers
//!   `kern.osproductversion` with [`MODEL_MACOS_VERSION`] and
//!   `kern.osrelease` with [`MODEL_DARWIN_RELEASE`]; any other name is
//!   ENOENT, as for a name the kernel does not know.

#[cfg(target_os = "macos")]
pub use libc::sysctlbyname;

/// Darwin's `sa_family_t` (sys/_types/_sa_family_t.h: `__uint8_t`; Linux's
/// is 16 bits), for declarations of Darwin functions that take one.
#[cfg(target_os = "macos")]
pub use libc::sa_family_t;
#[cfg(not(target_os = "macos"))]
#[allow(non_camel_case_types)]
#[cfg_attr(not(apple_api), allow(dead_code))]
pub type sa_family_t = u8;

/// `F_SETNOSIGPIPE` (Darwin sys/fcntl.h): a write to a closed pipe or
/// socket on this fd fails with EPIPE instead of raising SIGPIPE.
#[cfg(target_os = "macos")]
pub use libc::F_SETNOSIGPIPE;
#[cfg(not(target_os = "macos"))]
#[cfg_attr(not(apple_api), allow(dead_code))]
pub const F_SETNOSIGPIPE: libc::c_int = 73;

#[cfg(target_os = "macos")]
pub use libc::fcntl;

/// `MSG_DONTWAIT` (Darwin sys/socket.h: 0x80; Linux's is 0x40), for the
/// flags of libSystem calls the model provides (`recvmsg_x`/`sendmsg_x`).
#[cfg(target_os = "macos")]
pub use libc::MSG_DONTWAIT;
#[cfg(not(target_os = "macos"))]
#[cfg_attr(not(apple_api), allow(dead_code))]
pub const MSG_DONTWAIT: libc::c_int = 0x80;

/// What the modelled Darwin kernel answers for an fcntl(2) command Linux
/// lacks: `Some(0)` for `F_SETNOSIGPIPE` with 0 or 1 (Linux has no per-fd
/// switch; the processes the model runs ignore SIGPIPE, as Rust programs
/// do), `Some(EINVAL)` for another argument; `None` for commands Linux has.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn darwin_only_fcntl(cmd: libc::c_int, arg: libc::c_int) -> Option<i32> {
    (cmd == F_SETNOSIGPIPE).then_some(if arg == 0 || arg == 1 { 0 } else { libc::EINVAL })
}

/// fcntl(2) with one int argument, with Darwin's extra commands answered as
/// [`darwin_only_fcntl`] says and the rest passed to Linux.
///
/// # Safety
/// As fcntl(2).
#[cfg(all(apple_api, not(target_os = "macos")))]
pub unsafe fn fcntl(fd: libc::c_int, cmd: libc::c_int, arg: libc::c_int) -> libc::c_int {
    match darwin_only_fcntl(cmd, arg) {
        Some(0) => 0,
        Some(errno) => {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = errno };
            -1
        }
        // SAFETY: caller's contract.
        None => unsafe { libc::fcntl(fd, cmd, arg) },
    }
}

/// Where vmnet.framework is loaded from: the system's framework on macOS;
/// in the model build, the model library, whose path build.rs fixes at
/// build time (it is linked already, so `dlopen` hands back the same
/// library, and `dlsym` on it finds vmnet's functions and keys).
#[cfg(target_os = "macos")]
pub const VMNET_FRAMEWORK: &std::ffi::CStr = c"/System/Library/Frameworks/vmnet.framework/vmnet";
#[cfg(all(apple_api, not(target_os = "macos")))]
pub const VMNET_FRAMEWORK: &std::ffi::CStr =
    match std::ffi::CStr::from_bytes_with_nul(concat!(env!("VMNET_RS_APPLE_MODEL_LIB"), "\0").as_bytes()) {
        Ok(path) => path,
        Err(_) => panic!("VMNET_RS_APPLE_MODEL_LIB contains a NUL byte"),
    };

/// The macOS release the model stands for (the xpc and vmnet calls it
/// provides are those of macOS 26.2 and later).
pub const MODEL_MACOS_VERSION: &str = "26.2";
/// The Darwin release of that macOS (macOS 26 is Darwin 25).
pub const MODEL_DARWIN_RELEASE: &str = "25.2.0";

/// sysctl(3)'s copy-out rule: with `old` NULL, only the size; else the
/// value if it fits in `*oldlenp` (which then holds its size), or ENOMEM.
/// `Err` is the errno.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn copy_out(value: &[u8], old: Option<&mut [u8]>, oldlen: &mut usize) -> Result<(), i32> {
    match old {
        None => {
            *oldlen = value.len();
            Ok(())
        }
        Some(buf) => {
            let room = (*oldlen).min(buf.len());
            if room < value.len() {
                return Err(libc::ENOMEM);
            }
            buf[..value.len()].copy_from_slice(value);
            *oldlen = value.len();
            Ok(())
        }
    }
}

/// What the modelled kernel answers for `name` (a C string value with its
/// NUL), or ENOENT.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn model_value(name: &[u8]) -> Result<Vec<u8>, i32> {
    match name {
        b"kern.osproductversion" => Ok([MODEL_MACOS_VERSION.as_bytes(), b"\0"].concat()),
        b"kern.osrelease" => Ok([MODEL_DARWIN_RELEASE.as_bytes(), b"\0"].concat()),
        _ => Err(libc::ENOENT),
    }
}

/// sys/sysctl.h `sysctlbyname`, answered by the model (reads only: a
/// non-NULL `newp` is EPERM).
///
/// # Safety
/// As sysctlbyname(3): `name` a C string; `oldp` NULL or `*oldlenp`
/// writable bytes; `oldlenp` valid.
#[cfg(not(target_os = "macos"))]
#[cfg_attr(not(apple_api), allow(dead_code))]
pub unsafe fn sysctlbyname(
    name: *const libc::c_char,
    oldp: *mut libc::c_void,
    oldlenp: *mut libc::size_t,
    newp: *mut libc::c_void,
    _newlen: libc::size_t,
) -> libc::c_int {
    // SAFETY: caller's contract.
    let name = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
    let result = if !newp.is_null() {
        Err(libc::EPERM)
    } else {
        model_value(name).and_then(|v| {
            // SAFETY: caller's contract: `oldlenp` valid, `oldp` NULL or
            // `*oldlenp` writable bytes.
            let (len, old) = unsafe {
                let len = &mut *oldlenp;
                let old = (!oldp.is_null()).then(|| std::slice::from_raw_parts_mut(oldp.cast::<u8>(), *len));
                (len, old)
            };
            copy_out(&v, old, len)
        })
    };
    match result {
        Ok(()) => 0,
        Err(errno) => {
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = errno };
            -1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_out_follows_sysctl_rules() {
        let mut len = 0;
        assert_eq!(copy_out(b"26.2\0", None, &mut len), Ok(()));
        assert_eq!(len, 5);
        let mut buf = [0u8; 8];
        let mut len = 8;
        assert_eq!(copy_out(b"26.2\0", Some(&mut buf), &mut len), Ok(()));
        assert_eq!((&buf[..5], len), (&b"26.2\0"[..], 5));
        let mut small = [0u8; 3];
        let mut len = 3;
        assert_eq!(copy_out(b"26.2\0", Some(&mut small), &mut len), Err(libc::ENOMEM));
    }

    #[test]
    fn only_darwins_own_fcntl_commands_are_answered_here() {
        assert_eq!(darwin_only_fcntl(F_SETNOSIGPIPE, 1), Some(0));
        assert_eq!(darwin_only_fcntl(F_SETNOSIGPIPE, 2), Some(libc::EINVAL));
        assert_eq!(darwin_only_fcntl(libc::F_SETFD, 1), None);
    }

    #[test]
    fn model_knows_only_the_versions() {
        assert_eq!(model_value(b"kern.osproductversion"), Ok(b"26.2\0".to_vec()));
        assert_eq!(model_value(b"kern.osrelease"), Ok(b"25.2.0\0".to_vec()));
        assert_eq!(model_value(b"kern.osversion"), Err(libc::ENOENT));
    }
}
