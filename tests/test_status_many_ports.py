"""`status` of a broker with some 300 endpoint ports: the reply is larger
than one 64 KiB record and has more than 256 keys in a dictionary, so it
comes in several records (docs/protocol.md, "Replies in several records").
Checked through the package's client, the CLI, and a raw socket read and
decoded here from the document alone. The test hub backend: no root."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from brokerproc import BrokerProcess, config_file, wait_until
from test_broker import encode
from vmnet_rs import Client

PORTS = 300
RECORD = 65536


@pytest.fixture
def broker(tmp_path: Path):
    cfg = config_file(tmp_path / "networks.yaml",
                      {"endpointDir": str(tmp_path / "ep"), "allowedUsers": [str(os.getuid())], "allowedGroups": [], "maxPortsPerUser": 1000},
                      {"shared": {}})
    with BrokerProcess(tmp_path / "broker.sock", ["--backend", "hub", "--config", str(cfg), "--idle-timeout", "0"]) as b:
        b.wait_ready()
        b.ep = tmp_path / "ep"
        yield b


def decode(data: bytes) -> dict:
    """The dictionary encoding of docs/protocol.md, read independently of
    the Rust codec (fd values are returned as their index)."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        assert pos + n <= len(data), f"truncated at {pos}"
        pos += n
        return data[pos - n:pos]

    def dictionary() -> dict:
        out = {}
        (count,) = struct.unpack(">H", take(2))
        for _ in range(count):
            key = take(take(1)[0]).decode()
            tag = take(1)[0]
            if tag in (1, 4):
                (n,) = struct.unpack(">I", take(4))
                raw = take(n)
                out[key] = raw.decode() if tag == 1 else raw
            elif tag == 2:
                out[key] = struct.unpack(">q", take(8))[0]
            elif tag == 3:
                out[key] = take(1) == b"\x01"
            elif tag == 5:
                out[key] = dictionary()
            else:
                assert tag == 6, f"unknown tag {tag}"
                out[key] = take(1)[0]
        return out

    d = dictionary()
    assert pos == len(data), "trailing bytes"
    return d


def raw_status(path: str) -> Tuple[List[Tuple[int, int]], dict]:
    """Sends `status` by hand and joins the reply's records as documented:
    returns (size, flags) per record and the decoded reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(20)
    s.connect(path)
    s.send(encode({"command": "status"}))
    records: List[Tuple[int, int]] = []
    body = b""
    while True:
        r = s.recv(RECORD + 1)
        assert len(r) <= RECORD, "a record beyond 64 KiB"
        assert r[:6] == b"VMRS\x00\x01", r[:8]
        (flags,) = struct.unpack(">H", r[6:8])
        records.append((len(r), flags))
        body += r[8:]
        if flags == 0:
            break
        assert flags == 1, f"flags {flags}"
    s.close()
    return records, decode(body)


def test_status_with_300_endpoint_ports_arrives_whole(broker: BrokerProcess) -> None:
    def ports() -> Any:
        with Client(str(broker.socket), timeout=20) as c:
            return c.status()["endpoints"]["shared"]["ports"]

    clients: List[socket.socket] = []
    try:
        for _ in range(PORTS):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(broker.ep / "shared.stream.sock"))
            clients.append(c)

        wait_until(f"{PORTS} ports", lambda: len(ports()) == PORTS, timeout=60)
        with Client(str(broker.socket), timeout=20) as c:
            st = c.status()
            # The connection serves the next request after a reply in many records.
            assert c.ping()
        assert len(st["leases"]) == len(st["adaptors"]) == PORTS
        assert all(p["host_to_vm"]["queue_drops"] == 0 for p in st["endpoints"]["shared"]["ports"].values())

        records, raw = raw_status(str(broker.socket))
        assert len(records) >= 3, records
        assert [f for _, f in records] == [1] * (len(records) - 1) + [0]
        assert all(n == RECORD for n, _ in records[:-1]), records
        assert raw["ok"] is True and len(raw["leases"]) == PORTS
        assert set(raw["endpoints"]["shared"]["ports"]) == set(st["endpoints"]["shared"]["ports"])

        cli = [sys.executable, "-m", "vmnet_rs", "status", "--socket", str(broker.socket)]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "endpoints shared: " in out.stdout and f"{PORTS} port(s)" in out.stdout
        out = subprocess.run(cli + ["--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["broker"]["leases"]) == PORTS
    finally:
        for c in clients:
            c.close()
    wait_until("every port to go", lambda: not ports(), timeout=60)
