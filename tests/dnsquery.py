"""A minimal DNS client (RFC 1035 over UDP) for tests: A, AAAA and PTR
questions to one server, answers printed as JSON when run as a script
(``python dnsquery.py SERVER NAME TYPE``), so a test can ask from inside a
network namespace. No dependency beyond the standard library."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import sys
from typing import List

TYPES = {"A": 1, "PTR": 12, "AAAA": 28}


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: List[str] = []
    end = None
    for _ in range(128):
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            continue
        if n == 0:
            return ".".join(labels), end if end is not None else pos + 1
        labels.append(msg[pos + 1 : pos + 1 + n].decode())
        pos += 1 + n
    raise ValueError("name loop")


def reverse_name(addr: str) -> str:
    return ipaddress.ip_address(addr).reverse_pointer


def query(server: str, name: str, qtype: str, timeout: float = 3.0) -> dict:
    """Asks ``server`` once; returns {"rcode": N, "answers": [...]} with
    addresses (A, AAAA) or names (PTR) of the answers of type ``qtype``."""
    if qtype == "PTR" and not name.endswith(".arpa"):
        name = reverse_name(name)
    qid = int.from_bytes(os.urandom(2), "big")
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack(">HH", TYPES[qtype], 1)
    with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (server, 53))
        msg, _ = s.recvfrom(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    assert rid == qid, "reply to another question"
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    answers = []
    for _ in range(an):
        _, pos = _read_name(msg, pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[pos : pos + 10])
        pos += 10
        data = msg[pos : pos + rdlen]
        if rtype == TYPES[qtype] == 1:
            answers.append(str(ipaddress.IPv4Address(data)))
        elif rtype == TYPES[qtype] == 28:
            answers.append(str(ipaddress.IPv6Address(data)))
        elif rtype == TYPES[qtype] == 12:
            answers.append(_read_name(msg, pos)[0])
        pos += rdlen
    return {"rcode": flags & 0xF, "answers": answers}


if __name__ == "__main__":
    print(json.dumps(query(sys.argv[1], sys.argv[2], sys.argv[3])))
