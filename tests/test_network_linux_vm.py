"""Two QEMU VMs (TCG) on a vmnet-rs Linux network, each given the TAP fd
itself (``-netdev tap,fd=N``; QEMU reads IFF_VNET_HDR from the fd itself), the relay-free path the broker
offers on Linux: DHCP leases from the network's dnsmasq, pings, iperf3.

The rate goes to tests/.cache/e2e-iperf3.json beside the hand-made
baseline's; it is reported, never asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from test_network_linux import assert_clean, config, holders  # noqa: F401 (fixture)
from vm.checks import check_pair, record_rate
from vm.qemu import Guest, qemu_base_argv

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.skipif(sys.platform != "linux", reason="Linux backend")]

LAUNCHER = Path(__file__).with_name("tap_launcher.py")


def test_two_vms_on_tap_fds(netns, holders, tmp_path):
    state = tmp_path / "state"
    net = holders(netns, "vms", config(subnet="10.104.0.1/24", offload=True), state)
    assert net.first["ok"], net.first
    sock = tmp_path / "taps.sock"
    assert net.call(f"tapsock {sock} vnet_hdr")["ok"]
    macs = ["52:54:00:04:00:01", "52:54:00:04:00:02"]
    guests: list[Guest] = []
    try:
        for i, mac in enumerate(macs):
            argv = [sys.executable, str(LAUNCHER), str(sock), mac, "--"] + qemu_base_argv(f"tapfd{i}") + [
                "-netdev", "tap,id=net1,fd={fd}",
                "-device", f"virtio-net-pci,netdev=net1,mac={mac}",
            ]
            guests.append(Guest(netns.argv(argv), f"tapfd{i}", log_dir=tmp_path))
        for g in guests:
            g.wait_ready()
        assert [g.mac for g in guests] == macs
        rate = check_pair(guests[0], guests[1], "10.104.0.1", prefix="10.104.0.0/24")
        record_rate("vmnet-rs Linux network, QEMU tap fd (vnet_hdr)", rate)
        leases = {lease["mac"]: lease["address"] for lease in net.call("leases")["leases"]}
        assert leases == {g.mac: g.ip for g in guests}
    finally:
        for g in guests:
            g.close()
    # The TAPs went with the VMs' fds.
    assert not [link for link in netns.links() if link.startswith("vmt")], netns.links()
    net.close()
    assert_clean(netns, state, net.bridge)
