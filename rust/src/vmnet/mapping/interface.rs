//! The interface description handed to `vmnet_interface_start_with_network`
//! ([`interface_desc_entries`]) and the parameters its start block returns
//! ([`parse_interface_params`]), as plain maps.

use super::*;

/// Interface description keys (vmnet/vmnet.h `vmnet_*_key`). The FFI side
/// maps each to the exported key symbol; no key string is written here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DescKey {
    AllocateMacAddress,
    EnableIsolation,
    EnableTso,
    EnableChecksumOffload,
}

/// The description for `vmnet_interface_start_with_network`, as (key, bool)
/// pairs. `network_offload` is the network's setting: every interface on one
/// network must agree on TSO/checksum offload, or the whole network degrades
/// (one member without TSO disables it bridge-wide; docs/macos.md), so a
/// mismatched request is refused.
pub fn interface_desc_entries(
    desc: &InterfaceDesc,
    network_isolation: bool,
    network_offload: bool,
) -> Result<Vec<(DescKey, bool)>, Error> {
    if desc.offload != network_offload {
        return Err(Error::config(
            "offload",
            format!(
                "the interface asks for offload {} but the network has offload {}; all interfaces on a network must agree (set offload in the network config)",
                desc.offload, network_offload
            ),
        ));
    }
    Ok(vec![
        // A caller-chosen MAC means vmnet must not allocate one; the guest
        // uses its own (reported ignored on 26.2 [R/?], harmless).
        (DescKey::AllocateMacAddress, desc.mac.is_none()),
        (DescKey::EnableIsolation, desc.isolation || network_isolation),
        (DescKey::EnableTso, network_offload),
        (DescKey::EnableChecksumOffload, network_offload),
    ])
}

/// Parameter keys the start block's `interface_param` dictionary carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParamKey {
    MacAddress,
    Mtu,
    MaxPacketSize,
    ReadMaxPackets,
    WriteMaxPackets,
}

/// A value copied out of `interface_param` (the dictionary is borrowed and
/// only valid inside the block).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    String(String),
    Uint(u64),
}

pub type Params = BTreeMap<ParamKey, ParamValue>;

fn param_uint(params: &Params, key: ParamKey) -> Result<Option<u64>, Error> {
    match params.get(&key) {
        None => Ok(None),
        Some(ParamValue::Uint(v)) => Ok(Some(*v)),
        Some(ParamValue::String(s)) => Err(Error::Params(format!("{key:?} is the string {s:?}, expected a number"))),
    }
}

