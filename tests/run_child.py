"""The 'VM' the run tests start: reports its fds, talks over fd 3, exits as told.

argv: EXIT_CODE FD MAC FDTYPE [FD MAC FDTYPE]...
On SIGTERM, SIGINT or SIGHUP it prints "got-signal N" and exits 100 + N.
With EXIT_CODE "wait" it prints "ready" and waits for a signal.
"""

import json
import os
import signal
import socket
import sys
import time


def on_signal(signum, frame):
    print(f"got-signal {signum}", flush=True)
    sys.exit(100 + signum)


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
code, rest = sys.argv[1], sys.argv[2:]
listing = os.listdir("/proc/self/fd")
open_fds = sorted(int(f) for f in listing if os.path.exists(f"/proc/self/fd/{f}") and "/fd" not in os.readlink(f"/proc/self/fd/{f}"))
report = {"open_fds": open_fds, "nics": [], "pid": os.getpid(), "broker_fd": os.environ.get("VMNET_RS_BROKER_FD")}
for i in range(0, len(rest), 3):
    fd, mac, fd_type = int(rest[i]), rest[i + 1], rest[i + 2]
    s = socket.socket(fileno=fd)
    s.settimeout(10)
    s.sendall(f"hello {i // 3}".encode())
    echo = s.recv(100).decode()
    report["nics"].append({"fd": fd, "mac": mac, "fd_type": fd_type, "kind": s.type.name, "echo": echo})
    s.detach()
print("report " + json.dumps(report), flush=True)
if code == "wait":
    print("ready", flush=True)
    while True:
        time.sleep(1)
sys.exit(int(code))
