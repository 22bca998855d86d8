"""Who may use the broker and a network on the paths a deployment uses
(docs/security.md, docs/endpoints.md), with the real Linux backend in a
network namespace: membership in ``allowedGroups`` through a supplementary
group (the documented ``usermod -aG vmnet-rs`` route), endpoint sockets with
mode 0660 and that group or 0666, and a network's own lists failing closed
on the broker socket and on both endpoints.

The group exists only for the broker: it runs in the mount namespace
``ip netns exec`` gives it, with a copy of the group database that adds the
test group bind-mounted over ``/etc/group`` there. The host's files are not
touched. The caller is uid 65534 (nobody) holding that group as a
supplementary group (tests/as_user.py). Needs root."""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, wait_until
from test_endpoints import ports
from test_policy_netns import NOBODY, NOT_ALLOWED, AsUser, refusal
from vmnet_rs import Client

pytestmark = pytest.mark.root

GROUP, GID = "vmnetrstest", 47321
OTHER = 47322  # a uid in no list and no group
NETWORKS = {
    # Names neither list: the broker's (allowedGroups: [GROUP]).
    "lab": {"mode": "host", "subnet": "10.235.0.1/24", "dhcp": False, "dnsProxy": False},
    # Names only allowedUsers: its allowedGroups is empty, not the broker's.
    "daemons": {"mode": "host", "subnet": "10.236.0.1/24", "dhcp": False, "dnsProxy": False, "allowedUsers": ["daemon"]},
    "host": {"mode": "host", "endpoints": []},
    "shared": {"endpoints": []},
}


@pytest.fixture
def deployed(netns, tmp_path: Path):
    """Starts the broker with the given broker settings in ``netns``, with
    GROUP (gid GID, member nobody) in its group database; yields a function
    returning the broker, its endpoint directory and a client dir nobody
    may write in."""
    if any(g.gr_gid == GID or g.gr_name == GROUP for g in grp.getgrall()):
        pytest.fail(f"the host already has group {GROUP} or gid {GID}; pick others")
    started = []

    def start(**settings) -> tuple:
        base = Path(tempfile.mkdtemp(prefix="vmnet-rs-access-"))
        base.chmod(0o755)
        groups = base / "group"
        groups.write_text(Path("/etc/group").read_text() + f"{GROUP}:x:{GID}:nobody\n")
        cfg = base / "networks.yaml"
        ep = base / "ep"
        cfg.write_text(json.dumps({"broker": {"endpointDir": str(ep), **settings}, "vmnet": NETWORKS}))
        mine = base / "client"
        mine.mkdir()
        os.chown(mine, NOBODY, NOBODY)
        args = ["--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.1", "--state-dir", str(tmp_path / "state")]
        prefix = netns.argv(["sh", "-c", 'mount --bind "$0" /etc/group && exec "$@"', str(groups)])
        b = BrokerProcess(base / "broker.sock", args, prefix=prefix, log=tmp_path / "broker.log")
        started.append((b, base))
        b.wait_ready()
        b.netns = netns
        return b, ep, mine

    yield start
    for b, base in started:
        b.stop()
        shutil.rmtree(base)


def endpoint_refusal(b: BrokerProcess, path: Path, uid: int, why: str) -> None:
    """Waits for the broker's log line refusing uid on endpoint ``path``."""
    # Stream: "endpoint P: pid N uid U refused: ..."; datagram:
    # "endpoint P: client A (pid N uid U) refused: ...".
    wait_until(f"the refusal of uid {uid} on {path}", lambda: any(
        f"endpoint {path}: " in line and (f" uid {uid} refused: " in line or f" uid {uid}) refused: " in line) and why in line
        for line in b.log_text().splitlines()), timeout=20)


