"""Endpoint sockets (docs/endpoints.md) with the real Linux backend (bridge,
TAPs) in a broker subprocess inside its own network namespace: a stream and
a datagram client meet on the bridge, each on its own TAP; a client killed
with SIGKILL loses its port within seconds. Needs root; never touches the
host's network (socket paths are files, reachable from outside the
namespace)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, readline_within, wait_until
from test_broker import assert_no_new_fds, settled_fds
from test_endpoints import MAC_A, MAC_B, dgram_client, frame, ports, recv_dgram_with, recv_stream_with, send_stream
from vmnet_rs import Client

pytestmark = pytest.mark.root

NET = {"lab": {"mode": "host", "subnet": "10.232.0.1/24", "dhcp": False, "dnsProxy": False}, "host": {"mode": "host", "endpoints": []},
       "shared": {"endpoints": []}}


@pytest.fixture
def broker(netns, tmp_path: Path):
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": [], "endpointDir": str(tmp_path / "ep")}, "vmnet": NET}))
    args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    with BrokerProcess(tmp_path / "broker.sock", args, prefix=netns.argv([])) as b:
        b.wait_ready()
        b.netns = netns
        b.ep = tmp_path / "ep"
        yield b


def taps(b: BrokerProcess) -> list:
    return [link for link in b.netns.links() if link.startswith("vmt")]


def test_stream_and_datagram_clients_meet_on_the_bridge(broker: BrokerProcess, tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(broker.ep / "lab.stream.sock"))
    s.settimeout(20)
    d = dgram_client(tmp_path, "vfkit", str(broker.ep / "lab.dgram.sock"))
    d.send(b"VFKT")
    wait_until("two ports", lambda: len(ports(broker, "lab")) == 2)
    assert len(taps(broker)) == 2, "each client is its own TAP on the bridge"
    with Client(str(broker.socket), timeout=20) as c:
        bridge = c.status()["networks"]["lab"]["device"]
    assert bridge in broker.netns.links()
    send_stream(s, frame(MAC_A, b"from-stream"))
    assert recv_dgram_with(d, b"from-stream")[6:12] == MAC_A
    d.send(frame(MAC_B, b"from-dgram"))
    assert recv_stream_with(s, b"from-dgram")[6:12] == MAC_B
    by_via = {p["via"]: p for p in ports(broker, "lab").values()}
    assert by_via["stream"]["mac"] == "52:54:00:aa:00:01" and by_via["datagram"]["mac"] == "52:54:00:bb:00:02"
    s.close()
    d.close()
    os.unlink(tmp_path / "vfkit.sock")
    wait_until("both ports and TAPs to go", lambda: not ports(broker, "lab") and not taps(broker), timeout=20)


CLIENT = r"""
import socket, struct, sys, time
kind, path, me = sys.argv[1:4]
if kind == "stream":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = b"\xff" * 6 + bytes.fromhex("525400cc0003") + b"\x88\xb5" + b"x" * 46
    s.sendall(struct.pack(">I", len(f)) + f)
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(me)
    s.connect(path)
    s.send(b"VFKT")
