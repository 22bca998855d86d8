"""Names and addresses with the real Linux backend (docs/config.md, "Names
and addresses"): the broker in its own network namespace grants a name with
a TAP lease, dnsmasq answers it (forward, reverse, host.<domain>) as
`vmnet-rs resolve` does, a second VM is refused the name, and the name's
address survives the broker's SIGKILL and the loss of dnsmasq's lease file,
kept in the data directory apart from the state directory.
Needs root; never touches the host's network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, wait_until
from vmnet_rs import Client
from vmnet_rs.broker import NAME_TAKEN, RequestError

pytestmark = pytest.mark.root

GATEWAY = "10.233.0.1"
NET = {"vmnet": {"lab": {"mode": "host", "subnet": "10.233.0.0/24", "ipv6Prefix": "fd00:233::/64"}}}
DNSQUERY = str(Path(__file__).with_name("dnsquery.py"))


@pytest.fixture
def state(tmp_path: Path):
    """The broker's state directory (``tmp_path / "state"``, a link): one
    dnsmasq, running as nobody, can pass to re-read its fixed entries
    (pytest's own directories are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="vmnet-rs-names-"))
    d.chmod(0o711)
    (tmp_path / "state").symlink_to(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start(netns, tmp_path: Path, env: dict | None = None) -> BrokerProcess:
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, **NET}))
    args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.2", "--state-dir", str((tmp_path / "state").resolve()),
            "--data-dir", str(tmp_path / "data")]
    b = BrokerProcess(tmp_path / "broker.sock", args, prefix=netns.argv([]), env=env)
    b.wait_ready()
    return b


def ask(netns, name: str, qtype: str) -> dict:
    """A DNS question to the network's DNS server, asked inside the namespace."""
    out = netns.run([sys.executable, DNSQUERY, GATEWAY, name, qtype]).stdout
    return json.loads(out)


