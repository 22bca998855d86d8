"""The broker's own DHCP/DNS port (``addresses: broker``) on a real Linux
network in a namespace: no dnsmasq for it, a TAP port of its own, DHCP and
DNS answered to a client that speaks raw Ethernet on its TAP fd (as a VM
would), malformed messages counted while it keeps answering, and how long
an answer takes (printed, not asserted). Needs root; never touches the
host's network.

The client's frames are built here with ``struct``, independently of the
libraries the broker uses (dhcproto, hickory-proto, etherparse).
"""

from __future__ import annotations

import os
import select
import socket
import statistics
import struct
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from brokerproc import BrokerProcess, allow_me, config_file, wait_until
from vmnet_rs import Client

pytestmark = pytest.mark.root

SUBNET = "10.233.0"
SERVICE = f"{SUBNET}.254"
NET = {"lab": {"mode": "host", "subnet": f"{SUBNET}.1/24", "addresses": "broker"}}
CLIENT_MAC = bytes.fromhex("525400e20001")
BROADCAST = b"\xff" * 6
ROUNDS = 50


@pytest.fixture
def broker(netns, tmp_path: Path):
    cfg = config_file(tmp_path / "networks.yaml", allow_me(), NET)
    args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    with BrokerProcess(tmp_path / "broker.sock", args, prefix=netns.argv([])) as b:
        b.wait_ready()
        b.netns = netns
        yield b


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + CLIENT_MAC + b"\x08\x00" + ip + udp


