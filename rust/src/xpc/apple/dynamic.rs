//! Functions resolved at run time, so the library loads on every macOS.
//!
//! The `vmnet_network_*` API (26.0), the XPC listener (14.0) and peer
//! requirement (26.0) calls, and a few vmnet keys (15.0) do not exist on
//! older systems; linking them directly would make the whole Python module
//! fail to import there with a dyld error. Instead each table of functions
//! is looked up once with `dlsym` and the first use reports, as an error,
//! which symbol is missing and which macOS it needs.
//!
//! Thread-safe: each table is built once behind a `OnceLock`.

use std::ffi::{c_void, CStr};

/// Looks `name` up in `handle` (`RTLD_DEFAULT` for libSystem).
///
/// # Safety
/// `handle` must be `RTLD_DEFAULT` or a live `dlopen` handle.
pub unsafe fn symbol(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: caller's contract; `name` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Opens a system framework by path (from the dyld shared cache).
pub fn open_framework(path: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: a NUL-terminated path; the handle is never closed (the
    // function table lives for the process).
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("cannot load {}", path.to_string_lossy()));
    }
    Ok(handle)
}

/// Declares a struct of function pointers and a loader that fills it with
/// `dlsym`, failing on the first missing symbol with its name and `$needs`.
macro_rules! dynamic_functions {
    (
        $(#[$meta:meta])*
        pub struct $table:ident, needs $needs:literal {
            $( $(#[$fmeta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case, dead_code)]
        pub struct $table {
            $( $(#[$fmeta])* pub $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
        }

        impl $table {
            /// Resolves every function in `handle`.
            ///
            /// # Safety
            /// `handle` must be `RTLD_DEFAULT` or a live `dlopen` handle, and
            /// each symbol must have the declared signature (the SDK's).
            pub unsafe fn load(handle: *mut std::ffi::c_void) -> Result<$table, String> {
                Ok($table {
                    $( $name: {
                        let name = concat!(stringify!($name), "\0");
                        let cname = std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).map_err(|e| e.to_string())?;
                        // SAFETY: caller's contract.
                        let Some(p) = (unsafe { $crate::xpc::apple::dynamic::symbol(handle, cname) }) else {
                            return Err(format!("{} is missing: {}", stringify!($name), $needs));
                        };
                        // SAFETY: `p` is the address of a function with this
                        // signature (caller's contract); both are one pointer.
                        unsafe {
                            std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>(p)
                        }
                    }, )*
                })
            }
        }
    };
}
pub(crate) use dynamic_functions;
