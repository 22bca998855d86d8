"""Broker requests as another user, for policy tests run as root.

``python as_user.py UID SOCKET [GID,...]`` drops to UID (and its primary
group, the same number, plus the supplementary groups given, as a login
after ``usermod -aG`` would), then reads one JSON command per line from stdin and answers
each with one JSON line on stdout:

- ``{"conn": K, "request": {...}}`` sends the request on connection K
  (opened on first use); ``config`` and ``Configuration`` values given as
  objects are sent as JSON data. The reply comes back with every fd replaced
  by ``true``; the fds stay open (a VM holding its port) until K closes.
- ``{"conn": K, "endpoint": PATH}`` connects a stream socket to a network's
  endpoint (docs/endpoints.md) and keeps it open as connection K.
- ``{"conn": K, "dgram": PATH, "bind": ADDR}`` binds a datagram socket to
  ADDR, connects it to a network's datagram endpoint, announces it with
  ``VFKT`` (vfkit's greeting) and keeps it open as connection K.
- ``{"conn": K, "close": true}`` closes connection K and the fds it got.
"""

from __future__ import annotations

import json
import os
import socket as socketmod
import sys


def main() -> None:
    # Imported while still root: the interpreter's own files need not be
    # readable by the target user.
    from vmnet_rs.broker import Client

    uid, socket = int(sys.argv[1]), sys.argv[2]
    os.setgroups([int(g) for g in sys.argv[3].split(",")] if len(sys.argv) > 3 else [])
    os.setgid(uid)
    os.setuid(uid)

    conns: dict = {}
    fds: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        k = cmd["conn"]
        if cmd.get("close"):
            for fd in fds.pop(k, []):
                os.close(fd)
            c = conns.pop(k, None)
            if c is not None:
                c.close()
            print(json.dumps({"closed": k}), flush=True)
            continue
        if "endpoint" in cmd:
            s = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
            s.connect(cmd["endpoint"])
            fds.setdefault(k, []).append(s.detach())
            print(json.dumps({"connected": k}), flush=True)
            continue
        if "dgram" in cmd:
            d = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_DGRAM)
            d.bind(cmd["bind"])
            d.connect(cmd["dgram"])
            d.send(b"VFKT")
            fds.setdefault(k, []).append(d.detach())
            print(json.dumps({"connected": k}), flush=True)
            continue
        if k not in conns:
            conns[k] = Client(socket, timeout=60)
        request = {
            key: json.dumps(v).encode() if key in ("config", "Configuration") and isinstance(v, dict) else v
            for key, v in cmd["request"].items()
        }
        reply = conns[k].request(request)
        out = {}
        for key, v in reply.items():
            if key in ("fd", "FileDescriptor"):
                fds.setdefault(k, []).append(v)
                out[key] = True
            elif isinstance(v, bytes):
                out[key] = v.decode(errors="replace")
            else:
                out[key] = v
        print(json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
