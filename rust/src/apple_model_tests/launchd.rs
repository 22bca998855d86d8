//! `xpc/activation.rs` (launchd's sockets) and `vmnet/preflight.rs` (the
//! entitlement check through SecTask) against the model.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use super::{own_process, Expect};
use crate::model_test_name;
use crate::vmnet::preflight::{apple::entitlement_check, refusal, VIRTUALIZATION_ENTITLEMENT};
use crate::xpc::activation::{activation_outcome, launchd, Activation};

extern "C" {
    fn vmnet_model_launchd_socket(name: *const c_char, fd: c_int);
    fn vmnet_model_grant_entitlement(name: *const c_char);
}

#[test]
fn endpoint_sockets_are_handed_over_by_launchd() {
    own_process(model_test_name!("endpoint_sockets_are_handed_over_by_launchd"), Expect::Pass, || {
        let outcome = |name: &str| {
            let (rc, fds) = launchd::activate(name);
            (activation_outcome(rc), fds)
        };
        assert_eq!(outcome("shared.stream").0, Activation::NotManaged, "ESRCH: not a launchd job");
        let dir = std::env::temp_dir().join(format!("vmnet-rs-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("shared.stream");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let name = CString::new("shared.stream").unwrap();
        // SAFETY: a C string and a live fd (the model keeps a duplicate).
        unsafe { vmnet_model_launchd_socket(name.as_ptr(), listener.as_raw_fd()) };
        drop(listener);
        assert_eq!(outcome("host.dgram").0, Activation::NotManaged, "ENOENT: a name the plist lacks");
        let (handed, fds) = outcome("shared.stream");
        assert_eq!((handed, fds.len()), (Activation::Handed, 1));
        let handed = UnixListener::from(fds.into_iter().next().unwrap());
        let _client = UnixStream::connect(&path).expect("connect to the handed-over socket");
        handed.accept().expect("the socket launchd held accepts");
        assert_eq!(outcome("shared.stream").0, Activation::AlreadyActivated, "EALREADY the second time");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Runs `f` with this thread's effective uid set to nobody (the root test
/// runner otherwise takes the root path).
fn as_nobody<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: seteuid to and back from an unprivileged uid, in a process of
    // the test's own.
    unsafe {
        let was = libc::geteuid();
        if was == 0 {
            assert_eq!(libc::seteuid(65534), 0);
        }
        let out = f();
        if was == 0 {
            assert_eq!(libc::seteuid(0), 0);
        }
        out
    }
}

#[test]
fn a_missing_entitlement_is_refused_in_one_line() {
    own_process(model_test_name!("a_missing_entitlement_is_refused_in_one_line"), Expect::Pass, || {
        let check = as_nobody(entitlement_check);
        assert!(!check.ok);
        let line = refusal(&[check]).expect_err("refused").to_string();
        assert!(!line.contains('\n') && line.contains(VIRTUALIZATION_ENTITLEMENT) && line.contains("vmnet-rs install"), "{line}");
        // SAFETY: plain id getter.
        if unsafe { libc::geteuid() } == 0 {
            let root = entitlement_check();
            assert!(root.ok && root.detail.contains("root"), "vmnet serves root without it: {}", root.detail);
        }
        let name = CString::new(VIRTUALIZATION_ENTITLEMENT).unwrap();
        // SAFETY: a C string.
        unsafe { vmnet_model_grant_entitlement(name.as_ptr()) };
        let signed = as_nobody(entitlement_check);
        assert!(signed.ok && signed.detail.contains("present"), "{}", signed.detail);
    });
}
