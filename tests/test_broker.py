"""The broker over its Unix socket, with the in-process test hub backend
(no privileges, no host networking): protocol errors, leases, idle exit,
socket activation, the Python API. Real Linux networks: test_broker_netns.py."""

from __future__ import annotations

import inspect
import json
import os
import signal
import socket as pysocket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from brokerproc import BrokerProcess, allow_me, broker_config, config_file, kill_client_mid_request, readline_within, wait_until
from vmnet_rs import Broker, BrokerUnavailableError, Client, framing
from vmnet_rs import broker as broker_mod
from vmnet_rs.broker import RequestError
from vmnet_rs.errors import NotAuthorizedError


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "broker.sock"


@pytest.fixture
def hub(sock: Path):
    """A broker subprocess on the test hub backend that never idles out."""
    with BrokerProcess(sock, ["--backend", "hub", "--idle-timeout", "0", "--monitor-interval", "0.1"]) as b:
        b.wait_ready()
        yield b


def settled_fds(b: BrokerProcess) -> list:
    """The broker's fds once two readings agree (connections closing settle)."""
    last = None
    for _ in range(100):
        now = b.fds()
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def assert_no_new_fds(b: BrokerProcess, baseline: list) -> None:
    """Every fd the broker has now was open at the baseline (none leaked)."""
    from collections import Counter

    def extra():
        return Counter(b.fds()) - Counter(baseline)

    try:
        wait_until("the broker's fds to return to the baseline", lambda: not extra(), timeout=20)
    except AssertionError:
        raise AssertionError(f"leaked fds: {dict(extra())}") from None


class FdRef(int):
    """An fd value in :func:`encode`: its index in the record's SCM_RIGHTS array."""


def encode(d: dict) -> bytes:
    """The wire encoding (docs/protocol.md), written independently of the Rust codec."""

    def dict_bytes(x: dict) -> bytes:
        out = struct.pack(">H", len(x))
        for k in sorted(x, key=lambda s: s.encode()):
            v = x[k]
            kb = k.encode()
            out += struct.pack(">B", len(kb)) + kb
            if isinstance(v, FdRef):
                out += b"\x06" + struct.pack(">B", int(v))
            elif isinstance(v, bool):
                out += b"\x03" + (b"\x01" if v else b"\x00")
            elif isinstance(v, int):
                out += b"\x02" + struct.pack(">q", v)
            elif isinstance(v, str):
                out += b"\x01" + struct.pack(">I", len(v.encode())) + v.encode()
            elif isinstance(v, bytes):
                out += b"\x04" + struct.pack(">I", len(v)) + v
            elif isinstance(v, dict):
                out += b"\x05" + dict_bytes(v)
        return out

    return b"VMRS" + struct.pack(">HH", 1, 0) + dict_bytes(d)


