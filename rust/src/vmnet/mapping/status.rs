//! `vmnet_return_t` as [`Status`], named after Apple's constants with a
//! hint per code, and what each status means for the caller: the backend
//! error ([`status_error`], [`network_create_error`]), the I/O error of a
//! read or write ([`status_io_error`]), whether a failed start left an
//! interface to stop ([`start_outcome`]).

use super::*;

/// `vmnet_return_t` (vmnet/vmnet.h), named after Apple's constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Success,
    Failure,
    MemFailure,
    InvalidArgument,
    SetupIncomplete,
    InvalidAccess,
    PacketTooBig,
    BufferExhausted,
    TooManyPackets,
    SharingServiceBusy,
    NotAuthorized,
    /// A code this build does not know (a newer SDK).
    Unknown(u32),
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Success,
        Status::Failure,
        Status::MemFailure,
        Status::InvalidArgument,
        Status::SetupIncomplete,
        Status::InvalidAccess,
        Status::PacketTooBig,
        Status::BufferExhausted,
        Status::TooManyPackets,
        Status::SharingServiceBusy,
        Status::NotAuthorized,
    ];

    pub fn from_raw(code: u32) -> Status {
        match code {
            1000 => Status::Success,
            1001 => Status::Failure,
            1002 => Status::MemFailure,
            1003 => Status::InvalidArgument,
            1004 => Status::SetupIncomplete,
            1005 => Status::InvalidAccess,
            1006 => Status::PacketTooBig,
            1007 => Status::BufferExhausted,
            1008 => Status::TooManyPackets,
            1009 => Status::SharingServiceBusy,
            1010 => Status::NotAuthorized,
            other => Status::Unknown(other),
        }
    }

    pub fn raw(self) -> u32 {
        match self {
            Status::Success => 1000,
            Status::Failure => 1001,
            Status::MemFailure => 1002,
            Status::InvalidArgument => 1003,
            Status::SetupIncomplete => 1004,
            Status::InvalidAccess => 1005,
            Status::PacketTooBig => 1006,
            Status::BufferExhausted => 1007,
            Status::TooManyPackets => 1008,
            Status::SharingServiceBusy => 1009,
            Status::NotAuthorized => 1010,
            Status::Unknown(code) => code,
        }
    }

    pub fn is_success(self) -> bool {
        self == Status::Success
    }

    /// Apple's constant name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Success => "VMNET_SUCCESS",
            Status::Failure => "VMNET_FAILURE",
            Status::MemFailure => "VMNET_MEM_FAILURE",
            Status::InvalidArgument => "VMNET_INVALID_ARGUMENT",
            Status::SetupIncomplete => "VMNET_SETUP_INCOMPLETE",
            Status::InvalidAccess => "VMNET_INVALID_ACCESS",
            Status::PacketTooBig => "VMNET_PACKET_TOO_BIG",
            Status::BufferExhausted => "VMNET_BUFFER_EXHAUSTED",
            Status::TooManyPackets => "VMNET_TOO_MANY_PACKETS",
            Status::SharingServiceBusy => "VMNET_SHARING_SERVICE_BUSY",
            Status::NotAuthorized => "VMNET_NOT_AUTHORIZED",
            Status::Unknown(_) => "VMNET_UNKNOWN_STATUS",
        }
    }

    /// What the code means and what to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            Status::Success => "no error",
            Status::Failure => "vmnet failed for an unspecified reason; check the system log (log show --predicate 'subsystem == \"com.apple.vmnet\"') and retry",
            Status::MemFailure => "vmnet ran out of memory, or (when creating a network) this process lacks the com.apple.security.virtualization entitlement; see the entitlement check in docs/macos.md",
            Status::InvalidArgument => "vmnet refused a value; check the network configuration (subnet, prefix, MTU, port forwards, reservations) against docs/macos.md",
            Status::SetupIncomplete => "the interface or network is not fully set up yet; retry once the start has completed",
            Status::InvalidAccess => "permission denied; run the broker as the `vmnet-rs-broker` binary that `vmnet-rs install` signs with the virtualization entitlement",
            Status::PacketTooBig => "a frame is larger than the interface's max packet size; lower the guest MTU or enable offload on the network",
            Status::BufferExhausted => "vmnet's kernel buffers are full; the frame is dropped, retry later",
            Status::TooManyPackets => "more packets than the interface's read/write max packets in one call",
            Status::SharingServiceBusy => "another sharing service (Internet Sharing?) holds the network or its subnet; stop it or choose another subnet",
            Status::NotAuthorized => "needs the com.apple.security.virtualization entitlement; run the broker as the `vmnet-rs-broker` binary that `vmnet-rs install` signs",
            Status::Unknown(_) => "a status this build does not know; check the system log and update vmnet-rs",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.raw(), self.hint())
    }
}

impl std::error::Error for Status {}

/// The backend error for a vmnet call `op` that returned `status`.
pub fn status_error(op: impl Into<String>, status: Status) -> crate::vmnet::Error {
    crate::vmnet::Error::Platform { op: op.into(), source: Box::new(status) }
}

