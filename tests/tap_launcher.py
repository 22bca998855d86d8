"""Starts a program with a TAP fd from a network holder: run as
``tap_launcher.py SOCKET MAC -- PROGRAM ARGS...``.

It connects to the holder's TAP socket (``network_holder.py``'s ``tapsock``
command), asks for a port for MAC, receives the TAP fd (SCM_RIGHTS), and
execs PROGRAM with every ``{fd}`` in ARGS replaced by the fd's number, the
way the broker hands QEMU a TAP for ``-netdev tap,fd=N``.
"""

from __future__ import annotations

import os
import socket
import sys


def main() -> None:
    sock_path, mac, sep, *argv = sys.argv[1:]
    assert sep == "--" and argv, __doc__
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(sock_path)
        s.sendall(mac.encode() + b"\n")
        msg, fds, _, _ = socket.recv_fds(s, 256, 1)
    if not fds:
        sys.exit(f"tap_launcher: no TAP fd from the holder: {msg.decode(errors='replace')}")
    fd = fds[0]
    os.set_inheritable(fd, True)
    os.execvp(argv[0], [a.replace("{fd}", str(fd)) for a in argv])


if __name__ == "__main__":
    main()
