"""Pins every argument string the driver builders generate, per engine and backend."""

from __future__ import annotations

import itertools
from dataclasses import replace
import random
import shlex
from pathlib import Path

import pytest
import yaml

from vmnet_rs import drivers
from vmnet_rs.drivers import Backend, Nic
from vmnet_rs.errors import ConfigError

MAC = "52:54:00:12:34:56"


def nic(engine: str, backend: str, index: int = 0, platform: str = "linux", offload: bool = False, mac: str = MAC) -> Nic:
    return Nic(index, "shared", drivers.resolve_backend(engine, backend, platform), 3 + index, mac, offload)


# --- QEMU ---------------------------------------------------------------------

QEMU_NETDEV = {
    "tap": "tap,id=net1,fd=3",
    "tap_next": "tap,id=net1,fd=3",
    "socket": "socket,id=net1,fd=3",
    "stream": "stream,id=net1,addr.type=fd,addr.str=3",
    "dgram": "dgram,id=net1,local.type=fd,local.str=3",
    "dgram_next": "dgram,id=net1,local.type=fd,local.str=3",
}


@pytest.mark.parametrize("platform", ["linux", "darwin"])
@pytest.mark.parametrize("backend", sorted(QEMU_NETDEV))
def test_qemu_args_per_backend(backend, platform):
    args = drivers.qemu_args([nic("qemu", backend, platform=platform)], "qemu-system-x86_64")
    assert args == ["-netdev", QEMU_NETDEV[backend], "-device", f"virtio-net-pci,netdev=net1,mac={MAC}"]


def test_qemu_second_nic_gets_net2_and_fd4():
    nics = [nic("qemu", "stream", 0), nic("qemu", "dgram", 1, mac="52:54:00:00:00:02")]
    assert drivers.qemu_args(nics, "/usr/bin/qemu-system-aarch64") == [
        "-netdev", "stream,id=net1,addr.type=fd,addr.str=3",
        "-device", f"virtio-net-pci,netdev=net1,mac={MAC}",
        "-netdev", "dgram,id=net2,local.type=fd,local.str=4",
        "-device", "virtio-net-pci,netdev=net2,mac=52:54:00:00:00:02",
    ]


def test_qemu_s390x_uses_ccw():
    assert drivers.qemu_args([nic("qemu", "socket")], "/opt/bin/qemu-system-s390x") == [
        "-netdev", "socket,id=net1,fd=3", "-device", f"virtio-net-ccw,netdev=net1,mac={MAC}",
    ]


FD_TYPES = {
    # (backend, platform): (fd_type, vnet_hdr)
    ("tap", "darwin"): ("datagram", False),
    ("tap_next", "darwin"): ("datagram_next", False),
    ("tap", "linux"): ("tap", False),
    ("tap_next", "linux"): ("tap", True),
    ("socket", "darwin"): ("stream", False),
    ("socket", "linux"): ("stream", False),
    ("stream", "darwin"): ("stream", False),
    ("stream", "linux"): ("stream", False),
    ("dgram", "darwin"): ("datagram", False),
    ("dgram", "linux"): ("datagram", False),
    ("dgram_next", "darwin"): ("datagram_next", False),
    ("dgram_next", "linux"): ("datagram_next", False),
}


@pytest.mark.parametrize("backend,platform", sorted(FD_TYPES))
def test_qemu_backend_to_broker_fd_type(backend, platform):
    b = drivers.resolve_backend("qemu", backend, platform)
    assert (b.fd_type, b.vnet_hdr) == FD_TYPES[(backend, platform)]


def test_qemu_offers_exactly_the_six_backends():
    for platform in ("linux", "darwin"):
        assert sorted(drivers.backends("qemu", platform)) == sorted(QEMU_NETDEV)


# --- krunkit ------------------------------------------------------------------

@pytest.mark.parametrize("backend,offload,expected", [
    ("datagram", False, f"virtio-net,type=unixgram,fd=3,mac={MAC}"),
    ("datagram", True, f"virtio-net,type=unixgram,fd=3,mac={MAC},offloading=on"),
    ("datagram_next", False, f"virtio-net,type=unixgram,fd=3,mac={MAC}"),
    ("datagram_next", True, f"virtio-net,type=unixgram,fd=3,mac={MAC},offloading=on"),
    ("stream", False, f"virtio-net,type=unixstream,fd=3,mac={MAC}"),
    ("stream", True, f"virtio-net,type=unixstream,fd=3,mac={MAC},offloading=on"),
])
def test_krunkit_args(backend, offload, expected):
    n = nic("krunkit", backend, platform="darwin", offload=offload)
    assert drivers.krunkit_args([n]) == ["--device", expected]
    assert n.backend.fd_type == backend


