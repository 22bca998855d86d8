"""Adaptors on real TAP devices, in private network namespaces.

Two (or three) adaptors sit on TAPs enslaved to one bridge inside a fresh
namespace; the test plays both VMs on the adaptors' sockets. Frames carry an
experimental EtherType (0x88B5) and a sequence number, so anything else the
kernel may emit is ignored and loss or reordering is visible.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from typing import Dict, List, Optional

import pytest

from brokerproc import wait_until
from vmnet_rs import Adaptor, AdaptorError, ConfigError, NetworkError, framing

ETHERTYPE = 0x88B5
MAX_FRAME = 1514
BATCH = 64
PATIENCE = 30.0  # seconds; the test machine is small and shared
IFF_VNET_HDR = 0x4000  # <linux/if_tun.h>


def mac_bytes(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.split(":"))


def frame(seq: int, dst: str, src: str, size: int) -> bytes:
    """An Ethernet frame of ``size`` bytes (>= 18) carrying ``seq``."""
    head = mac_bytes(dst) + mac_bytes(src) + struct.pack("!HI", ETHERTYPE, seq)
    body = bytes((seq * 7 + i) & 0xFF for i in range(size - len(head)))
    return head + body


def sizes(n: int) -> List[int]:
    # Minimum this test can tag (header + seq), maximum, and sizes between.
    cycle = [18, MAX_FRAME, 60, 64, 1000, 1513, 19, 333]
    return [cycle[i % len(cycle)] for i in range(n)]


class Vm:
    """The VM side of an adaptor: its socket, framed per kind."""

    def __init__(self, adaptor: Adaptor) -> None:
        self.kind = adaptor.kind
        self.sock = adaptor.socket()
        # Reads give up quickly (recv returns None); sends wait for the relay
        # as long as the test's patience, on a second handle of the same
        # socket: a send that timed out would lose its frame (or part of a
        # stream frame) on a loaded machine.
        self.sock.settimeout(0.2)
        self._out = self.sock.dup()
        self._out.settimeout(PATIENCE)
        self.mac = adaptor.info["mac"]
        self._buf = b""
        self._frames: List[bytes] = []

    def send(self, data: bytes) -> None:
        if self.kind == "stream":
            self._out.sendall(framing.encode(data))
        else:
            self._out.send(data)

    def recv(self) -> Optional[bytes]:
        """One frame of ours, or None after a short timeout."""
        while True:
            try:
                if self.kind != "stream":
                    data = self.sock.recv(65536)
                else:
                    while not self._frames:
                        chunk = self.sock.recv(262144)
                        if not chunk:
                            raise EOFError("stream closed")
                        frames, self._buf = framing.split(self._buf + chunk)
                        self._frames.extend(frames)
                    data = self._frames.pop(0)
            except socket.timeout:
                return None
            if len(data) >= 14 and struct.unpack("!H", data[12:14])[0] == ETHERTYPE:
                return data

    def close(self) -> None:
        self._out.close()
        self.sock.close()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_bridge(ns) -> None:
    ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    ns.run("sysctl -qw net.ipv6.conf.default.disable_ipv6=1")
    ns.run("ip link add br0 type bridge forward_delay 0 stp_state 0")
    ns.run("ip link set br0 up")


def attach(ns, adaptor: Adaptor) -> None:
    dev = adaptor.info["device"]
    ns.run(f"ip link set {dev} master br0")
    ns.run(f"ip link set {dev} up")
    # Static entries: the bridge never floods our frames to the wrong port.
    ns.run(f"bridge fdb replace {adaptor.info['mac']} dev {dev} master static")


def tap_adaptors(ns, kind: str, n: int = 2, tap_offload: bool = False) -> List[Adaptor]:
    """``n`` adaptors on TAPs on br0; with ``tap_offload`` the first one's
    TAP offloads in user space and the others' stay plain, so each frame
    crosses from one TAP mode to the other (a header of the wrong size on
    either side corrupts it on the way)."""
    adaptors = []
    for i in range(n):
        a = Adaptor(kind, tap=f"vt{i}", netns=ns.name, mac=f"02:00:00:00:00:{i + 1:02x}", tap_offload=tap_offload and i == 0)
        adaptors.append(a)
        attach(ns, a)
    return adaptors


def check_in_order(got: List[bytes], expected: List[bytes], drops: int) -> None:
    """``got`` is an in-order, bit-exact subsequence of ``expected`` missing exactly ``drops``."""
    index = {f[14:18]: i for i, f in enumerate(expected)}
    last = -1
    for f in got:
        i = index.get(f[14:18])
        assert i is not None, f"unexpected frame {f[:18].hex()}"
        assert i > last, f"frame {i} out of order after {last}"
        assert f == expected[i], f"frame {i} corrupted"
        last = i
    assert len(got) + drops == len(expected), f"received {len(got)} + dropped {drops} != sent {len(expected)}"


def close_all(*things) -> None:
    """Closes VM sockets and adaptors, in order."""
    for thing in things:
        thing.close()


def receive(vm: Vm, adaptor: Adaptor, total: int) -> List[bytes]:
    """Reads until every one of ``total`` frames was received or counted as dropped."""
    got: List[bytes] = []
    deadline = time.monotonic() + PATIENCE
    while True:
        f = vm.recv()
        if f is not None:
            got.append(f)
        if len(got) + adaptor.stats()["host_to_vm"]["drops"] >= total:
            return got
        assert time.monotonic() < deadline, f"received {len(got)} of {total}; stats {adaptor.stats()}"


# --- without privileges ------------------------------------------------------------


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="not one of"):
        Adaptor("tap", tap="x")
    with pytest.raises(ConfigError, match="exactly one"):
        Adaptor("stream")
    with pytest.raises(ConfigError, match="exactly one"):
        Adaptor("stream", tap="x", tap_fd=3)
    with pytest.raises(ConfigError, match="MAC"):
        Adaptor("stream", tap="x", mac="nope")
    with pytest.raises(ConfigError, match="at most one of vnet_hdr"):
        Adaptor("stream", tap="x", vnet_hdr=True, tap_offload=True)
    with pytest.raises(ConfigError, match="tap_offload= applies only"):
        Adaptor("stream", network="shared", config={"mode": "shared"}, tap_offload=True)


def test_a_non_tap_fd_is_refused():
    r, w = os.pipe()
    try:
        with pytest.raises(NetworkError, match="not a usable TAP"):
            Adaptor("stream", tap_fd=r)
    finally:
        os.close(r)
        os.close(w)


# --- on TAPs, in namespaces ------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("tap_offload", [False, True], ids=["plain-tap", "tap-offload"])
@pytest.mark.parametrize("kind", ["datagram", "datagram_next", "stream"])
def test_each_kind_carries_frames_both_ways_bit_exact(netns, kind, tap_offload):
    make_bridge(netns)
    a, b = tap_adaptors(netns, kind, tap_offload=tap_offload)
    va, vb = Vm(a), Vm(b)
    try:
        assert a.info["max_frame_bytes"] == MAX_FRAME and a.info["mtu"] == 1500
        # tap_offload: a's TAP speaks virtio-net headers to the kernel
        # (IFF_VNET_HDR in tun_flags), its VM still plain frames (above).
        tun_flags = int(netns.run(f"cat /sys/class/net/{a.info['device']}/tun_flags").stdout, 16)
        assert bool(tun_flags & IFF_VNET_HDR) == tap_offload, hex(tun_flags)
        assert a.info["offload"] is False
        # The defaults asked for (1 MiB send, 4 MiB receive), doubled by Linux;
        # root forces them past net.core.{w,r}mem_max (SO_*BUFFORCE).
        for key, asked in (("send_buffer_bytes", 1 << 20), ("recv_buffer_bytes", 4 << 20)):
            assert a.info[key] == 2 * asked, (key, a.info[key])
        burst = 3 * BATCH + 17
        for src, dst, dst_ad, label in ((va, vb, b, "a->b"), (vb, va, a, "b->a")):
            frames = [frame(i, dst.mac, src.mac, s) for i, s in enumerate(sizes(burst))]
            send_errors: List[BaseException] = []

            def send_all(src: Vm = src, frames: List[bytes] = frames) -> None:
                try:
                    for f in frames:
                        src.send(f)
                except BaseException as e:  # reported by the test, not lost in the thread
                    send_errors.append(e)

            sender = threading.Thread(target=send_all)
            sender.start()
            got = receive(dst, dst_ad, len(frames))
            sender.join()
            assert not send_errors, f"{label}: the VM's send failed: {send_errors[0]!r}"
            drops = dst_ad.stats()["host_to_vm"]["drops"]
            check_in_order(got, frames, drops)
            # A relay that dropped everything (and counted it) fails here:
            # the burst fits the buffers many times over.
            assert len(got) >= len(frames) // 2, f"{label}: only {len(got)} of {len(frames)} delivered"
            if kind == "stream":
                assert drops == 0, label
        # A relay counts a batch after its write returns, so the frames can
        # reach the other side before the count does (a preempted relay
        # thread on a loaded machine): poll for it.
        wait_until("both relays to count every frame from their VM",
                   lambda: a.stats()["vm_to_host"]["packets"] == burst and b.stats()["vm_to_host"]["packets"] == burst,
                   PATIENCE, 0.01)
        sa, sb = a.stats(), b.stats()
        assert sa["vm_to_host"]["packets"] == burst and sb["vm_to_host"]["packets"] == burst
        assert sa["vm_to_host"]["errors"] == 0 and sb["vm_to_host"]["errors"] == 0
        assert a.running and b.running
    finally:
        close_all(va, vb, a, b)


def unread(sock: socket.socket) -> int:
    """Bytes the peer of ``sock`` has not read yet (SIOCOUTQ on a Unix socket)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


