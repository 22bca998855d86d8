//! `vmnet/apple.rs` and `vmnet/apple/interface.rs` against the model's
//! vmnet: a network from a full configuration, its state and
//! serialization, two interfaces exchanging frames through the model's
//! switch (woken by the packets-available event), isolation, and stop.

use std::time::{Duration, Instant};

use super::{own_process, Expect};
use crate::config::NetworkConfig;
use crate::model_test_name;
use crate::vmnet::apple::create_network;
use crate::vmnet::{BackendOptions, Interface, InterfaceDesc};
use crate::xpc::apple::object::value_to_xpc_object;

fn options() -> BackendOptions {
    BackendOptions { state_dir: std::env::temp_dir(), ..Default::default() }
}

fn config(json: &str) -> NetworkConfig {
    NetworkConfig::from_json(json, "model test", "net").expect("a valid configuration")
}

/// Waits until `iface` has a frame, by its readable fd, then reads it.
fn read_one(iface: &mut dyn Interface, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; iface.info().max_frame_bytes];
    loop {
        let mut lens = [0usize; 1];
        let n = iface.read_frames(&mut [&mut buf[..]], &mut lens).expect("vmnet_read");
        if n == 1 {
            return Some(buf[..lens[0]].to_vec());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd { fd: iface.readable_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on a live fd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
    }
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &[0x88, 0xb5][..], payload].concat()
}

#[test]
fn a_network_from_a_full_configuration() {
    own_process(model_test_name!("a_network_from_a_full_configuration"), Expect::Pass, || {
        let cfg = config(
            r#"{"mode": "shared", "subnet": "192.168.105.1/24", "ipv6Prefix": "fd00:1:2:3::/64", "mtu": 9000,
                "dhcpReservations": [{"mac": "52:54:00:00:00:01", "address": "192.168.105.10"}],
                "portForwarding": [{"protocol": "tcp", "externalPort": 8080, "internalAddress": "192.168.105.10", "internalPort": 80}]}"#,
        );
        let net = create_network("net", &cfg, &options()).expect("create");
        let state = net.state();
        assert_eq!(state.subnet, "192.168.105.1/24");
        assert_eq!(state.ipv6_prefix.as_deref(), Some("fd00:1:2:3::/64"));
        let tag = net.serialization().expect("serialization");
        let obj = value_to_xpc_object(&tag).expect("the kept serialization");
        drop(obj);
        let iface = net.start_interface(&InterfaceDesc::default()).expect("start");
        assert_eq!(iface.info().mtu, 9000);
        assert_eq!(iface.info().max_frame_bytes, 9014);
        drop(iface);
        drop(net);
    });
}

#[test]
fn a_network_without_its_services() {
    own_process(model_test_name!("a_network_without_its_services"), Expect::Pass, || {
        let cfg = config(
            r#"{"mode": "shared", "dhcp": false, "dnsProxy": false, "nat44": false, "nat66": false,
                "routerAdvertisement": false, "externalInterface": "en0"}"#,
        );
        let net = create_network("bare", &cfg, &options()).expect("create");
        assert_eq!(net.state().subnet, "192.168.64.1/24", "the model's default subnet");
        drop(net);
    });
}

