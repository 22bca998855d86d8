"""A vmnet-rs broker running in a test namespace, and VMs started through ``vmnet-rs run``.

:class:`BrokerProcess` starts ``vmnet-rs broker --socket PATH`` inside the
namespace (it creates its bridges, TAPs, nftables rules and dnsmasq there)
and waits until the socket answers; it can be killed and started again.
:func:`run_guest` boots a test VM through ``vmnet-rs run``, :func:`path_guest`
one whose QEMU connects to a network's endpoint path by itself. :func:`add_outside` gives the namespace a default route
to a second namespace that has no route back, so only NAT can carry a reply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from netns import NetNs

from vmnet_rs import drivers

from .qemu import Guest, qemu_base_argv

VMNET_RS = [sys.executable, "-m", "vmnet_rs"]
OUTSIDE_ADDR = "203.0.113.2"
UPLINK_ADDR = "203.0.113.1"


class BrokerProcess:
    def __init__(self, ns: NetNs, workdir: Path, config: Path | None = None) -> None:
        self.ns = ns
        self.socket = str(workdir / "broker.sock")
        # Its own state directory (records of what it created) and no idle
        # exit: the test decides when it ends. Its endpoint sockets
        # (docs/engines.md) sit beside its socket, in workdir.
        self.state_dir = workdir / "state"
        self.endpoint_dir = str(workdir)
        self.argv = [*VMNET_RS, "broker", "--socket", self.socket, "--state-dir", str(self.state_dir), "--idle-timeout", "0"]
        if config is not None:
            self.argv += ["--config", str(config)]
        self.log = workdir / "broker.log"
        self.start()

    def start(self) -> None:
        """Starts the broker (again, after :meth:`kill`) and waits until it answers."""
        self.proc = self.ns.popen(self.argv, stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"broker on {self.socket} did not answer:\n{self.log.read_text()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        from vmnet_rs.errors import VmnetError

        if not os.path.exists(self.socket):
            return False
        try:
            with self.client() as c:
                return c.ping()
        except VmnetError:  # a socket left by a killed broker, or not listening yet
            return False

    def kill(self) -> None:
        """SIGKILL: the broker tears nothing down (a crash)."""
        self.proc.kill()
        self.proc.wait(30)

    def endpoint(self, network: str, kind: str) -> str:
        return drivers.endpoint_paths(self.endpoint_dir, network)[kind]

    def client(self):
        from vmnet_rs import Client

        return Client(socket=self.socket)

    def close(self) -> int | None:
        if self.proc.poll() is None:
            # SIGINT is the broker's orderly stop (it tears its networks down).
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_guest(ns: NetNs, broker: BrokerProcess, name: str, networks: Sequence[str], log_dir: Path) -> Guest:
    """Boots a test VM through ``vmnet-rs run`` inside ``ns``."""
    argv = [*VMNET_RS, "run", "--socket", broker.socket, "--name", name]
    for n in networks:
        argv += ["-n", n]
    argv += ["--", *qemu_base_argv(name)]
    return Guest(ns.argv(argv), name, log_dir=log_dir)


def path_guest(ns: NetNs, broker: BrokerProcess, name: str, network: str, kind: str, log_dir: Path,
               reconnect_ms: int | None = drivers.RECONNECT_MS) -> Guest:
    """Boots a test VM whose QEMU connects by itself to ``network``'s ``stream`` or ``datagram`` endpoint."""
    mac = drivers.derive_mac(name, network)
    path = broker.endpoint(network, kind)
    if kind == drivers.STREAM:
        net = drivers.qemu_stream_path_args(path, mac, reconnect_ms=reconnect_ms)
    else:
        local = log_dir / f"{name}.dgram.sock"
        if local.exists():
            local.unlink()
        net = drivers.qemu_dgram_path_args(path, str(local), mac)
    return Guest(ns.argv([*qemu_base_argv(name), *net]), name, log_dir=log_dir)


def add_outside(ns: NetNs) -> NetNs:
    """A second namespace joined to ``ns`` by a veth; ``ns`` routes everything to it.

    The outside has no route back to the VM subnets: a VM reaches
    OUTSIDE_ADDR only when its packets are masqueraded.
    """
    outside = NetNs(prefix="vmout")
    try:
        ns.run(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "outlink"])
        ns.run(["ip", "link", "set", "outlink", "netns", outside.name])
        ns.run(["ip", "addr", "add", f"{UPLINK_ADDR}/24", "dev", "uplink"])
        ns.run(["ip", "link", "set", "uplink", "up"])
        ns.run(["ip", "route", "add", "default", "via", OUTSIDE_ADDR])
        outside.run(["ip", "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "outlink"])
        outside.run(["ip", "link", "set", "outlink", "up"])
    except BaseException:
        outside.close()
        raise
    return outside


TESTS_DIR = Path(__file__).resolve().parent.parent
_FAKE_WRAPPER = (
    "import sys; sys.path.insert(0, {tests!r}); import fakeclient; fakeclient.install(); "
    "from vmnet_rs.cli import main; main()"
).format(tests=str(TESTS_DIR))


def run_guest_with_fake_broker(ns: NetNs, bridge: str, name: str, networks: Sequence[str], log_dir: Path) -> Guest:
    """Boots a test VM through ``vmnet-rs run`` whose broker client is the
    test fake in ``lan`` mode (fds joined to ``bridge``; see tests/fakeclient.py)."""
    argv = ["env", "VMNET_FAKE_MODE=lan", f"VMNET_FAKE_BRIDGE={bridge}",
            sys.executable, "-c", _FAKE_WRAPPER, "run", "--name", name]
    for n in networks:
        argv += ["-n", n]
    argv += ["--", *qemu_base_argv(name)]
    return Guest(ns.argv(argv), name, log_dir=log_dir)
