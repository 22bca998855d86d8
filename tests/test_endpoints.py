"""Per-network endpoint sockets (docs/endpoints.md) with raw clients, against
a broker subprocess on the test hub backend: framing, VFKT, bad frames,
status fields, 32 clients at once and 256 datagram clients leaking nothing, file-mode refusal, and
sockets handed over by name (LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID).
The real Linux backend: test_endpoints_netns.py."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest

from brokerproc import BrokerProcess, config_file, wait_until
from test_broker import assert_no_new_fds, settled_fds
from vmnet_rs import Client, framing

MAC_A = bytes.fromhex("525400aa0001")
MAC_B = bytes.fromhex("525400bb0002")


def frame(src: bytes, payload: bytes, size: int = 60) -> bytes:
    """A broadcast frame with an experimental ethertype, padded to size."""
    return (b"\xff" * 6 + src + struct.pack(">H", 0x88B5) + payload).ljust(size, b"\0")


def send_stream(s: socket.socket, f: bytes) -> None:
    s.sendall(framing.encode(f))


def recv_stream(s: socket.socket) -> bytes:
    return framing.read_frame(s)


def recv_stream_with(s: socket.socket, marker: bytes) -> bytes:
    while True:
        f = recv_stream(s)
        if marker in f:
            return f


def recv_dgram_with(s: socket.socket, marker: bytes) -> bytes:
    while True:
        f = s.recv(65536)
        if marker in f:
            return f


def dgram_client(tmp: Path, name: str, endpoint: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp / f"{name}.sock"))
    s.connect(endpoint)
    s.settimeout(20)
    return s


def status(b: BrokerProcess) -> dict:
    with Client(str(b.socket), timeout=10) as c:
        return c.status()


def ports(b: BrokerProcess, network: str = "shared") -> dict:
    return status(b)["endpoints"].get(network, {}).get("ports", {})


def threads(b: BrokerProcess) -> int:
    return len(os.listdir(f"/proc/{b.pid}/task"))


@pytest.fixture
def broker(tmp_path: Path):
    cfg = config_file(tmp_path / "networks.yaml", {"endpointDir": str(tmp_path / "ep"), "allowedUsers": [str(os.getuid())], "allowedGroups": []},
                      {"shared": {}, "host": {"mode": "host", "endpoints": []}})
    with BrokerProcess(tmp_path / "broker.sock", ["--backend", "hub", "--config", str(cfg), "--idle-timeout", "0", "--monitor-interval", "0.1"]) as b:
        b.wait_ready()
        b.ep = tmp_path / "ep"
        yield b


def test_stream_and_datagram_clients_are_separate_ports_in_status(broker: BrokerProcess, tmp_path: Path) -> None:
    st = status(broker)
    stream_path, dgram_path = str(broker.ep / "shared.stream.sock"), str(broker.ep / "shared.dgram.sock")
    assert st["endpoints"]["shared"]["stream"] == stream_path
    assert st["endpoints"]["shared"]["datagram"] == dgram_path
    assert "host" not in st["endpoints"], "endpoints: [] turns them off"
    assert st["known"]["shared"]["endpoints"] == {"stream": stream_path, "datagram": dgram_path}
    assert "shared" not in st["networks"], "the network is created on the first connection"

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(stream_path)
    s.settimeout(20)
    d = dgram_client(tmp_path, "vfkit", dgram_path)
    d.send(b"VFKT")
    wait_until("two ports", lambda: len(ports(broker)) == 2)
    # Stream lengths: the smallest frame, usual ones, the largest at MTU 1500.
    for i, size in enumerate([14, 60, 1000, 1514]):
        marker = b"s%d" % i
        f = frame(MAC_A, marker, size)[:size] if size > 16 else frame(MAC_A, b"")[:14]
        send_stream(s, f)
        assert recv_dgram_with(d, f[12:]) == f if size > 16 else d.recv(65536) == f
        g = frame(MAC_B, b"d%d" % i, size) if size > 16 else frame(MAC_B, b"")[:14]
        d.send(g)
        assert recv_stream(s) == g
    st = status(broker)
    assert "shared" in st["networks"]
    by_via = {p["via"]: p for p in st["endpoints"]["shared"]["ports"].values()}
    assert set(by_via) == {"stream", "datagram"}
    assert by_via["stream"]["mac"] == "52:54:00:aa:00:01"
    assert by_via["datagram"]["mac"] == "52:54:00:bb:00:02"
    assert by_via["stream"]["pid"] == os.getpid() and by_via["stream"]["uid"] == os.getuid()
    assert by_via["datagram"]["pid"] == os.getpid()
    assert by_via["stream"]["vm_to_host"]["packets"] == 4
    assert by_via["datagram"]["vm_to_host"]["packets"] == 4, "VFKT is swallowed, not passed on"
    assert by_via["datagram"]["vm_to_host"]["errors"] == 0
    assert {lease["via"] for lease in st["leases"].values()} == {"stream", "datagram"}
    # The CLI shows the same.
    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--json", "--socket", str(broker.socket)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["broker"]["endpoints"]["shared"]["stream"] == stream_path
    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--socket", str(broker.socket)], capture_output=True, text=True, check=True)
    assert f"endpoints shared: stream {stream_path}, datagram {dgram_path}, 2 port(s)" in out.stdout
    s.close()
    d.close()
    os.unlink(tmp_path / "vfkit.sock")
    wait_until("both ports to be released", lambda: not ports(broker), timeout=20)


def test_bad_frames_close_only_their_client(broker: BrokerProcess) -> None:
    path = str(broker.ep / "shared.stream.sock")
    good = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    for g in good:
        g.connect(path)
        g.settimeout(20)
    wait_until("two ports", lambda: len(ports(broker)) == 2)
    for header in (struct.pack(">I", 0), struct.pack(">I", 1515), struct.pack(">I", 1 << 31)):
        bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bad.connect(path)
        bad.settimeout(20)
        wait_until("the bad client's port", lambda: len(ports(broker)) == 3)
        bad.sendall(header)
        with pytest.raises((EOFError, ConnectionResetError)):
            while True:
                recv_stream(bad)
        wait_until("only the bad client's port to go", lambda: len(ports(broker)) == 2)
        bad.close()
    f = frame(MAC_A, b"still-here")
    send_stream(good[0], f)
    assert recv_stream_with(good[1], b"still-here") == f
    for g in good:
        g.close()


def test_a_burst_past_a_datagram_clients_queue_is_delivered_or_counted_in_status(broker: BrokerProcess, tmp_path: Path) -> None:
    """A datagram client's queue holds net.unix.max_dgram_qlen frames (10 by
    default); a burst of 100 to a client that reads nothing is kept within
    the retry budget, and what still does not fit is counted as that port's
    host->vm drops, in status --json and in the human status line."""
    dgram_path = str(broker.ep / "shared.dgram.sock")
    slow = dgram_client(tmp_path, "slow", dgram_path)
    slow.send(b"VFKT")
    (lease,) = wait_until("the slow client's port", lambda: list(ports(broker)))
    fast = dgram_client(tmp_path, "fast", dgram_path)
    fast.send(b"VFKT")
    wait_until("the second port", lambda: len(ports(broker)) == 2)
    burst = 100
    for k in range(burst):
        fast.send(frame(MAC_A, b"burst" + struct.pack(">H", k)))

    def to_vm(counter: str) -> int:
        return ports(broker)[lease]["host_to_vm"][counter]

    wait_until("the burst relayed", lambda: to_vm("packets") == burst)
    slow.settimeout(0.2)
    got: List[int] = []

    def settled() -> bool:
        try:
            f = slow.recv(65536)
            got.append(struct.unpack(">H", f[19:21])[0])
        except socket.timeout:
            pass
        return len(got) + to_vm("drops") == burst

    wait_until("every frame delivered or counted", settled)
    drops = to_vm("drops")
    # The client's queue alone holds max_dgram_qlen frames: at least that many arrive.
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    assert len(got) >= min(burst, qlen), f"only {len(got)} of {burst} delivered ({drops} counted dropped)"
    assert got == sorted(set(got)), "in order, none twice"
    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "status", "--socket", str(broker.socket)], capture_output=True, text=True, check=True)
    assert f"lease {lease}: shared" in out.stdout
    line = next(x for x in out.stdout.splitlines() if f"lease {lease}: shared" in x)
    assert f"host->vm {burst} pkts/{drops} drops" in line, line
    for s in (slow, fast):
        s.close()


def test_32_clients_connecting_and_leaving_at_once_leak_no_fd_thread_or_port(broker: BrokerProcess, tmp_path: Path) -> None:
    stream_path, dgram_path = str(broker.ep / "shared.stream.sock"), str(broker.ep / "shared.dgram.sock")
    # The network exists first, so its own fds and threads are in the baseline.
    warm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    warm.connect(stream_path)
    wait_until("the network", lambda: len(ports(broker)) == 1)
    base_fds = settled_fds(broker)
    base_threads = wait_until("the thread count to settle", lambda: (lambda a, b: a if a == b else 0)(threads(broker), threads(broker)))
    clients: List[socket.socket] = []
    lock = threading.Lock()

    def join(i: int) -> None:
        if i % 2 == 0:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(stream_path)
            send_stream(c, frame(bytes([0x52, 0x54, 0, 0, 1, i]), b"hello"))
        else:
            c = dgram_client(tmp_path, f"c{i}", dgram_path)
            c.send(b"VFKT")
            c.send(frame(bytes([0x52, 0x54, 0, 0, 2, i]), b"hello"))
        with lock:
            clients.append(c)

    ts = [threading.Thread(target=join, args=(i,)) for i in range(32)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wait_until("33 ports", lambda: len(ports(broker)) == 33, timeout=60)
    # One relay thread per port (a status connection's thread may still be ending).
    wait_until("one relay thread per port", lambda: threads(broker) == base_threads + 32, timeout=20)
    for c in clients:
        c.close()
    for i in range(1, 32, 2):
        os.unlink(tmp_path / f"c{i}.sock")
    wait_until("the 32 ports to be released", lambda: len(ports(broker)) == 1, timeout=30)
    assert_no_new_fds(broker, base_fds)
    wait_until("the relay threads to end", lambda: threads(broker) == base_threads, timeout=20)
    warm.close()


def test_256_datagram_clients_join_and_leave_with_no_fd_thread_or_port_left(broker: BrokerProcess, tmp_path: Path) -> None:
    """The endpoint's limit of datagram clients at once, half of them
    connected to the endpoint (vfkit) and half not (QEMU `-netdev dgram`):
    each is one port with one relay thread and no other, and once they are
    gone every fd, thread and port they had is gone too."""
    dgram_path = str(broker.ep / "shared.dgram.sock")
    warm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    warm.connect(str(broker.ep / "shared.stream.sock"))
    wait_until("the network", lambda: len(ports(broker)) == 1)
    base_fds = settled_fds(broker)
    base_threads = wait_until("the thread count to settle", lambda: (lambda a, b: a if a == b else 0)(threads(broker), threads(broker)))
    clients: List[socket.socket] = []
    for i in range(256):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        c.bind(str(tmp_path / f"d{i}.sock"))
        if i % 2:
            c.connect(dgram_path)
            c.send(frame(bytes([0x52, 0x54, 0, 3, i >> 8, i & 0xFF]), b"hello"))
        else:
            c.sendto(frame(bytes([0x52, 0x54, 0, 3, i >> 8, i & 0xFF]), b"hello"), dgram_path)
        clients.append(c)
    wait_until("257 ports", lambda: len(ports(broker)) == 257, timeout=120)
    wait_until("one relay thread per port", lambda: threads(broker) == base_threads + 256, timeout=30)
    # Each hears the others through the network (the hub floods broadcasts).
    clients[0].settimeout(20)
    assert clients[0].recv(65536)[6:12] != bytes([0x52, 0x54, 0, 3, 0, 0])
    for i, c in enumerate(clients):
        c.close()
        os.unlink(tmp_path / f"d{i}.sock")
    wait_until("the relay threads to end", lambda: threads(broker) == base_threads, timeout=60)
    wait_until("the 256 ports to be released", lambda: len(ports(broker)) == 1, timeout=60)
    assert_no_new_fds(broker, base_fds)
    wait_until("the relay threads to end", lambda: threads(broker) == base_threads, timeout=30)
    warm.close()


def test_endpoint_files_refuse_other_users_by_mode(broker: BrokerProcess) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    path = broker.ep / "shared.stream.sock"
    # Only root is allowed and no group: the sockets are 0600.
    assert path.stat().st_mode & 0o777 == 0o600
    code = ("import os, socket; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            f"try:\n  s.connect({str(path)!r}); print('connected')\nexcept PermissionError:\n  print('refused')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"
    assert not ports(broker)


ACTIVATE = r"""
import os, sys
# Like systemd: the passed sockets at 3, 4, 5 and their names.
fds = [int(x) for x in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2], LISTEN_PID=str(os.getpid()))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def test_sockets_passed_by_name_are_used_and_the_broker_still_exits_idle(tmp_path: Path) -> None:
    sock = tmp_path / "broker.sock"
    ep = tmp_path / "held"
    ep.mkdir()
    broker_s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    broker_s.bind(str(sock))
    broker_s.listen(16)
    stream_s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream_s.bind(str(ep / "shared.stream.sock"))
    stream_s.listen(16)
    dgram_s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram_s.bind(str(ep / "shared.dgram.sock"))
    held = [dgram_s, broker_s, stream_s]  # deliberately not in name order
    names = "shared.dgram:broker:shared.stream"
    cfg = config_file(tmp_path / "networks.yaml", {"allowedUsers": [str(os.getuid())], "allowedGroups": [],
                                                    "endpointDir": str(tmp_path / "unused")},
                      {"shared": {}, "host": {"mode": "host", "endpoints": []}})
    script = tmp_path / "activate.py"
    script.write_text(ACTIVATE)
    log = open(tmp_path / "broker.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "VMNET_RS_SOCKET")}
    cmd = [sys.executable, str(script), ",".join(str(s.fileno()) for s in held), names,
           sys.executable, "-m", "vmnet_rs", "-v", "broker", "--backend", "hub", "--config", str(cfg),
           "--idle-timeout", "1", "--monitor-interval", "0.1"]
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=[s.fileno() for s in held])
    try:
        def ready() -> bool:
            assert p.poll() is None, (tmp_path / "broker.log").read_text()
            try:
                with Client(str(sock), timeout=5) as c:
                    return c.ping()
            except Exception:
                return False

        wait_until("the activated broker", ready)
        with Client(str(sock), timeout=10) as c:
            st = c.status()
        queue = st["endpoints"]["shared"].pop("datagram_queue")
        assert st["endpoints"]["shared"] == {"stream": str(ep / "shared.stream.sock"), "datagram": str(ep / "shared.dgram.sock"), "ports": {}}
        # The passed socket keeps the queue it was made with: this
        # namespace's limit, with the fix when it is short.
        limit = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
        assert (queue["made"], queue["frames"]) == ("service manager", limit), queue
        assert ("note" in queue) == (limit < 512) and "restart the socket unit" in queue.get("note", "restart the socket unit"), queue
        assert not (tmp_path / "unused").exists(), "passed sockets are used instead of binding"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(ep / "shared.stream.sock"))
        s.settimeout(20)
        d = dgram_client(tmp_path, "client", str(ep / "shared.dgram.sock"))
        d.send(frame(MAC_B, b"via-passed-dgram"))
        assert recv_stream_with(s, b"via-passed-dgram")
        s.close()
        d.close()
        os.unlink(tmp_path / "client.sock")
        # With every endpoint held by the "service manager" the broker exits when idle.
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    text = (tmp_path / "broker.log").read_text()
    assert "broker stopped: idle" in text, text
    # The paths belong to the service manager: still there, still bound.
    assert (ep / "shared.stream.sock").exists() and (ep / "shared.dgram.sock").exists()