def parse_udp(frame: bytes) -> Optional[Tuple[bytes, str, int, bytes]]:
    """(source MAC, source IP, destination port, payload) of an IPv4/UDP frame."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = frame[14 + ihl:]
    dport, length = struct.unpack("!2xHH", udp[:6])
    return frame[6:12], socket.inet_ntoa(frame[26:30]), dport, udp[8:length]


def dhcp(kind: int, xid: int, options: bytes = b"", ciaddr: str = "0.0.0.0", mac: bytes = CLIENT_MAC) -> bytes:
    """A BOOTREQUEST from ``mac`` (CLIENT_MAC unless given) with the broadcast flag."""
    head = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, xid, 0, 0x8000, socket.inet_aton(ciaddr), b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"))
    return head + b"\0" * 192 + b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + options + b"\xff"


def dhcp_options(payload: bytes) -> Dict[int, bytes]:
    out, i = {}, 240
    while i < len(payload) and payload[i] != 255:
        if payload[i] == 0:
            i += 1
            continue
        code, n = payload[i], payload[i + 1]
        out[code] = payload[i + 2:i + 2 + n]
        i += 2 + n
    return out


def dns_query(qid: int, name: str, qtype: int) -> bytes:
    q = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def exchange(fd: int, frame: bytes, want_port: int, match, timeout: float = 10.0) -> Tuple[bytes, float]:
    """Writes ``frame`` and returns the first UDP payload to ``want_port``
    that ``match`` accepts, with the seconds it took."""
    started = time.perf_counter()
    os.write(fd, frame)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            continue
        got = parse_udp(os.read(fd, 65536))
        if got and got[2] == want_port and match(got[3]):
            return got[3], time.perf_counter() - started
    raise AssertionError(f"no answer to port {want_port} within {timeout}s")


def drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        os.read(fd, 65536)


def test_the_broker_port_leases_and_names_with_no_dnsmasq(broker: BrokerProcess) -> None:
    with Client(str(broker.socket), timeout=20) as c:
        port = c.open("lab", "tap", mac=":".join(f"{b:02x}" for b in CLIENT_MAC))
        try:
            net = c.status()["networks"]["lab"]
            sv = net["service"]
            assert sv["running"] and sv["address"] == SERVICE and sv["domain"] == "lab.vmnet.internal"
            assert "dnsmasq" not in net.get("pieces", {})
            assert not any(Path(f"/proc/{p}/comm").read_text().strip() == "dnsmasq" for p in broker.netns.pids() if Path(f"/proc/{p}/comm").exists())
            # The service's TAP and the client's, both on the bridge.
            assert len([link for link in broker.netns.links() if link.startswith("vmt")]) == 2
            fd = port.fd
            service_mac = bytes.fromhex(sv["mac"].replace(":", ""))

            # DHCP: DISCOVER -> OFFER, REQUEST -> ACK, with the host name as a claim.
            hostname = bytes([12, 5]) + b"alpha"
            offer, _ = exchange(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, dhcp(1, 0x1001, hostname)), 68, lambda p: p[4:8] == struct.pack("!I", 0x1001))
            o = dhcp_options(offer)
            address = socket.inet_ntoa(offer[16:20])
            assert o[53] == b"\x02" and o[54] == socket.inet_aton(SERVICE)
            assert o[3] == socket.inet_aton(f"{SUBNET}.1") and o[6] == socket.inet_aton(SERVICE)
            assert address.startswith(f"{SUBNET}.") and address != SERVICE
            request = dhcp(3, 0x1002, hostname + bytes([50, 4]) + socket.inet_aton(address) + bytes([54, 4]) + socket.inet_aton(SERVICE))
            ack, _ = exchange(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, request), 68, lambda p: p[4:8] == struct.pack("!I", 0x1002))
            assert dhcp_options(ack)[53] == b"\x05" and socket.inet_ntoa(ack[16:20]) == address
            # A foreign subnet is NAKed.
            foreign = dhcp(3, 0x1003, bytes([50, 4]) + socket.inet_aton("10.99.0.5"))
            nak, _ = exchange(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, foreign), 68, lambda p: p[4:8] == struct.pack("!I", 0x1003))
            assert dhcp_options(nak)[53] == b"\x06"

            # DNS: the name, the host, a reverse name, and another name with no resolver.
            def ask(qid: int, name: str, qtype: int) -> Tuple[bytes, float]:
                frame = udp_frame(service_mac, address, SERVICE, 40000 + qid % 1000, 53, dns_query(qid, name, qtype))
                return exchange(fd, frame, 40000 + qid % 1000, lambda p: p[:2] == struct.pack("!H", qid))

            a, _ = ask(1, "alpha.lab.vmnet.internal", 1)
            assert a[3] & 0x0F == 0 and struct.unpack("!H", a[6:8])[0] == 1 and a[-4:] == socket.inet_aton(address)
            h, _ = ask(2, "host.lab.vmnet.internal", 1)
            assert h[-4:] == socket.inet_aton(f"{SUBNET}.1")
            rev = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
            p, _ = ask(3, rev, 12)
            assert b"\x05alpha\x03lab\x05vmnet\x08internal\x00" in p
            x, _ = ask(4, "example.com", 1)
            assert x[3] & 0x0F == 5, "REFUSED: no resolver in a test"

            # Malformed DHCP and DNS: dropped and counted; the port goes on.
            before = c.status()["networks"]["lab"]["service"]["counters"]
            for i in range(20):
                os.write(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, os.urandom(i * 7)))
                os.write(fd, udp_frame(service_mac, address, SERVICE, 41000, 53, os.urandom(i)))
            wait_until(
                "the malformed messages counted",
                lambda: (lambda n: n["malformed_dhcp"] >= before["malformed_dhcp"] + 20 and n["malformed_dns"] >= before["malformed_dns"] + 20)(
                    c.status()["networks"]["lab"]["service"]["counters"]
                ),
                20,
                0.1,
            )
            drain(fd)

            # How long an answer takes, through the client's TAP, the bridge
            # and the service's TAP (printed for the record, not asserted).
            dhcp_s = [exchange(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, dhcp(1, 0x2000 + i)), 68, lambda pl, i=i: pl[4:8] == struct.pack("!I", 0x2000 + i))[1] for i in range(ROUNDS)]
            dns_s = [ask(100 + i, "alpha.lab.vmnet.internal", 1)[1] for i in range(ROUNDS)]
            # A MAC the records have never seen: its first answer waits for
            # the records file to be written (the one write a new MAC costs).
            new_s = [
                exchange(fd, udp_frame(BROADCAST, "0.0.0.0", "255.255.255.255", 68, 67, dhcp(1, 0x3000 + i, mac=bytes.fromhex("525400e3") + i.to_bytes(2, "big"))), 68, lambda pl, i=i: pl[4:8] == struct.pack("!I", 0x3000 + i))[1]
                for i in range(ROUNDS)
            ]
            for what, t in (("DHCP DISCOVER->OFFER", dhcp_s), ("DNS A query->answer", dns_s), ("DHCP DISCOVER->OFFER, new MAC", new_s)):
                ms = sorted(x * 1000 for x in t)
                print(f"service port {what}: median {statistics.median(ms):.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms, max {ms[-1]:.2f} ms over {len(ms)}")

            st = c.status()
            sv = st["networks"]["lab"]["service"]
            assert sv["running"]
            assert sv["counters"]["dhcp_acks"] >= 1 and sv["counters"]["dns_answered"] >= 3
            # The port's records are the network's leases, and the lease shows the address.
            assert st["networks"]["lab"]["dhcp_leases"][":".join(f"{b:02x}" for b in CLIENT_MAC)]["address"] == address
        finally:
            port.close()
