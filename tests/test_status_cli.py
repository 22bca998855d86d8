"""`vmnet-rs status` as a health check: exit codes when the broker is missing
or refuses the caller, and per lease the VM's name, MAC, IP and pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from brokerproc import BrokerProcess, config_file
from vmnet_rs import Client
from vmnet_rs.status_cli import format_status


def status(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), VMNET_RS_CONFIG=str(home / "none.yaml"))
    env.pop("VMNET_RS_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "vmnet_rs", "status", *args], capture_output=True, text=True, timeout=120, env=env)


def test_without_broker_exits_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    sock = tmp_path / "none.sock"
    out = status("--platform", "linux", "--socket", str(sock), home=tmp_path)
    assert out.returncode == 1
    [installed] = out.stdout.splitlines()
    from vmnet_rs.install import installed_summary

    assert installed == f"installed: {'yes' if installed_summary('linux')['installed'] else 'no'} (linux)"
    [line] = out.stderr.splitlines()
    assert line.startswith(f"vmnet-rs: no broker answers on {sock}: ") and "start one with `vmnet-rs broker`" in line
    out = status("--json", "--platform", "linux", "--socket", str(sock), home=tmp_path)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["broker"]["running"] is False and "no broker answers" in doc["broker"]["error"]
    assert doc["installed"]["platform"] == "linux"


def test_refused_caller_exits_1(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    sock = tmp_path / "b.sock"
    cfg = config_file(tmp_path / "refuse.yaml", {"allowedUsers": ["4242424"], "allowedGroups": []})
    with BrokerProcess(sock, ["--backend", "hub", "--config", str(cfg)]) as b:
        b.wait_ready()
        out = status("--socket", str(sock), home=tmp_path)
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith("vmnet-rs: ask the broker's status: ") and "is not allowed to use the broker" in line


def test_leases_show_vm_name_mac_and_pid(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    sock = tmp_path / "b.sock"
    with BrokerProcess(sock, ["--backend", "hub", "--idle-timeout", "0"]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c:
            c.acquire("shared", vm_name="web1")
            nic = c.open("host", "stream", mac="52:54:00:00:00:0a")
            out = status("--socket", str(sock), home=tmp_path)
            nic.close()
    assert out.returncode == 0, out.stderr
    me = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    lines = out.stdout.splitlines()
    assert f"  lease 1: shared none, VM web1, MAC -, IP -, pid {os.getpid()} ({me})" in lines, out.stdout
    [relay] = [x for x in lines if x.startswith("  lease 2: ")]
    assert relay.startswith(f"  lease 2: host stream, VM -, MAC 52:54:00:00:00:0a, IP -, pid {os.getpid()} ({me}); host->vm "), relay
    assert "; runs until stopped" in next(x for x in lines if x.startswith("broker: pid "))


def test_lease_line_takes_ip_and_hostname_from_the_dhcp_lease() -> None:
    """The broker puts the DHCP lease's address and hostname on the lease
    (Linux; test_broker_netns.py checks that with a real dnsmasq); status
    prints them, the hostname standing in for a missing VM name."""
    doc = {
        "installed": {"installed": False, "platform": "linux"},
        "broker": {
            "pid": 7, "version": "0.1.0", "endpoint": "/run/vmnet-rs/broker.sock", "uptime_s": 5, "idle_timeout_s": 0,
            "exits_when_idle": False, "networks": {}, "adaptors": {}, "counters": {"requests": 3},
            "leases": {"4": {"network": "shared", "fd_type": "tap", "mac": "52:54:00:aa:bb:cc", "address": "192.168.107.23",
                             "hostname": "guest", "pid": 99, "process": "qemu-system-x86"}},
        },
    }
    assert format_status(doc) == [
        "installed: no (linux)",
        "broker: pid 7 version 0.1.0 on /run/vmnet-rs/broker.sock, up 5s; networks kept until it stops (idle timeout never); runs until stopped",
        "  lease 4: shared tap, VM guest, MAC 52:54:00:aa:bb:cc, IP 192.168.107.23, pid 99 (qemu-system-x86)",
        "  counters: requests 3",
    ]


def test_a_broker_addressed_network_shows_its_service_port() -> None:
    """An ``addresses: broker`` network's own DHCP/DNS port: its address,
    state, resolvers and counters (test_service_netns.py checks a live one)."""
    counters = {"dhcp_offers": 2, "dhcp_acks": 1, "dhcp_naks": 0, "dhcp_releases": 0, "malformed_dhcp": 3,
                "dns_queries": 5, "dns_answered": 4, "dns_forwarded": 1, "dns_failed": 1, "malformed_dns": 6, "malformed_frames": 0}
    doc = {
        "installed": {"installed": False, "platform": "linux"},
        "broker": {
            "pid": 7, "version": "0.1.0", "endpoint": "/s", "uptime_s": 5, "idle_timeout_s": 0, "exits_when_idle": False,
            "networks": {"lab": {"subnet": "10.0.0.1/24", "device": "vmr-lab", "leases": 1, "service": {
                "address": "10.0.0.254", "mac": "52:54:aa:bb:cc:dd", "domain": "lab.vmnet.internal", "running": True,
                "upstreams": "", "counters": counters}}},
            "adaptors": {}, "leases": {}, "counters": {},
        },
    }
    assert format_status(doc)[2:6] == [
        "  network lab: 10.0.0.1/24 on vmr-lab, 1 lease(s)",
        "    service: 10.0.0.254 (52:54:aa:bb:cc:dd) running, names in lab.vmnet.internal, resolvers none (other names REFUSED)",
        "    service dhcp: 2 offers, 1 acks, 0 naks, 0 releases, 3 malformed",
        "    service dns: 5 queries, 4 answered, 1 forwarded, 1 failed, 6 malformed; 0 malformed frames",
    ]
