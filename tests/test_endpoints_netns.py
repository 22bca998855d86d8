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