@pytest.mark.root
def test_stream_frames_in_one_write_or_cut_across_reads_arrive_bit_exact(netns):
    """The stream relay's batched paths on real TAPs: one write of many
    frames is read at once and leaves in batches; frames cut across reads
    (inside a header, just after it, inside a payload, between frames) are
    reassembled; everything arrives bit-exact and in order."""
    make_bridge(netns)
    a, b = tap_adaptors(netns, "stream")
    va, vb = Vm(a), Vm(b)
    try:
        burst = 3 * BATCH + 17
        frames = [frame(i, vb.mac, va.mac, s) for i, s in enumerate(sizes(burst))]
        va.sock.sendall(b"".join(framing.encode(f) for f in frames))
        got = receive(vb, b, burst)
        check_in_order(got, frames, b.stats()["host_to_vm"]["drops"])
        assert len(got) == burst
        v2h = a.stats()["vm_to_host"]
        assert v2h["packets"] == burst
        assert v2h["batches"] * 4 <= v2h["packets"], f"{burst} frames in one write went out in {v2h['batches']} batches"

        cut = [frame(burst + i, vb.mac, va.mac, s) for i, s in enumerate((MAX_FRAME, 60, 333))]
        data = b"".join(framing.encode(f) for f in cut)
        first = 4 + MAX_FRAME
        start = 0
        for end in (1, 2, 4, 5, 700, first - 1, first, first + 3, first + 4, len(data) - 1, len(data)):
            va.sock.sendall(data[start:end])
            start = end
            # The relay has read this piece before the next is written.
            wait_until("the relay to read the piece", lambda: unread(va.sock) == 0, PATIENCE, 0.001)
        got = receive(vb, b, len(cut))
        assert got == cut
        v2h = a.stats()["vm_to_host"]
        assert (v2h["packets"], v2h["errors"]) == (burst + len(cut), 0)
        assert a.running and b.running
    finally:
        close_all(va, vb, a, b)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["datagram_next", "stream"])
