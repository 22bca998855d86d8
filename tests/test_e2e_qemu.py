"""Two real QEMU VMs (TCG) on one network: leases, pings, iperf3.

The baseline test joins two VMs with a bridge, TAPs and dnsmasq made by hand
(no vmnet-rs), which proves the VM harness itself. The vmnet-rs tests start
the broker in a namespace and wrap each VM with ``vmnet-rs run``, once per
QEMU backend. Rates go to tests/.cache/e2e-iperf3.json; they are reported,
never asserted (TCG makes them low; compare backends, not absolutes).
"""

from __future__ import annotations

import pytest

from vm.checks import check_pair, record_rate
from vm.lan import Lan
from vm.qemu import Guest, qemu_base_argv

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_baseline_two_vms_on_a_hand_made_bridge(netns, tmp_path):
    lan = Lan(netns, tmp_path)
    guests: list[Guest] = []
    try:
        for i, mac in enumerate(["52:54:00:77:00:01", "52:54:00:77:00:02"]):
            tap = lan.add_tap(f"tap{i}")
            argv = qemu_base_argv(f"base{i}") + [
                "-netdev", f"tap,id=net1,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=net1,mac={mac}",
            ]
            guests.append(Guest(netns.argv(argv), f"base{i}", log_dir=tmp_path))
        for g in guests:
            g.wait_ready()
        assert [g.mac for g in guests] == ["52:54:00:77:00:01", "52:54:00:77:00:02"]
        rate = check_pair(guests[0], guests[1], lan.gateway, prefix=f"{lan.subnet}.0/24")
        record_rate("baseline bridge+tap (no vmnet-rs)", rate)
    finally:
        for g in guests:
            g.close()
        lan.close()