/// What to do when vmnet refuses to create a network for want of the
/// entitlement.
pub const MISSING_ENTITLEMENT: &str = "this process lacks the com.apple.security.virtualization entitlement \
(without it vmnet answers VMNET_MEM_FAILURE, not VMNET_NOT_AUTHORIZED); run the broker as the signed \
`vmnet-rs-broker` binary: `vmnet-rs install` signs it, and `codesign -d --entitlements - \"$(command -v vmnet-rs-broker)\"` \
must list the entitlement";

/// The error for `vmnet_network_configuration_create` / `vmnet_network_create`
/// (`op`) returning `status`. Without `com.apple.security.virtualization`
/// vmnet answers `VMNET_MEM_FAILURE` (1002) there, not
/// `VMNET_NOT_AUTHORIZED` (measured on macOS 26.3), so at creation both
/// codes are reported as the missing entitlement.
pub fn network_create_error(op: impl Into<String>, status: Status) -> crate::vmnet::Error {
    match status {
        Status::MemFailure | Status::NotAuthorized => crate::vmnet::Error::Platform {
            op: op.into(),
            source: format!("{} ({}): {MISSING_ENTITLEMENT}", status.name(), status.raw()).into(),
        },
        other => status_error(op, other),
    }
}

/// What to do after `vmnet_interface_start_with_network` completed with
/// `status`, having returned an interface object or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started,
    /// The start failed but vmnet handed back an interface object: stop it
    /// (`vmnet_stop_interface`) rather than forget it.
    FailedStop(Status),
    /// The start failed and there is nothing to stop.
    Failed(Status),
}

pub fn start_outcome(status: Status, returned_interface: bool) -> StartOutcome {
    match (status.is_success(), returned_interface) {
        (true, true) => StartOutcome::Started,
        // Success without an object is a failure vmnet did not name.
        (true, false) => StartOutcome::Failed(Status::Failure),
        (false, true) => StartOutcome::FailedStop(status),
        (false, false) => StartOutcome::Failed(status),
    }
}

/// The same as an `io::Error` for the data path; buffer exhaustion is flow
/// control (`WouldBlock`), everything else is an error naming the status.
pub fn status_io_error(op: &str, status: Status) -> std::io::Error {
    let kind = match status {
        Status::BufferExhausted => std::io::ErrorKind::WouldBlock,
        Status::InvalidArgument | Status::PacketTooBig | Status::TooManyPackets => std::io::ErrorKind::InvalidInput,
        Status::InvalidAccess | Status::NotAuthorized => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, format!("{op} failed: {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip_and_have_names_and_hints() {
        for (i, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status.raw(), 1000 + i as u32);
            assert_eq!(Status::from_raw(status.raw()), *status);
            assert!(status.name().starts_with("VMNET_"));
            assert!(!status.hint().is_empty());
        }
        assert_eq!(Status::from_raw(1009).name(), "VMNET_SHARING_SERVICE_BUSY");
        assert!(Status::SharingServiceBusy.hint().contains("Internet Sharing"));
        assert!(Status::NotAuthorized.hint().contains("com.apple.security.virtualization"));
        assert!(Status::NotAuthorized.hint().contains("vmnet-rs install"));
        assert!(Status::NotAuthorized.hint().contains("vmnet-rs-broker"));
        assert!(Status::MemFailure.hint().contains("entitlement"));
        assert_eq!(Status::from_raw(4242), Status::Unknown(4242));
        assert_eq!(Status::Unknown(4242).raw(), 4242);
        let e = status_error("vmnet_network_create", Status::SharingServiceBusy).to_string();
        assert!(e.starts_with("vmnet_network_create failed: VMNET_SHARING_SERVICE_BUSY (1009)"), "{e}");
        assert_eq!(status_io_error("vmnet_write", Status::BufferExhausted).kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(status_io_error("vmnet_read", Status::NotAuthorized).kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn mem_failure_at_network_creation_is_reported_as_the_missing_entitlement() {
        for status in [Status::MemFailure, Status::NotAuthorized] {
            let e = network_create_error("vmnet_network_create(shared)", status).to_string();
            assert!(e.starts_with(&format!("vmnet_network_create(shared) failed: {} ({})", status.name(), status.raw())), "{e}");
            assert!(e.contains("lacks the com.apple.security.virtualization entitlement"), "{e}");
            assert!(e.contains("vmnet-rs-broker") && e.contains("vmnet-rs install") && e.contains("codesign -d"), "{e}");
            assert!(!e.contains("out of memory"), "{e}");
        }
        let e = network_create_error("vmnet_network_create(shared)", Status::SharingServiceBusy).to_string();
        assert!(e.contains("Internet Sharing") && !e.contains("entitlement"), "{e}");
    }

    #[test]
    fn a_failed_start_that_returned_an_interface_is_stopped() {
        assert_eq!(start_outcome(Status::Success, true), StartOutcome::Started);
        assert_eq!(start_outcome(Status::Success, false), StartOutcome::Failed(Status::Failure));
        assert_eq!(start_outcome(Status::InvalidArgument, true), StartOutcome::FailedStop(Status::InvalidArgument));
        assert_eq!(start_outcome(Status::Failure, false), StartOutcome::Failed(Status::Failure));
    }

}
