"""``vmnet-rs doctor`` run for real in a namespace: every check passes against
a broker with the real Linux backend (frames relayed both ways through each
adaptor kind), and each precondition the test takes away gives its own clear
FAIL line and exit status 1."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import pytest

from brokerproc import BrokerProcess

NET = {"lab": {"mode": "host", "subnet": "10.233.0.1/24", "dhcp": False, "dnsProxy": False}}


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root"], "allowedGroups": []}, "vmnet": NET}))
    return cfg


def doctor(netns, tmp_path: Path, socket: Path, prefix: Sequence[str] = ()) -> tuple:
    argv = [*prefix, sys.executable, "-m", "vmnet_rs", "doctor", "--json", "--socket", str(socket), "--network", "lab", "--config", str(write_config(tmp_path))]
    proc = netns.run(argv, check=False)
    assert proc.stdout, proc.stderr
    doc = json.loads(proc.stdout)
    return proc.returncode, {c["name"]: c for c in doc["checks"]}, doc


def path_without(tmp_path: Path, missing: str) -> str:
    """A PATH directory holding ip, nft and dnsmasq except `missing`."""
    bin_dir = tmp_path / f"bin-without-{missing}"
    bin_dir.mkdir()
    for tool in ("ip", "nft", "dnsmasq"):
        if tool != missing:
            (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


@pytest.mark.root
def test_doctor_passes_against_a_broker_in_the_namespace(netns, tmp_path: Path) -> None:
    sock = tmp_path / "broker.sock"
    args = ["--config", str(write_config(tmp_path)), "--idle-timeout", "0", "--state-dir", str(tmp_path / "state"), "--no-endpoints"]
    with BrokerProcess(sock, args, prefix=netns.argv([])) as b:
        b.wait_ready()
        rc, checks, doc = doctor(netns, tmp_path, sock)
        assert rc == 0, json.dumps(doc, indent=1)
        for name in ("CAP_NET_ADMIN", "/dev/net/tun", "ip", "nft", "dnsmasq", "broker socket", "subnet lab", "broker answers"):
            assert checks[name]["verdict"] == "ok", checks[name]
        for kind in ("datagram", "datagram_next", "stream"):
            c = checks[f"relay {kind}"]
            assert c["verdict"] == "ok" and c["detail"].endswith("a frame arrived each way"), c
        assert doc["summary"]["failed"] == [] and doc["summary"]["counts"]["FAIL"] == 0
        # Every port the relay test opened was released.
        from vmnet_rs import Client

        with Client(str(sock), timeout=30) as c:
            st = c.status()
        assert st["leases"] == {} and st["counters"]["leases_granted"] == st["counters"]["leases_released"] == 6
        text = netns.run([sys.executable, "-m", "vmnet_rs", "doctor", "--socket", str(sock), "--network", "lab", "--config", str(write_config(tmp_path))]).stdout
        assert "ok    relay stream: two ports on lab" in text and "summary (paste into a bug report):" in text


@pytest.mark.root
@pytest.mark.parametrize("tool", ["nft", "dnsmasq", "ip"])
def test_a_missing_program_fails_its_line(netns, tmp_path: Path, tool: str) -> None:
    rc, checks, _ = doctor(netns, tmp_path, tmp_path / "none.sock", prefix=["env", f"PATH={path_without(tmp_path, tool)}"])
    assert rc == 1
    fixes = {"nft": "install nftables", "dnsmasq": "install dnsmasq", "ip": "install iproute2"}
    assert checks[tool]["verdict"] == "FAIL" and checks[tool]["detail"] == f"{tool} not found on PATH"
    assert checks[tool]["fix"].startswith(fixes[tool])
    others = {"ip", "nft", "dnsmasq"} - {tool}
    assert all(checks[o]["verdict"] == "ok" for o in others)


@pytest.mark.root
def test_without_cap_net_admin(netns, tmp_path: Path) -> None:
    rc, checks, _ = doctor(netns, tmp_path, tmp_path / "none.sock", prefix=["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"])
    assert rc == 1
    assert checks["CAP_NET_ADMIN"] == {
        "name": "CAP_NET_ADMIN",
        "verdict": "FAIL",
        "detail": "not held by this process",
        "fix": "run the broker as root: `sudo vmnet-rs install` registers it with systemd",
    }


@pytest.mark.root
def test_without_dev_net_tun(netns, tmp_path: Path) -> None:
    # A private mount namespace where /dev/net is an empty tmpfs: the host's stays.
    inner = f"mount -t tmpfs none /dev/net && exec \"$@\""
    rc, checks, _ = doctor(netns, tmp_path, tmp_path / "none.sock", prefix=["unshare", "--mount", "--propagation", "private", "sh", "-c", inner, "sh"])
    assert rc == 1
    assert checks["/dev/net/tun"]["verdict"] == "FAIL"
    assert checks["/dev/net/tun"]["detail"].startswith("cannot open /dev/net/tun: No such file or directory")
    assert "modprobe tun" in checks["/dev/net/tun"]["fix"]


@pytest.mark.root
def test_a_colliding_host_route_and_no_broker(netns, tmp_path: Path) -> None:
    netns.run(["ip", "link", "add", "d0", "type", "bridge"])
    netns.run(["ip", "addr", "add", "10.233.128.1/16", "dev", "d0"])
    netns.run(["ip", "link", "set", "d0", "up"])
    rc, checks, doc = doctor(netns, tmp_path, tmp_path / "none.sock")
    assert rc == 1
    assert checks["subnet lab"]["verdict"] == "FAIL"
    assert checks["subnet lab"]["detail"] == "10.233.0.1/24 overlaps host route 10.233.0.0/16 dev d0"
    assert checks["broker socket"]["verdict"] == "FAIL" and checks["broker socket"]["detail"] == f"nothing at {tmp_path / 'none.sock'}"
    assert checks["broker answers"]["verdict"] == "FAIL" and "no broker answers" in checks["broker answers"]["detail"]
    assert [checks[f"relay {k}"]["verdict"] for k in ("datagram", "datagram_next", "stream")] == ["skip"] * 3
    assert doc["summary"]["failed"] == ["broker socket", "subnet lab", "broker answers"]


def test_macos_release_reads_26_when_python_says_16() -> None:
    from vmnet_rs.doctor import macos_release

    # A Python built with an older SDK on macOS 26.2 (Darwin 25.2.0).
    assert macos_release("16.0", "25.2.0") == "26.2"
    assert macos_release("26.1", "25.1.0") == "26.1"
    assert macos_release("16.0", "") == "26.0"
    assert macos_release("15.4", "24.4.0") == "15.4"
    assert macos_release("", "") == ""


def test_macos_checks_name_each_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The macOS lines, with codesign, launchctl and the OS version faked (they exist only on a Mac)."""
    import subprocess

    from vmnet_rs import doctor, install

    exe = tmp_path / "vmnet-rs-broker"
    exe.write_bytes(b"binary")
    monkeypatch.setattr(install, "broker_executable", lambda: exe)
    monkeypatch.setattr(Path, "home", staticmethod(lambda: tmp_path))
    monkeypatch.setattr(doctor.platform, "mac_ver", lambda: ("26.1", ("", "", ""), "arm64"))
    answers = {
        ("codesign", "--verify"): (0, ""),
        ("codesign", "-d"): (0, "[Dict]\n\t[Key] com.apple.security.virtualization\n\t[Value] [Bool] true\n"),
        ("launchctl", "print"): (113, "Could not find service"),
    }

    def fake_run(argv):
        rc, out = next(v for k, v in answers.items() if tuple(argv[: len(k)]) == k)
        return subprocess.CompletedProcess(argv, rc, out, "")

    monkeypatch.setattr(doctor, "_run", fake_run)
    monkeypatch.setattr(doctor, "_live_checks", lambda connect, where, network, serialization=False: [doctor.Check("broker answers", doctor.OK, where)])
    checks = {c.name: c for c in doctor.macos_checks(None, "shared")}
    assert checks["macOS"].verdict == "ok" and checks["macOS"].detail.startswith("26.1")
    assert checks["signature"].verdict == "ok" and checks["entitlement"].verdict == "ok"
    assert checks["LaunchAgent"].verdict == "FAIL" and checks["LaunchAgent"].fix == "run `vmnet-rs install`"
    # No gui/<uid> domain (SSH without a login at the screen): the line says so.
    assert checks["launchd domain"].verdict == "FAIL" and "--domain user" in checks["launchd domain"].fix
    # An unsigned binary after an upgrade, on an older macOS.
    answers[("codesign", "--verify")] = (1, "")
    answers[("codesign", "-d")] = (0, "")
    monkeypatch.setattr(doctor.platform, "mac_ver", lambda: ("15.4", ("", "", ""), "arm64"))
    checks = {c.name: c for c in doctor.macos_checks(None, "shared")}
    assert checks["macOS"].verdict == "FAIL" and "needs macOS 26" in checks["macOS"].detail
    assert checks["signature"].verdict == "FAIL" and checks["entitlement"].verdict == "FAIL"
    assert "VMNET_MEM_FAILURE" in checks["entitlement"].detail
    # macOS 26 seen through an older SDK: "16.0", Darwin 25: not "needs macOS 26".
    monkeypatch.setattr(doctor.platform, "mac_ver", lambda: ("16.0", ("", "", ""), "arm64"))
    monkeypatch.setattr(doctor.platform, "release", lambda: "25.2.0")
    checks = {c.name: c for c in doctor.macos_checks(None, "shared")}
    assert checks["macOS"].verdict == "ok" and checks["macOS"].detail.startswith("26.2"), checks["macOS"].detail