def test_networks_command_shows_the_paths(tmp_path: Path) -> None:
    cfg = config_file(tmp_path / "networks.yaml", {"endpointDir": "/run/vm-ep"},
                      {"lab": {"endpoints": ["datagram"]}, "host": {"mode": "host", "endpoints": []}})
    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "networks", "--config", str(cfg)], capture_output=True, text=True, check=True).stdout
    assert "lab: datagram endpoint /run/vm-ep/lab.dgram.sock" in out
    assert "shared: stream endpoint /run/vm-ep/shared.stream.sock" in out
    assert "lab: stream endpoint" not in out and "host: stream endpoint" not in out and "host: datagram endpoint" not in out


def test_a_passed_socket_of_the_wrong_type_is_a_clear_start_error(tmp_path: Path) -> None:
    sock = tmp_path / "broker.sock"
    broker_s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    broker_s.bind(str(sock))
    broker_s.listen(16)
    wrong = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    wrong.bind(str(tmp_path / "shared.stream.sock"))
    held = [broker_s, wrong]
    script = tmp_path / "activate.py"
    script.write_text(ACTIVATE)
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "VMNET_RS_SOCKET")}
    cmd = [sys.executable, str(script), ",".join(str(s.fileno()) for s in held), "broker:shared.stream",
           sys.executable, "-m", "vmnet_rs", "broker", "--backend", "hub", "--endpoint-dir", str(tmp_path / "ep")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, pass_fds=[s.fileno() for s in held], timeout=60)
    assert p.returncode != 0
    assert "the socket passed as \"shared.stream\" is of the wrong type: use ListenStream=" in p.stderr, p.stderr
    # "host" comes first and was bound before "shared" failed: nothing is left behind.
    assert (tmp_path / "ep").is_dir()
    assert sorted((tmp_path / "ep").glob("*.sock")) == []