# --- vfkit --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["datagram", "datagram_next"])
def test_vfkit_args(backend):
    n = nic("vfkit", backend, index=1, platform="darwin", offload=True)
    # vfkit takes no offload option by fd; the string never carries one.
    assert drivers.vfkit_args([n]) == ["--device", f"virtio-net,fd=4,mac={MAC}"]
    assert n.backend.fd_type == backend


def test_vfkit_has_no_stream_backend():
    with pytest.raises(ConfigError, match=r"backend 'stream' is not available for vfkit on macOS; choose one of: datagram, datagram_next"):
        drivers.resolve_backend("vfkit", "stream", "darwin")


# --- engines, defaults, errors ------------------------------------------------

@pytest.mark.parametrize("program,engine", [
    ("qemu-system-x86_64", "qemu"),
    ("/usr/local/bin/qemu-system-aarch64", "qemu"),
    ("krunkit", "krunkit"),
    ("/opt/homebrew/bin/vfkit", "vfkit"),
    ("qemu-img", "generic"),
    ("/bin/socat", "generic"),
])
def test_engine_for(program, engine):
    assert drivers.engine_for(program) == engine


@pytest.mark.parametrize("engine,platform,expected", [
    ("qemu", "linux", "tap_next"), ("qemu", "darwin", "tap"),
    ("krunkit", "darwin", "stream"), ("vfkit", "darwin", "datagram"),
    ("generic", "linux", "datagram"),
])
def test_default_backends(engine, platform, expected):
    assert drivers.default_backend(engine, platform) == expected
    assert drivers.resolve_backend(engine, None, platform).name == expected


def test_unknown_backend_lists_choices():
    with pytest.raises(ConfigError, match=r"backend 'tapx' is not available for qemu on Linux; choose one of: tap, tap_next, socket, stream, dgram, dgram_next"):
        drivers.resolve_backend("qemu", "tapx", "linux")


def test_generic_tap_only_on_linux():
    assert drivers.resolve_backend("generic", "tap_next", "linux") == Backend("generic", "tap_next", "tap", True)
    with pytest.raises(ConfigError):
        drivers.resolve_backend("generic", "tap", "darwin")


def test_engine_args_for_unknown_program_says_use_placeholders():
    with pytest.raises(ConfigError, match=r"socat is not a VM engine.*\{fd0\}"):
        drivers.engine_args("generic", [nic("generic", "datagram")], "/bin/socat")


# --- MAC addresses ------------------------------------------------------------

def test_derived_mac_is_stable_pinned_and_locally_administered_unicast():
    mac = drivers.derive_mac("vm1", "shared")
    assert mac == drivers.derive_mac("vm1", "shared")
    assert mac == "52:4d:ed:df:1e:e9"  # pinned: a change would move every VM's lease
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_derived_mac_differs_by_name_network_and_occurrence():
    macs = {drivers.derive_mac("vm1", "shared"), drivers.derive_mac("vm2", "shared"),
            drivers.derive_mac("vm1", "host"), drivers.derive_mac("vm1", "shared", 1)}
    assert len(macs) == 4


def test_derived_macs_are_unique_and_well_formed_over_many_vms():
    names = [f"vm-{i}" for i in range(5000)]
    macs = [drivers.derive_mac(n, net) for n, net in itertools.product(names, ["shared", "host"])]
    assert len(set(macs)) == len(macs)
    for m in random.Random(7).sample(macs, 500):
        first = int(m[:2], 16)
        assert first & 0x03 == 0x02
        assert drivers.normalize_mac(m) == m


@pytest.mark.parametrize("bad,why", [
    ("52:54:00:12:34", "six hex octets"),
    ("52:54:00:12:34:zz", "six hex octets"),
    ("01:00:5e:00:00:01", "multicast"),
    ("00:00:00:00:00:00", "all zeros"),
    ("", "six hex octets"),
])
def test_bad_macs_are_refused(bad, why):
    with pytest.raises(ConfigError, match=why):
        drivers.normalize_mac(bad)


def test_mac_normalized():
    assert drivers.normalize_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"


def test_plan_nics_fds_macs_and_occurrences():
    nics = drivers.plan_nics([("shared", "stream"), ("host", None), ("shared", "dgram")], "qemu", "vm1",
                             macs=["52:54:00:00:00:01"], platform="linux", offload={"host": True})
    assert [n.fd for n in nics] == [3, 4, 5]
    assert [n.backend.name for n in nics] == ["stream", "tap_next", "dgram"]
    assert [n.offload for n in nics] == [False, True, False]
    assert nics[0].mac == "52:54:00:00:00:01"
    assert nics[1].mac == drivers.derive_mac("vm1", "host")
    assert nics[2].mac == drivers.derive_mac("vm1", "shared", 1)