def test_each_watched_piece_of_a_live_network_gets_its_line() -> None:
    """From a broker's status: FAIL names the network and the missing piece,
    warn a piece left alone, ok the rest (with its repairs)."""
    from vmnet_rs.doctor import FAIL, OK, WARN, network_piece_checks

    status = {"networks": {"nat": {"pieces": {
        "table": {"ok": False, "repairs": 5, "missing": "nftables table inet vmnet_rs_nat", "left_alone": "removed 6 times within 60s: another program manages it (firewalld, pid 7)"},
        "address": {"ok": True, "repairs": 1},
        "forwarding": {"ok": True, "repairs": 0, "left_alone": "repairs are off in the broker's repair setting; only reported"},
    }}, "hub": {}}}
    checks = {c.name: c for c in network_piece_checks(status)}
    assert sorted(checks) == ["network nat address", "network nat forwarding", "network nat table"]
    table = checks["network nat table"]
    assert table.verdict == FAIL
    assert table.detail.startswith("nftables table inet vmnet_rs_nat is missing from network nat; left alone: removed 6 times"), table.detail
    assert "firewalld, pid 7" in table.detail and "repaired 5 time(s)" in table.detail
    assert (checks["network nat address"].verdict, checks["network nat address"].detail) == (OK, "present, repaired 1 time(s)")
    assert checks["network nat forwarding"].verdict == WARN


