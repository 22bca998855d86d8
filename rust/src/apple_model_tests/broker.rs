//! The broker's request handling (`broker::Core`) served through the macOS
//! transport on the model: a Mach service, the Rust client, fds of each
//! adaptor kind handed over in XPC replies, the Lima dialect, and a client
//! that goes away releasing its leases. The networks are the broker's test
//! hub (the vmnet backend has its own tests, `vmnet.rs`).

use std::sync::Arc;

use super::{advertise, leaks, own_cdhash, own_process, set_client, Expect};
use crate::adaptor::Kind;
use crate::broker::{Backend, BrokerOptions, Core};
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
