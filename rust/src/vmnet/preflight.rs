//! What the platform backend needs before a broker can make a network,
//! checked once at start so a broker that cannot work refuses at once with
//! one line saying what to do, instead of failing on a client's first
//! request. `vmnet-rs doctor` shows the same checks one per line.
//!
//! Linux: CAP_NET_ADMIN (bridges, TAPs, nftables), `/dev/net/tun`, and the
//! `ip`, `nft` and `dnsmasq` programs on PATH. macOS: this process's own
//! `com.apple.security.virtualization` entitlement, unless it runs as root
//! (vmnet answers `VMNET_MEM_FAILURE`, not "not authorized", without it).

/// One precondition and whether it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short name, e.g. `CAP_NET_ADMIN`, `nft`.
    pub name: &'static str,
    pub ok: bool,
    /// What was found (a path, a capability set, an entitlement value).
    pub detail: String,
    /// What to do when it does not hold.
    pub fix: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Some precondition failed; the message is one line naming each and what to do.
    #[error("the broker cannot start here: {0}")]
    Preflight(String),
}

/// The entitlement vmnet requires of the calling process's main executable.
pub const VIRTUALIZATION_ENTITLEMENT: &str = "com.apple.security.virtualization";

/// Every precondition of the platform backend, in a fixed order.
pub fn checks() -> Vec<Check> {
    #[cfg(target_os = "linux")]
    return linux::checks();
    #[cfg(target_os = "macos")]
    return vec![apple::entitlement_check()];
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    return Vec::new();
}

/// Ok when every check holds; else one line naming what failed and what to do.
pub fn require() -> Result<(), Error> {
    refusal(&checks())
}

/// The refusal for `checks`, if any failed.
pub fn refusal(checks: &[Check]) -> Result<(), Error> {
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {} ({})", c.name, c.detail, c.fix)).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight(failed.join("; ")))
    }
}

/// The first executable `name` in the directories of $PATH.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(target_os = "linux")]
mod linux {
    use super::{which, Check};

    /// CAP_NET_ADMIN's bit in the capability sets (linux/capability.h).
    const CAP_NET_ADMIN: u32 = 12;

    pub fn checks() -> Vec<Check> {
        let mut out = vec![net_admin(), tun()];
        for (name, fix) in [
            ("ip", "install iproute2"),
            ("nft", "install nftables"),
            ("dnsmasq", "install dnsmasq (the DHCP server and DNS proxy of every network)"),
        ] {
            out.push(match which(name) {
                Some(p) => Check { name, ok: true, detail: p.display().to_string(), fix },
                None => Check { name, ok: false, detail: format!("{name} not found on PATH"), fix },
            });
        }
        out
    }

    /// Whether the effective capability set (`CapEff:` in /proc/self/status,
    /// proc(5)) holds CAP_NET_ADMIN.
    pub fn has_net_admin(status: &str) -> Option<bool> {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
        let caps = u64::from_str_radix(hex, 16).ok()?;
        Some(caps & (1 << CAP_NET_ADMIN) != 0)
    }

    fn net_admin() -> Check {
        let fix = "run the broker as root: `sudo vmnet-rs install` registers it with systemd";
        match std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(has_net_admin) {
            Some(true) => Check { name: "CAP_NET_ADMIN", ok: true, detail: "held".into(), fix },
            Some(false) => Check { name: "CAP_NET_ADMIN", ok: false, detail: "not held by this process".into(), fix },
            None => Check { name: "CAP_NET_ADMIN", ok: false, detail: "cannot read CapEff from /proc/self/status".into(), fix },
        }
    }

    fn tun() -> Check {
        let fix = "load the tun module (`modprobe tun`) or create the device node (`mknod /dev/net/tun c 10 200`)";
        let path = c"/dev/net/tun";
        // SAFETY: opens a NUL-terminated path; the fd is closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Check { name: "/dev/net/tun", ok: false, detail: format!("cannot open /dev/net/tun: {e}"), fix };
        }
        // SAFETY: fd was just opened by us and is closed once.
        unsafe { libc::close(fd) };
        Check { name: "/dev/net/tun", ok: true, detail: "opens read-write".into(), fix }
    }

}

