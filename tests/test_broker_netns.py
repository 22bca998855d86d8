"""The broker with the real Linux backend (bridge, TAPs, nftables, dnsmasq),
run as a subprocess inside its own network namespace: frames between two
clients' fds, TAPs and leases released when a client dies, a deleted bridge
noticed. Needs root; never touches the host's network."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, kill_client_mid_request, wait_until
from test_broker import assert_no_new_fds, settled_fds
from vmnet_rs import Client

pytestmark = pytest.mark.root

NET = {"vmnet": {"lab": {"mode": "host", "subnet": "10.231.0.1/24", "dhcp": False, "dnsProxy": False}}}


@pytest.fixture
def broker(netns, tmp_path: Path):
    import json

    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, **NET}))
    sock = tmp_path / "broker.sock"
    args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    with BrokerProcess(sock, args, prefix=netns.argv([])) as b:
        b.wait_ready()
        b.netns = netns
        yield b


def frame(src: bytes, payload: bytes) -> bytes:
    """A broadcast Ethernet frame with an experimental ethertype."""
    return b"\xff" * 6 + src + struct.pack(">H", 0x88B5) + payload.ljust(46, b"\0")


def read_frame_with(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            continue
        data = os.read(fd, 65536)
        if marker in data:
            return data
    raise AssertionError(f"no frame with {marker!r} arrived")


def tap_links(b: BrokerProcess) -> list:
    return [link for link in b.netns.links() if link.startswith("vmt")]


def test_two_clients_tap_frames_meet(broker: BrokerProcess) -> None:
    with Client(str(broker.socket), timeout=20) as a, Client(str(broker.socket), timeout=20) as b:
        na = a.open("lab", "tap", mac="52:54:00:00:00:0a")
        nb = b.open("lab", "tap")
        try:
            assert na.fd_type == "tap" and na.mac == "52:54:00:00:00:0a"
            assert nb.mac != na.mac and int(nb.mac.split(":")[0], 16) & 2
            assert na.subnet == "10.231.0.1/24" and na.mtu == 1500
            status = a.status()
            taps = sorted(lease["tap"] for lease in status["leases"].values())
            assert len(taps) == 2 and all(t in broker.netns.links() for t in taps)
            bridge = status["networks"]["lab"]["device"]
            assert bridge in broker.netns.links()
            # A frame written by one client's VM side reaches the other's.
            os.write(na.fd, frame(bytes.fromhex("5254000000 0a".replace(" ", "")), b"hello-from-a"))
            got = read_frame_with(nb.fd, b"hello-from-a")
            assert got[:6] == b"\xff" * 6
            os.write(nb.fd, frame(bytes.fromhex(nb.mac.replace(":", "")), b"hello-from-b"))
            read_frame_with(na.fd, b"hello-from-b")
        finally:
            na.close()
            nb.close()
        # The VM side closed: the TAPs vanish and the monitor releases their leases.
        wait_until("the TAP leases to go", lambda: not a.status()["leases"])
        assert not tap_links(broker)


def test_killed_client_leaks_no_tap_fd_or_lease(broker: BrokerProcess, tmp_path: Path) -> None:
    with Client(str(broker.socket), timeout=20) as watcher:
        watcher.acquire("lab")
        baseline = settled_fds(broker)
        links_before = set(broker.netns.links())
        kill_client_mid_request(broker.socket, "lab", ("tap", "tap", "tap"), tmp_path / "vm.py")
        wait_until("the victim's leases to go", lambda: len(watcher.status()["leases"]) == 1)
        wait_until("the victim's TAPs to go", lambda: set(broker.netns.links()) == links_before)
        assert_no_new_fds(broker, baseline)
        status = watcher.status()
        assert status["counters"]["leases_granted"] == status["counters"]["leases_released"] + 1


def test_deleted_bridge_is_noticed_and_released(broker: BrokerProcess) -> None:
    with Client(str(broker.socket), timeout=20) as c:
        c.acquire("lab")
        bridge = c.status()["networks"]["lab"]["device"]
        broker.netns.run(["ip", "link", "delete", bridge])
        wait_until("the broker to release the vanished network", lambda: "lab" not in c.status()["networks"])
        assert not c.status()["leases"]
        # Asking again makes it anew.
        c.acquire("lab")
        assert c.status()["networks"]["lab"]["alive"] is True


def link_info(b: BrokerProcess, name: str) -> dict:
    import json

    return json.loads(b.netns.run(["ip", "-j", "link", "show", "dev", name]).stdout)[0]


def test_a_tap_released_while_held_is_unplugged_and_goes_with_its_fd(broker: BrokerProcess) -> None:
    with Client(str(broker.socket), timeout=20) as c:
        nic = c.open("lab", "tap")
        status = c.status()
        (lease,) = status["leases"].values()
        tap, bridge = lease["tap"], status["networks"]["lab"]["device"]
        assert link_info(broker, tap).get("master") == bridge
    # The lease ended with the connection, but the VM still holds the TAP:
    # it is taken off the bridge and set down, not deleted under the VM.
    try:
        info = wait_until("the TAP to leave the bridge",
                          lambda: (lambda i: i if "master" not in i and "UP" not in i["flags"] else None)(link_info(broker, tap)))
        assert info["ifname"] == tap
        # The VM's fd is still attached to its TAP (TUNGETIFF fails with EBADFD once a TAP is deleted).
        import fcntl

        ifr = fcntl.ioctl(nic.fd, 0x800454D2, bytes(40))  # TUNGETIFF, linux/if_tun.h
        assert ifr[:16].rstrip(b"\0").decode() == tap
    finally:
        nic.close()
    wait_until("the kernel to remove the TAP with its last fd", lambda: tap not in broker.netns.links())


def test_sigterm_tears_everything_down(broker: BrokerProcess) -> None:
    with Client(str(broker.socket), timeout=20) as c:
        c.acquire("lab")
        nic = c.open("lab", "tap")
        bridge = c.status()["networks"]["lab"]["device"]
        # Earlier connections (the readiness probe) may still be closing.
        wait_until("only this connection to remain", lambda: c.status()["connections"] == 1)
    nic.close()
    assert bridge in broker.netns.links()
    os.kill(broker.pid, signal.SIGTERM)
    assert broker.proc.wait(timeout=60) == 0, broker.log_text()
    log = broker.log_text()
    assert "broker stopped: terminated (SIGTERM)" in log, log
    assert bridge not in broker.netns.links(), log
    assert not tap_links(broker), log
    tables = broker.netns.run(["nft", "list", "tables"]).stdout
    assert "vmnet_rs" not in tables, tables


def test_two_clients_stream_relays_on_a_bridge(broker: BrokerProcess) -> None:
    from test_broker import eth_frame, recv_frame, send_frame

    with Client(str(broker.socket), timeout=20) as a, Client(str(broker.socket), timeout=20) as b:
        with a.open("lab", "stream") as na, b.open("lab", "datagram") as nb:
            send_frame(na.fd, "stream", eth_frame(b"over-the-bridge", bytes.fromhex(na.mac.replace(":", ""))))
            recv_frame(nb.fd, "datagram", b"over-the-bridge")
            send_frame(nb.fd, "datagram", eth_frame(b"and-back", bytes.fromhex(nb.mac.replace(":", ""))))
            recv_frame(na.fd, "stream", b"and-back")
        wait_until("the relays' leases to go", lambda: not a.status()["leases"])
        assert not tap_links(broker)


def test_unleased_network_is_torn_down_after_the_idle_timeout(netns, tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, **NET}))
    sock = tmp_path / "broker.sock"
    # --no-endpoints: a broker holding endpoint sockets it bound never exits idle.
    args = ["--config", str(cfg), "--no-endpoints", "--idle-timeout", "1", "--monitor-interval", "0.1", "--state-dir", str(tmp_path / "state")]
    with BrokerProcess(sock, args, prefix=netns.argv([])) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c:
            c.acquire("lab")
            bridge = c.status()["networks"]["lab"]["device"]
            assert bridge in netns.links()
            c.release("lab")
            # The connection stays open, so the broker stays; the network goes.
            wait_until("the idle network's bridge to go", lambda: bridge not in netns.links())
            assert "lab" not in c.status()["networks"]
            assert b.proc.poll() is None
        assert b.proc.wait(timeout=60) == 0


@pytest.mark.slow
def test_status_names_each_vm_with_its_dhcp_address(netns, tmp_path: Path) -> None:
    """A lease's MAC gets an address from the network's dnsmasq (a veth
    endpoint with that MAC runs udhcpc): `vmnet-rs status` shows the VM's
    name, MAC, that address and the pid holding the lease."""
    import json

    from netns import NetNs
    from test_network_linux import dhcp, veth_endpoint

    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []},
                               "vmnet": {"dhcplab": {"mode": "host", "subnet": "10.233.0.1/24", "dnsProxy": False}}}))
    sock = tmp_path / "broker.sock"
    args = ["--config", str(cfg), "--no-endpoints", "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str(tmp_path / "state")]
    ep = NetNs("vmrs")
    try:
        with BrokerProcess(sock, args, prefix=netns.argv([])) as b:
            b.wait_ready()
            mac = "52:54:00:93:00:01"
            with Client(str(sock), timeout=20) as c:
                c.acquire("dhcplab", vm_name="web1")
                nic = c.open("dhcplab", "datagram", mac=mac, vm_name="web1")
                try:
                    bridge = c.status()["networks"]["dhcplab"]["device"]
                    veth_endpoint(netns, ep, bridge, mac)
                    address = dhcp(ep, tmp_path)
                    assert address and address.startswith("10.233.0."), address
                    lease = next(x for x in c.status()["leases"].values() if x.get("mac") == mac)
                    assert (lease["vm_name"], lease["address"], lease["pid"]) == ("web1", address, os.getpid())
                    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--socket", str(sock)],
                                         capture_output=True, text=True, timeout=60)
                    assert out.returncode == 0, out.stderr
                    me = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
                    assert any(line.startswith(f"  lease {lease_id}: dhcplab datagram, VM web1, MAC {mac}, IP {address}, pid {os.getpid()} ({me})")
                               for lease_id in c.status()["leases"] for line in out.stdout.splitlines()), out.stdout
                finally:
                    nic.close()
    finally:
        ep.close()