/// Builds [`InterfaceInfo`] from the start parameters. A caller-chosen MAC
/// wins over the parameters (vmnet does not allocate one then).
pub fn parse_interface_params(params: &Params, desc: &InterfaceDesc) -> Result<InterfaceInfo, Error> {
    let mac = match desc.mac {
        Some(mac) => mac,
        None => match params.get(&ParamKey::MacAddress) {
            Some(ParamValue::String(s)) => MacAddr::parse_reported(s)
                .map(|m| m.0)
                .ok_or_else(|| Error::Params(format!("vmnet returned the MAC {s:?}, which does not parse")))?,
            Some(other) => return Err(Error::Params(format!("MacAddress is {other:?}, expected a string"))),
            None => return Err(Error::Params("vmnet allocated no MAC address (vmnet_mac_address_key missing)".into())),
        },
    };
    let mtu = param_uint(params, ParamKey::Mtu)?.unwrap_or(1500);
    if !(68..=65_535).contains(&mtu) {
        return Err(Error::Params(format!("MTU {mtu} is out of range")));
    }
    let max_frame_bytes = match param_uint(params, ParamKey::MaxPacketSize)? {
        Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_PACKET_BYTES,
    };
    if !(60..=MAX_PACKET_BYTES_CAP).contains(&max_frame_bytes) {
        return Err(Error::Params(format!("max packet size {max_frame_bytes} is outside 60..={MAX_PACKET_BYTES_CAP}")));
    }
    let batch = |key| -> Result<usize, Error> {
        Ok(match param_uint(params, key)? {
            Some(0) => return Err(Error::Params(format!("{key:?} is 0"))),
            Some(v) => usize::try_from(v).unwrap_or(MAX_PACKETS_CAP).min(MAX_PACKETS_CAP),
            None => FALLBACK_MAX_PACKETS,
        })
    };
    Ok(InterfaceInfo {
        mac,
        mtu: mtu as u32,
        max_frame_bytes,
        read_max_frames: batch(ParamKey::ReadMaxPackets)?,
        write_max_frames: batch(ParamKey::WriteMaxPackets)?,
        offload: desc.offload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_entries_follow_the_request_and_the_network() {
        let d = InterfaceDesc::default();
        assert_eq!(
            interface_desc_entries(&d, false, false).unwrap(),
            vec![
                (DescKey::AllocateMacAddress, true),
                (DescKey::EnableIsolation, false),
                (DescKey::EnableTso, false),
                (DescKey::EnableChecksumOffload, false),
            ]
        );
        let d = InterfaceDesc { mac: Some([2, 0, 0, 0, 0, 1]), isolation: false, offload: true };
        assert_eq!(
            interface_desc_entries(&d, true, true).unwrap(),
            vec![
                (DescKey::AllocateMacAddress, false),
                (DescKey::EnableIsolation, true),
                (DescKey::EnableTso, true),
                (DescKey::EnableChecksumOffload, true),
            ]
        );
        let e =
            interface_desc_entries(&InterfaceDesc { offload: true, ..Default::default() }, false, false).unwrap_err();
        assert!(e.to_string().contains("must agree"), "{e}");
    }

    #[test]
    fn params_parse_into_info() {
        let mut p = Params::new();
        p.insert(ParamKey::MacAddress, ParamValue::String("be:d0:74:5c:e:5d".into()));
        p.insert(ParamKey::Mtu, ParamValue::Uint(1500));
        p.insert(ParamKey::MaxPacketSize, ParamValue::Uint(65550));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(256));
        p.insert(ParamKey::WriteMaxPackets, ParamValue::Uint(100_000));
        let desc = InterfaceDesc { offload: true, ..Default::default() };
        let info = parse_interface_params(&p, &desc).unwrap();
        assert_eq!(
            info,
            InterfaceInfo {
                mac: [0xbe, 0xd0, 0x74, 0x5c, 0x0e, 0x5d],
                mtu: 1500,
                max_frame_bytes: 65550,
                read_max_frames: 256,
                write_max_frames: MAX_PACKETS_CAP,
                offload: true,
            }
        );
        // A caller-chosen MAC wins; absent sizes fall back.
        let mut p2 = Params::new();
        p2.insert(ParamKey::Mtu, ParamValue::Uint(9000));
        let desc = InterfaceDesc { mac: Some([2, 1, 2, 3, 4, 5]), ..Default::default() };
        let info = parse_interface_params(&p2, &desc).unwrap();
        assert_eq!(info.mac, [2, 1, 2, 3, 4, 5]);
        assert_eq!(info.mtu, 9000);
        assert_eq!(info.max_frame_bytes, DEFAULT_MAX_PACKET_BYTES);
        assert_eq!(info.read_max_frames, FALLBACK_MAX_PACKETS);
    }

    #[test]
    fn bad_params_are_errors() {
        let d = InterfaceDesc::default();
        assert!(parse_interface_params(&Params::new(), &d).unwrap_err().to_string().contains("no MAC"));
        let mut p = Params::new();
        p.insert(ParamKey::MacAddress, ParamValue::String("nonsense".into()));
        assert!(parse_interface_params(&p, &d).is_err());
        p.insert(ParamKey::MacAddress, ParamValue::String("02:00:00:00:00:01".into()));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(0));
        assert!(parse_interface_params(&p, &d).unwrap_err().to_string().contains("is 0"));
        p.insert(ParamKey::ReadMaxPackets, ParamValue::Uint(8));
        p.insert(ParamKey::MaxPacketSize, ParamValue::Uint(1 << 20));
        assert!(parse_interface_params(&p, &d).is_err());
        p.insert(ParamKey::MaxPacketSize, ParamValue::String("big".into()));
        assert!(parse_interface_params(&p, &d).unwrap_err().to_string().contains("expected a number"));
    }

}
