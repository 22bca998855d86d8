"""Holds one Linux network for a test: run inside a namespace with
``ip netns exec NS python network_holder.py NAME STATE_DIR`` and the
configuration JSON on the first line of stdin.

It creates the network, prints ``{"ok": true, "state": {...}}`` (or
``{"ok": false, "error": ..., "type": ...}`` and exits 1), then answers one
command per stdin line with one JSON line:

* ``leases``: the DHCP leases
* ``tap [MAC] [isolated]``: opens a TAP port, keeps its fd, answers its name
* ``untap NAME``: closes that TAP's fd (the port goes away)
* ``tapsock PATH [vnet_hdr]``: serves TAP fds on a Unix socket at PATH, one
  per connection, for the MAC the client sends (see ``tap_launcher.py``)
* ``alive``: whether the network is alive
* ``close``: tears the network down and exits

EOF on stdin tears the network down too, so a test that dies leaves nothing.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

from vmnet_rs import VmnetError
from vmnet_rs._native import Network


def reply(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve_taps(net: Network, path: str, vnet_hdr: bool) -> None:
    """Hands a new TAP fd to each client of the socket at ``path``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                mac = conn.makefile().readline().strip() or None
                try:
                    fd, tap = net.start_tap(mac=mac, vnet_hdr=vnet_hdr)
                except VmnetError as e:
                    conn.sendall(str(e).encode()[:200])
                    continue
                socket.send_fds(conn, [tap.encode()], [fd])
                os.close(fd)  # the client holds the TAP now

    threading.Thread(target=loop, daemon=True).start()


def main() -> int:
    name, state_dir = sys.argv[1], sys.argv[2]
    # Optional: a JSON list of the pieces the network puts back (default all).
    repair = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    config = sys.stdin.readline()
    try:
        net = Network(name, config, state_dir, repair)
    except VmnetError as e:
        reply({"ok": False, "error": str(e), "type": type(e).__name__})
        return 1
    reply({"ok": True, "state": net.state()})
    taps: dict[str, int] = {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "leases":
                reply({"ok": True, "leases": net.leases()})
            elif words[0] == "tap":
                mac = words[1] if len(words) > 1 and words[1] != "-" else None
                fd, tap = net.start_tap(mac=mac, isolation="isolated" in words[2:])
                taps[tap] = fd
                reply({"ok": True, "tap": tap})
            elif words[0] == "untap":
                os.close(taps.pop(words[1]))
                reply({"ok": True})
            elif words[0] == "tapsock":
                serve_taps(net, words[1], "vnet_hdr" in words[2:])
                reply({"ok": True})
            elif words[0] == "alive":
                reply({"ok": True, "alive": net.is_alive()})
            elif words[0] == "close":
                break
            else:
                reply({"ok": False, "error": f"unknown command {words[0]!r}"})
        except VmnetError as e:
            reply({"ok": False, "error": str(e), "type": type(e).__name__})
    for fd in taps.values():
        os.close(fd)
    net.close()
    reply({"ok": True, "closed": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