def test_plan_nics_refuses_duplicate_mac_and_too_many_macs():
    with pytest.raises(ConfigError, match="given to two NICs"):
        drivers.plan_nics([("shared", None), ("host", None)], "qemu", "vm", macs=[MAC, MAC], platform="linux")
    with pytest.raises(ConfigError, match="at most one per network"):
        drivers.plan_nics([("shared", None)], "qemu", "vm", macs=[MAC, "52:54:00:00:00:09"], platform="linux")
    with pytest.raises(ConfigError, match="no network given"):
        drivers.plan_nics([], "qemu", "vm", platform="linux")


# --- placeholders -------------------------------------------------------------

def test_substitute_placeholders():
    nics = [nic("generic", "datagram"), nic("generic", "stream", index=1, mac="52:54:00:00:00:02")]
    args = ["--net", "fd={fd0},mac={mac0}", "--net2={fd1}/{mac1}/{network1}/{fdtype1}", "{literal}", "mtu={mtu0}"]
    assert drivers.has_placeholders(args)
    assert drivers.substitute(args, nics, mtus={0: 1500}) == [
        "--net", f"fd=3,mac={MAC}", "--net2=4/52:54:00:00:00:02/shared/stream", "{literal}", "mtu=1500",
    ]


def test_substitute_errors():
    nics = [nic("generic", "datagram")]
    with pytest.raises(ConfigError, match=r"\{fd1\} names NIC 1, but only 1"):
        drivers.substitute(["{fd1}"], nics)
    with pytest.raises(ConfigError, match="MTU"):
        drivers.substitute(["{mtu0}"], nics)
    assert not drivers.has_placeholders(["-m", "256", "{fdx}"])


def test_vz_network_returns_the_acquire_reply():
    class FakeClient:
        def acquire(self, network):
            return {"network": network, "serialization": b"x"}

    assert drivers.vz_network(FakeClient(), "shared") == {"network": "shared", "serialization": b"x"}


def test_qemu_netdev_id_clash_is_refused():
    nics = [nic("qemu", "stream"), nic("qemu", "dgram", index=1, mac="52:54:00:00:00:02")]
    drivers.check_qemu_ids(["-netdev", "user,id=net0", "-nic", "user,id=mine"], nics)
    with pytest.raises(ConfigError, match=r"already has a netdev with id=net2, which vmnet-rs adds for --network shared"):
        drivers.check_qemu_ids(["-m", "256", "-netdev", "user,id=net2,hostfwd=tcp::2222-:22"], nics)


# --- path endpoints (docs/engines.md) -------------------------------------------

ENGINES_DOC = (Path(__file__).resolve().parent.parent / "docs" / "engines.md").read_text()
LINUX_EP = drivers.endpoint_paths("/run/vmnet-rs", "shared")
MACOS_EP = drivers.endpoint_paths("/Users/me/Library/Application Support/vmnet-rs/endpoints", "shared")


def test_endpoint_paths():
    assert LINUX_EP == {"stream": "/run/vmnet-rs/shared.stream.sock", "datagram": "/run/vmnet-rs/shared.dgram.sock"}


def test_qemu_stream_path_args():
    assert drivers.qemu_stream_path_args(LINUX_EP["stream"], MAC) == [
        "-netdev", "stream,id=net1,server=off,addr.type=unix,addr.path=/run/vmnet-rs/shared.stream.sock,reconnect-ms=500",
        "-device", f"virtio-net-pci,netdev=net1,mac={MAC}",
    ]
    old_qemu = drivers.qemu_stream_path_args("/a,b/x.stream.sock", MAC, index=1, reconnect_ms=None, program="qemu-system-s390x")
    assert old_qemu == ["-netdev", "stream,id=net2,server=off,addr.type=unix,addr.path=/a,,b/x.stream.sock",
                        "-device", f"virtio-net-ccw,netdev=net2,mac={MAC}"]


def test_qemu_dgram_path_args():
    assert drivers.qemu_dgram_path_args(LINUX_EP["datagram"], "/tmp/vm1/net.sock", MAC) == [
        "-netdev", "dgram,id=net1,local.type=unix,local.path=/tmp/vm1/net.sock,"
                   "remote.type=unix,remote.path=/run/vmnet-rs/shared.dgram.sock",
        "-device", f"virtio-net-pci,netdev=net1,mac={MAC}",
    ]


