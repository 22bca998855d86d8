"""Who may use and define networks (docs/security.md), end to end: the real
broker runs as root inside its own network namespace and an allowed
non-root user (uid 65534, listed in allowedUsers) talks to it from a
subprocess (tests/as_user.py). Needs root; never touches the host's network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pytest

from brokerproc import BrokerProcess, readline_within, wait_until
from vmnet_rs import Client

pytestmark = pytest.mark.root

NOBODY = 65534
NOT_ALLOWED, NOT_FOUND, LIMIT = 3, 5, 9
NETWORKS = {
    "lab": {"mode": "host", "subnet": "10.231.0.1/24", "dhcp": False, "dnsProxy": False},
    "rootonly": {"mode": "host", "subnet": "10.233.0.1/24", "dhcp": False, "dnsProxy": False,
                 "allowedUsers": ["root"], "allowedGroups": []},
}
# A network of the caller's own: shared mode with DHCP (dnsmasq), NAT and a forward.
MINE = {"mode": "shared", "subnet": "10.232.0.1/24", "dnsProxy": False, "nat66": False, "routerAdvertisement": False,
        "portForwarding": [{"protocol": "tcp", "externalPort": 8080, "internalAddress": "10.232.0.10", "internalPort": 80}]}


class AsUser:
    """tests/as_user.py as uid ``uid``: requests on numbered connections."""

    def __init__(self, uid: int, socket: Path, groups: Sequence[int] = ()) -> None:
        script = Path(__file__).with_name("as_user.py")
        extra = [",".join(str(g) for g in groups)] if groups else []
        self.proc = subprocess.Popen([sys.executable, str(script), str(uid), str(socket), *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _send(self, cmd: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = readline_within(self.proc, 60)
        assert line, f"as_user.py exited {self.proc.wait(timeout=30)}"
        return json.loads(line)

    def request(self, conn: int, **request) -> dict:
        return self._send({"conn": conn, "request": request})

    def connect_endpoint(self, conn: int, path: Path) -> None:
        assert self._send({"conn": conn, "endpoint": str(path)}) == {"connected": conn}

    def connect_dgram(self, conn: int, path: Path, bind: Path) -> None:
        assert self._send({"conn": conn, "dgram": str(path), "bind": str(bind)}) == {"connected": conn}

    def close(self, conn: int) -> None:
        self._send({"conn": conn, "close": True})

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def make_broker(netns, tmp_path: Path):
    """Starts the broker with extra broker settings; yields (broker, config path, nobody)."""
    started = []

    def start(**broker_settings):
        # The socket's directory must be reachable by uid 65534 (tmp_path is not).
        sockdir = Path(tempfile.mkdtemp(prefix="vmnet-rs-policy-"))
        sockdir.chmod(0o755)
        cfg = tmp_path / "networks.yaml"
        settings = {"allowedUsers": ["root", NOBODY], "allowedGroups": [], **broker_settings}
        cfg.write_text(json.dumps({"broker": settings, "vmnet": NETWORKS}))
        args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.1", "--state-dir", str(tmp_path / "state")]
        b = BrokerProcess(sockdir / "broker.sock", args, prefix=netns.argv([]), log=tmp_path / "broker.log")
        started.append((b, sockdir))
        b.wait_ready()
        b.netns = netns
        b.user = AsUser(NOBODY, b.socket)
        return b, cfg, b.user

    yield start
    for b, sockdir in started:
        if hasattr(b, "user"):
            b.user.stop()
        b.stop()
        shutil.rmtree(sockdir)


def made(b: BrokerProcess) -> dict:
    """What networks leave behind in the namespace: links, nft tables, dnsmasq processes."""
    links = sorted(link for link in b.netns.links() if link != "lo")
    tables = [t for t in b.netns.run(["nft", "list", "tables"]).stdout.splitlines() if t.strip()]
    dnsmasq = []
    for pid in b.netns.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                dnsmasq.append(pid)
        except OSError:
            pass
    return {"links": links, "tables": tables, "dnsmasq": dnsmasq}


NOTHING = {"links": [], "tables": [], "dnsmasq": []}


def refusal(reply: dict) -> str:
    return reply.get("message") or reply.get("Error") or ""


def test_unknown_network_is_refused_in_every_dialect_and_creates_nothing(make_broker) -> None:
    b, cfg, nobody = make_broker()
    forward80 = dict(MINE, portForwarding=[{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.232.0.10", "internalPort": 80}])
    requests = [
        ({"command": "acquire", "network_name": "mine"}, NOT_FOUND),
        ({"command": "acquire", "network_name": "mine", "config": MINE}, NOT_ALLOWED),
        ({"command": "open", "network": "mine", "fd_type": "tap"}, NOT_FOUND),
        ({"command": "open", "network": "mine", "fd_type": "tap", "config": forward80}, NOT_ALLOWED),
        ({"Network": "mine"}, None),
        ({"Network": "mine", "Configuration": forward80}, None),
        ({"Network": "mine", "Configuration": MINE, "FdType": "datagram"}, None),
    ]
    want = f"network mine is not defined in {cfg}; an administrator can add it"
    for i, (request, code) in enumerate(requests):
        reply = nobody.request(i, **request)
        assert refusal(reply).startswith(want), (request, reply)
        if code is None:
            assert set(reply) == {"Error"}, reply  # Lima's reply shape
        else:
            assert reply["error"] == code, reply
    assert made(b) == NOTHING
    with Client(str(b.socket), timeout=20) as root:
        status = root.status()
        assert status["networks"] == {} and status["leases"] == {}
        assert status["counters"]["refused"] == 4, status["counters"]
    log = b.log_text()
    assert log.count(f"refused uid {NOBODY} pid ") >= len(requests), log
    assert f"network mine: not configured" in log, log


def test_configured_network_opens_and_a_network_acl_narrows_the_brokers(make_broker) -> None:
    b, cfg, nobody = make_broker()
    reply = nobody.request(1, command="open", network="lab", fd_type="tap")
    assert reply.get("fd") is True and reply["subnet"] == "10.231.0.1/24", reply
    # A configuration sent for a configured network is compared, never used.
    reply = nobody.request(2, command="acquire", network_name="lab", config=dict(NETWORKS["lab"], mtu=9000))
    assert reply["error"] == 8 and "mtu: 1500 != 9000" in reply["message"], reply
    reply = nobody.request(3, Network="lab", Configuration=dict(MINE, subnet="10.231.0.1/24", portForwarding=[]))
    assert "Serialization" in reply and "mode: \"host\" != \"shared\"" in reply["ConfigurationDifference"], reply
    with Client(str(b.socket), timeout=20) as root:
        assert root.status()["networks"]["lab"]["config"]["mode"] == "host"
        for request in ({"command": "acquire", "network_name": "rootonly"}, {"Network": "rootonly"}):
            reply = nobody.request(4, **request)
            assert refusal(reply).startswith(f"user nobody (uid {NOBODY}) may not use network rootonly: it allows users [root], groups []"), reply
        assert "rootonly" not in root.status()["networks"]
        # Root may.
        root.acquire("rootonly")
        known = root.status()["known"]
        assert known["rootonly"]["allowed_users"] == "root" and known["rootonly"]["allowed_groups"] == ""
        assert known["lab"]["allowed_users"] == f"root,{NOBODY}"
        # Even live, the network's list holds.
        reply = nobody.request(5, command="open", network="rootonly", fd_type="tap")
        assert reply["error"] == NOT_ALLOWED, reply


def test_restricted_refuses_host_ports_external_interface_and_collisions(make_broker) -> None:
    b, cfg, nobody = make_broker(clientNetworks="restricted")
    bad = {
        "host port 80 tcp/ipv4, below 1024": dict(MINE, portForwarding=[{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.232.0.10", "internalPort": 80}]),
        "host port 53 udp/ipv4, below 1024": dict(MINE, portForwarding=[{"protocol": "udp", "externalPort": 53, "internalAddress": "10.232.0.10", "internalPort": 53}]),
        'externalInterface "lo" is not allowed': dict(MINE, externalInterface="lo"),
        "overlaps 10.231.0.1/24 of configured network lab": dict(MINE, subnet="10.231.0.0/16", portForwarding=[]),
    }
    for i, (why, config) in enumerate(bad.items()):
        for request in ({"command": "acquire", "network_name": "mine", "config": config}, {"Network": "mine", "Configuration": config}):
            reply = nobody.request(i, **request)
            assert why in refusal(reply) and "(clientNetworks: restricted)" in refusal(reply), (why, reply)
    assert made(b) == NOTHING
    # A network that takes nothing from the host is made.
    reply = nobody.request(10, command="open", network="mine", fd_type="tap", config=MINE)
    assert reply.get("fd") is True and reply["subnet"] == "10.232.0.1/24", reply
    now = made(b)
    assert len(now["dnsmasq"]) == 1 and any("vmnet_rs" in t for t in now["tables"]), now
    # Another caller's network over it collides with a live one.
    reply = nobody.request(11, command="acquire", network_name="other", config=dict(MINE, subnet="10.232.0.129/25", portForwarding=[]))
    assert "overlaps 10.232.0.1/24 of live network mine" in refusal(reply), reply
    # Root is not restricted: a privileged forward goes through, as before.
    with Client(str(b.socket), timeout=20) as root:
        root.acquire("rootnet", config=dict(MINE, subnet="10.234.0.1/24", portForwarding=[{"protocol": "tcp", "externalPort": 80, "internalAddress": "10.234.0.10", "internalPort": 80}]))
        assert "dport 80" in b.netns.run(["nft", "list", "ruleset"]).stdout


def test_port_quota_counts_across_connections_and_frees_on_release(make_broker) -> None:
    b, cfg, nobody = make_broker(maxPortsPerUser=2)
    first = nobody.request(1, command="open", network="lab", fd_type="tap")
    second = nobody.request(2, Network="lab", FdType="tap")
    assert first.get("fd") is True and second.get("FileDescriptor") is True, (first, second)
    links = made(b)["links"]
    for conn, request in ((3, {"command": "open", "network": "lab", "fd_type": "tap"}), (4, {"Network": "lab", "FdType": "tap"})):
        reply = nobody.request(conn, **request)
        assert refusal(reply).startswith(f"user nobody (uid {NOBODY}) already holds 2 ports, the most one user may (maxPortsPerUser: 2)"), reply
        if "error" in reply:
            assert reply["error"] == LIMIT
    assert made(b)["links"] == links, "a refused port made a TAP"
    with Client(str(b.socket), timeout=20) as root:
        users = root.status()["users"]
        assert users[str(NOBODY)] == {"ports": 2, "leases": 2, "max_ports": 2}, users
        shown = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--socket", str(b.socket)],
                               capture_output=True, text=True, timeout=60)
        assert f"uid {NOBODY}: 2 port(s) of 2, 2 lease(s)" in shown.stdout, shown
        assert "clientNetworks none, maxPortsPerUser 2" in shown.stdout, shown
        # Root is not counted against anyone, nor limited.
        for _ in range(3):
            root.open("lab", "tap").close()
        # Releasing one port (the command) frees a place.
        assert nobody.request(1, command="release", lease=first["lease"])["released"] == 1
        wait_until("the released port to leave the count", lambda: root.status()["users"][str(NOBODY)]["ports"] == 1)
        assert nobody.request(3, command="open", network="lab", fd_type="tap").get("fd") is True
        # So does closing a connection.
        nobody.close(3)
        wait_until("the closed connection's port to go", lambda: root.status()["users"][str(NOBODY)]["ports"] == 1)
        assert nobody.request(5, command="open", network="lab", fd_type="tap").get("fd") is True
        # A VM on the network's endpoint counts too: past the quota it is refused...
        endpoint = b.socket.parent / "lab.stream.sock"
        nobody.connect_endpoint(6, endpoint)
        quota = "already holds 2 ports, the most one user may (maxPortsPerUser: 2)"
        wait_until("the endpoint's refusal in the log", lambda: any(
            f"endpoint {endpoint}: pid " in line and f"uid {NOBODY} refused: user nobody (uid {NOBODY}) {quota}" in line
            for line in b.log_text().splitlines()))
        assert root.status()["users"][str(NOBODY)]["ports"] == 2
        # ...and within it holds a port like any other.
        nobody.close(5)
        wait_until("the closed connection's port to go", lambda: root.status()["users"][str(NOBODY)]["ports"] == 1)
        nobody.connect_endpoint(7, endpoint)
        wait_until("the endpoint port to count", lambda: root.status()["users"][str(NOBODY)]["ports"] == 2)


def test_root_defines_networks_as_before(make_broker) -> None:
    b, cfg, nobody = make_broker()
    with Client(str(b.socket), timeout=20) as root:
        reply = root.acquire("mine", config=MINE)
        assert reply["subnet"] == "10.232.0.1/24"
        now = made(b)
        assert len(now["dnsmasq"]) == 1 and now["links"], now
        # The owner's live network is still not the caller's under clientNetworks: none.
        reply = nobody.request(1, command="acquire", network_name="mine")
        assert reply["error"] == NOT_ALLOWED and "defined at run time" in reply["message"], reply


def test_native_broker_names_its_config_file_and_applies_the_same_policy(netns, tmp_path: Path) -> None:
    from test_broker_native import EXE, NativeBroker

    if not EXE.is_file():
        pytest.skip(f"{EXE} is not built: `pip install -e .` builds it")
    sockdir = Path(tempfile.mkdtemp(prefix="vmnet-rs-policy-"))
    sockdir.chmod(0o755)
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root", NOBODY], "allowedGroups": []}, "vmnet": NETWORKS}))
    b = NativeBroker(sockdir / "broker.sock", ["--config", str(cfg), "--state-dir", str(tmp_path / "state"), "--no-endpoints"],
                     prefix=netns.argv([]))
    nobody = None
    try:
        b.wait_ready()
        nobody = AsUser(NOBODY, b.socket)
        reply = nobody.request(1, Network="mine", Configuration=MINE)
        assert reply == {"Error": f"network mine is not defined in {cfg}; an administrator can add it (callers may not define networks: clientNetworks is none)"}, reply
        reply = nobody.request(2, command="open", network="rootonly", fd_type="tap")
        assert reply["error"] == NOT_ALLOWED and "may not use network rootonly" in reply["message"], reply
        assert nobody.request(3, command="open", network="lab", fd_type="tap").get("fd") is True
        assert [link for link in netns.links() if link != "lo"], "lab was not made"
    finally:
        if nobody is not None:
            nobody.stop()
        b.stop()
        shutil.rmtree(sockdir)  # the socket and the broker's log


def test_restricted_refuses_an_ipv6_prefix_colliding_with_a_live_network(make_broker) -> None:
    b, cfg, nobody = make_broker(clientNetworks="restricted")
    six = dict(MINE, subnet="10.239.0.1/24", ipv6Prefix="fd00:77::/64", portForwarding=[])
    reply = nobody.request(1, command="open", network="six", fd_type="tap", config=six)
    assert reply.get("fd") is True, reply
    assert "fd00:77::1/64" in b.netns.run(["ip", "-6", "addr"]).stdout, "the network has its IPv6 prefix"
    links = made(b)["links"]
    clash = dict(six, subnet="10.240.0.1/24", ipv6Prefix="fd00:77:0:0::/64")
    for i, request in enumerate(({"command": "acquire", "network_name": "other", "config": clash},
                                 {"Network": "other", "Configuration": clash})):
        reply = nobody.request(2 + i, **request)
        assert "ipv6Prefix fd00:77::/64 overlaps fd00:77::/64 of live network six; choose another prefix" in refusal(reply), reply
        assert "(clientNetworks: restricted)" in refusal(reply), reply
    assert made(b)["links"] == links, "a refused network made nothing"
    # Another prefix is fine.
    reply = nobody.request(4, command="acquire", network_name="other", config=dict(clash, ipv6Prefix="fd00:78::/64"))
    assert reply.get("subnet") == "10.240.0.1/24", reply