def test_a_slow_reader_causes_counted_drops_and_no_stall(netns, kind):
    make_bridge(netns)
    a, b = tap_adaptors(netns, kind)
    va, vb = Vm(a), Vm(b)
    try:
        # b's VM reads nothing while a's VM floods it.
        stop = threading.Event()
        sent = [0]

        def flood() -> None:
            f = frame(0, vb.mac, va.mac, MAX_FRAME)
            while not stop.is_set():
                va.send(f)
                sent[0] += 1

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            wait_until("drops counted for the VM that reads nothing", lambda: b.stats()["host_to_vm"]["drops"], PATIENCE, 0.01)
            deadline = time.monotonic() + PATIENCE
            # The other direction still flows: b's VM sends, a's VM receives.
            frames = [frame(i, va.mac, vb.mac, 100) for i in range(20)]
            for f in frames:
                vb.send(f)
            got = []
            while len(got) < len(frames):
                f = va.recv()
                if f is not None:
                    got.append(f)
                assert time.monotonic() < deadline, f"b->a stalled: {len(got)} of {len(frames)}"
            assert got == frames
        finally:
            stop.set()
            flooder.join()
        s = b.stats()["host_to_vm"]
        assert s["drops"] > 0 and s["waits"] > 0
        assert a.running and b.running
    finally:
        close_all(va, vb, a, b)