def test_krunkit_vfkit_lima_socket_vmnet_client_path_args():
    assert drivers.krunkit_path_args(MACOS_EP["stream"], MAC) == [
        "--device", f"virtio-net,type=unixstream,path={MACOS_EP['stream']},mac={MAC}"]
    assert drivers.krunkit_path_args(MACOS_EP["datagram"], MAC, offload=True) == [
        "--device", f"virtio-net,type=unixgram,path={MACOS_EP['datagram']},mac={MAC},offloading=on"]
    assert drivers.vfkit_path_args(MACOS_EP["datagram"], MAC) == [
        "--device", f"virtio-net,unixSocketPath={MACOS_EP['datagram']},mac={MAC}"]
    assert drivers.lima_networks(MACOS_EP["stream"]) == [{"socket": MACOS_EP["stream"]}]
    assert drivers.socket_vmnet_client_argv(MACOS_EP["stream"], MAC) == [
        "socket_vmnet_client", MACOS_EP["stream"], "qemu-system-x86_64", "-netdev", "socket,id=net1,fd=3",
        "-device", f"virtio-net-pci,netdev=net1,mac={MAC}"]


@pytest.mark.parametrize("call,why", [
    (lambda: drivers.vfkit_path_args(MACOS_EP["stream"], MAC), "vfkit joins a datagram endpoint"),
    (lambda: drivers.lima_networks(MACOS_EP["datagram"]), "Lima's `socket:` network is a stream socket"),
    (lambda: drivers.socket_vmnet_client_argv(MACOS_EP["datagram"], MAC), "socket_vmnet_client connects to a stream"),
    (lambda: drivers.qemu_stream_path_args(LINUX_EP["stream"], "01:00:00:00:00:01"), "multicast"),
])
def test_path_builders_refuse_the_wrong_socket_kind_or_mac(call, why):
    with pytest.raises(ConfigError, match=why):
        call()


def test_engines_doc_shows_exactly_what_the_builders_give():
    """Every engine snippet in docs/engines.md is the builders' output, word for word."""
    lines = [
        shlex.join(drivers.qemu_stream_path_args(LINUX_EP["stream"], MAC)),
        shlex.join(drivers.qemu_dgram_path_args(LINUX_EP["datagram"], "/tmp/vm1/net.sock", MAC)),
        "krunkit ... " + shlex.join(drivers.krunkit_path_args(MACOS_EP["stream"], MAC)),
        "krunkit ... " + shlex.join(drivers.krunkit_path_args(MACOS_EP["datagram"], MAC)),
        "vfkit ... " + shlex.join(drivers.vfkit_path_args(MACOS_EP["datagram"], MAC)),
        shlex.join(drivers.socket_vmnet_client_argv(MACOS_EP["stream"], MAC)),
        yaml.safe_dump({"networks": drivers.lima_networks(MACOS_EP["stream"])}, sort_keys=False).strip(),
    ]
    for line in lines:
        assert line in ENGINES_DOC, f"docs/engines.md lacks:\n{line}"


def test_each_engine_is_one_description() -> None:
    """Every engine's default is one of its backends on both platforms, its
    program is recognised as it, and only engines that take offload get it."""
    programs = {drivers.QEMU: "/usr/bin/qemu-system-aarch64", drivers.KRUNKIT: "krunkit",
                drivers.VFKIT: "/opt/bin/vfkit", drivers.GENERIC: "/usr/bin/my-vmm"}
    assert set(drivers.ENGINES) == set(programs)
    for name, eng in drivers.ENGINE_TABLE.items():
        for platform in ("linux", "darwin"):
            assert eng.default[platform] in drivers.backends(name, platform), (name, platform)
            assert all(b.engine == name for b in eng.backends(platform))
        assert drivers.engine_for(programs[name]) == name
        if name != drivers.GENERIC:
            nic = drivers.plan_nics([("lab", None)], name, "vm", offload={"lab": True})
            with_offload, without = eng.args(nic, programs[name]), eng.args([replace(nic[0], offload=False)], programs[name])
            # The offload rule: the arguments depend on the network's offload exactly when the engine says so.
            assert (with_offload != without) is eng.offload, name
    assert [n for n, e in drivers.ENGINE_TABLE.items() if e.offload] == [drivers.KRUNKIT]
    with pytest.raises(drivers.ConfigError, match="unknown VM engine 'bhyve'; known: qemu, krunkit, vfkit, generic"):
        drivers.get_engine("bhyve")