def test_status_shows_repairs_and_pieces_that_need_attention() -> None:
    from vmnet_rs.status_cli import format_status

    net = {"subnet": "10.241.0.1/24", "device": "vmr-nat", "leases": 1, "repairs": 2, "pieces": {
        "table": {"ok": False, "repairs": 1, "missing": "nftables table inet vmnet_rs_nat", "left_alone": "another program manages it"},
        "address": {"ok": True, "repairs": 1},
    }}
    broker = {"pid": 1, "version": "x", "endpoint": "/s", "uptime_s": 3, "idle_timeout_s": 0, "networks": {"nat": net}, "leases": {}, "counters": {}}
    lines = format_status({"installed": {"installed": False, "platform": "linux"}, "broker": broker})
    assert "  network nat: 10.241.0.1/24 on vmr-nat, 1 lease(s), 2 repair(s)" in lines, lines
    assert "    table: MISSING nftables table inet vmnet_rs_nat; left alone: another program manages it" in lines, lines
    assert not any(line.startswith("    address") for line in lines), lines


def test_an_offload_datagram_endpoint_gets_a_doctor_line_on_macos(tmp_path: Path) -> None:
    """doctor warns, per offload network with a datagram endpoint, that
    only clients that raise their buffers carry 64 KiB frames (macOS)."""
    from vmnet_rs import config as cfgmod
    from vmnet_rs import doctor

    path = tmp_path / "c.yaml"
    path.write_text(
        "vmnet:\n"
        "  fast:\n    mode: shared\n    subnet: 10.9.0.0/24\n    offload: true\n"
        "  plain:\n    mode: shared\n    subnet: 10.8.0.0/24\n"
    )
    networks = cfgmod.load_config(str(path)).networks
    checks = doctor.datagram_size_checks(networks, "macos")
    assert [c.name for c in checks] == ["datagram endpoint fast"]
    assert checks[0].verdict == doctor.WARN and "vfkit" in checks[0].detail and "65550" in checks[0].detail
    assert "stream endpoint" in checks[0].line()
    assert doctor.datagram_size_checks(networks, "linux") == []
    assert doctor._datagram_size_checks(str(path), "macos")[0].name == "datagram endpoint fast"
    bad = tmp_path / "bad.yaml"
    bad.write_text("vmnet:\n  x:\n    mode: nope\n")
    assert doctor._datagram_size_checks(str(bad), "macos")[0].verdict == doctor.SKIP


