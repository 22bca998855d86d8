"""A hand-made VM network inside a test namespace: bridge + dnsmasq + TAPs.

This is the baseline the vmnet-rs networks are compared with, and the proof
that the VM harness itself works without vmnet-rs. Everything lives inside
the :class:`netns.NetNs` it is given; dnsmasq serves DHCP only (``--port=0``
turns DNS off) and has no upstream servers. ``--no-ping`` skips dnsmasq's
address-in-use probe before each offer: nothing else is on the bridge, and
with several TCG guests booting at once the probes only delay the offers.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from netns import NetNs


class Lan:
    """A bridge with an address, a DHCP server and TAPs for VMs."""

    def __init__(self, ns: NetNs, workdir: Path, bridge: str = "br0", subnet: str = "10.77.0") -> None:
        self.ns = ns
        self.bridge = bridge
        self.gateway = f"{subnet}.1"
        self.subnet = subnet
        self.taps: list[str] = []
        ns.run(["ip", "link", "add", bridge, "type", "bridge"])
        ns.run(["ip", "addr", "add", f"{self.gateway}/24", "dev", bridge])
        ns.run(["ip", "link", "set", bridge, "up"])
        self.dnsmasq = ns.popen([
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--port=0", "--no-ping", "--user=root", "--bind-interfaces", f"--interface={bridge}", "--except-interface=lo",
            f"--dhcp-range={subnet}.50,{subnet}.150,255.255.255.0,1h",
            f"--dhcp-leasefile={workdir / 'dnsmasq.leases'}", "--pid-file=",
            "--log-facility=-", "--log-dhcp",
        ], stdout=open(workdir / "dnsmasq.log", "w"), stderr=subprocess.STDOUT)
        # Ready once it logs its DHCP range (it has bound the port by then); poll with a deadline.
        log = workdir / "dnsmasq.log"
        deadline = time.monotonic() + 30
        while "DHCP, IP range" not in log.read_text(errors="replace"):
            if self.dnsmasq.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"dnsmasq did not start within 30 s: {log.read_text(errors='replace')}")
            time.sleep(0.05)

    def add_tap(self, name: str) -> str:
        """A persistent TAP enslaved to the bridge, for QEMU's ``ifname=``."""
        self.ns.run(["ip", "tuntap", "add", name, "mode", "tap"])
        self.ns.run(["ip", "link", "set", name, "master", self.bridge, "up"])
        self.taps.append(name)
        return name

    def tap_guest(self, index: int, name: str, mac: str, log_dir: Path) -> "Guest":
        """A QEMU guest on its own TAP (``tap<index>``) of this bridge: no vmnet-rs in the path."""
        from .qemu import Guest, qemu_base_argv

        tap = self.add_tap(f"tap{index}")
        argv = qemu_base_argv(name) + [
            "-netdev", f"tap,id=net1,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net1,mac={mac}",
        ]
        return Guest(self.ns.argv(argv), name, log_dir=log_dir)

    def close(self) -> None:
        if self.dnsmasq.poll() is None:
            self.dnsmasq.terminate()
            try:
                self.dnsmasq.wait(10)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
