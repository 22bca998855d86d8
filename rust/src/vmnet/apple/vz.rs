//! Virtualization.framework clients: a `VZVmnetNetworkDeviceAttachment`
//! built from a network serialization the broker handed out.
//!
//! objc2-virtualization skips `initWithNetwork:`, so the class is looked up
//! at run time and the initializer sent with `msg_send!`, passing the
//! network as an opaque `^{vmnet_network=}` pointer (the encoding of a
//! pointer to the C struct `vmnet_network`, see `ffi.rs`).
//! Runs on the caller's thread (where the VM configuration is built); the
//! result is not `Send`.
//!
//! Before macOS 26.2 the attachment only works if this process is the same
//! executable (same CDHash) as the broker that created the network [R/?].

use objc2::msg_send;
use objc2::rc::{Allocated, Retained};
use objc2::runtime::{AnyClass, AnyObject};

use super::ffi;
use super::CfRef;
use crate::vmnet::mapping::{self, Status};
use crate::vmnet::Error;
use crate::xpc::apple::object::{value_to_xpc_object, Object};
use crate::xpc::Dict;

/// The attachment and the process-local network it was made from (kept
/// alive as long as the attachment, whether or not VZ retains it).
pub struct VmnetAttachment {
    attachment: Retained<AnyObject>,
    _network: CfRef<ffi::vmnet_network>,
}

impl VmnetAttachment {
    /// The `VZVmnetNetworkDeviceAttachment`, to pass to
    /// `-[VZVirtioNetworkDeviceConfiguration setAttachment:]`.
    pub fn attachment(&self) -> &AnyObject {
        &self.attachment
    }
}

/// Builds a `VZVmnetNetworkDeviceAttachment` from `serialization` (the
/// broker reply's `Serialization` as a `Dict`: rebuilt through the tags of
/// `xpc::apple::object`, or, in the broker's own process, the tag of the
/// kept object itself).
pub fn attachment_from_serialization(serialization: &Dict) -> Result<VmnetAttachment, Error> {
    let xser = value_to_xpc_object(serialization)
        .map_err(|e| Error::Platform { op: "convert the network serialization".into(), source: Box::new(e) })?;
    attachment_from_xpc(&xser)
}

/// Builds a `VZVmnetNetworkDeviceAttachment` from the serialization as the
/// XPC object it arrived as.
pub fn attachment_from_xpc(xser: &Object) -> Result<VmnetAttachment, Error> {
    let v = ffi::vmnet()?;
    let mut raw_status: ffi::vmnet_return_t = 0;
    // SAFETY: `xser` is a live XPC dictionary; +1 or NULL.
    let network =
        unsafe { CfRef::from_owned((v.f.vmnet_network_create_with_serialization)(xser.as_ptr(), &mut raw_status)) }
            .ok_or_else(|| {
                mapping::status_error("vmnet_network_create_with_serialization", Status::from_raw(raw_status))
            })?;

    // Loaded on first use rather than linked, so importing the library does
    // not load Virtualization.framework.
    crate::xpc::apple::dynamic::open_framework(c"/System/Library/Frameworks/Virtualization.framework/Virtualization")
        .map_err(|detail| Error::Platform { op: "load Virtualization.framework".into(), source: detail.into() })?;
    let class = AnyClass::get(c"VZVmnetNetworkDeviceAttachment").ok_or_else(|| Error::Platform {
        op: "find VZVmnetNetworkDeviceAttachment".into(),
        source: "the class is missing: Virtualization.framework of macOS 26 or later is needed".into(),
    })?;
    // SAFETY: `+alloc` on an NSObject subclass returns an allocated instance.
    let allocated: Allocated<AnyObject> = unsafe { msg_send![class, alloc] };
    let net: *mut ffi::vmnet_network = network.as_ptr();
    // SAFETY: `initWithNetwork:` takes a `vmnet_network_ref` (encoded as
    // `^{vmnet_network=}`), which `net` is and which outlives the call (and
    // the attachment, held in `VmnetAttachment`).
    let attachment: Option<Retained<AnyObject>> = unsafe { msg_send![allocated, initWithNetwork: net] };
    let attachment = attachment.ok_or_else(|| Error::Platform {
        op: "-[VZVmnetNetworkDeviceAttachment initWithNetwork:]".into(),
        source: "returned nil; is the network from a broker on this Mac, and (before macOS 26.2) the same executable?"
            .into(),
    })?;
    Ok(VmnetAttachment { attachment, _network: network })
}