def test_host_lookups_say_whether_the_host_finds_vm_names(monkeypatch):
    """doctor: `host.<domain>` through the host's own resolver gives the
    gateway (OK), or a warning naming `vmnet-rs install --resolver`."""
    import socket

    from vmnet_rs.doctor import OK, WARN, host_lookup_checks

    status = {"networks": {"lab": {"names": {"host": {"fqdn": "host.lab.vmnet.internal", "address": "10.61.0.1"}}}, "bare": {}}}
    answers = {"host.lab.vmnet.internal": "10.61.0.1"}

    def fake(host, *_a, **_k):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    [ok] = host_lookup_checks(status)
    assert (ok.name, ok.verdict, ok.detail) == ("network lab host lookups", OK, "host.lab.vmnet.internal -> 10.61.0.1")
    answers.clear()
    [warn] = host_lookup_checks(status)
    assert warn.verdict == WARN and "does not resolve on the host" in warn.detail and "install --resolver" in warn.fix


def test_each_datagram_endpoint_queue_gets_a_doctor_and_a_status_line() -> None:
    """From a broker's status: ok for a queue as deep as the broker wants,
    warn with the fix for a shallower one (docs/endpoints.md, "The receive
    queue"); status prints both under the network's endpoints."""
    from vmnet_rs.doctor import OK, WARN, datagram_queue_checks
    from vmnet_rs.status_cli import format_status

    deep = {"frames": 512, "recv_bytes": 4 << 20, "made": "private namespace", "wanted_frames": 512}
    shallow = {"frames": 10, "recv_bytes": 4 << 20, "made": "broker namespace (fallback)", "wanted_frames": 512,
               "note": "receive queue 10 datagrams, under 512: no private namespace for it (unshare a network namespace: EPERM); "
                       "datagram clients slow down under load. Fix: `sysctl -w net.unix.max_dgram_qlen=512` before the broker starts"}
    status = {"endpoints": {"a": {"datagram": "/e/a.dgram.sock", "datagram_queue": deep, "ports": {}},
                            "b": {"datagram": "/e/b.dgram.sock", "datagram_queue": shallow, "ports": {}},
                            "c": {"stream": "/e/c.stream.sock", "ports": {}}}}
    checks = {c.name: c for c in datagram_queue_checks(status)}
    assert sorted(checks) == ["datagram endpoint a queue", "datagram endpoint b queue"]
    a, b = checks["datagram endpoint a queue"], checks["datagram endpoint b queue"]
    assert (a.verdict, a.detail) == (OK, "receive queue 512 datagrams, receive buffer 4096 KiB (private namespace)")
    assert b.verdict == WARN and b.detail.startswith("receive queue 10 datagrams, under 512") and "EPERM" in b.detail
    assert b.fix == "`sysctl -w net.unix.max_dgram_qlen=512` before the broker starts", b.fix
    broker = {"pid": 1, "version": "x", "endpoint": "/s", "uptime_s": 3, "idle_timeout_s": 0, "networks": {}, "leases": {}, "counters": {}, **status}
    lines = format_status({"installed": {"installed": False, "platform": "linux"}, "broker": broker})
    assert "    datagram receive queue 512 datagrams, receive buffer 4096 KiB (private namespace)" in lines, lines
    [b_line] = [line for line in lines if line.startswith("    datagram receive queue 10 ")]
    assert "WARNING" in b_line and "sysctl -w net.unix.max_dgram_qlen=512" in b_line


def test_the_networks_table_notes_a_low_datagram_queue_limit_on_linux() -> None:
    from vmnet_rs.networks_cli import datagram_queue_note

    note = datagram_queue_note("linux", 10)
    assert note is not None and "is 10 here" in note and "512" in note and "sysctl -w net.unix.max_dgram_qlen=512" in note
    assert datagram_queue_note("linux", 512) is None
    assert datagram_queue_note("linux", 4096) is None
    assert datagram_queue_note("macos", 10) is None
