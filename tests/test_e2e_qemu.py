"""Two real QEMU VMs (TCG) on one network: leases, pings, iperf3.

The baseline test joins two VMs with a bridge, TAPs and dnsmasq made by hand
(no vmnet-rs), which proves the VM harness itself. The vmnet-rs tests start
the broker in a namespace and start each VM with ``vmnet-rs run`` (which
execs QEMU), once per QEMU backend; one test joins VMs through the
network's endpoint paths as well and kills and restarts the broker under
them. Rates go to tests/.cache/e2e-iperf3.json; they are reported,
never asserted (TCG makes them low; compare backends, not absolutes).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from brokerproc import wait_until
from vm.broker import OUTSIDE_ADDR, BrokerProcess, add_outside, path_guest, run_guest, run_guest_with_fake_broker
from vm.checks import check_pair, record_rate
from vm.lan import Lan
from vm.qemu import Guest, start_guests
from vmnet_rs import drivers

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_baseline_two_vms_on_a_hand_made_bridge(netns, tmp_path):
    lan = Lan(netns, tmp_path)
    guests: list[Guest] = []
    try:
        guests = start_guests(2, lambda i: lan.tap_guest(i, f"base{i}", f"52:54:00:77:00:0{i + 1}", tmp_path))
        for g in guests:
            g.wait_ready()
        assert [g.mac for g in guests] == ["52:54:00:77:00:01", "52:54:00:77:00:02"]
        rate = check_pair(guests[0], guests[1], lan.gateway, prefix=f"{lan.subnet}.0/24")
        record_rate("baseline bridge+tap (no vmnet-rs)", rate)
    finally:
        for g in guests:
            g.close()
        lan.close()


QEMU_BACKENDS = ["tap", "tap_next", "socket", "stream", "dgram", "dgram_next"]


def test_run_wires_every_qemu_backend_into_real_qemu(netns, tmp_path):
    """``vmnet-rs run`` with a stand-in broker (tests/fakeclient.py, ``lan``
    mode: TAP fds, or Python relays to TAPs on a hand-made bridge): one VM per
    QEMU backend, all at once; each gets a lease and reaches the gateway and
    the next VM. Proves the generated QEMU arguments and the fd inheritance."""

    lan = Lan(netns, tmp_path)
    guests: list[Guest] = []
    try:
        for backend in QEMU_BACKENDS:
            guests.append(run_guest_with_fake_broker(netns, lan.bridge, f"fake-{backend}", [f"lan:{backend}"], tmp_path))
        for g in guests:
            g.wait_ready(timeout=400)
            assert g.mac == drivers.derive_mac(g.name, "lan")
        for g, nxt in zip(guests, guests[1:] + guests[:1]):
            assert g.router == lan.gateway
            g.check(f"ping -c 1 -W 10 {lan.gateway}", timeout=60)
            g.check(f"ping -c 1 -W 10 {nxt.ip}", timeout=60)
        # Only tap_next carries the virtio-net header, so only there does the
        # guest see checksum offload (feature bit 0, VIRTIO_NET_F_CSUM).
        csum = {b: g.check("cat /sys/class/net/eth0/device/features").strip()[0] for b, g in zip(QEMU_BACKENDS, guests)}
        assert csum == {b: "1" if b == "tap_next" else "0" for b in QEMU_BACKENDS}
    finally:
        for g in guests:
            g.close()
        lan.close()


# --- through vmnet-rs ----------------------------------------------------------
SUBNETS = {"shared": "192.168.107.0/24", "host": "192.168.108.0/24"}
GATEWAYS = {"shared": "192.168.107.1", "host": "192.168.108.1"}


@pytest.fixture
def broker(netns, tmp_path):
    outside = add_outside(netns)
    try:
        b = BrokerProcess(netns, tmp_path)
        try:
            yield b
        finally:
            b.close()
    finally:
        outside.close()


def exec_d_qemu_pid(guest: Guest) -> int:
    """The QEMU process ``vmnet-rs run`` became (``ip netns exec`` and ``run`` both exec): no wrapper is left."""
    comm = Path(f"/proc/{guest.proc.pid}/comm").read_text().strip()
    assert comm.startswith("qemu-system"), f"pid {guest.proc.pid} is {comm}, not QEMU"
    assert Path(f"/proc/{guest.proc.pid}/task/{guest.proc.pid}/children").read_text().split() == []
    return guest.proc.pid


def pair_on(netns, broker, tmp_path, network: str, backend: str) -> tuple[Guest, Guest]:
    guests = [run_guest(netns, broker, f"{network}-{backend}-{i}", [f"{network}:{backend}"], tmp_path)
              for i in range(2)]
    try:
        for g in guests:
            g.wait_ready()
    except BaseException:
        for g in guests:
            g.close()
        raise
    return guests[0], guests[1]


@pytest.mark.parametrize("backend", QEMU_BACKENDS)
def test_two_vms_on_shared(netns, broker, tmp_path, backend):

    a, b = pair_on(netns, broker, tmp_path, "shared", backend)
    try:
        assert a.mac == drivers.derive_mac(a.name, "shared")
        # Offload reaches the guest only through tap_next's virtio-net header
        # (feature bit 0, VIRTIO_NET_F_CSUM).
        csum = a.check("cat /sys/class/net/eth0/device/features").strip()[0]
        assert csum == ("1" if backend == "tap_next" else "0")
        rate = check_pair(a, b, GATEWAYS["shared"], prefix=SUBNETS["shared"])
        record_rate(f"shared {backend}", rate)
        # NAT: the outside namespace has no route back to the VM subnet.
        a.check(f"ping -c 2 -W 5 {OUTSIDE_ADDR}", timeout=60)
        leases, adaptors = broker_view(broker)
        assert set(leases) == {a.mac, b.mac}
        assert {leases[m]["fd_type"] for m in leases} == {drivers.resolve_backend("qemu", backend).fd_type}
        relayed = backend not in ("tap", "tap_next")
        assert len(adaptors) == (2 if relayed else 0)
        if relayed:  # the traffic above went through the adaptors
            assert all(ad["vm_to_host"]["packets"] > 0 and ad["host_to_vm"]["packets"] > 0 for ad in adaptors.values())
        links = set(netns.links())
        # Killing a VM with SIGKILL ends its broker connection, which it
        # inherited from `vmnet-rs run`: the lease ends, the VM's TAP (and
        # adaptor) go away; the other VM keeps working.
        os.kill(exec_d_qemu_pid(a), signal.SIGKILL)
        assert a.proc.wait(60) == -signal.SIGKILL
        gone = wait_until("a link removed after killing a VM", lambda: links - set(netns.links()), 30, 0.2)
        assert len(gone) == 1, f"links removed after killing a VM: {gone}"
        leases, adaptors = broker_view(broker)
        assert set(leases) == {b.mac}
        assert len(adaptors) == (1 if relayed else 0)
        b.check(f"ping -c 1 -W 5 {GATEWAYS['shared']}", timeout=60)
        # SIGTERM reaches QEMU, which exits 0, and its lease ends.
        assert b.close() == 0
        wait_until("no leases or adaptors left in the broker", lambda: broker_view(broker) == ({}, {}), 30, 0.2)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend", ["tap", "dgram_next"])
def test_two_vms_on_host_have_no_way_out(netns, broker, tmp_path, backend):

    a, b = pair_on(netns, broker, tmp_path, "host", backend)
    try:
        # A host-only network may or may not announce a router; the host's
        # address answers either way.
        rate = check_pair(a, b, GATEWAYS["host"], prefix=SUBNETS["host"], routers=(GATEWAYS["host"], None))
        record_rate(f"host {backend}", rate)
        # Even with a default route through the host, nothing gets out.
        a.check(f"ip route replace default via {GATEWAYS['host']} dev eth0")
        rc, out = a.sh(f"ping -c 2 -W 2 {OUTSIDE_ADDR}", timeout=60)
        assert rc != 0, f"a host-only VM reached the outside:\n{out}"
    finally:
        a.close()
        b.close()


# --- path endpoints and by fd, side by side -------------------------------------


def vmt_links(netns) -> set[str]:
    return {link for link in netns.links() if link.startswith("vmt")}


def port_macs(broker) -> dict[str, str]:
    """Each lease's port by the VM's MAC (given, or seen on its frames) -> how it came (stream, datagram, fd)."""
    with broker.client() as c:
        leases = c.status()["leases"]
    return {str(lease.get("mac") or lease.get("vm_mac") or "?").lower(): lease.get("via") or "fd" for lease in leases.values()}


def test_vms_by_path_and_by_fd_share_shared_and_come_back_after_a_broker_crash(netns, broker, tmp_path):
    """One QEMU on the stream path (with reconnect-ms), one on the datagram
    path, one through ``vmnet-rs run``: leases, pings, separate ports;
    SIGKILL releases a VM's port; a broker killed and started again serves
    the stream VM again, which keeps its address."""
    gateway = GATEWAYS["shared"]
    s = path_guest(netns, broker, "ep-stream", "shared", "stream", tmp_path)
    d = path_guest(netns, broker, "ep-dgram", "shared", "datagram", tmp_path)
    r = run_guest(netns, broker, "ep-run", ["shared"], tmp_path)
    guests = [s, d, r]
    try:
        for g in guests:
            g.wait_ready()
        assert len({g.ip for g in guests}) == 3 and all(g.router == gateway for g in guests)
        for g, nxt in zip(guests, guests[1:] + guests[:1]):
            g.check(f"ping -c 1 -W 10 {nxt.ip}", timeout=60)
            g.check(f"ping -c 1 -W 10 {gateway}", timeout=60)
        assert port_macs(broker) == {s.mac: "stream", d.mac: "datagram", r.mac: "fd"}  # three separate ports
        qemu = exec_d_qemu_pid(r)  # vmnet-rs run left no wrapper
        taps = vmt_links(netns)
        assert len(taps) == 3  # one TAP per port

        # SIGKILL a VM on a path and one from vmnet-rs run: their ports go within seconds.
        os.kill(d.proc.pid, signal.SIGKILL)
        os.kill(qemu, signal.SIGKILL)
        started = time.monotonic()
        wait_until(f"only the port of {s.mac} left", lambda: port_macs(broker) == {s.mac: "stream"}, 15, 0.2)
        print(f"ports of SIGKILLed VMs released after {time.monotonic() - started:.1f}s")
        wait_until("one VM TAP left", lambda: len(vmt_links(netns)) == 1, 15, 0.2)

        # The broker crashes and comes back: QEMU reconnects by itself.
        broker.kill()
        broker.start()
        rc = 1
        deadline = time.monotonic() + 90
        while rc != 0 and time.monotonic() < deadline:
            rc, _ = s.sh(f"ping -c 1 -W 2 {gateway}", timeout=60)
        assert rc == 0, s.console
        assert port_macs(broker) == {s.mac: "stream"}
        with broker.client() as c:
            dhcp = c.status()["networks"]["shared"]["dhcp_leases"]
        assert dhcp[s.mac]["address"] == s.ip  # the new dnsmasq has the old lease
        s.check("udhcpc -i eth0 -n -q -t 5 -T 2 -s /etc/udhcpc.script", timeout=60)
        assert s.check("cat /run/lease").split("/")[0] == s.ip  # and gives the same address again
    finally:
        for g in guests:
            g.close()


def broker_view(broker) -> tuple[dict, dict]:
    """The broker's leases (by MAC) and adaptors, from its status."""
    with broker.client() as c:
        status = c.status()
    leases = {str(lease.get("mac", "")).lower(): lease for lease in status["leases"].values()}
    return leases, dict(status["adaptors"])


