"""The stream framing of VM sockets: each frame is prefixed by its length as
a 4-byte big-endian integer (QEMU ``-netdev stream``, krunkit ``unixstream``,
the broker's stream endpoints; docs/adaptors.md). The one encoder and
decoder on the Python side, for ``vmnet-rs doctor`` and the tests."""

from __future__ import annotations

import socket
import struct
from typing import List, Tuple

HEADER = struct.Struct(">I")


def encode(frame: bytes) -> bytes:
    """``frame`` with its length header."""
    return HEADER.pack(len(frame)) + frame


def split(buffer: bytes) -> Tuple[List[bytes], bytes]:
    """The complete frames at the start of ``buffer``, and the rest."""
    frames = []
    while len(buffer) >= HEADER.size:
        (n,) = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + n:
            break
        frames.append(buffer[HEADER.size : HEADER.size + n])
        buffer = buffer[HEADER.size + n :]
    return frames, buffer


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``; EOFError if it closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the stream closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> bytes:
    """One frame from a blocking stream socket."""
    (n,) = HEADER.unpack(recv_exact(sock, HEADER.size))
    return recv_exact(sock, n)
