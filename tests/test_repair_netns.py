"""When the host changes under a live network: the broker notices, puts back
what went, says so once, counts it, and stops fighting another program.

The broker runs inside its own namespace (the "host"); a client holds a TAP
port on a shared network, and "VMs" are namespaces joined to the bridge by
veth pairs (busybox udhcpc) whose traffic to an "outside" namespace goes
through NAT. Every change (``nft flush ruleset``, ``ip_forward=0``, the
bridge address deleted, dnsmasq killed) runs inside the host namespace;
never on the machine's own network. Each repair is held to the documented
bound (docs/linux.md: within 2 s), with 1 s of slack for a loaded machine;
the times are printed too. One slow test does the same with a real QEMU
(TCG) guest started through ``vmnet-rs run``. Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, wait_until
from netns import NetNs
from test_network_linux import connect, dhcp, dnsmasq_pids, outside_link, serve, veth_endpoint
from vm.broker import OUTSIDE_ADDR, add_outside, run_guest
from vm.qemu import Guest
from vmnet_rs import Client

pytestmark = [pytest.mark.root, pytest.mark.skipif(sys.platform != "linux", reason="Linux backend")]

NET = {"nat": {"mode": "shared", "subnet": "10.241.0.1/24", "dhcp": True, "dnsProxy": False, "routerAdvertisement": False}}
FORWARDING = "/proc/sys/net/ipv4/ip_forward"
# docs/linux.md: a piece that went is put back within 2 s; 1 s of slack.
REPAIR_BOUND_S = 2.0 + 1.0


def start(netns: NetNs, tmp_path: Path, repair: dict | None = None) -> BrokerProcess:
    cfg = tmp_path / "networks.yaml"
    broker = {"allowedUsers": ["root"], "allowedGroups": []}
    if repair is not None:
        broker["repair"] = repair
    cfg.write_text(json.dumps({"broker": broker, "vmnet": NET}))
    sock = tmp_path / "broker.sock"
    args = ["--config", str(cfg), "--no-endpoints", "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    b = BrokerProcess(sock, args, prefix=netns.argv([]))
    b.wait_ready()
    b.netns = netns
    b.cfg = cfg
    return b


def forwarding(ns: NetNs) -> str:
    return ns.run(["cat", FORWARDING]).stdout.strip()


def pieces(c: Client) -> dict:
    return c.status()["networks"]["nat"]["pieces"]


def repaired_lines(b: BrokerProcess, piece: str) -> list[str]:
    return [line for line in b.log_text().splitlines() if f"network nat: repaired {piece}:" in line]


def doctor(b: BrokerProcess) -> subprocess.CompletedProcess:
    return b.netns.run([sys.executable, "-m", "vmnet_rs", "doctor", "--socket", str(b.socket), "--config", str(b.cfg), "--network", "nat"], check=False, timeout=180)


def after(b: BrokerProcess, c: Client, piece: str, event: list[str]) -> float:
    """Runs ``event`` in the broker's namespace; returns the seconds until
    status counts one more repair of ``piece`` with it present again, and
    checks one more log line says so."""
    before = pieces(c)[piece]["repairs"]
    lines = len(repaired_lines(b, piece))
    b.netns.run(event)
    t0 = time.monotonic()
    wait_until(f"{piece} to be put back", lambda: pieces(c)[piece]["repairs"] == before + 1 and pieces(c)[piece]["ok"], timeout=20, interval=0.01)
    took = time.monotonic() - t0
    wait_until(f"the log line of the {piece} repair", lambda: len(repaired_lines(b, piece)) == lines + 1, timeout=10)
    print(f"repair of {piece} after {' '.join(event)}: {took * 1000:.0f} ms")
    assert took <= REPAIR_BOUND_S, f"{piece} came back after {took:.2f} s, past the documented 2 s"
    return took


def test_pieces_removed_under_a_live_network_come_back(netns, tmp_path: Path) -> None:
    outside, vm1, vm2, vm3 = NetNs("vmro"), NetNs("vmrv"), NetNs("vmrv"), NetNs("vmrv")
    try:
        assert forwarding(netns) == "0"
        b = start(netns, tmp_path)
        try:
            with Client(str(b.socket)) as c:
                port = c.open("nat", "tap", mac="52:54:00:41:00:01", vm_name="holder")
                bridge = c.status()["networks"]["nat"]["device"]
                assert forwarding(netns) == "1"
                outside_link(netns, outside, "10.242.0.1", "10.242.0.2")
                veth_endpoint(netns, vm1, bridge, "52:54:00:41:00:02")
                assert dhcp(vm1, tmp_path)
                server = serve(outside, 9000, "outside")
                try:
                    # Through NAT: the outside sees the host's address.
                    assert connect(vm1, "10.242.0.2", 9000) == "outside 10.242.0.1"
                    assert set(pieces(c)) == {"bridge", "address", "table", "forwarding", "dnsmasq"}
                    assert all(p["ok"] and p["repairs"] == 0 for p in pieces(c).values()), pieces(c)

                    after(b, c, "table", ["nft", "flush", "ruleset"])
                    assert connect(vm1, "10.242.0.2", 9000) == "outside 10.242.0.1"
                    after(b, c, "forwarding", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
                    assert connect(vm1, "10.242.0.2", 9000) == "outside 10.242.0.1"
                    after(b, c, "address", ["ip", "addr", "del", "10.241.0.1/24", "dev", bridge])
                    assert connect(vm1, "10.242.0.2", 9000) == "outside 10.242.0.1"
                    veth_endpoint(netns, vm2, bridge, "52:54:00:41:00:03")
                    assert dhcp(vm2, tmp_path)
                    (pid,) = dnsmasq_pids(netns)
                    after(b, c, "dnsmasq", ["kill", "-9", str(pid)])
                    veth_endpoint(netns, vm3, bridge, "52:54:00:41:00:04")
                    assert dhcp(vm3, tmp_path)
                    assert connect(vm3, "10.242.0.2", 9000) == "outside 10.242.0.1"
                    assert c.status()["networks"]["nat"]["repairs"] == 4

                    # No fight: the table removed again and again is left alone
                    # after the sixth removal within the window (limit 5).
                    table = "vmnet_rs_nat"
                    for _ in range(4):
                        after(b, c, "table", ["nft", "delete", "table", "inet", table])
                    b.netns.run(["nft", "delete", "table", "inet", table])
                    wait_until("the table to be left alone", lambda: pieces(c)["table"].get("left_alone"), timeout=20)
                    t = pieces(c)["table"]
                    assert not t["ok"] and t["repairs"] == 5, t
                    assert "another program manages it" in t["left_alone"] and "pid" in t["left_alone"], t
                    log = b.log_text()
                    assert log.count("leaving table alone") == 1, log
                    assert "vmnet_rs_nat" not in netns.run(["nft", "list", "tables"]).stdout
                    # The broker does not spin while it leaves the table alone.
                    stat = lambda: sum(int(x) for x in Path(f"/proc/{b.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
                    cpu0, t0 = stat(), time.monotonic()
                    time.sleep(2)  # measuring an interval, not waiting for a state
                    ticks = stat() - cpu0
                    print(f"broker CPU while leaving the table alone: {ticks} ticks in {time.monotonic() - t0:.1f}s")
                    assert ticks < os.sysconf("SC_CLK_TCK"), ticks
                    status = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--socket", str(b.socket)], capture_output=True, text=True, timeout=60)
                    assert "repair(s)" in status.stdout and "table: MISSING" in status.stdout and "left alone" in status.stdout, status.stdout
                    d = doctor(b)
                    assert d.returncode == 1, d.stdout + d.stderr
                    assert any(line.startswith("FAIL  network nat table: ") and "missing from network nat" in line for line in d.stdout.splitlines()), d.stdout
                    assert any(line.startswith("ok    network nat address: present, repaired 1 time(s)") for line in d.stdout.splitlines()), d.stdout
                finally:
                    server.kill()
                port.close()
        finally:
            b.stop()
        # The last network that needed forwarding went: given back as found.
        assert forwarding(netns) == "0"
        assert "gave net.ipv4.ip_forward back: 0" in b.log.read_text()
    finally:
        for ns in (outside, vm1, vm2, vm3):
            ns.close()


def test_repairs_off_only_report_and_forwarding_survives_a_crash(netns, tmp_path: Path) -> None:
    b = start(netns, tmp_path, repair={"pieces": ["dnsmasq"]})
    try:
        with Client(str(b.socket)) as c:
            c.acquire("nat")
            assert forwarding(netns) == "1"
            netns.run(["nft", "flush", "ruleset"])
            wait_until("the missing table in status", lambda: not pieces(c)["table"]["ok"], timeout=20)
            t = pieces(c)["table"]
            assert t["repairs"] == 0 and "repairs are off" in t["left_alone"], t
            assert "repairs of table are off" in b.log_text()
            assert "vmnet_rs_nat" not in netns.run(["nft", "list", "tables"]).stdout
            d = doctor(b)
            assert d.returncode == 1
            assert "FAIL  network nat table: nftables table inet vmnet_rs_nat is missing from network nat" in d.stdout, d.stdout
        # A crash: the forwarding record in the state directory outlives it.
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(timeout=60)
    finally:
        b.stop()
    assert forwarding(netns) == "1"
    assert (tmp_path / "state" / "forwarding.found").exists()
    b = start(netns, tmp_path)
    try:
        # The next broker cleans up what the crashed one left, forwarding too.
        assert forwarding(netns) == "0"
        assert "gave net.ipv4.ip_forward back: 0" in b.log_text()
        assert not (tmp_path / "state" / "forwarding.found").exists()
    finally:
        b.stop()


def guest_reaches_outside(guest: Guest, since: float, what: str) -> float:
    """Polls until ``guest`` pings OUTSIDE_ADDR (which has no route back to
    the network: only NAT carries the reply); the seconds since ``since``,
    held to the repair bound."""
    wait_until(f"the guest to reach the outside after {what}",
               lambda: guest.sh(f"ping -c 1 -W 1 {OUTSIDE_ADDR}", timeout=60)[0] == 0,
               timeout=since + REPAIR_BOUND_S + 30 - time.monotonic(), interval=0)
    took = time.monotonic() - since
    print(f"guest reached the outside again {took * 1000:.0f} ms after {what}")
    assert took <= REPAIR_BOUND_S, f"the guest reached the outside {took:.2f} s after {what}, past the documented 2 s"
    return took


@pytest.mark.slow
def test_a_qemu_guest_reaches_the_outside_again_after_a_flush_and_forwarding_off(netns, tmp_path: Path) -> None:
    outside = add_outside(netns)
    try:
        b = start(netns, tmp_path)
        try:
            guest = run_guest(netns, b, "repair-vm", ["nat"], tmp_path)
            try:
                guest.wait_ready()
                assert guest.router == "10.241.0.1", guest.router
                guest.check(f"ping -c 1 -W 5 {OUTSIDE_ADDR}", timeout=60)
                with Client(str(b.socket)) as c:
                    assert all(p["ok"] and p["repairs"] == 0 for p in pieces(c).values()), pieces(c)
                    for piece, event in (("table", ["nft", "flush", "ruleset"]),
                                         ("forwarding", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])):
                        since = time.monotonic()
                        after(b, c, piece, event)
                        guest_reaches_outside(guest, since, " ".join(event))
                        assert pieces(c)[piece]["repairs"] == 1, pieces(c)
                    assert c.status()["networks"]["nat"]["repairs"] == 2
            finally:
                guest.close()
        finally:
            b.stop()
    finally:
        outside.close()
