"""Relayed ports with the user-space segmentation offload (docs/linux.md,
"Relayed ports: segmentation offload in user space"), end to end with real
kernel TCP/IP stacks: two "VMs" (network namespaces, each with a plain TAP
whose frames an adaptor relays to a broker port, as QEMU's stream or dgram
netdev would) on one network's bridge. A TCP bulk transfer each way and
between the host and a VM arrives byte-exact (the receiving stacks verify
every checksum the offload computed), UDP datagrams come back byte-exact
from the other VM and from the host (whose replies carry partial
checksums the port completes), and the broker's TAPs carried merged
frames. Needs root; never touches the host's network."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from brokerproc import BrokerProcess
from netns import NetNs
from vmnet_rs import Adaptor, Client

pytestmark = pytest.mark.root

GW = "10.233.0.1"
NET = {"vmnet": {"lab": {"mode": "host", "subnet": f"{GW}/24", "dhcp": False, "dnsProxy": False}}}
BULK_BYTES = 12 * 1024 * 1024

# Sends (or receives) BULK bytes of a fixed pattern over TCP and prints
# what it received's SHA-256 and length.
TCP = r"""
import hashlib, socket, sys
role, addr, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
block = bytes((i * 131 + 7) % 251 for i in range(65536))
if role == "send":
    s = socket.create_connection((addr, port), timeout=60)
    left = size
    while left:
        chunk = block[: min(left, len(block))]
        s.sendall(chunk)
        left -= len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print("sent", flush=True)
else:
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port))
    l.listen(1)
    print("listening", flush=True)
    c, _ = l.accept()
    c.settimeout(60)
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.close()
    print(h.hexdigest(), n, flush=True)
"""

# Echoes UDP datagrams back until told to stop.
UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(65535)
    if d == b"stop":
        break
    s.sendto(d, a)
"""


def expected(size: int) -> str:
    block = bytes((i * 131 + 7) % 251 for i in range(65536))
    h = hashlib.sha256()
    left = size
    while left:
        h.update(block[: min(left, len(block))])
        left -= min(left, len(block))
    return h.hexdigest()


@pytest.fixture
def broker(netns, tmp_path: Path):
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, **NET}))
    args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    with BrokerProcess(tmp_path / "broker.sock", args, prefix=netns.argv([])) as b:
        b.wait_ready()
        b.netns = netns
        yield b


def vm(ns: NetNs, kind: str, fd: int, mac: str, address: str) -> Adaptor:
    """A TAP in ``ns`` with ``address``, its frames relayed to the broker's fd."""
    a = Adaptor(kind, tap="eth0", netns=ns.name, mac=mac, vm_socket_fd=fd)
    ns.run(["ip", "link", "set", "eth0", "address", mac, "up"])
    ns.run(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    return a


def link_packets(ns: NetNs, link: str) -> tuple:
    """(rx, tx) packets of ``link`` in ``ns``."""
    stats = json.loads(ns.run(["ip", "-s", "-j", "link", "show", link]).stdout)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


def relay_counters(node):
    """Every relay counter set (``host_to_vm``/``vm_to_host``) in a status."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("host_to_vm", "vm_to_host") and isinstance(value, dict):
                yield value
            else:
                yield from relay_counters(value)
    elif isinstance(node, list):
        for value in node:
            yield from relay_counters(value)


def tcp_transfer(sender: NetNs, receiver: NetNs, addr: str, port: int) -> None:
    server = receiver.popen([sys.executable, "-c", TCP, "recv", addr, str(port), "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        sender.run([sys.executable, "-c", TCP, "send", addr, str(port), str(BULK_BYTES)], timeout=120)
        digest, n = server.stdout.readline().split()
        assert int(n) == BULK_BYTES, f"received {n} of {BULK_BYTES} bytes"
        assert digest == expected(BULK_BYTES), "the bytes received differ from the bytes sent"
        server.wait(timeout=30)
    finally:
        server.kill()


def udp_exchange(client: NetNs, server_ns: NetNs, addr: str) -> None:
    server = server_ns.popen([sys.executable, "-c", UDP_ECHO, addr, "7777"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        script = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for size in (1, 17, 512, 1472, 1473, 4000, 9000, 30001):
    d = bytes((size + i * 13) % 256 for i in range(size))
    for attempt in range(10):
        s.sendto(d, (sys.argv[1], 7777))
        try:
            back, _ = s.recvfrom(65535)
            break
        except socket.timeout:
            continue
    else:
        sys.exit(f"no echo of {size} bytes")
    assert back == d, f"{size}-byte echo differs"
s.sendto(b"stop", (sys.argv[1], 7777))
print("ok")
"""
        assert client.run([sys.executable, "-c", script, addr], timeout=120).stdout.strip() == "ok"
    finally:
        server.kill()


def test_tcp_and_udp_cross_two_offloading_relayed_ports_byte_exact(broker: BrokerProcess) -> None:
    vm1, vm2 = NetNs("vmrv"), NetNs("vmrv")
    try:
        with Client(str(broker.socket), timeout=20) as c, c.open("lab", "stream") as p1, c.open("lab", "datagram") as p2:
            a1 = vm(vm1, "stream", p1.fd, p1.mac, "10.233.0.11")
            a2 = vm(vm2, "datagram", p2.fd, p2.mac, "10.233.0.12")
            try:
                taps = {link for link in broker.netns.links() if link.startswith("vmt")}
                assert len(taps) == 2, taps
                before = {t: link_packets(broker.netns, t) for t in taps}
                sent_before = link_packets(vm1, "eth0")[1]
                tcp_transfer(vm1, vm2, "10.233.0.12", 5001)
                # What vm1's stack sent as MTU-sized segments reached the
                # bridge in fewer, merged writes on its port's TAP (the other port
                # writes only ACKs, fewer still).
                sent = link_packets(vm1, "eth0")[1] - sent_before
                written = {t: link_packets(broker.netns, t)[0] - before[t][0] for t in taps}
                print(f"vm1 sent {sent} frames; the ports' TAPs took {written}")
                assert max(written.values()) < sent * 0.8, f"no merging: vm1 sent {sent} frames, the TAPs took {written}"
                tcp_transfer(vm2, vm1, "10.233.0.11", 5002)
                # The host's own TCP stack (GSO frames from the bridge).
                tcp_transfer(broker.netns, vm1, "10.233.0.11", 5003)
                tcp_transfer(vm2, broker.netns, GW, 5004)
                udp_exchange(vm1, vm2, "10.233.0.12")
                # Replies of the host's stack carry partial checksums.
                udp_exchange(vm2, broker.netns, GW)
                # Nothing the ports read from their TAPs was dropped as
                # malformed, nothing written refused.
                counters = list(relay_counters(c.status()))
                assert len(counters) >= 4, c.status()
                assert all(k["errors"] == 0 for k in counters), counters
            finally:
                a1.close()
                a2.close()
    finally:
        vm1.close()
        vm2.close()