def test_ping_version_and_raw_encoding_agree(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        assert c.ping()
        v = c.version()
        assert v["protocol"] == 1 and v["platform"] == "linux"
        # A message encoded by hand per docs/protocol.md is understood.
        reply = c._conn.request_raw(encode({"command": "ping"}))
        assert reply["pong"] is True


def test_documented_errors_and_the_broker_keeps_serving(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        cases = [
            ({"command": "acquire", "network_name": "nope"}, broker_mod.NOT_FOUND, 'unknown network "nope"'),
            ({"command": "open", "network": "shared", "fd_type": "pigeon"}, broker_mod.INVALID_REQUEST, 'unknown fd_type "pigeon"'),
            ({"command": "acquire", "network_name": 7}, broker_mod.INVALID_REQUEST, 'key "network_name" must be a string, got int64'),
            ({"command": "open", "network": "shared", "fd_type": "stream", "mac": "01:00:5e:00:00:01"}, broker_mod.INVALID_REQUEST, "multicast"),
            ({"command": "open", "network": "shared", "fd_type": "stream", "vnet_hdr": True}, broker_mod.INVALID_REQUEST, "vnet_hdr"),
            ({"command": "explode"}, broker_mod.INVALID_REQUEST, 'unknown command "explode"'),
            ({"command": "acquire", "network_name": "../etc"}, broker_mod.INVALID_REQUEST, "network name"),
            ({"command": "acquire", "network_name": "new", "config": b"{not json"}, broker_mod.INVALID_REQUEST, "JSON"),
        ]
        for msg, code, text in cases:
            reply = c.request(msg)
            assert reply.get("error") == code, (msg, reply)
            assert text in reply["message"], (msg, reply)
            assert c.ping()
        # Lima-style requests get Lima's shape: Error alone.
        reply = c.request({"Network": "nope"})
        assert list(reply) == ["Error"] and "unknown network" in reply["Error"]
        reply = c.request({"Network": "shared", "FdType": "carrier"})
        assert 'unknown FdType "carrier"' in reply["Error"]
        reply = c.request({"Network": 3})
        assert 'key "Network" must be a string' in reply["Error"]
        # Malformed and oversized records: both error styles, connection survives.
        for raw, text in [
            (b"hello", "magic"),
            (b"VMRS\x00\x01\x00\x00\x00\x01\x01k\x09", "tag"),
            (encode({"command": "ping"}) + b"\x00", "trailing"),
            (b"VMRS" + b"\x00" * 70_000, "too large"),
        ]:
            reply = c._conn.request_raw(raw)
            assert reply["error"] == broker_mod.INVALID_REQUEST and text in reply["message"], (raw[:16], reply)
            assert text in reply["Error"]
            assert c.ping()
        counters = c.status()["counters"]
        assert counters["malformed"] == 4
        assert counters["errors"] >= 15


def test_python_client_raises_typed_errors(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        with pytest.raises(RequestError) as e:
            c.acquire("nope")
        assert e.value.code == broker_mod.NOT_FOUND
        assert str(e.value).startswith("acquire network nope: unknown network")
        with pytest.raises(RequestError, match="unknown fd_type"):
            c.open("shared", "carrier")


def test_config_mismatch_names_both_sides(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as a, Client(str(hub.socket), timeout=20) as b:
        a.acquire("shared")
        with pytest.raises(RequestError) as e:
            b.acquire("shared", config={"mode": "shared", "mtu": 9000})
        assert e.value.code == broker_mod.CONFIG_MISMATCH
        assert "live != requested" in str(e.value) and "mtu: 1500 != 9000" in str(e.value)
        # accept_existing takes the live network as it is.
        assert b.acquire("shared", config={"mode": "shared", "mtu": 9000}, accept_existing=True)["backend"] == "hub"
        # Lima keeps its behaviour: the creator's configuration wins, the difference is reported.
        reply = b.request({"Network": "shared", "Configuration": json.dumps({"mtu": 9000}).encode()})
        assert "mtu: 1500 != 9000" in reply["ConfigurationDifference"]
        assert json.loads(reply["Configuration"])["mtu"] == 1500
        # A network only a client describes is created from its configuration.
        net = b.acquire("lab", config={"mode": "host", "subnet": "10.66.0.0/24"})
        assert net["subnet"] == "10.66.0.1/24"


def test_acquire_is_the_network_of_acquire_named_with_its_parameters(hub: BrokerProcess) -> None:
    """``acquire`` takes ``acquire_named``'s parameters (one signature,
    shown by ``help()``) and passes them on, positional or by keyword;
    it returns the ``network`` of the whole reply."""
    assert inspect.signature(Client.acquire) == inspect.signature(Client.acquire_named)
    assert "vm_name" in inspect.signature(Client(str(hub.socket), timeout=20).acquire).parameters
    mac = "52:54:00:12:34:56"
    with Client(str(hub.socket), timeout=20) as c:
        whole = c.acquire_named("shared", None, False, "web1", "alpha", mac)
        assert (whole["name"], whole["fqdn"], whole["mac"]) == ("alpha", "alpha.shared.vmnet.internal", mac), whole
        assert whole["lease"] > 0 and whole["network"]["backend"] == "hub"
        # The VM back after a release, by keyword: its name again, the same network.
        assert c.release("shared") == 1
        assert c.acquire("shared", vm_name="web1", name="alpha", mac=mac) == whole["network"]
        assert [lease.get("vm_name") for lease in c.status()["leases"].values()] == ["web1"]
        assert c.status()["networks"]["shared"]["names"]["alpha"]["mac"] == mac
        with Client(str(hub.socket), timeout=20) as other:
            with pytest.raises(RequestError) as e:
                other.acquire("shared", None, False, None, "alpha", "52:54:00:12:34:57")
            assert e.value.code == broker_mod.NAME_TAKEN


def test_leases_follow_the_connection(hub: BrokerProcess) -> None:
    c = Client(str(hub.socket), timeout=20)
    c.acquire("shared")
    c.acquire("host")
    with Client(str(hub.socket), timeout=20) as watcher:
        leases = watcher.status()["leases"]
        assert sorted(lease["network"] for lease in leases.values()) == ["host", "shared"]
        assert c.release("host") == 1
        with pytest.raises(RequestError):
            c.release("host")
        c.close()
        wait_until("the closed client's leases to go", lambda: not watcher.status()["leases"])
        nets = watcher.networks()
        assert {n["name"] for n in nets} >= {"shared", "host"}


def test_client_killed_mid_request_leaks_nothing(hub: BrokerProcess, tmp_path: Path) -> None:
    with Client(str(hub.socket), timeout=20) as watcher:
        watcher.acquire("shared")  # keeps the network (and its fds) in place
        baseline = settled_fds(hub)
        script = tmp_path / "victim.py"
        script.write_text(
            "import sys\n"
            "from vmnet_rs import Client\n"
            "c = Client(sys.argv[1], timeout=20)\n"
            "for _ in range(5):\n"
            "    c.acquire('shared')\n"
            "print('ready', flush=True)\n"
            "while True:\n"
            "    c.request({'command': 'status'})\n"
        )
        for _ in range(3):
            victim = subprocess.Popen([sys.executable, str(script), str(hub.socket)], stdout=subprocess.PIPE, text=True)
            assert readline_within(victim, 60).strip() == "ready"
            wait_until("the victim's leases", lambda: len(watcher.status()["leases"]) == 6)
            victim.kill()  # somewhere inside a status request
            victim.wait(timeout=30)
            victim.stdout.close()
            wait_until("the victim's leases to go", lambda: len(watcher.status()["leases"]) == 1)
        assert_no_new_fds(hub, baseline)


def test_refused_user_gets_not_allowed_and_the_broker_keeps_serving(sock: Path, tmp_path: Path) -> None:
    cfg = config_file(tmp_path / "broker.yaml", {"allowedUsers": ["4242424"], "allowedGroups": []})
    assert str(os.getuid()) != "4242424"
    with BrokerProcess(sock, ["--backend", "hub", "--config", str(cfg)]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c:
            with pytest.raises(NotAuthorizedError) as e:
                c.acquire("shared")
            assert "is not allowed to use the broker" in str(e.value)
            assert e.value.code == broker_mod.NOT_ALLOWED
            reply = c.request({"Network": "shared"})
            assert "not allowed" in reply["Error"]
            assert c.ping()


def as_nobody(action) -> str:
    """Runs `action()` in a forked child dropped to uid/gid 65534 (nobody) and
    returns what it returned. The child uses the already-loaded module, so it
    needs no access to this checkout."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                msg = str(action())
            except Exception as e:  # reported to the parent
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.root
def test_refused_uid_of_another_user(tmp_path: Path) -> None:
    """A real second user (nobody): refused by a broker that allows only
    root; allowed by one that lists it, but still not allowed to stop it."""
    d = Path(tempfile.mkdtemp(prefix="vmnet-rs-auth-", dir="/tmp"))
    os.chmod(d, 0o755)
    sock = d / "broker.sock"
    try:
        root_only = config_file(tmp_path / "root.yaml", {"allowedUsers": ["root"], "allowedGroups": ["vmnet-rs"]})
        with BrokerProcess(sock, ["--backend", "hub", "--config", str(root_only)], log=tmp_path / "a.log") as b:
            b.wait_ready()
            out = as_nobody(lambda: Client(str(sock), timeout=20).acquire("shared"))
            assert out.startswith("RequestNotAuthorizedError") and "uid 65534" in out, out
            with Client(str(sock), timeout=20) as c:
                assert c.status()["counters"]["refused"] == 1
        listed = config_file(tmp_path / "listed.yaml", {"allowedUsers": ["root", "65534"], "allowedGroups": []})
        with BrokerProcess(sock, ["--backend", "hub", "--config", str(listed)], log=tmp_path / "b.log") as b:
            b.wait_ready()
            assert as_nobody(lambda: Client(str(sock), timeout=20).acquire("shared")["network"]) == "shared"
            out = as_nobody(lambda: Client(str(sock), timeout=20).shutdown())
            assert out.startswith("RequestNotAuthorizedError") and "may not stop the broker" in out, out
            assert b.proc.poll() is None
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def test_idle_exit(sock: Path) -> None:
    # Endpoint sockets the broker bound itself would keep it alive (docs/endpoints.md).
    with BrokerProcess(sock, ["--backend", "hub", "--no-endpoints", "--idle-timeout", "1", "--monitor-interval", "0.1"]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c:
            c.acquire("shared")
            # Past the idle timeout by the broker's own clock (not a fixed sleep):
            start = c.status()["uptime_s"]
            wait_until("the broker to run past its idle timeout", lambda: c.status()["uptime_s"] >= start + 2)
            # A leased network and an open connection keep it alive.
            assert b.proc.poll() is None
            assert c.status()["networks"]["shared"]["leases"] == 1
        rc = b.proc.wait(timeout=60)
        assert rc == 0
        assert "broker stopped: idle" in b.log_text()
        assert not sock.exists()
        with pytest.raises(BrokerUnavailableError):
            Client(str(sock), timeout=20)


def test_started_by_hand_keeps_running_and_says_so(sock: Path, tmp_path: Path) -> None:
    """No --idle-timeout, not started on demand: idle networks go after the
    config's idleTimeout, the broker stays; the start line says all that."""
    cfg = config_file(tmp_path / "broker.yaml", allow_me(idleTimeout=1))
    with BrokerProcess(sock, ["--backend", "hub", "--config", str(cfg), "--monitor-interval", "0.1"]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c:
            c.acquire("shared")
            assert c.status()["exits_when_idle"] is False
        with Client(str(sock), timeout=20) as c:
            wait_until("the idle network to be torn down", lambda: not c.status()["networks"])
            assert c.status()["counters"]["networks_released"] == 1
        # Several idle timeouts later it still serves.
        assert b.proc.poll() is None
        with Client(str(sock), timeout=20) as c:
            start = c.status()["uptime_s"]
        # Several idle timeouts later by the broker's own clock, each look a new connection.
        def uptime() -> int:
            with Client(str(sock), timeout=20) as c:
                return int(c.status()["uptime_s"])
        wait_until("two idle timeouts to pass", lambda: uptime() >= start + 2)
        with Client(str(sock), timeout=20) as c:
            assert c.ping()
        line = next(x for x in b.log_text().splitlines() if x.startswith("vmnet-rs: broker pid "))
        assert line == (
            f"vmnet-rs: broker pid {b.pid} listening on {sock}; networks: host (host, 192.168.108.1/24), "
            "shared (shared, 192.168.107.1/24), created on first use; idle networks are torn down after 1s; "
            "runs until stopped (Ctrl-C or SIGTERM)"
        )


@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 0, "terminated (SIGTERM)")])
def test_stopping_under_vms_names_them(sock: Path, sig: int, code: int, reason: str) -> None:
    """Ctrl-C or SIGTERM with leases held: the log names every VM that loses
    its network; Ctrl-C exits 130 (interrupted), SIGTERM (a service manager's stop) 0."""
    with BrokerProcess(sock, ["--backend", "hub", "--monitor-interval", "0.1"]) as b:
        b.wait_ready()
        c = Client(str(sock), timeout=20)
        c.acquire("shared", vm_name="web1")
        c.acquire("host")
        lease_ids = sorted(int(k) for k in c.status()["leases"])
        b.proc.send_signal(sig)
        assert b.proc.wait(timeout=60) == code
        c.close()
        log = b.log_text()
        me = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
        assert f"VM web1 (pid {os.getpid()} {me}) loses its network shared (lease {lease_ids[0]}): the broker is stopping: {reason}" in log, log
        assert f"pid {os.getpid()} {me} loses its network host (lease {lease_ids[1]}): the broker is stopping: {reason}" in log, log
        assert f"vmnet-rs: broker stopped: {reason}" in log


def test_shutdown_command(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        c.shutdown()
    assert hub.proc.wait(timeout=60) == 0
    assert "shutdown requested" in hub.log_text()


ACTIVATOR = r"""
import os, select, socket, subprocess, sys
path, pids = sys.argv[1], sys.argv[2]
cmd = sys.argv[3:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
s.listen(16)
os.set_inheritable(s.fileno(), True)
print("listening", flush=True)
while True:
    # Like systemd: start the service when a connection is waiting.
    select.select([s], [], [])
    def child_setup():
        os.dup2(s.fileno(), 3)
    env = dict(os.environ, LISTEN_FDS="1")
    p = subprocess.Popen(["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *cmd], pass_fds=[s.fileno()], preexec_fn=child_setup, env=env)
    with open(pids, "a") as f:
        f.write(f"{p.pid}\n")
    p.wait()
"""


def test_socket_activated_restart(sock: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = tmp_path / "activator.py"
    script.write_text(ACTIVATOR)
    log = open(tmp_path / "activator.log", "wb")
    # No --idle-timeout: started on demand, it exits after the config's idleTimeout.
    cfg = config_file(tmp_path / "broker.yaml", allow_me(idleTimeout=1))
    cmd = [sys.executable, "-m", "vmnet_rs", "-v", "broker", "--backend", "hub", "--no-endpoints", "--config", str(cfg), "--monitor-interval", "0.1"]
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "VMNET_RS_SOCKET")}
    act = subprocess.Popen([sys.executable, str(script), str(sock), str(pids), *cmd], stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        assert readline_within(act, 60).strip() == b"listening"
        seen = []
        for round_ in range(2):
            with Client(str(sock), timeout=60) as c:
                status = c.status()
                seen.append(status["pid"])
                assert status["endpoint"] == str(sock)
                c.acquire("shared")
            # Idle exit; the activator keeps the socket and starts a new broker on demand.
            wait_until(f"broker {round_} to exit idle", lambda: not os.path.exists(f"/proc/{seen[-1]}/status") or "zombie" in Path(f"/proc/{seen[-1]}/status").read_text(), timeout=60)
        assert seen[0] != seen[1], "the second connection should have started a new broker"
        assert len(pids.read_text().split()) == 2
        # The activated broker must not remove the socket systemd owns.
        assert sock.exists()
    finally:
        act.kill()
        act.wait(timeout=30)
        log.close()
        for pid in (pids.read_text().split() if pids.exists() else []):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_in_process_broker_and_context_managers(sock: Path, tmp_path: Path) -> None:
    b = Broker(broker_config(tmp_path / "b.yaml"), socket=str(sock), backend="hub", idle_timeout=0)
    with b:
        assert b.running
        with pytest.raises(Exception, match="already running"):
            b.start()
        with Client(str(sock), timeout=20) as c:
            assert c.acquire("host")["network"] == "host"
            assert c.status()["backend"] == "hub"
        assert b.wait(0.1) is None
    assert not b.running
    assert not sock.exists()
    # Started again after a stop.
    with b:
        with Client(str(sock), timeout=20) as c:
            assert c.ping()


def test_serve_forever_returns_on_shutdown(sock: Path, tmp_path: Path) -> None:
    import threading

    b = Broker(broker_config(tmp_path / "b.yaml"), socket=str(sock), backend="hub", idle_timeout=0)
    b.start()
    result = {}
    # A daemon thread, and the broker stopped whatever happens: a failure here
    # cannot leave serve_forever() running and hang the test run.
    t = threading.Thread(target=lambda: result.update(reason=b.serve_forever()), daemon=True)
    t.start()
    try:
        with Client(str(sock), timeout=30) as c:
            c.shutdown()
        t.join(timeout=60)
        assert not t.is_alive(), "serve_forever() did not return after shutdown"
    finally:
        b.stop()
    assert "shutdown requested" in result["reason"]
    assert not b.running


def test_client_without_broker_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrokerUnavailableError) as e:
        Client(str(tmp_path / "none.sock"), timeout=20)
    assert "no broker answers" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("VMNET_RS_SOCKET", str(tmp_path / "env.sock"))
    assert broker_mod.socket_path(None) == str(tmp_path / "env.sock")
    with pytest.raises(BrokerUnavailableError, match="env.sock"):
        Client()


def test_second_broker_on_a_live_socket_is_refused(hub: BrokerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vmnet_rs", "broker", "--backend", "hub", "--socket", str(hub.socket)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert "another broker already listens" in out.stderr
    with Client(str(hub.socket), timeout=20) as c:
        assert c.ping()


def test_cli_status_shows_the_broker(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        c.acquire("shared")
        out = subprocess.run(
            [sys.executable, "-m", "vmnet_rs", "status", "--socket", str(hub.socket)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "network shared: 192.168.107.1/24 on hub-shared, 1 lease(s)" in out.stdout
        js = subprocess.run(
            [sys.executable, "-m", "vmnet_rs", "status", "--json", "--socket", str(hub.socket)], capture_output=True, text=True, timeout=60
        )
        assert json.loads(js.stdout)["broker"]["networks"]["shared"]["leases"] == 1


# --- fds with relays (adaptors) on the test hub ---------------------------------------


def eth_frame(payload: bytes, src: bytes = b"\x52\x54\x00\x00\x00\x01") -> bytes:
    return b"\xff" * 6 + src + b"\x88\xb5" + payload.ljust(46, b"\0")


def send_frame(fd: int, fd_type: str, frame: bytes) -> None:
    s = pysocket.socket(fileno=os.dup(fd))
    try:
        if fd_type == "stream":
            s.sendall(framing.encode(frame))
        else:
            s.send(frame)
    finally:
        s.close()


def recv_frame(fd: int, fd_type: str, marker: bytes, timeout: float = 30.0) -> bytes:
    """Reads frames from a VM-side fd until one contains `marker`."""
    s = pysocket.socket(fileno=os.dup(fd))
    s.settimeout(timeout)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if fd_type == "stream":
                try:
                    frame = framing.read_frame(s)
                except EOFError:
                    raise AssertionError("the relay closed the stream") from None
            else:
                frame = s.recv(65536)
            if marker in frame:
                return frame
        raise AssertionError(f"no frame with {marker!r}")
    finally:
        s.close()


@pytest.mark.parametrize("fd_type", ["datagram", "datagram_next", "stream"])
def test_two_clients_frames_meet_through_relays(hub: BrokerProcess, fd_type: str) -> None:
    with Client(str(hub.socket), timeout=20) as a, Client(str(hub.socket), timeout=20) as b:
        with a.open("shared", fd_type, mac="52:54:00:00:00:0a") as na, b.open("shared", fd_type) as nb:
            assert na.fd_type == fd_type and na.mac == "52:54:00:00:00:0a" and na.network == "shared"
            assert na.subnet == "192.168.107.1/24" and na.config["mtu"] == 1500 and na.mtu == 1500
            send_frame(na.fd, fd_type, eth_frame(b"from-a"))
            recv_frame(nb.fd, fd_type, b"from-a")
            send_frame(nb.fd, fd_type, eth_frame(b"from-b"))
            recv_frame(na.fd, fd_type, b"from-b")
            adaptors = a.status()["adaptors"]
            assert len(adaptors) == 2
            assert sum(x["vm_to_host"]["packets"] for x in adaptors.values()) >= 2
            assert all(x["kind"] == fd_type and x["running"] for x in adaptors.values())


def test_closed_vm_socket_releases_the_lease(hub: BrokerProcess) -> None:
    with Client(str(hub.socket), timeout=20) as c:
        nic = c.open("shared", "stream")
        assert len(c.status()["leases"]) == 1
        nic.close()  # the VM's end goes: the relay ends, the lease with it
        wait_until("the relay's lease to go", lambda: not c.status()["leases"])


def test_lima_fd_outlives_the_session_until_the_vm_closes(hub: BrokerProcess) -> None:
    c = Client(str(hub.socket), timeout=20)
    # stream: a closed VM end is seen at once (a datagram peer's close shows
    # only when the relay next writes to it).
    reply = c.request({"Network": "shared", "FdType": "stream", "InterfaceDesc": {"vmnet_mac_address": "52:54:00:12:34:56"}})
    assert set(reply) >= {"Configuration", "Serialization", "FileDescriptor", "MACAddress"}, reply
    assert reply["MACAddress"] == "52:54:00:12:34:56"
    fd = reply["FileDescriptor"]
    c.close()  # Lima closes its session right after the reply
    with Client(str(hub.socket), timeout=20) as watcher:
        # Once the broker has seen the session close, the lease stays, bound to the VM's socket only.
        wait_until("the closed session to unbind the Lima lease",
                   lambda: [lease["bound_to_connection"] for lease in watcher.status()["leases"].values()] == [False])
        os.close(fd)
        wait_until("the Lima lease to end with the VM socket", lambda: not watcher.status()["leases"])


def test_killed_client_with_relays_leaks_nothing(hub: BrokerProcess, tmp_path: Path) -> None:
    with Client(str(hub.socket), timeout=20) as watcher:
        watcher.acquire("shared")
        baseline = settled_fds(hub)
        kill_client_mid_request(hub.socket, "shared", ("datagram", "datagram_next", "stream"), tmp_path / "vm.py")
        wait_until("the victim's leases to go", lambda: len(watcher.status()["leases"]) == 1)
        assert not watcher.status()["adaptors"]
        assert_no_new_fds(hub, baseline)


def test_fds_attached_to_bad_records_are_closed(hub: BrokerProcess) -> None:
    """Raw records with too many or unreferenced fds: answered, and the
    broker keeps none of the fds (checked through a pipe's write end)."""
    import array

    with Client(str(hub.socket), timeout=20) as watcher:
        baseline = settled_fds(hub)
        r, w = os.pipe()
        s = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_SEQPACKET)
        s.connect(str(hub.socket))
        s.settimeout(30)
        for count, text in [(12, b"more than 8 fds"), (2, b"not referenced"), (1, b"magic")]:
            fds = array.array("i", [w] * count)
            payload = encode({"command": "ping"}) if text != b"magic" else b"junk"
            s.sendmsg([payload], [(pysocket.SOL_SOCKET, pysocket.SCM_RIGHTS, fds)])
            reply = s.recv(65536)
            assert text in reply, reply
        # A valid request carrying an fd is answered and its fd dropped too.
        fds = array.array("i", [w])
        s.sendmsg([encode({"command": "ping", "x": FdRef(0)})], [(pysocket.SOL_SOCKET, pysocket.SCM_RIGHTS, fds)])
        assert b"pong" in s.recv(65536)
        s.close()
        os.close(w)
        os.set_blocking(r, False)
        wait_until("every copy of the pipe's write end to be closed", lambda: os.read(r, 1) == b"")
        os.close(r)
        assert watcher.ping()
        assert_no_new_fds(hub, baseline)


def test_broker_command_defaults_dns_upstream_to_host_resolvers(monkeypatch):
    # The launch both broker commands share decides it (broker::launch).
    if not sys.platform.startswith("linux") or not os.path.exists("/etc/resolv.conf"):
        pytest.skip("the host DNS default applies on Linux hosts with /etc/resolv.conf")
    monkeypatch.delenv("VMNET_RS_DNS_RESOLV_FILE", raising=False)
    assert Broker(backend="hub", host_dns=True).dns_resolv_file == "/etc/resolv.conf"
    assert Broker(backend="hub").dns_resolv_file is None
    # An explicit choice, even "none" (empty), is kept.
    monkeypatch.setenv("VMNET_RS_DNS_RESOLV_FILE", "")
    assert Broker(backend="hub", host_dns=True).dns_resolv_file is None