#[cfg(apple_api)]
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) mod apple {
    //! The entitlement check through Security.framework's SecTask API.
    use super::{Check, VIRTUALIZATION_ENTITLEMENT};
    use std::ffi::{c_char, c_void};

    type CFTypeRef = *const c_void;
    type CFAllocatorRef = *const c_void;
    type CFStringRef = *const c_void;
    type SecTaskRef = *const c_void;

    // <CoreFoundation/CFString.h>: kCFStringEncodingUTF8 = 0x08000100.
    const K_CF_STRING_ENCODING_UTF8: u32 = 0x0800_0100;

    // <Security/SecTask.h>:
    //   SecTaskRef SecTaskCreateFromSelf(CFAllocatorRef allocator);
    //   CFTypeRef SecTaskCopyValueForEntitlement(SecTaskRef task, CFStringRef entitlement, CFErrorRef *error);
    #[cfg_attr(target_os = "macos", link(name = "Security", kind = "framework"))]
    extern "C" {
        fn SecTaskCreateFromSelf(allocator: CFAllocatorRef) -> SecTaskRef;
        fn SecTaskCopyValueForEntitlement(task: SecTaskRef, entitlement: CFStringRef, error: *mut *const c_void) -> CFTypeRef;
    }

    // <CoreFoundation/CFString.h>, <CoreFoundation/CFBase.h>, <CoreFoundation/CFNumber.h>:
    //   CFStringRef CFStringCreateWithCString(CFAllocatorRef alloc, const char *cStr, CFStringEncoding encoding);
    //   void CFRelease(CFTypeRef cf);
    //   CFTypeID CFGetTypeID(CFTypeRef cf); CFTypeID CFBooleanGetTypeID(void);
    //   Boolean CFBooleanGetValue(CFBooleanRef boolean);
    #[cfg_attr(target_os = "macos", link(name = "CoreFoundation", kind = "framework"))]
    extern "C" {
        fn CFStringCreateWithCString(alloc: CFAllocatorRef, c_str: *const c_char, encoding: u32) -> CFStringRef;
        fn CFRelease(cf: CFTypeRef);
        fn CFGetTypeID(cf: CFTypeRef) -> usize;
        fn CFBooleanGetTypeID() -> usize;
        fn CFBooleanGetValue(boolean: CFTypeRef) -> u8;
    }

    pub fn entitlement_check() -> Check {
        let fix = "start the signed vmnet-rs-broker that `vmnet-rs install` registers (codesign -d --entitlements - shows the entitlement)";
        let name = "entitlement";
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        match has_entitlement() {
            Ok(true) => Check { name, ok: true, detail: format!("{VIRTUALIZATION_ENTITLEMENT} present"), fix },
            // vmnet also serves root without the entitlement (docs/macos.md).
            Ok(false) if root => {
                Check { name, ok: true, detail: format!("running as root (vmnet does not need {VIRTUALIZATION_ENTITLEMENT} then)"), fix }
            }
            Ok(false) => Check {
                name,
                ok: false,
                detail: format!("this executable lacks {VIRTUALIZATION_ENTITLEMENT} (vmnet would answer VMNET_MEM_FAILURE)"),
                fix,
            },
            Err(e) => Check { name, ok: false, detail: e, fix },
        }
    }

    fn has_entitlement() -> Result<bool, String> {
        let key = std::ffi::CString::new(VIRTUALIZATION_ENTITLEMENT).expect("no NUL in the entitlement name");
        // SAFETY: a null allocator is kCFAllocatorDefault; the returned task
        // is +1 and released below.
        let task = unsafe { SecTaskCreateFromSelf(std::ptr::null()) };
        if task.is_null() {
            return Err("SecTaskCreateFromSelf returned NULL".into());
        }
        // SAFETY: key is NUL-terminated UTF-8; the string is +1, released below.
        let cf_key = unsafe { CFStringCreateWithCString(std::ptr::null(), key.as_ptr(), K_CF_STRING_ENCODING_UTF8) };
        if cf_key.is_null() {
            // SAFETY: task is +1 and released once.
            unsafe { CFRelease(task) };
            return Err("CFStringCreateWithCString returned NULL".into());
        }
        // SAFETY: task and cf_key are live; a null error pointer is allowed.
        let value = unsafe { SecTaskCopyValueForEntitlement(task, cf_key, std::ptr::null_mut()) };
        // SAFETY: the value is +1 (Copy rule) when not null; we only read it as
        // a CFBoolean after checking its type, then release everything once.
        let present = unsafe {
            let present = !value.is_null() && CFGetTypeID(value) == CFBooleanGetTypeID() && CFBooleanGetValue(value) != 0;
            if !value.is_null() {
                CFRelease(value);
            }
            CFRelease(cf_key);
            CFRelease(task);
            present
        };
        Ok(present)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_bit_12_is_net_admin() {
        assert_eq!(linux::has_net_admin("Name:\tx\nCapEff:\t0000000000001000\n"), Some(true));
        assert_eq!(linux::has_net_admin("CapEff:\t000001ffffffefff\n"), Some(false));
        assert_eq!(linux::has_net_admin("CapPrm:\t0\n"), None);
    }

    #[test]
    fn refusal_is_one_line_naming_each_failure_and_its_fix() {
        let checks = vec![
            Check { name: "nft", ok: false, detail: "nft not found on PATH".into(), fix: "install nftables" },
            Check { name: "ip", ok: true, detail: "/usr/sbin/ip".into(), fix: "install iproute2" },
            Check { name: "CAP_NET_ADMIN", ok: false, detail: "not held by this process".into(), fix: "run as root" },
        ];
        let e = refusal(&checks).unwrap_err().to_string();
        assert_eq!(
            e,
            "the broker cannot start here: nft: nft not found on PATH (install nftables); CAP_NET_ADMIN: not held by this process (run as root)"
        );
        assert!(refusal(&checks[1..2]).is_ok());
    }

    #[test]
    fn which_follows_path() {
        let p = which("sh").expect("sh on PATH");
        assert!(p.is_absolute() && p.ends_with("sh"));
        assert!(which("vmnet-rs-no-such-program").is_none());
        assert_eq!(checks().iter().map(|c| c.name).collect::<Vec<_>>(), ["CAP_NET_ADMIN", "/dev/net/tun", "ip", "nft", "dnsmasq"]);
    }
}