#[test]
fn frames_cross_between_two_ports_switched_by_mac() {
    own_process(model_test_name!("frames_cross_between_two_ports_switched_by_mac"), Expect::Pass, || {
        let net = create_network("net", &config(r#"{"mode": "host"}"#), &options()).expect("create");
        let mut a = net.start_interface(&InterfaceDesc::default()).expect("a");
        let mut b = net.start_interface(&InterfaceDesc::default()).expect("b");
        let mut c = net.start_interface(&InterfaceDesc::default()).expect("c");
        let (ma, mb) = (a.info().mac, b.info().mac);
        assert_ne!(ma, mb, "vmnet allocates a MAC per interface");
        let unicast = frame(mb, ma, b"to b");
        assert_eq!(a.write_frames(&[&unicast]).expect("write"), 1);
        assert_eq!(read_one(&mut *b, Duration::from_secs(10)).as_deref(), Some(&unicast[..]));
        assert_eq!(read_one(&mut *c, Duration::from_millis(200)), None, "a unicast frame is for its port only");
        let broadcast = frame([0xff; 6], mb, b"to all");
        assert_eq!(b.write_frames(&[&broadcast, &broadcast]).expect("write"), 2);
        for port in [&mut a, &mut c] {
            assert_eq!(read_one(&mut **port, Duration::from_secs(10)).as_deref(), Some(&broadcast[..]));
            assert_eq!(read_one(&mut **port, Duration::from_secs(10)).as_deref(), Some(&broadcast[..]));
        }
        let too_big = vec![0u8; a.info().max_frame_bytes + 1];
        assert!(a.write_frames(&[&too_big]).is_err(), "over the max packet size");
        for mut port in [a, b, c] {
            port.stop().expect("stop");
            port.stop().expect("stop is idempotent");
        }
        drop(net);
    });
}

#[test]
fn isolated_ports_exchange_nothing() {
    own_process(model_test_name!("isolated_ports_exchange_nothing"), Expect::Pass, || {
        let net = create_network("net", &config(r#"{"mode": "host", "isolation": true}"#), &options()).expect("create");
        let desc = InterfaceDesc { isolation: true, ..InterfaceDesc::default() };
        let mut a = net.start_interface(&desc).expect("a");
        let mut b = net.start_interface(&desc).expect("b");
        let f = frame(b.info().mac, a.info().mac, b"blocked");
        assert_eq!(a.write_frames(&[&f]).expect("write"), 1);
        assert_eq!(read_one(&mut *b, Duration::from_millis(300)), None);
        drop((a, b, net));
    });
}

// The model's vmnet, declared here for the traps (vmnet/vmnet.h,
// CoreFoundation/CFBase.h); the Apple module's own declarations are private.
extern "C" {
    fn vmnet_network_configuration_create(mode: u32, status: *mut u32) -> *mut std::ffi::c_void;
    fn vmnet_network_configuration_set_mtu(cfg: *mut std::ffi::c_void, mtu: u32) -> u32;
    fn CFRelease(cf: *const std::ffi::c_void);
}

#[test]
fn trap_vmnet_object_used_after_cfrelease() {
    own_process(model_test_name!("trap_vmnet_object_used_after_cfrelease"), Expect::Abort("vmnet_network_configuration_set_mtu: object"), || {
        let mut status = 0u32;
        // SAFETY: a +1 configuration, released, then used: the misuse.
        unsafe {
            let cfg = vmnet_network_configuration_create(crate::vmnet::mapping::VMNET_HOST_MODE, &mut status);
            assert!(!cfg.is_null());
            CFRelease(cfg);
            vmnet_network_configuration_set_mtu(cfg, 1500);
        }
    });
}

/// `addresses: broker` on the model: the network is made with vmnet's
/// DHCP off, and the broker's own port (`broker::service`) runs on a vmnet
/// interface like a VM's and answers a DHCP DISCOVER another port sends.
#[test]
fn the_broker_port_answers_dhcp_on_a_vmnet_interface() {
    own_process(model_test_name!("the_broker_port_answers_dhcp_on_a_vmnet_interface"), Expect::Pass, || {
        use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, Message, MessageType};
        let cfg = config(r#"{"mode": "host", "subnet": "192.168.106.1/24", "addresses": "broker"}"#);
        let net = create_network("svc", &cfg, &options()).expect("create");
        let mut service = {
            use crate::broker::service::{pool, start_on, MemoryBook};
            start_on("svc", &*net, &cfg, |subnet| MemoryBook::new(pool(subnet), &[])).expect("the service port")
        };
        let mut vm = net.start_interface(&InterfaceDesc::default()).expect("a VM's port");
        let mac = vm.info().mac;
        let mut discover = Message::default();
        discover.set_chaddr(&mac).set_xid(0x5eed);
        discover.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        let builder = etherparse::PacketBuilder::ethernet2(mac, [0xff; 6]).ipv4([0; 4], [255; 4], 64).udp(68, 67);
        let mut f = Vec::new();
        builder.write(&mut f, &discover.to_vec().expect("encode")).expect("frame");
        assert_eq!(vm.write_frames(&[&f]).expect("write"), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let offer = loop {
            let got = read_one(&mut *vm, deadline.saturating_duration_since(Instant::now())).expect("an answer from the service port");
            let p = etherparse::SlicedPacket::from_ethernet(&got).expect("a frame");
            if let Some(etherparse::TransportSlice::Udp(u)) = p.transport {
                if u.destination_port() == 68 {
                    break Message::decode(&mut Decoder::new(u.payload())).expect("a DHCP message");
                }
            }
        };
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 0x5eed);
        assert_eq!(offer.yiaddr(), std::net::Ipv4Addr::new(192, 168, 106, 2));
        // The port publishes its counters right after it wrote the answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.status().counters.dhcp_offers == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(service.status().counters.dhcp_offers, 1);
        service.stop();
        drop(vm);
        drop(net);
    });
}