@pytest.mark.root
def test_a_peer_closing_mid_frame_ends_only_that_adaptor(netns):
    make_bridge(netns)
    victim, b, c = tap_adaptors(netns, "stream", 3)
    vb, vc = Vm(b), Vm(c)
    try:
        s = victim.detach()
        s.sendall(struct.pack("!I", 1000) + b"\x00" * 400)
        s.close()
        assert victim.wait(PATIENCE), "the adaptor did not end"
        assert not victim.running
        assert "closed" in victim.end_reason
        v2h = victim.stats()["vm_to_host"]
        # A stream cut inside a frame is a malformed VM frame, nothing else.
        assert (v2h["errors"], v2h["malformed"], v2h["runts"], v2h["refused"]) == (1, 1, 0, 0)
        # Its TAP went with it; the others still relay.
        wait_until("the victim's TAP to go", lambda: "vt0" not in netns.links(), PATIENCE)
        deadline = time.monotonic() + PATIENCE
        f = frame(1, vc.mac, vb.mac, 200)
        vb.send(f)
        got = None
        while got is None:
            got = vc.recv()
            assert time.monotonic() < deadline, "the other adaptors stopped relaying"
        assert got == f
        assert b.running and c.running
    finally:
        close_all(vb, vc, victim, b, c)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["datagram", "stream"])
def test_no_fd_or_tap_remains_after_close(netns, kind):
    make_bridge(netns)
    before = fd_count()
    for _ in range(3):
        adaptors = tap_adaptors(netns, kind)
        sockets = [x.socket() for x in adaptors]
        assert {"vt0", "vt1"} <= set(netns.links())
        for s in sockets:
            s.close()
        for x in adaptors:
            x.close()
            x.close()  # idempotent
            with pytest.raises(AdaptorError):
                x.fileno()
    assert fd_count() == before
    assert not {"vt0", "vt1"} & set(netns.links())


@pytest.mark.root
def test_an_existing_tap_fd_is_used_and_released(netns):
    """tap_fd=: the adaptor works on a dup of the caller's TAP fd and closes only its own."""
    netns.run("ip tuntap add dev pt0 mode tap")
    script = textwrap.dedent("""
        import fcntl, os, struct
        from vmnet_rs import Adaptor
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"pt0", 0x0002 | 0x1000))  # TUNSETIFF, IFF_TAP|IFF_NO_PI
        before = len(os.listdir("/proc/self/fd"))
        a = Adaptor("datagram", tap_fd=fd)
        assert a.info["device"] == "pt0", a.info
        assert a.running
        a.close()
        assert len(os.listdir("/proc/self/fd")) == before, "the adaptor leaked an fd"
        os.fstat(fd)  # ours is still open
        os.close(fd)
        print("ok")
    """)
    r = netns.run([sys.executable, "-c", script], check=False, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
    assert "pt0" in netns.links()  # a persistent device outlives its fds


@pytest.mark.root
def test_the_interface_going_away_ends_the_adaptor(netns):
    make_bridge(netns)
    (a,) = tap_adaptors(netns, "datagram_next", 1)
    try:
        netns.run("ip link del vt0")
        assert a.wait(PATIENCE), "the adaptor did not notice its TAP was deleted"
        assert "interface" in a.end_reason
    finally:
        a.close()


@pytest.mark.root
def test_broker_free_network_path(netns, tmp_path):
    """Adaptor(network=...) creates the network and a port, keeps it alive and tears it down."""
    script = textwrap.dedent(f"""
        import json, subprocess
        from vmnet_rs import Adaptor
        config = {{"mode": "host", "subnet": "192.168.123.1/24", "dhcp": False, "dnsProxy": False}}
        with Adaptor("stream", network="bt", config=config, state_dir={str(tmp_path)!r}) as a:
            info = a.info
            links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
            print(json.dumps({{"info": info, "links": links, "running": a.running}}))
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        print(json.dumps({{"after": links}}))
    """)
    r = netns.run([sys.executable, "-c", script], check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    first, second = [json.loads(line) for line in r.stdout.strip().splitlines()[-2:]]
    assert first["running"]
    assert first["info"]["subnet"] == "192.168.123.1/24"
    assert first["info"]["network"] == "bt"
    assert first["info"]["max_frame_bytes"] >= 1514
    bridge_lines = [line for line in first["links"].splitlines() if "bt" in line]
    assert bridge_lines, first["links"]
    assert not [line for line in second["after"].splitlines() if "bt" in line.split(":")[1]], second["after"]