def test_a_supplementary_group_member_uses_the_broker_and_0660_endpoints_but_not_a_users_only_network(deployed) -> None:
    b, ep, mine = deployed(allowedUsers=["root"], allowedGroups=[GROUP])
    for kind in ("stream", "dgram"):
        st = (ep / f"lab.{kind}.sock").stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GID, (kind, oct(st.st_mode), st.st_gid)
    member = AsUser(NOBODY, b.socket, groups=[GID])
    try:
        # The broker socket: the group lets nobody in, onto a network naming neither list...
        reply = member.request(1, command="open", network="lab", fd_type="tap")
        assert reply.get("fd") is True and reply["subnet"] == "10.235.0.1/24", reply
        # ...and not onto one naming only allowedUsers.
        for conn, request in ((2, {"command": "open", "network": "daemons", "fd_type": "tap"}), (3, {"Network": "daemons"})):
            reply = member.request(conn, **request)
            assert refusal(reply).startswith(f"user nobody (uid {NOBODY}) may not use network daemons: it allows users [daemon], groups []"), reply
            if "error" in reply:
                assert reply["error"] == NOT_ALLOWED
        # Both endpoints of lab take the member (the 0660 file, through the group).
        member.connect_endpoint(4, ep / "lab.stream.sock")
        member.connect_dgram(5, ep / "lab.dgram.sock", mine / "lab.sock")
        wait_until("the member's stream and datagram ports", lambda: sorted(p["via"] for p in ports(b, "lab").values()) == ["datagram", "stream"])
        # Both endpoints of daemons refuse the member, by credentials.
        member.connect_endpoint(6, ep / "daemons.stream.sock")
        member.connect_dgram(7, ep / "daemons.dgram.sock", mine / "daemons.sock")
        why = f"user nobody (uid {NOBODY}) may not use network daemons: it allows users [daemon], groups []"
        for kind in ("stream", "dgram"):
            endpoint_refusal(b, ep / f"daemons.{kind}.sock", NOBODY, why)
        with Client(str(b.socket), timeout=10) as root:
            status = root.status()
            assert "daemons" not in status["networks"], "a refused caller made the network"
            assert not status["endpoints"].get("daemons", {}).get("ports"), status["endpoints"]
            assert status["known"]["daemons"]["allowed_users"] == "daemon" and status["known"]["daemons"]["allowed_groups"] == ""
            assert status["known"]["lab"]["allowed_groups"] == GROUP
    finally:
        member.stop()
    # A uid in no list and not in the group may not even talk to the broker.
    outsider = AsUser(OTHER, b.socket)
    try:
        reply = outsider.request(1, command="open", network="lab", fd_type="tap")
        assert "is not allowed to use the broker" in refusal(reply) and f"usermod -aG" in refusal(reply), reply
    finally:
        outsider.stop()


def test_0666_endpoints_when_allowed_users_name_others(deployed) -> None:
    """allowedUsers naming someone besides root: the files are 0666 and each
    peer is checked by its credentials alone."""
    b, ep, mine = deployed(allowedUsers=["root", str(NOBODY)], allowedGroups=[])
    for kind in ("stream", "dgram"):
        assert stat.S_IMODE((ep / f"lab.{kind}.sock").stat().st_mode) == 0o666, kind
    listed, other = AsUser(NOBODY, b.socket), AsUser(OTHER, b.socket)
    try:
        listed.connect_endpoint(1, ep / "lab.stream.sock")
        listed.connect_dgram(2, ep / "lab.dgram.sock", mine / "listed.sock")
        wait_until("the listed user's two ports", lambda: len(ports(b, "lab")) == 2)
        other.connect_endpoint(1, ep / "lab.stream.sock")
        endpoint_refusal(b, ep / "lab.stream.sock", OTHER, "is not allowed to use the broker")
        assert len(ports(b, "lab")) == 2
        # allowedUsers: [daemon] alone: the broker's user list does not reach it.
        listed.connect_endpoint(3, ep / "daemons.stream.sock")
        endpoint_refusal(b, ep / "daemons.stream.sock", NOBODY, "it allows users [daemon], groups []")
    finally:
        listed.stop()
        other.stop()
