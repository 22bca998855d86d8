"""A fake broker client for ``vmnet-rs run`` tests, used inside the wrapper process.

It hands out real socketpair ends (stream or datagram, as asked) whose far
ends echo whatever the VM side writes, and it records every call as a JSON
line in the file named by ``VMNET_FAKE_JOURNAL``, so a test can see what the
wrapper asked for and that it closed the connection (ending its leases).

``VMNET_FAKE_MODE``: ``ok`` (default), ``unavailable`` (no broker answers),
``offload`` (networks report offload and MTU 9000).
"""

from __future__ import annotations

import json
import os
import socket
import threading

from vmnet_rs.errors import BrokerError, BrokerUnavailableError

NETWORKS = ("shared", "host")


def _journal(**entry) -> None:
    path = os.environ.get("VMNET_FAKE_JOURNAL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Opened:
    def __init__(self, fd, fd_type, mac, network, offload, mtu):
        self.fd, self.fd_type, self.mac, self.network = fd, fd_type, mac, network
        self.offload, self.mtu = offload, mtu
        self.config = {"mode": network, "offload": offload, "mtu": mtu}
        self.subnet = "192.168.107.0/24"


def _echo(sock: socket.socket) -> None:
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)
    except OSError:
        return


class FakeClient:
    def __init__(self, socket_path=None):
        self.mode = os.environ.get("VMNET_FAKE_MODE", "ok")
        if self.mode == "unavailable":
            raise BrokerUnavailableError(f"no broker answers on {socket_path or '/run/vmnet-rs.sock'}; start it with: vmnet-rs broker")
        self._keep: list[socket.socket] = []
        _journal(op="connect", socket=socket_path)

    def _info(self):
        return (True, 9000) if self.mode == "offload" else (False, 1500)

    def open(self, network, fd_type, mac=None, vnet_hdr=False):
        _journal(op="open", network=network, fd_type=fd_type, mac=mac, vnet_hdr=vnet_hdr)
        if network not in NETWORKS:
            raise BrokerError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
        kind = socket.SOCK_STREAM if fd_type == "stream" else socket.SOCK_DGRAM
        ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        self._keep.append(ours)
        threading.Thread(target=_echo, args=(ours,), daemon=True).start()
        offload, mtu = self._info()
        return Opened(theirs.detach(), fd_type, mac, network, offload, mtu)

    def acquire(self, network):
        _journal(op="acquire", network=network)
        if network not in NETWORKS:
            raise BrokerError(f"unknown network {network!r}")
        offload, mtu = self._info()
        return {"network": network, "config": {"offload": offload, "mtu": mtu}}

    def close(self):
        _journal(op="close")
        for s in self._keep:
            s.close()


def install() -> None:
    import vmnet_rs.run

    vmnet_rs.run.client_factory = FakeClient