print("ready", flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_a_client_killed_with_sigkill_loses_its_port_within_seconds(broker: BrokerProcess, tmp_path: Path, kind: str) -> None:
    # The network exists first, so the baseline holds its fds.
    keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    keep.connect(str(broker.ep / "lab.stream.sock"))
    wait_until("the network", lambda: len(ports(broker, "lab")) == 1)
    baseline = settled_fds(broker)
    links_before = set(broker.netns.links())
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    p = subprocess.Popen([sys.executable, str(script), kind, str(broker.ep / f"lab.{kind}.sock"), str(tmp_path / "victim.sock")],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert readline_within(p, 60).strip() == "ready"
        wait_until("the victim's port", lambda: len(ports(broker, "lab")) == 2)
        assert any(v["pid"] == p.pid for v in ports(broker, "lab").values())
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
    # A datagram client's socket file stays behind; the probe still notices.
    if kind == "dgram":
        assert (tmp_path / "victim.sock").exists()
    wait_until("the victim's port to go", lambda: len(ports(broker, "lab")) == 1, timeout=20)
    wait_until("the victim's TAP to go", lambda: set(broker.netns.links()) == links_before, timeout=20)
    assert_no_new_fds(broker, baseline)
    keep.close()


def _qlen(netns) -> int:
    return int(netns.run(["cat", "/proc/sys/net/unix/max_dgram_qlen"]).stdout.strip())


def _thread_namespaces(pid: int) -> dict:
    """Task id -> network namespace of every thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = os.readlink(task / "ns" / "net")
        except OSError:  # the thread ended while we looked
            pass
    return out


def test_the_datagram_endpoint_reports_a_deep_queue_and_leaves_the_namespace_alone(broker: BrokerProcess, tmp_path: Path) -> None:
    """A root broker whose namespace queues 10 datagrams (a fresh one's
    default) makes its datagram endpoint with the 512 it wants, in a
    namespace of its own: status and doctor say so, the namespace's own
    setting is unchanged, and no thread of the broker is left elsewhere
    (the helper thread ended)."""
    from vmnet_rs._native import DATAGRAM_QUEUE_FRAMES
    from vmnet_rs.doctor import OK, datagram_queue_checks
    from vmnet_rs.status_cli import datagram_queue_text

    assert _qlen(broker.netns) == 10, "a fresh namespace keeps the kernel's default"
    with Client(str(broker.socket), timeout=20) as c:
        st = c.status()
    q = st["endpoints"]["lab"]["datagram_queue"]
    assert (q["made"], q["frames"], q["wanted_frames"]) == ("private namespace", DATAGRAM_QUEUE_FRAMES, 512), q
    assert "note" not in q and q["recv_bytes"] > 0
    assert datagram_queue_text(q).startswith("receive queue 512 datagrams")
    [check] = [c for c in datagram_queue_checks(st) if c.name == "datagram endpoint lab queue"]
    assert check.verdict == OK, check
    assert _qlen(broker.netns) == 10, "the broker changed no setting of its namespace"
    own = os.readlink(f"/proc/{broker.pid}/ns/net")
    assert set(_thread_namespaces(broker.pid).values()) == {own}, "every broker thread is in the broker's namespace"
    # The endpoint still serves: a datagram client gets its port.
    d = dgram_client(tmp_path, "deep", str(broker.ep / "lab.dgram.sock"))
    d.send(frame(MAC_B, b"hello"))
    wait_until("the datagram client's port", lambda: len(ports(broker, "lab")) == 1)
    d.close()
    os.unlink(tmp_path / "deep.sock")


def test_without_the_privilege_the_datagram_endpoint_says_its_depth_and_the_fix(netns, tmp_path: Path) -> None:
    """The same broker without CAP_SYS_ADMIN (as an unprivileged one, or
    one a seccomp filter keeps from unshare) keeps its namespace's 10 and
    says so, with the fix, in status and doctor."""
    from vmnet_rs.doctor import WARN, datagram_queue_checks

    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": [], "endpointDir": str(tmp_path / "ep")}, "vmnet": NET}))
    args = ["--config", str(cfg), "--idle-timeout", "0", "--state-dir", str(tmp_path / "state")]
    prefix = netns.argv(["setpriv", "--bounding-set=-sys_admin", "--"])
    with BrokerProcess(tmp_path / "broker.sock", args, prefix=prefix) as b:
        b.wait_ready()
        with Client(str(b.socket), timeout=20) as c:
            st = c.status()
        log = b.log_text()
    q = st["endpoints"]["lab"]["datagram_queue"]
    assert (q["made"], q["frames"]) == ("broker namespace (fallback)", 10), q
    assert "unshare" in q["note"] and "sysctl -w net.unix.max_dgram_qlen=512" in q["note"], q["note"]
    [check] = [c for c in datagram_queue_checks(st) if c.name == "datagram endpoint lab queue"]
    assert check.verdict == WARN and "receive queue 10 datagrams" in check.detail and "sysctl -w net.unix.max_dgram_qlen=512" in check.fix, check
    assert "receive queue 10 datagrams" in log, "the broker's log says it too"
