"""Two QEMU VMs (TCG) on a Linux network with ``addresses: broker``: no
dnsmasq, leases and names from the broker's own port.

Each VM joins through the network's stream endpoint path (QEMU reconnects
by itself, so the VMs outlive a broker SIGKILL). They get leases from the
broker's port, claim their names by DHCP host name, resolve and ping each
other by name, get the names back from reverse lookups, and get the same
address after their own restart and after the broker is killed and started
again (the broker's records are in its data directory). A third VM
started with ``vmnet-rs run --name`` is found under the name the broker
granted it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from brokerproc import wait_until
from vm.broker import BrokerProcess, path_guest, run_guest
from vm.qemu import Guest

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.skipif(sys.platform != "linux", reason="Linux backend")]

NETWORK = "svc"
SUBNET = "10.235.0"
SERVICE = f"{SUBNET}.254"
DOMAIN = f"{NETWORK}.vmnet.internal"


@pytest.fixture
def broker(netns, tmp_path):
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({
        "broker": {"allowedUsers": ["root"], "allowedGroups": []},
        "vmnet": {NETWORK: {"mode": "host", "subnet": f"{SUBNET}.0/24", "addresses": "broker", "endpoints": ["stream"]}},
    }))
    b = BrokerProcess(netns, tmp_path, config=cfg)
    try:
        yield b
    finally:
        b.close()


def claim(g: Guest, name: str) -> str:
    """Asks the broker's port for a lease under DHCP host name ``name``;
    points the guest's resolver at the port; returns the address."""
    g.check(f"udhcpc -i eth0 -n -q -t 5 -T 2 -x hostname:{name} -s /etc/udhcpc.script", timeout=90)
    g.check(f"echo nameserver {SERVICE} > /etc/resolv.conf")
    return g.check("cat /run/lease").split("/")[0]


def lookup(g: Guest, what: str) -> str:
    return g.check(f"nslookup {what} {SERVICE}", timeout=60)


def no_dnsmasq(netns) -> bool:
    comms = []
    for pid in netns.pids():
        try:
            comms.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            pass
    return "dnsmasq" not in comms


def service_view(broker) -> dict:
    with broker.client() as c:
        return c.status()["networks"][NETWORK]


def test_two_vms_lease_and_resolve_from_the_broker_port(netns, broker, tmp_path):
    names = ["alpha", "beta"]
    guests = {n: path_guest(netns, broker, n, NETWORK, "stream", tmp_path) for n in names}
    try:
        for g in guests.values():
            g.wait_ready()
        assert all(g.ip and g.ip.startswith(f"{SUBNET}.") for g in guests.values()), {n: g.ip for n, g in guests.items()}
        assert all(g.router == f"{SUBNET}.1" for g in guests.values())
        assert no_dnsmasq(netns)
        net = service_view(broker)
        assert net["service"]["running"] and net["service"]["address"] == SERVICE
        first = {n: g.ip for n, g in guests.items()}
        addrs = {n: claim(g, n) for n, g in guests.items()}
        assert addrs == first, "a renewal keeps the address"

        a, b = guests["alpha"], guests["beta"]
        assert addrs["alpha"] in lookup(b, f"alpha.{DOMAIN}")
        assert addrs["beta"] in lookup(a, f"beta.{DOMAIN}")
        assert f"{SUBNET}.1" in lookup(a, f"host.{DOMAIN}")
        b.check(f"ping -c 1 -W 10 alpha.{DOMAIN}", timeout=60)
        a.check(f"ping -c 1 -W 10 beta.{DOMAIN}", timeout=60)
        assert f"alpha.{DOMAIN}" in lookup(b, addrs["alpha"])
        assert f"beta.{DOMAIN}" in lookup(a, addrs["beta"])

        # A name the broker granted (``vmnet-rs run --name``) is served too.
        gamma = run_guest(netns, broker, "gamma", [NETWORK], tmp_path)
        try:
            gamma.wait_ready()
            assert gamma.ip and gamma.ip.startswith(f"{SUBNET}.") and gamma.ip not in addrs.values()
            assert gamma.ip in lookup(a, f"gamma.{DOMAIN}")
            assert f"gamma.{DOMAIN}" in lookup(b, gamma.ip)
            a.check(f"ping -c 1 -W 10 gamma.{DOMAIN}", timeout=60)
        finally:
            gamma.close()

        # alpha restarts: same MAC, same address, same name.
        assert a.close() is not None
        a = guests["alpha"] = path_guest(netns, broker, "alpha", NETWORK, "stream", tmp_path)
        a.wait_ready()
        assert a.ip == addrs["alpha"]
        assert claim(a, "alpha") == addrs["alpha"]
        assert addrs["alpha"] in lookup(b, f"alpha.{DOMAIN}")

        # The broker is killed and started again: the VMs reconnect, and a
        # fresh request (no address asked for) gets the same address.
        broker.kill()
        broker.start()
        for n, g in guests.items():
            rc, out = 1, ""
            for _ in range(30):
                rc, out = g.sh(f"udhcpc -i eth0 -n -q -t 3 -T 2 -x hostname:{n} -s /etc/udhcpc.script", timeout=90)
                if rc == 0:
                    break
            assert rc == 0, out
            assert g.check("cat /run/lease").split("/")[0] == addrs[n], f"{n} got another address after the broker restart"
        assert no_dnsmasq(netns)
        assert addrs["beta"] in lookup(a, f"beta.{DOMAIN}")
        a.check(f"ping -c 1 -W 10 beta.{DOMAIN}", timeout=60)
        assert f"alpha.{DOMAIN}" in lookup(b, addrs["alpha"])
        counters = service_view(broker)["service"]["counters"]
        assert counters["dhcp_acks"] >= 2 and counters["dns_answered"] >= 3
        assert re.search(r"\d", json.dumps(counters))
    finally:
        for g in guests.values():
            g.close()
