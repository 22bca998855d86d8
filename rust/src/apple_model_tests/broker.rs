//! The broker's request handling (`broker::Core`) served through the macOS
//! transport on the model: a Mach service, the Rust client, fds of each
//! adaptor kind handed over in XPC replies, the Lima and vmnet-broker
//! dialects (docs/protocol.md), a client that goes away releasing its
//! leases, and the whole broker (`Broker::start_mach`) exiting when idle
//! once its last session goes. The networks are the broker's test hub (the
//! vmnet backend has its own tests, `vmnet.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::{advertise, leaks, own_cdhash, own_process, set_client, Expect};
use crate::adaptor::Kind;
use crate::broker::{Backend, Broker, BrokerOptions, Core};
use crate::model_test_name;
use crate::xpc::apple::{serve, Client, ServeOptions};
use crate::xpc::peer_policy::PeerPolicy;
use crate::xpc::{Dict, Peer, Value};

const SERVICE: &str = "org.vmnet-rs.model-broker";

struct Everyone;

impl PeerPolicy for Everyone {
    fn admit(&self, _peer: &Peer) -> Result<(), String> {
        Ok(())
    }
}

fn core() -> Arc<Core> {
    let mut o = BrokerOptions::new();
    o.backend = Backend::Hub;
    o.settings.allowed_users = vec!["4242".into()];
    o.settings.allowed_groups = vec![];
    Core::new(o)
}

fn cmd(command: &str) -> Dict {
    Dict::new().with("command", Value::String(command.into()))
}

#[test]
fn the_broker_serves_fds_of_each_kind_and_a_gone_client_releases_its_leases() {
    own_process(model_test_name!("the_broker_serves_fds_of_each_kind_and_a_gone_client_releases_its_leases"), Expect::Pass, || {
        advertise(SERVICE);
        let core = core();
        let listener = serve(SERVICE, core.clone(), ServeOptions { policy: Arc::new(Everyone), requirement: None }).expect("serve");
        set_client(Some((4242, 4242, 7, own_cdhash())));
        let client = Client::connect(SERVICE, false).expect("connect");
        for kind in Kind::ALL {
            let open = cmd("open").with("network", Value::String("shared".into())).with("fd_type", Value::String(kind.as_str().into()));
            let mut reply = client.request(&open).expect("a reply");
            assert!(reply.get_int("lease").is_some(), "{} refused: {reply:?}", kind.as_str());
            let fd = reply.take_fd("fd").unwrap_or_else(|| panic!("{}: no fd in {reply:?}", kind.as_str()));
            drop(fd);
        }
        let lima = Dict::new().with("Network", Value::String("shared".into())).with("FdType", Value::String("stream".into()));
        let mut reply = client.request(&lima).expect("a Lima reply");
        assert!(reply.take_fd("FileDescriptor").is_some(), "{reply:?}");
        let observer = Client::connect(SERVICE, false).expect("connect");
        let ports = || {
            let status = observer.request(&cmd("status")).expect("status");
            status.get_dict("users").and_then(|u| u.get_dict("4242")).and_then(|u| u.get_int("ports"))
        };
        assert_eq!(ports(), Some(Kind::ALL.len() as i64 + 1));
        drop(client);
        leaks();
        // The session's leases go with it. The Lima lease is not bound to
        // the session: it lasts while its socket does, and the broker's
        // monitor (not running here) releases it once its relay has ended.
        assert_eq!(ports(), Some(1), "only the Lima lease outlives the session");
        drop(observer);
        set_client(None);
        drop(listener);
        drop(core);
    });
}

/// The count of leases in a `status` reply.
fn lease_count(observer: &Client) -> usize {
    let status = observer.request(&cmd("status")).expect("status");
    status.get_dict("leases").expect("leases in status").len()
}

