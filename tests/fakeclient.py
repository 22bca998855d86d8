"""A fake broker client for ``vmnet-rs run`` tests, used inside the wrapper process.

It hands out real socketpair ends (stream or datagram, as asked) whose far
ends, held by a separate "server" process as the broker would hold them,
echo whatever the VM side writes. It records every call as a JSON line in
the file named by ``VMNET_FAKE_JOURNAL``, so a test can see what the wrapper
asked for and when the connection ended (``close``, written by the server:
the leases end then), and kill the server (``server_pid`` in ``connect``) to
play a broker that crashes.

``VMNET_FAKE_MODE``: ``ok`` (default), ``unavailable`` (no broker answers),
``offload`` (networks report offload and MTU 9000), ``lan`` (every network
is the bridge named by ``VMNET_FAKE_BRIDGE``: ``tap`` fds are TAPs on it,
socket fds are relayed to TAPs on it by threads here, a slow stand-in for
the broker's adaptors that lets real QEMU prove each backend's wiring).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading

from vmnet_rs import framing
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


TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
_tap_count = 0


def open_tap_on_bridge(bridge: str, vnet_hdr: bool = False) -> int:
    """A new (non-persistent) TAP enslaved to ``bridge``; gone when its last fd closes."""
    global _tap_count
    _tap_count += 1
    name = f"ft{os.getpid() % 100000}x{_tap_count}"
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    subprocess.run(["ip", "link", "set", name, "master", bridge, "up"], check=True)
    return fd


def _tap_to_socket(tap: int, sock: socket.socket, stream: bool) -> None:
    try:
        while True:
            frame = os.read(tap, 65536)
            if stream:
                sock.sendall(framing.encode(frame))
            else:
                sock.send(frame)
    except OSError:
        return


def _socket_to_tap(sock: socket.socket, tap: int, stream: bool) -> None:
    try:
        while True:
            if stream:
                frame = framing.read_frame(sock)
            else:
                frame = sock.recv(65536)
                if not frame:
                    return
            os.write(tap, frame)
    except (OSError, EOFError):
        return


class FakeClient:
    """Stands in for :class:`vmnet_rs.Client`. Like the broker, a separate
    process (this file run as a script) holds the far ends of the fds it
    hands out and serves them (echo, or relays in ``lan`` mode) for as long
    as the connection to it stays open; it journals ``close`` when the
    connection ends, whoever held it (the wrapper, or the VM it exec'd)."""

    def __init__(self, socket_path=None):
        self.mode = os.environ.get("VMNET_FAKE_MODE", "ok")
        if self.mode == "unavailable":
            raise BrokerUnavailableError(f"no broker answers on {socket_path or '/run/vmnet-rs.sock'}; start it with: vmnet-rs broker")
        self.socket = socket_path or "/run/vmnet-rs/broker.sock"
        self._conn, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._server = subprocess.Popen([sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        _journal(op="connect", socket=socket_path, server_pid=self._server.pid)

    def _info(self):
        return (True, 9000) if self.mode == "offload" else (False, 1500)

    def _serve(self, job: str, fds: list, stream: bool = False) -> None:
        socket.send_fds(self._conn, [json.dumps({"job": job, "stream": stream}).encode()], fds)
        for fd in fds:
            os.close(fd)

    def open(self, network, fd_type, mac=None, vnet_hdr=False, vm_name=None, name=None):
        _journal(op="open", network=network, fd_type=fd_type, mac=mac, vnet_hdr=vnet_hdr, vm_name=vm_name)
        if network not in NETWORKS and self.mode != "lan":
            raise BrokerError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")
        offload, mtu = self._info()
        if self.mode == "lan" and fd_type == "tap":
            return Opened(open_tap_on_bridge(os.environ["VMNET_FAKE_BRIDGE"], vnet_hdr), fd_type, mac, network, offload, mtu)
        kind = socket.SOCK_STREAM if fd_type == "stream" else socket.SOCK_DGRAM
        ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        if self.mode == "lan":
            self._serve("relay", [ours.detach(), open_tap_on_bridge(os.environ["VMNET_FAKE_BRIDGE"])], kind == socket.SOCK_STREAM)
        else:
            self._serve("echo", [ours.detach()])
        return Opened(theirs.detach(), fd_type, mac, network, offload, mtu)

    def acquire(self, network):
        _journal(op="acquire", network=network)
        if network not in NETWORKS:
            raise BrokerError(f"unknown network {network!r}")
        offload, mtu = self._info()
        return {"network": network, "config": {"offload": offload, "mtu": mtu}}

    def networks(self):
        _journal(op="networks")
        offload, mtu = self._info()
        return [{"name": n, "live": False, "config": {"offload": offload, "mtu": mtu}} for n in NETWORKS]

    def fileno(self):
        return self._conn.fileno()

    def detach(self):
        return self._conn.detach()

    def close(self):
        self._conn.close()


def serve(conn: socket.socket) -> None:
    """The fake broker's side: serves the fds it is sent until the connection ends."""
    while True:
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 4)
        if not msg:
            _journal(op="close")
            os._exit(0)
        job = json.loads(msg)
        if job["job"] == "echo":
            threading.Thread(target=_echo, args=(socket.socket(fileno=fds[0]),), daemon=True).start()
        else:
            sock, tap, stream = socket.socket(fileno=fds[0]), fds[1], job["stream"]
            threading.Thread(target=_tap_to_socket, args=(tap, sock, stream), daemon=True).start()
            threading.Thread(target=_socket_to_tap, args=(sock, tap, stream), daemon=True).start()


def install() -> None:
    import vmnet_rs.run

    vmnet_rs.run.client_factory = FakeClient


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