# --- names -----------------------------------------------------------------------


def test_vms_reach_each_other_by_name_and_keep_their_addresses(netns, tmp_path):
    """docs/config.md, "Names and addresses": `run --name alpha` / `--name
    beta` on shared; beta resolves and pings alpha.shared.vmnet.internal;
    `vmnet-rs resolve` and the network's DNS server agree; reverse lookups;
    host.shared... is the gateway; a second `run --name alpha` is refused; a
    guest whose DHCP host name is alpha does not get the name; alpha keeps its
    address after a lost lease file and after the broker's SIGKILL."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from vm.broker import VMNET_RS
    from vm.qemu import qemu_base_argv

    # dnsmasq, running as nobody, re-reads its fixed entries from the state
    # directory: one it can pass (pytest's own directories are 0700).
    work = Path(tempfile.mkdtemp(prefix="vmnet-rs-e2e-names-"))
    work.chmod(0o711)
    gateway, domain = GATEWAYS["shared"], "shared.vmnet.internal"
    dnsquery = str(Path(__file__).with_name("dnsquery.py"))
    guests: list[Guest] = []
    broker = BrokerProcess(netns, work)
    try:
        alpha = run_guest(netns, broker, "alpha", ["shared"], tmp_path)
        beta = run_guest(netns, broker, "beta", ["shared"], tmp_path)
        guests += [alpha, beta]
        for g in guests:
            g.wait_ready()
        assert alpha.ip and beta.ip and alpha.ip != beta.ip
        # beta finds alpha by name, forward and reverse, and pings it by name.
        out = beta.check(f"nslookup alpha.{domain}", timeout=60)
        assert alpha.ip in out, out
        beta.check(f"ping -c 1 -W 10 alpha.{domain}", timeout=60)
        out = beta.check(f"nslookup {alpha.ip}", timeout=60)
        assert f"alpha.{domain}" in out, out
        assert gateway in beta.check(f"nslookup host.{domain}", timeout=60)
        # The host side: `vmnet-rs resolve` and a DNS query from the broker's namespace agree.
        r = subprocess.run([*VMNET_RS, "resolve", "--json", "--socket", broker.socket, "alpha"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [a["address"] for a in json.loads(r.stdout)] == [alpha.ip]
        asked = json.loads(netns.run([sys.executable, dnsquery, gateway, f"alpha.{domain}", "A"]).stdout)
        assert asked["answers"] == [alpha.ip]
        assert json.loads(netns.run([sys.executable, dnsquery, gateway, beta.ip, "PTR"]).stdout)["answers"] == [f"beta.{domain}"]
        # A second `run --name alpha` is refused, saying why.
        second = netns.run([*VMNET_RS, "run", "--socket", broker.socket, "--name", "alpha", "--", *qemu_base_argv("alpha")], check=False, timeout=120)
        assert second.returncode == 1 and 'name "alpha" is held on network shared' in second.stderr, second.stderr
        # A guest that calls itself alpha over DHCP (no name from its client) gets an address, not the name.
        gamma = path_guest(netns, broker, "gamma", "shared", "stream", tmp_path)
        guests.append(gamma)
        gamma.wait_ready()
        gamma.check("udhcpc -i eth0 -n -q -t 10 -T 3 -x hostname:alpha -s /etc/udhcpc.script", timeout=120)
        assert json.loads(netns.run([sys.executable, dnsquery, gateway, f"alpha.{domain}", "A"]).stdout)["answers"] == [alpha.ip]
        with broker.client() as c:
            names = c.status()["networks"]["shared"]["names"]
        assert names["alpha"]["kind"] == "granted" and names["alpha"]["address"] == alpha.ip, names
        # alpha stops; dnsmasq's lease file is lost; alpha comes back (no --mac): same address.
        address = alpha.ip
        alpha.close()
        wait_until("alpha's name goes with its lease", lambda: json.loads(netns.run([sys.executable, dnsquery, gateway, f"alpha.{domain}", "A"]).stdout)["rcode"] == 3, 60, 0.5)
        for f in (work / "state").glob("*.leases"):
            f.unlink()
        alpha = run_guest(netns, broker, "alpha", ["shared"], tmp_path)
        guests.append(alpha)
        alpha.wait_ready()
        assert alpha.ip == address
        # The broker dies without a word and starts again: alpha, started again, keeps its address.
        for g in guests:
            g.close()
        broker.kill()
        broker.start()
        alpha = run_guest(netns, broker, "alpha", ["shared"], tmp_path)
        guests.append(alpha)
        alpha.wait_ready()
        assert alpha.ip == address
    finally:
        for g in guests:
            g.close()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
