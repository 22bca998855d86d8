"""Benchmark: raw frames through a datagram endpoint (docs/endpoints.md).

    python3 tests/bench_endpoint_dgram.py [--seconds 3] [--size 1514] [--repeat 3]
                                          [--unconnected] [--stalled N]

Starts a broker on the test hub backend (no root, no real network), binds
two datagram clients to the `shared` network's endpoint, and has one send
frames as fast as its socket takes them while the other reads as fast as it
can, each on its own process. Prints, per round, frames sent and received,
the received rate, and the ports' drop counters (``host_to_vm.drops``: on
the way to the receiver, by its relay or the endpoint; ``vm_to_host.drops``:
on the way from the sender). The rest of ``lost`` is dropped by the test
hub itself, which counts nothing. ``broker_cpu_us_per_frame``: the broker
process's CPU time (every thread, the hub's included) over the window,
per frame received.

Clients connect() to the endpoint as vfkit does; ``--unconnected`` has them
send with sendto() as QEMU's ``-netdev dgram`` does (then the kernel caps
each one's queue at ``net.unix.max_dgram_qlen``). ``--stalled N`` adds N
clients that join and never read (the sender's frames are broadcasts, so
they are offered the same frames): the receiver's rate beside them, against
a round without them, is what a client that stops reading costs the others.
Run with ``PYTHONPATH`` at another build's package to compare builds.
A number to compare between builds, never asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brokerproc import BrokerProcess, config_file, wait_until  # noqa: E402
from vmnet_rs import Client  # noqa: E402


CONNECTED = True


class Peer:
    """A datagram client: connected to the endpoint, or sending with sendto()."""

    def __init__(self, directory: Path, name: str, endpoint: Path, connected: bool) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(str(directory / f"{name}.sock"))
        self.endpoint = str(endpoint)
        self.connected = connected
        if connected:
            self.s.connect(self.endpoint)

    def send(self, f: bytes) -> None:
        if self.connected:
            self.s.send(f)
        else:
            self.s.sendto(f, self.endpoint)


def receive(directory: str, endpoint: str, connected: bool, ready, stop, out) -> None:
    p = Peer(Path(directory), "rx", Path(endpoint), connected)
    p.send(b"VFKT")
    s = p.s
    ready.set()
    s.settimeout(0.5)
    n = 0
    while True:
        try:
            s.recv(65536)
            n += 1
        except socket.timeout:
            if stop.is_set():
                break
    out.put(n)


def send(directory: str, endpoint: str, connected: bool, seconds: float, size: int, started, out) -> None:
    p = Peer(Path(directory), "tx", Path(endpoint), connected)
    p.send(b"VFKT")
    started.wait(10)
    f = (b"\xff" * 6 + bytes.fromhex("525400aa0001") + struct.pack(">H", 0x88B5)).ljust(size, b"\0")
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            p.send(f)
        n += 64
    out.put(n)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drops(sock: Path, direction: str) -> int:
    with Client(str(sock), timeout=20) as c:
        ports = c.status()["endpoints"]["shared"]["ports"]
    return sum(p[direction]["drops"] for p in ports.values())


def round_(tmp: Path, seconds: float, size: int, connected: bool = True, stalled: int = 0) -> dict:
    ep = tmp / "ep"
    cfg = config_file(tmp / "networks.yaml", {"endpointDir": str(ep), "allowedUsers": [str(os.getuid())], "allowedGroups": []}, {"shared": {}})
    sock = tmp / "broker.sock"
    with BrokerProcess(sock, ["--backend", "hub", "--config", str(cfg), "--idle-timeout", "0"]) as b:
        b.wait_ready()
        endpoint = ep / "shared.dgram.sock"
        ctx = multiprocessing.get_context("fork")
        ready, stop, got = ctx.Event(), ctx.Event(), ctx.Queue()
        rx = ctx.Process(target=receive, args=(str(tmp), str(endpoint), connected, ready, stop, got))
        rx.start()
        ready.wait(10)
        idle = [Peer(tmp, f"stalled{k}", endpoint, connected) for k in range(stalled)]
        for p in idle:
            p.send(b"VFKT")
        with Client(str(sock), timeout=20) as c:
            wait_until("the receiver's port", lambda: len(c.status()["endpoints"]["shared"].get("ports", {})) == 1 + stalled)
            pid = int(c.status()["pid"])
        sent_q, started = ctx.Queue(), ctx.Event()
        tx = ctx.Process(target=send, args=(str(tmp), str(endpoint), connected, seconds, size, started, sent_q))
        tx.start()
        with Client(str(sock), timeout=20) as c:
            wait_until("the sender's port", lambda: len(c.status()["endpoints"]["shared"].get("ports", {})) == 2 + stalled)
        cpu0 = cpu_seconds(pid)
        started.set()
        sent = sent_q.get()
        cpu = cpu_seconds(pid) - cpu0
        tx.join()
        stop.set()
        received = got.get()
        rx.join()
        to_vm, from_vm = drops(sock, "host_to_vm"), drops(sock, "vm_to_host")
        for p in idle:
            p.s.close()
    out = {"sent": sent, "received": received, "lost": sent - received, "host_to_vm_drops": to_vm, "vm_to_host_drops": from_vm,
           "received_mbit_s": round(received * size * 8 / seconds / 1e6, 1),
           "broker_cpu_us_per_frame": round(cpu * 1e6 / received, 2) if received else None}
    if not connected or stalled:
        out.update({"clients": "connected" if connected else "unconnected", "stalled": stalled})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1514)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--unconnected", action="store_true", help="clients send with sendto() (QEMU -netdev dgram), not connect()")
    ap.add_argument("--stalled", type=int, default=0, help="clients that join and never read")
    a = ap.parse_args()
    for k in range(a.repeat):
        with tempfile.TemporaryDirectory(prefix="vmnet-rs-bench-") as d:
            r = round_(Path(d), a.seconds, a.size, connected=not a.unconnected, stalled=a.stalled)
            print(json.dumps({"round": k + 1, "size": a.size, "seconds": a.seconds, **r}), flush=True)


if __name__ == "__main__":
    main()
