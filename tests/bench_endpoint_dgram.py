"""Benchmark: raw frames through a datagram endpoint (docs/endpoints.md).

    python3 tests/bench_endpoint_dgram.py [--seconds 3] [--size 1514] [--repeat 3]

Starts a broker on the test hub backend (no root, no real network), binds
two datagram clients to the `shared` network's endpoint, and has one send
frames as fast as its socket takes them while the other reads as fast as it
can, each on its own process. Prints, per round, frames sent and received,
the received rate, and the ports' drop counters (``host_to_vm.drops``: on
the way to the receiver, by its relay or the endpoint; ``vm_to_host.drops``:
on the way from the sender). The rest of ``lost`` is dropped by the test
hub itself, which counts nothing.
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


def client(directory: Path, name: str, endpoint: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(directory / f"{name}.sock"))
    s.connect(str(endpoint))
    return s


def receive(directory: str, endpoint: str, ready, stop, out) -> None:
    s = client(Path(directory), "rx", Path(endpoint))
    s.send(b"VFKT")
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


def send(directory: str, endpoint: str, seconds: float, size: int, out) -> None:
    s = client(Path(directory), "tx", Path(endpoint))
    s.send(b"VFKT")
    f = (b"\xff" * 6 + bytes.fromhex("525400aa0001") + struct.pack(">H", 0x88B5)).ljust(size, b"\0")
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            s.send(f)
        n += 64
    out.put(n)


def drops(sock: Path, direction: str) -> int:
    with Client(str(sock), timeout=20) as c:
        ports = c.status()["endpoints"]["shared"]["ports"]
    return sum(p[direction]["drops"] for p in ports.values())


def round_(tmp: Path, seconds: float, size: int) -> dict:
    ep = tmp / "ep"
    cfg = config_file(tmp / "networks.yaml", {"endpointDir": str(ep), "allowedUsers": [str(os.getuid())], "allowedGroups": []}, {"shared": {}})
    sock = tmp / "broker.sock"
    with BrokerProcess(sock, ["--backend", "hub", "--config", str(cfg), "--idle-timeout", "0"]) as b:
        b.wait_ready()
        endpoint = ep / "shared.dgram.sock"
        ctx = multiprocessing.get_context("fork")
        ready, stop, got = ctx.Event(), ctx.Event(), ctx.Queue()
        rx = ctx.Process(target=receive, args=(str(tmp), str(endpoint), ready, stop, got))
        rx.start()
        ready.wait(10)
        with Client(str(sock), timeout=20) as c:
            wait_until("the receiver's port", lambda: len(c.status()["endpoints"]["shared"].get("ports", {})) == 1)
        sent_q = ctx.Queue()
        tx = ctx.Process(target=send, args=(str(tmp), str(endpoint), seconds, size, sent_q))
        tx.start()
        sent = sent_q.get()
        tx.join()
        stop.set()
        received = got.get()
        rx.join()
        to_vm, from_vm = drops(sock, "host_to_vm"), drops(sock, "vm_to_host")
    return {"sent": sent, "received": received, "lost": sent - received, "host_to_vm_drops": to_vm, "vm_to_host_drops": from_vm,
            "received_mbit_s": round(received * size * 8 / seconds / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1514)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    for k in range(a.repeat):
        with tempfile.TemporaryDirectory(prefix="vmnet-rs-bench-") as d:
            print(json.dumps({"round": k + 1, "size": a.size, "seconds": a.seconds, **round_(Path(d), a.seconds, a.size)}), flush=True)


if __name__ == "__main__":
    main()