#[test]
fn the_vmnet_broker_dialect_acquires_a_serialization_and_its_errors_keep_their_shape() {
    own_process(model_test_name!("the_vmnet_broker_dialect_acquires_a_serialization_and_its_errors_keep_their_shape"), Expect::Pass, || {
        advertise(SERVICE);
        let core = core();
        let listener = serve(SERVICE, core.clone(), ServeOptions { policy: Arc::new(Everyone), requirement: None }).expect("serve");
        set_client(Some((4242, 4242, 7, own_cdhash())));
        let client = Client::connect(SERVICE, false).expect("connect");
        let acquire = |name: &str| cmd("acquire").with("network_name", Value::String(name.into()));
        // docs/protocol.md, "vmnet-broker acquire": {network: serialization}
        // plus config, subnet and lease; no `ok`, no Lima keys.
        let reply = client.request(&acquire("shared")).expect("a reply");
        let network = reply.get_dict("network").unwrap_or_else(|| panic!("no serialization: {reply:?}"));
        assert_eq!(network.get_str("backend"), Some("hub"), "the nested dictionary crossed XPC: {reply:?}");
        let config: serde_json::Value = serde_json::from_slice(reply.get_data("config").expect("config")).expect("JSON");
        assert_eq!(config["mtu"], 1500, "{reply:?}");
        assert_eq!(reply.get_str("subnet"), Some("192.168.107.1/24"), "{reply:?}");
        assert!(reply.get_int("lease").is_some(), "{reply:?}");
        assert!(reply.get_bool("ok").is_none() && reply.get_str("Error").is_none(), "{reply:?}");
        // Its errors are {error: int64, message: string} and nothing else.
        let reply = client.request(&acquire("nope")).expect("a reply");
        assert_eq!(reply.get_int("error"), Some(crate::broker::code::NOT_FOUND), "{reply:?}");
        assert!(reply.get_str("message").is_some_and(|m| m.starts_with("network nope is not defined")), "{reply:?}");
        assert_eq!(reply.len(), 2, "{reply:?}");
        let mismatch = acquire("shared").with("config", Value::Data(br#"{"mode":"shared","mtu":9000}"#.to_vec()));
        let reply = client.request(&mismatch).expect("a reply");
        assert_eq!(reply.get_int("error"), Some(crate::broker::code::CONFIG_MISMATCH), "{reply:?}");
        assert!(reply.get_str("message").is_some_and(|m| m.contains("mtu: 1500 != 9000")), "{reply:?}");
        // The session serves on after errors; an acquired lease is bound to
        // the session and goes with it.
        let observer = Client::connect(SERVICE, false).expect("connect");
        assert_eq!(lease_count(&observer), 1);
        drop(client);
        leaks();
        assert_eq!(lease_count(&observer), 0, "the acquired lease went with its session");
        drop(observer);
        set_client(None);
        drop(listener);
        drop(core);
    });
}

#[test]
fn the_broker_exits_idle_once_its_last_session_goes() {
    own_process(model_test_name!("the_broker_exits_idle_once_its_last_session_goes"), Expect::Pass, || {
        advertise(SERVICE);
        let mut o = BrokerOptions::new();
        o.backend = Backend::Hub;
        o.settings.allowed_users = vec!["4242".into()];
        o.settings.allowed_groups = vec![];
        o.settings.idle_timeout = 1;
        o.monitor_interval = Duration::from_millis(50);
        set_client(Some((4242, 4242, 7, own_cdhash())));
        // As launchd starts it: on demand, so it exits when idle.
        let broker = Broker::start_mach(o, SERVICE).expect("start the broker");
        assert_eq!(broker.core().exits_when_idle(), Some(Duration::from_secs(1)));
        let client = Client::connect(SERVICE, false).expect("connect");
        let reply = client.request(&cmd("acquire").with("network_name", Value::String("shared".into()))).expect("a reply");
        assert!(reply.get_dict("network").is_some(), "{reply:?}");
        let released = client.request(&cmd("release").with("network", Value::String("shared".into()))).expect("a reply");
        assert_eq!(released.get_int("released"), Some(1), "{released:?}");
        // No lease and, after the idle timeout, no network: only the open
        // session keeps the broker running.
        crate::test_support::wait_until("the idle network to be torn down", Duration::from_secs(20), || {
            client.request(&cmd("status")).expect("status").get_dict("networks").is_some_and(|n| n.is_empty())
        });
        assert_eq!(broker.wait(Some(Duration::from_secs(2))), None, "the broker exited with a session open");
        drop(client);
        let reason = broker.wait(Some(Duration::from_secs(20))).expect("the broker did not exit once idle");
        assert!(reason.starts_with("idle"), "{reason}");
        drop(broker);
        set_client(None);
    });
}