def resolve_cli(b: BrokerProcess, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmnet_rs", "resolve", "--json", "--socket", str(b.socket), name], capture_output=True, text=True, timeout=60)


def test_a_granted_name_is_served_refused_twice_and_keeps_its_address(netns, tmp_path: Path, state: Path) -> None:
    b = start(netns, tmp_path)
    try:
        with Client(str(b.socket), timeout=30) as c:
            alpha = c.open("lab", "tap", mac="52:54:00:33:00:01", name="alpha")
            x = alpha.extra
            assert (x["name"], x["fqdn"], x["name_kind"]) == ("alpha", "alpha.lab.vmnet.internal", "granted"), x
            addr = x["address"]
            assert addr.startswith("10.233.0.") and x["address6"] == "fd00:233::5054:ff:fe33:1", x
            # The network's DNS server and `vmnet-rs resolve` agree.
            got = wait_until("dnsmasq answers alpha", lambda: ask(netns, "alpha.lab.vmnet.internal", "A")["answers"] or None)
            assert got == [addr]
            assert ask(netns, "alpha.lab.vmnet.internal", "AAAA")["answers"] == [x["address6"]]
            assert ask(netns, addr, "PTR")["answers"] == ["alpha.lab.vmnet.internal"]
            assert ask(netns, "host.lab.vmnet.internal", "A")["answers"] == [GATEWAY]
            assert ask(netns, "nobody.lab.vmnet.internal", "A")["rcode"] == 3, "unknown names are NXDOMAIN, not forwarded"
            r = resolve_cli(b, "alpha")
            assert r.returncode == 0, r.stderr
            answers = json.loads(r.stdout)
            assert [(a["fqdn"], a["address"], a["kind"]) for a in answers] == [("alpha.lab.vmnet.internal", addr, "granted")]
            missing = resolve_cli(b, "gamma")
            assert missing.returncode == 1 and "no VM named 'gamma'" in missing.stderr.replace('"', "'"), missing.stderr
            # A second VM asking for alpha (here with alpha's own MAC, as `run --name alpha` derives it): refused.
            with pytest.raises(RequestError) as e:
                c.open("lab", "tap", mac="52:54:00:33:00:01", name="alpha")
            assert e.value.code == NAME_TAKEN and "alpha" in str(e.value)
            status = c.status()
            lease = status["leases"][str(alpha.lease)]
            assert (lease["name"], lease["fqdn"], lease["name_kind"], lease["address"]) == ("alpha", "alpha.lab.vmnet.internal", "granted", addr)
            assert status["networks"]["lab"]["names"]["host"]["address"] == GATEWAY
            c.release(lease=alpha.lease)
            os.close(alpha.fd)
            wait_until("alpha's name goes with its lease", lambda: ask(netns, "alpha.lab.vmnet.internal", "A")["rcode"] == 3)
            beta = c.open("lab", "tap", mac="52:54:00:33:00:02", name="beta")
            assert beta.extra["address"] != addr, "a stopped VM's address stays its own"
        # The broker dies without a word; dnsmasq's lease file is lost too.
        os.kill(b.pid, signal.SIGKILL)
        b.proc.wait(timeout=30)
        for f in (tmp_path / "state").glob("*.leases"):
            f.unlink()
        # The records are in the data directory (it outlasts a reboot), not the state directory.
        assert not (tmp_path / "state" / "names" / "lab.json").exists()
        records = json.loads((tmp_path / "data" / "names" / "lab.json").read_text())
        assert records["version"] == 1 and {e["name"]: e["ipv4"] for e in records["entries"]}["alpha"] == addr
    finally:
        b.stop()
    b = start(netns, tmp_path)
    try:
        with Client(str(b.socket), timeout=30) as c:
            again = c.open("lab", "tap", mac="52:54:00:33:00:01", name="alpha")
            assert again.extra["address"] == addr
            hosts = (tmp_path / "state" / "lab.dhcp-hosts").read_text()
            assert f"52:54:00:33:00:01,{addr},alpha" in hosts, hosts
            wait_until("dnsmasq answers alpha again", lambda: ask(netns, "alpha.lab.vmnet.internal", "A")["answers"] == [addr])
    finally:
        b.stop()


def test_a_subnet_colliding_with_a_host_route_is_refused_at_start(netns, tmp_path: Path) -> None:
    # The namespace's own "LAN": a link with a route over the subnet.
    netns.run(["ip", "link", "add", "lan0", "type", "bridge"])
    netns.run(["ip", "link", "set", "lan0", "up"])
    netns.run(["ip", "route", "add", "10.234.0.0/16", "dev", "lan0"])
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, "vmnet": {"lab": {"mode": "host", "subnet": "10.234.5.0/24"}}}))
    argv = [sys.executable, "-m", "vmnet_rs", "broker", "--socket", str(tmp_path / "b.sock"), "--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    r = netns.run(argv, check=False, timeout=120)
    assert r.returncode != 0
    assert "network lab: subnet 10.234.5.1/24 overlaps host route 10.234.0.0/16 dev lan0" in r.stderr, r.stderr
    assert f"choose another subnet for network lab in {cfg}" in r.stderr, r.stderr
    assert "vmr-lab" not in netns.links(), "nothing was made"


def test_a_claimed_name_stops_resolving_when_its_port_closes(netns, tmp_path: Path, state: Path) -> None:
    """A guest's DHCP host name (a claim) is served by dnsmasq from its
    lease; when the port of the VM with that MAC closes (its client goes
    away), the name stops resolving within seconds, not when the hour-long
    DHCP lease expires."""
    from netns import NetNs
    from test_network_linux import dhcp, veth_endpoint

    b = start(netns, tmp_path)
    ep = NetNs("vmrs")
    try:
        mac = "52:54:00:33:00:07"
        with Client(str(b.socket), timeout=30) as c:
            keep = c.open("lab", "datagram", mac="52:54:00:33:00:08")  # keeps the network up
            with Client(str(b.socket), timeout=30) as vm:
                port = vm.open("lab", "datagram", mac=mac)
                bridge = c.status()["networks"]["lab"]["device"]
                veth_endpoint(netns, ep, bridge, mac)
                address = dhcp(ep, tmp_path, hostname="gamma")
                assert address and address.startswith("10.233.0."), address
                got = wait_until("dnsmasq serves the claim", lambda: ask(netns, "gamma.lab.vmnet.internal", "A")["answers"] or None)
                assert got == [address]
                names = c.status()["networks"]["lab"]["names"]
                assert names["gamma"]["kind"] == "claimed", names
                port.close()
            # The VM's client is gone, and its port with it.
            wait_until("the claim to stop resolving", lambda: ask(netns, "gamma.lab.vmnet.internal", "A")["rcode"] == 3, timeout=10)
            assert "gamma" not in c.status()["networks"]["lab"]["names"]
            keep.close()
    finally:
        ep.close()
        b.stop()


def recording_resolvectl(tmp_path: Path) -> tuple[dict, Path]:
    """A resolvectl that only records its arguments (systemd-resolved is not
    confined to a network namespace: a real one would change the host's
    resolver), first on PATH in the returned environment."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "resolvectl.calls"
    (bindir / "resolvectl").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bindir / "resolvectl").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, calls


def recorded(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_a_registered_domain_is_registered_again_on_each_new_bridge(netns, tmp_path: Path, state: Path) -> None:
    """`vmnet-rs install --resolver` leaves a marker in the data directory;
    each time the broker makes the network's bridge (here: two broker runs,
    each tearing it down at the end) it runs resolvectl for it again. The
    resolvectl here only records its arguments: systemd-resolved is not
    confined to a network namespace, so a real one would change the host's
    resolver."""
    env, calls = recording_resolvectl(tmp_path)
    marker = tmp_path / "data" / "resolver" / "lab.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"network": "lab", "domain": "lab.vmnet.internal", "dns": GATEWAY}))
    want = ["dns vmr-lab 10.233.0.1", "domain vmr-lab ~lab.vmnet.internal"]
    for run in (1, 2):
        b = start(netns, tmp_path, env=env)
        try:
            with Client(str(b.socket), timeout=30) as c:
                port = c.open("lab", "datagram", mac="52:54:00:33:00:09")
                wait_until(f"resolvectl for bridge {run}", lambda: calls.exists() and calls.read_text().splitlines() == want * run)
                port.close()
        finally:
            b.stop()
        assert "vmr-lab" not in netns.links()


def test_a_bridge_put_back_is_registered_again(netns, tmp_path: Path, state: Path) -> None:
    """A bridge the broker puts back by itself (set up again, its gateway
    address added again) is registered with the host's resolver again, as a
    bridge it makes is."""
    env, calls = recording_resolvectl(tmp_path)
    marker = tmp_path / "data" / "resolver" / "lab.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"network": "lab", "domain": "lab.vmnet.internal", "dns": GATEWAY}))
    want = ["dns vmr-lab 10.233.0.1", "domain vmr-lab ~lab.vmnet.internal"]
    b = start(netns, tmp_path, env=env)
    try:
        with Client(str(b.socket), timeout=30) as c:
            port = c.open("lab", "datagram", mac="52:54:00:33:00:0b")
            wait_until("resolvectl for the new bridge", lambda: recorded(calls) == want)
            pieces = lambda: c.status()["networks"]["lab"]["pieces"]  # noqa: E731
            # (A link set down also loses its IPv6 address: that repair may come with the first.)
            for event, piece in ((["ip", "link", "set", "vmr-lab", "down"], "bridge"), (["ip", "addr", "del", f"{GATEWAY}/24", "dev", "vmr-lab"], "address")):
                repairs, made = pieces()[piece]["repairs"], len(recorded(calls))
                netns.run(event)
                wait_until(f"{piece} put back", lambda: pieces()[piece]["repairs"] > repairs and pieces()[piece]["ok"])
                wait_until(f"resolvectl after the {piece} repair", lambda: len(recorded(calls)) > made and recorded(calls)[-2:] == want)
                assert recorded(calls) == want * (len(recorded(calls)) // 2)
            port.close()
    finally:
        b.stop()


def test_uninstall_ends_a_registration_for_good(netns, tmp_path: Path, state: Path) -> None:
    """`vmnet-rs uninstall --resolver`, run while the bridge exists, reverts
    its per-link DNS and removes the marker: the next bridge the broker
    makes is not registered again."""
    env, calls = recording_resolvectl(tmp_path)
    marker = tmp_path / "data" / "resolver" / "lab.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"network": "lab", "domain": "lab.vmnet.internal", "dns": GATEWAY}))
    want = ["dns vmr-lab 10.233.0.1", "domain vmr-lab ~lab.vmnet.internal"]
    cli_env = {**os.environ, **env, "VMNET_RS_DATA_DIR": str(tmp_path / "data")}
    b = start(netns, tmp_path, env=env)
    try:
        with Client(str(b.socket), timeout=30) as c:
            port = c.open("lab", "datagram", mac="52:54:00:33:00:0c")
            wait_until("resolvectl for the new bridge", lambda: recorded(calls) == want)
            netns.run([sys.executable, "-m", "vmnet_rs", "uninstall", "--resolver", "--config", str(tmp_path / "networks.yaml")], env=cli_env, timeout=120)
            assert recorded(calls) == [*want, "revert vmr-lab"]
            assert not marker.exists()
            port.close()
    finally:
        b.stop()
    assert "vmr-lab" not in netns.links()
    b = start(netns, tmp_path, env=env)
    try:
        with Client(str(b.socket), timeout=30) as c:
            port = c.open("lab", "datagram", mac="52:54:00:33:00:0c")
            assert "vmr-lab" in netns.links()
            # The broker decides as it makes the bridge (a registration would
            # then run on a thread of its own): wait for that decision.
            wait_until("the broker's resolver decision for the new bridge",
                       lambda: "bridge vmr-lab is not registered with the host's resolver" in b.log_text())
            port.close()
    finally:
        b.stop()
    assert recorded(calls) == [*want, "revert vmr-lab"], "no registration after the uninstall"


def test_without_resolvectl_a_registered_domain_is_a_visible_skip_in_the_log(netns, tmp_path: Path, state: Path) -> None:
    """A marker but no resolvectl (no systemd-resolved): the broker makes the
    bridge and says in its log why the domain is not registered on it."""
    if shutil.which("resolvectl"):
        pytest.skip("resolvectl is installed here, and a real one would change the host's resolver (systemd-resolved is not confined to a namespace); the decision without it is unit-tested in broker/resolver.rs")
    marker = tmp_path / "data" / "resolver" / "lab.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"network": "lab", "domain": "lab.vmnet.internal", "dns": GATEWAY}))
    b = start(netns, tmp_path)
    try:
        with Client(str(b.socket), timeout=30) as c:
            port = c.open("lab", "datagram", mac="52:54:00:33:00:0a")
            wait_until("the broker's reason", lambda: "resolvectl is not on PATH (systemd-resolved): its bridge vmr-lab gets no per-link DNS" in b.log_text())
            port.close()
    finally:
        b.stop()

def test_a_test_broker_without_a_data_directory_keeps_its_records_in_the_tests(netns, tmp_path: Path, state: Path, data_dir: Path) -> None:
    """A broker a test starts without --data-dir writes its address records
    to the test's own data directory (conftest's ``data_dir``), never to the
    real default that conftest's session check guards with the same
    snapshot that sees this write."""
    from conftest import REAL_DATA_DIR, tree_snapshot

    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, **NET}))
    args = ["--config", str(cfg), "--idle-timeout", "0", "--state-dir", str(state)]
    before, real = tree_snapshot(data_dir), tree_snapshot(REAL_DATA_DIR)
    with BrokerProcess(tmp_path / "broker.sock", args, prefix=netns.argv([])) as b:
        b.wait_ready()
        with Client(str(b.socket), timeout=30) as c:
            port = c.open("lab", "datagram", mac="52:54:00:33:00:0d", name="delta")
            record = data_dir / "names" / "lab.json"
            wait_until("the name's record", record.exists)
            assert {e["name"] for e in json.loads(record.read_text())["entries"]} == {"delta"}
            port.close()
    assert tree_snapshot(data_dir) != before and tree_snapshot(REAL_DATA_DIR) == real
    assert not (state / "names").exists()

