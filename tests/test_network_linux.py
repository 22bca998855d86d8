"""The Linux network backend, end to end: bridge, nftables, dnsmasq, TAPs.

Each test makes its own namespaces: ``netns`` is the "host" the network is
created in (by ``network_holder.py``, run inside it), endpoint namespaces are
joined to the bridge by veth pairs and configured by busybox ``udhcpc``, and
an "outside" namespace stands for the world beyond the host. Nothing touches
the machine's own network; dnsmasq gets no upstream servers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from brokerproc import readline_within, wait_until
from netns import NetNs

pytestmark = [pytest.mark.root, pytest.mark.skipif(sys.platform != "linux", reason="Linux backend")]

HOLDER = Path(__file__).with_name("network_holder.py")
TIMEOUT = 60  # seconds; generous for a loaded 2-core machine

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
    ;;
esac
exit 0
"""


def config(**over: object) -> dict:
    c = {
        "mode": "shared",
        "dhcp": True,
        "dnsProxy": True,
        "mtu": 1500,
        "nat44": True,
        "nat66": True,
        "routerAdvertisement": True,
        "subnet": "10.91.0.1/24",
    }
    c.update(over)
    return c


class Holder:
    """A network created and held by a process inside namespace ``ns``."""

    def __init__(self, ns: NetNs, name: str, cfg: dict, state_dir: Path, path_prefix: Path | None = None, repair: list | None = None) -> None:
        self.ns, self.name, self.state_dir = ns, name, state_dir
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if path_prefix:
            env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
        env["VMNET_RS_DNS_RESOLV_FILE"] = ""  # never an upstream resolver in tests
        extra = [json.dumps(repair)] if repair is not None else []
        self.proc = ns.popen([sys.executable, str(HOLDER), name, str(state_dir), *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.first = self.call(json.dumps(cfg))
        self.state = self.first.get("state")

    def call(self, line: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = readline_within(self.proc, TIMEOUT)
        assert out, f"network holder exited ({self.proc.poll()}) on {line!r}"
        return json.loads(out)

    @property
    def bridge(self) -> str:
        return self.state["device"]

    def record(self) -> dict:
        return json.loads((self.state_dir / f"{self.name}.json").read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
            finally:
                self.proc.wait(timeout=TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def namespaces():
    """Makes extra namespaces on demand; deletes them all afterwards."""
    made: list[NetNs] = []

    def make(prefix: str = "vmre") -> NetNs:
        ns = NetNs(prefix)
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.close()


@pytest.fixture
def holders():
    made: list[Holder] = []

    def make(*args, **kw) -> Holder:
        h = Holder(*args, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        try:
            h.close()
        except Exception:
            h.kill()


def veth_endpoint(host: NetNs, ep: NetNs, bridge: str, mac: str, mtu: int = 1500) -> str:
    """Joins ``ep`` to ``bridge`` in ``host`` by a veth pair; ``eth0`` in ep."""
    host_side = "ve" + uuid.uuid4().hex[:10]
    host.run(["ip", "link", "add", host_side, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0", "netns", ep.name])
    host.run(["ip", "link", "set", host_side, "master", bridge, "up"])
    ep.run(["ip", "link", "set", "eth0", "address", mac, "mtu", str(mtu), "up"])
    return host_side


def dhcp(ep: NetNs, tmp_path: Path, hostname: str | None = None, tries: int = 20) -> str | None:
    """Runs busybox udhcpc on ep's eth0; returns the address it got (None if none)."""
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    extra = ["-x", f"hostname:{hostname}"] if hostname else []
    r = ep.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", str(tries), "-T", "2", "-s", str(script), *extra], check=False, timeout=TIMEOUT)
    if r.returncode != 0:
        return None
    addrs = json.loads(ep.run(["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout)
    return addrs[0]["addr_info"][0]["local"]


def dnsmasq_pids(ns: NetNs) -> list[int]:
    found = []
    for pid in ns.pids():
        try:
            if b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except FileNotFoundError:
            pass
    return found


def ping(ns: NetNs, addr: str, count: int = 2) -> bool:
    return ns.run(["busybox", "ping", "-c", str(count), "-W", "3", addr], check=False, timeout=TIMEOUT).returncode == 0


def outside_link(host: NetNs, outside: NetNs, host_addr: str, out_addr: str) -> None:
    """A /24 link between host and outside; outside routes everything to host."""
    name = "vo" + uuid.uuid4().hex[:10]
    host.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", outside.name])
    host.run(["ip", "addr", "add", f"{host_addr}/24", "dev", name])
    host.run(["ip", "link", "set", name, "up"])
    outside.run(["ip", "addr", "add", f"{out_addr}/24", "dev", "eth0"])
    outside.run(["ip", "link", "set", "eth0", "up"])
    outside.run(["ip", "route", "add", "default", "via", host_addr])


SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen(4)
    print("listening", flush=True)
    while True:
        c, peer = s.accept()
        c.sendall((sys.argv[2] + " " + peer[0] + "\\n").encode())
        c.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    print(c.makefile().readline().strip())
    """
)


def serve(ns: NetNs, port: int, tag: str) -> subprocess.Popen:
    p = ns.popen([sys.executable, "-c", SERVER, str(port), tag], stdout=subprocess.PIPE, text=True)
    assert readline_within(p, TIMEOUT).strip() == "listening"
    return p


def connect(ns: NetNs, addr: str, port: int) -> str | None:
    r = ns.run([sys.executable, "-c", CLIENT, addr, str(port)], check=False, timeout=TIMEOUT)
    return r.stdout.strip() if r.returncode == 0 else None


def assert_clean(ns: NetNs, state_dir: Path, bridge: str) -> None:
    links = ns.links()
    assert bridge not in links, links
    assert not [l for l in links if l.startswith(("vmr-", "vmt"))], links
    assert "vmnet_rs" not in ns.run(["nft", "list", "tables"]).stdout
    assert not dnsmasq_pids(ns)
    assert not list(state_dir.glob("*.json")), list(state_dir.iterdir())


@pytest.mark.slow
def test_shared_network_dhcp_ping_forward_nat(netns, namespaces, holders, tmp_path):
    state = tmp_path / "state"
    cfg = config(
        dhcpReservations=[{"mac": "52:54:00:91:00:50", "address": "10.91.0.50"}],
        portForwarding=[{"protocol": "tcp", "externalPort": 8080, "internalAddress": "10.91.0.50", "internalPort": 80, "addressFamily": "ipv4"}],
    )
    make = holders
    net = make(netns, "shared1", cfg, state)
    assert net.first["ok"], net.first
    assert net.state["subnet"] == "10.91.0.1/24"
    ep1, ep2, outside = namespaces(), namespaces(), namespaces()
    veth_endpoint(netns, ep1, net.bridge, "52:54:00:91:00:01")
    veth_endpoint(netns, ep2, net.bridge, "52:54:00:91:00:50")
    outside_link(netns, outside, "10.92.0.1", "10.92.0.2")

    a1, a2 = dhcp(ep1, tmp_path), dhcp(ep2, tmp_path)
    last = int(a1.split(".")[3])
    assert a1.startswith("10.91.0.") and 2 <= last <= 254 and a1 != "10.91.0.50", a1
    assert a2 == "10.91.0.50"
    leases = {l["mac"]: l["address"] for l in net.call("leases")["leases"]}
    assert leases == {"52:54:00:91:00:01": a1, "52:54:00:91:00:50": a2}
    # The CLI reads the same file from outside the owning process.
    r = subprocess.run([sys.executable, "-m", "vmnet_rs", "leases", "shared1", "--state-dir", str(state), "--json"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert {l["mac"]: l["address"] for l in json.loads(r.stdout)} == leases

    assert ping(ep1, a2) and ping(ep2, a1)
    assert ping(ep1, "10.91.0.1") and ping(ep2, "10.91.0.1")

    # The port forward: outside reaches ep2's listener through the host's address.
    server = serve(ep2, 80, "ep2")
    try:
        assert connect(outside, "10.92.0.1", 8080) == "ep2 10.92.0.2"
        # ... and so does the host itself, through one of its own addresses.
        assert connect(netns, "10.92.0.1", 8080) == "ep2 10.92.0.1"
    finally:
        server.kill()
    # NAT44: outside sees ep1's connection coming from the host.
    server = serve(outside, 9000, "outside")
    try:
        assert connect(ep1, "10.92.0.2", 9000) == "outside 10.92.0.1"
    finally:
        server.kill()

    net.close()
    assert_clean(netns, state, net.bridge)


@pytest.mark.slow
def test_host_mode_blocks_forwarding(netns, namespaces, holders, tmp_path):
    state = tmp_path / "state"
    make = holders
    # The control below removes the table, so it must not be put back.
    net = make(netns, "hostonly", config(mode="host", subnet="10.93.0.1/24"), state, repair=[])
    assert net.first["ok"], net.first
    ep, outside = namespaces(), namespaces()
    veth_endpoint(netns, ep, net.bridge, "52:54:00:93:00:01")
    outside_link(netns, outside, "10.94.0.1", "10.94.0.2")
    # The host forwards, so only the network's own rules can stop traffic.
    netns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    addr = dhcp(ep, tmp_path)
    assert addr.startswith("10.93.0.")
    # A host network hands out no default route; add one by hand to try.
    assert ep.run(["ip", "-j", "route", "show", "default"]).stdout.strip() in ("", "[]")
    ep.run(["ip", "route", "add", "default", "via", "10.93.0.1"])
    assert ping(ep, "10.93.0.1")
    assert not ping(ep, "10.94.0.2", count=2)
    assert not ping(outside, addr, count=2)
    # Control: without the network's table the same traffic flows.
    netns.run(["nft", "delete", "table", "inet", net.record()["table"]])
    assert ping(ep, "10.94.0.2")
    net.close()
    assert_clean(netns, state, net.bridge)


def test_external_interface_limits_where_traffic_leaves(netns, namespaces, holders, tmp_path):
    state = tmp_path / "state"
    ep, out1, out2 = namespaces(), namespaces(), namespaces()
    outside_link(netns, out1, "10.105.0.1", "10.105.0.2")
    outside_link(netns, out2, "10.106.0.1", "10.106.0.2")
    external = [l for l in netns.links() if l.startswith("vo")]
    via_out1 = json.loads(netns.run(["ip", "-j", "route", "get", "10.105.0.2"]).stdout)[0]["dev"]
    assert via_out1 in external
    net = holders(netns, "ext", config(subnet="10.107.0.1/24", externalInterface=via_out1), state)
    assert net.first["ok"], net.first
    veth_endpoint(netns, ep, net.bridge, "52:54:00:a7:00:01")
    assert dhcp(ep, tmp_path)
    assert ping(ep, "10.105.0.2")  # out through the external interface, NATed
    assert not ping(ep, "10.106.0.2", count=2)  # not through any other
    net.close()
    assert_clean(netns, state, net.bridge)


def test_missing_external_interface_is_refused(netns, holders, tmp_path):
    state = tmp_path / "state"
    before = netns.links()
    net = holders(netns, "noext", config(subnet="10.108.0.1/24", externalInterface="eth7"), state)
    assert not net.first["ok"] and net.first["type"] == "ConfigError", net.first
    assert "eth7" in net.first["error"]
    assert netns.links() == before


def arp_request(src_mac: bytes, src_ip: str, dst_ip: str) -> bytes:
    eth = b"\xff" * 6 + src_mac + b"\x08\x06"
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, socket.inet_aton(src_ip), b"\0" * 6, socket.inet_aton(dst_ip))
    return eth + arp


def read_frames(fd: int, seconds: float) -> list[bytes]:
    frames, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                frames.append(os.read(fd, 65536))
            except BlockingIOError:
                pass
    return frames


def is_arp_from(frame: bytes, ip: str) -> bool:
    return len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[28:32] == socket.inet_aton(ip)


TAP_PROBE = textwrap.dedent(
    """
    # Runs inside the namespace: opens two TAP ports, sends an ARP request for
    # the gateway from A, reports what A and B saw, and the ports' details.
    import json, os, select, socket, struct, subprocess, sys, time
    sys.path.insert(0, sys.argv[4])
    from test_network_linux import arp_request, read_frames, is_arp_from
    from vmnet_rs._native import Network
    net = Network(sys.argv[1], sys.argv[2], sys.argv[3])
    gw = net.state()["subnet"].split("/")[0]
    mac_a, mac_b = bytes.fromhex("525400950001"), bytes.fromhex("525400950002")
    fd_a, tap_a = net.start_tap(mac="52:54:00:95:00:01")
    fd_b, tap_b = net.start_tap(mac="52:54:00:95:00:02")
    import fcntl
    fd_v, tap_v = net.start_tap(vnet_hdr=True)
    hdr = struct.unpack("i", fcntl.ioctl(fd_v, 0x800454D7, b"\\0" * 4))[0]  # TUNGETVNETHDRSZ
    os.close(fd_v)
    details = {t: json.loads(subprocess.run(["ip", "-j", "-d", "link", "show", "dev", t], capture_output=True, text=True).stdout)[0] for t in (tap_a, tap_b)}
    read_frames(fd_a, 0.2); read_frames(fd_b, 0.2)  # drop IPv6 chatter so far
    client = gw.rsplit(".", 1)[0] + ".77"
    # Ask like an ARP client: again each second until the gateway answers;
    # B listens the whole time.
    seen_a, seen_b = [], []
    for _ in range(10):
        os.write(fd_a, arp_request(mac_a, client, gw))
        seen_a += read_frames(fd_a, 1)
        if any(is_arp_from(f, gw) and f[20:22] == b"\\x00\\x02" for f in seen_a):
            break
    seen_b = read_frames(fd_b, 1)
    os.close(fd_a); os.close(fd_b)
    # The kernel deletes a TAP with its last fd; poll (with a deadline) until both are gone.
    deadline = time.monotonic() + 10
    while True:
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if not any(f"{t}:" in links or f"{t}@" in links for t in (tap_a, tap_b)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    net.close()
    print(json.dumps({
        "gw_replied": any(is_arp_from(f, gw) and f[20:22] == b"\\x00\\x02" for f in seen_a),
        "b_saw_request": any(is_arp_from(f, client) for f in seen_b),
        "details": details, "taps": [tap_a, tap_b], "links_after_close": links, "vnet_hdr_bytes": hdr,
    }))
    """
)


def tap_probe(ns: NetNs, name: str, cfg: dict, state: Path) -> dict:
    r = ns.run([sys.executable, "-c", TAP_PROBE, name, json.dumps(cfg), str(state), str(Path(__file__).parent)], timeout=TIMEOUT * 2)
    return json.loads(r.stdout)


@pytest.mark.parametrize("isolation", [False, True])
def test_tap_ports_and_isolation(netns, tmp_path, isolation):
    state = tmp_path / "state"
    out = tap_probe(netns, "taps", config(subnet="10.95.0.1/24", mtu=1400, isolation=isolation), state)
    bridge = "vmr-taps"
    for tap in out["taps"]:
        d = out["details"][tap]
        assert d["mtu"] == 1400
        assert d["master"] == bridge
        assert d["linkinfo"]["info_slave_data"].get("isolated", False) is isolation
        assert tap not in out["links_after_close"], "TAP outlived its fd"
    # The gateway answers an isolated port; the other port hears the
    # broadcast only when ports are not isolated.
    assert out["gw_replied"]
    assert out["vnet_hdr_bytes"] == 12
    assert out["b_saw_request"] is (not isolation)
    assert_clean(netns, state, bridge)


def test_kill_then_cleanup_stale_and_recreate(netns, holders, tmp_path):
    state = tmp_path / "state"
    make = holders
    net = make(netns, "crashy", config(subnet="10.96.0.1/24"), state)
    assert net.first["ok"], net.first
    rec = net.record()
    assert rec["dnsmasq_pid"] and rec["bridge"] == net.bridge
    net.kill()  # SIGKILL: no teardown ran
    assert net.bridge in netns.links()
    assert rec["table"] in netns.run(["nft", "list", "tables"]).stdout
    # A new run creating the same network takes over what the dead one left.
    again = make(netns, "crashy", config(subnet="10.96.0.1/24"), state)
    assert again.first["ok"], again.first
    again.kill()
    r = netns.run([sys.executable, "-c", f"from vmnet_rs._native import cleanup_stale_networks as c; print('\\n'.join(c({str(state)!r})))"])
    lines = r.stdout
    assert f"deleted bridge {net.bridge}" in lines and f"table inet {rec['table']}" in lines and "removed record" in lines, lines
    assert_clean(netns, state, net.bridge)
    # Nothing left to do the second time.
    r = netns.run([sys.executable, "-c", f"from vmnet_rs._native import cleanup_stale_networks as c; print(len(c({str(state)!r})))"])
    assert r.stdout.strip() == "0"


def test_dhcp_leases_survive_teardown_crash_and_cleanup(netns, namespaces, holders, tmp_path):
    """The lease file outlives the network, so its next dnsmasq gives a guest its address back."""
    state, mac = tmp_path / "state", "52:54:00:97:00:01"
    cfg = config(subnet="10.97.0.1/24")
    net = holders(netns, "keep", cfg, state)
    ep = namespaces()
    host_side = veth_endpoint(netns, ep, net.bridge, mac)
    first = dhcp(ep, tmp_path)
    assert first and first.startswith("10.97.0."), first
    net.close()  # orderly teardown
    assert mac in (state / "keep.leases").read_text()
    again = holders(netns, "keep", cfg, state)
    assert {l["mac"]: l["address"] for l in again.call("leases")["leases"]} == {mac: first}  # dnsmasq took it over
    again.kill()  # crash, then the clean-up a restarted broker runs
    netns.run([sys.executable, "-c", f"from vmnet_rs._native import cleanup_stale_networks as c; c({str(state)!r})"])
    assert mac in (state / "keep.leases").read_text()
    third = holders(netns, "keep", cfg, state)
    netns.run(["ip", "link", "set", host_side, "master", third.bridge, "up"])
    ep.run(["ip", "addr", "flush", "dev", "eth0"])
    assert dhcp(ep, tmp_path) == first
    third.close()


def test_dnsmasq_is_restarted(netns, holders, tmp_path):
    state = tmp_path / "state"
    make = holders
    net = make(netns, "supervised", config(subnet="10.97.0.1/24"), state)
    assert net.first["ok"], net.first
    old = net.record()["dnsmasq_pid"]
    os.kill(old, signal.SIGKILL)
    def restarted():
        new = net.record().get("dnsmasq_pid")
        return new if new and new != old and Path(f"/proc/{new}").exists() else None

    new = wait_until("a new dnsmasq after SIGKILL", restarted, TIMEOUT, 0.2)
    assert b"dnsmasq" in Path(f"/proc/{new}/cmdline").read_bytes()
    # A bridge deleted under the network: it reports itself dead, refuses
    # new ports, and still tears down the rest.
    assert net.call("alive")["alive"] is True
    netns.run(["ip", "link", "del", net.bridge])
    assert net.call("alive")["alive"] is False
    refused = net.call("tap")
    assert not refused["ok"] and "no longer exists" in refused["error"], refused
    net.close()
    assert_clean(netns, state, net.bridge)


def test_overlapping_subnet_refused_before_any_link(netns, holders, tmp_path):
    state = tmp_path / "state"
    netns.run(["ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p"])
    netns.run(["ip", "addr", "add", "10.0.0.5/16", "dev", "eth9"])
    netns.run(["ip", "link", "set", "eth9", "up"])
    netns.run(["ip", "link", "set", "eth9p", "up"])
    before = netns.links()
    make = holders
    net = make(netns, "x", config(subnet="10.0.0.1/24"), state)
    assert not net.first["ok"]
    assert net.first["type"] == "ConfigError"
    assert 'subnet 10.0.0.1/24 of network "x" overlaps route 10.0.0.0/16 dev eth9' in net.first["error"]
    bad = make(netns, "y", config(dhcpReservations=[{"mac": "52:54:00:00:00:01", "address": "10.50.0.9"}]), state)
    assert not bad.first["ok"] and bad.first["type"] == "ConfigError", bad.first
    assert netns.links() == before
    assert_clean(netns, state, "vmr-x")


def test_subnet_chosen_when_not_given(netns, holders, tmp_path):
    state = tmp_path / "state"
    make = holders
    cfg = config()
    del cfg["subnet"]
    a = make(netns, "auto-a", cfg, state)
    b = make(netns, "auto-b", cfg, state)
    assert a.first["ok"] and b.first["ok"], (a.first, b.first)
    assert a.state["subnet"] == "192.168.64.1/24"
    assert b.state["subnet"] == "192.168.65.1/24"
    a.close()
    b.close()
    assert_clean(netns, state, a.bridge)


def global_v6(ns: NetNs, prefix: str) -> str | None:
    """ns's eth0 address in ``prefix`` once it is usable (not tentative)."""
    info = json.loads(ns.run(["ip", "-j", "-6", "addr", "show", "dev", "eth0"]).stdout)
    for a in info[0]["addr_info"] if info else []:
        if a["local"].startswith(prefix) and not a.get("tentative"):
            return a["local"]
    return None


@pytest.mark.slow
def test_ipv6_router_advertisement_nat66_and_dns(netns, namespaces, holders, tmp_path):
    state = tmp_path / "state"
    net = holders(netns, "six", config(subnet="10.98.0.1/24", ipv6Prefix="fd00:98::/64"), state)
    assert net.first["ok"], net.first
    assert net.state["ipv6_prefix"] == "fd00:98::/64"
    ep, outside = namespaces(), namespaces()
    veth_endpoint(netns, ep, net.bridge, "52:54:00:98:00:01")
    # IPv6 link to the outside; outside has no route back to fd00:98::/64,
    # so only NAT66 lets replies reach the endpoint.
    outside_link(netns, outside, "10.99.0.1", "10.99.0.2")
    host_side = [l for l in netns.links() if l.startswith("vo")][0]
    netns.run(["ip", "-6", "addr", "add", "fd00:99::1/64", "dev", host_side, "nodad"])
    outside.run(["ip", "-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"])

    addr4 = dhcp(ep, tmp_path, hostname="vm-six")
    assert addr4 and addr4.startswith("10.98.0.")
    addr6 = wait_until("a SLAAC address from the router advertisement", lambda: global_v6(ep, "fd00:98:"), TIMEOUT, 0.25)
    assert ep.run(["ip", "-6", "route", "show", "default"]).stdout.strip(), "RA gave no default route"
    assert ping(ep, "fd00:98::1")
    assert ping(ep, "fd00:99::2")  # NAT66 (outside has no route to the prefix)
    assert addr6

    # The DNS proxy knows the DHCP client's name (no upstream servers, so
    # the AAAA half of busybox's query is refused; the A answer is there).
    r = ep.run(["busybox", "nslookup", "vm-six", "10.98.0.1"], check=False)
    assert f"Address: {addr4}" in r.stdout, r.stdout + r.stderr
    net.close()
    assert_clean(netns, state, net.bridge)


def test_dhcp_and_dns_switches_are_honoured(netns, namespaces, holders, tmp_path):
    state = tmp_path / "state"

    def start(name: str, n: int, **settings):
        """Network ``name`` on 10.10n.0.1/24, and a client namespace on it."""
        net = holders(netns, name, config(subnet=f"10.10{n}.0.1/24", **settings), state)
        assert net.first["ok"], net.first
        ep = namespaces()
        veth_endpoint(netns, ep, net.bridge, f"52:54:00:a{n}:00:01")
        return net, ep

    # Nothing for dnsmasq to do: no dnsmasq at all.
    off, ep = start("off", 0, dhcp=False, dnsProxy=False)
    assert not dnsmasq_pids(netns)
    assert dhcp(ep, tmp_path, tries=2) is None
    off.close()
    # DNS without DHCP: a listener on the gateway's port 53, still no lease.
    dns, ep = start("dnsonly", 1, dhcp=False)
    assert dnsmasq_pids(netns)
    listeners = netns.run(["ss", "-Hlun"]).stdout
    assert "10.101.0.1:53" in listeners, listeners
    assert dhcp(ep, tmp_path, tries=2) is None
    # DHCP without DNS: a lease, and nothing on port 53.
    dns.close()
    dhcp_only, ep = start("dhcponly", 2, dnsProxy=False)
    assert ":53 " not in netns.run(["ss", "-Hlun"]).stdout
    assert (dhcp(ep, tmp_path) or "").startswith("10.102.0.")
    dhcp_only.close()
    assert_clean(netns, state, dhcp_only.bridge)


def test_failure_part_way_undoes_everything(netns, holders, tmp_path):
    state = tmp_path / "state"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dnsmasq").write_text("#!/bin/sh\necho 'dnsmasq: failed to create listening socket: fake failure' >&2\nexit 2\n")
    (fake / "dnsmasq").chmod(0o755)
    before = netns.links()
    net = holders(netns, "halfway", config(subnet="10.103.0.1/24"), state, fake)
    assert not net.first["ok"]
    assert net.first["type"] == "NetworkError"
    assert "fake failure" in net.first["error"], net.first
    # The bridge, addresses and table made before dnsmasq failed are gone.
    assert netns.links() == before
    assert_clean(netns, state, "vmr-halfway")
