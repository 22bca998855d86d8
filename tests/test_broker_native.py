"""The native broker executable ``vmnet-rs-broker`` (rust/broker-bin), as the
package installs it: started directly, it serves ``vmnet-rs status`` and
``Client.open`` with the real Linux backend in a namespace; it keeps the last
good configuration when the file stops validating and says which file and key
are wrong; SIGTERM tears everything down."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

from brokerproc import stop_process, wait_serving, wait_until
from vmnet_rs import Client
from vmnet_rs.install import broker_executable

EXE = broker_executable()
pytestmark = pytest.mark.skipif(not EXE.is_file(), reason=f"{EXE} is not built: `pip install -e .` builds it")


class NativeBroker:
    """``vmnet-rs-broker ARGS`` in a subprocess, output in a log file."""

    def __init__(self, socket: Path, args: Sequence[str], prefix: Sequence[str] = ()) -> None:
        self.socket = socket
        self.log = socket.with_suffix(".log")
        self._log_file = open(self.log, "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID", "VMNET_RS_SOCKET")}
        argv: List[str] = [*prefix, str(EXE), "-v", "--socket", str(socket), "--python", sys.executable, *args]
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> "NativeBroker":
        wait_serving(self.proc, self.socket, "vmnet-rs-broker", self.log_text, 60)
        return self

    def log_text(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        status = stop_process(self.proc, sig)
        self._log_file.close()
        return status

    def __enter__(self) -> "NativeBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def status_json(socket: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "vmnet_rs", "status", "--json", "--socket", str(socket)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["broker"]


def write_config(path: Path, networks: dict) -> Path:
    path.write_text(json.dumps({"broker": {"allowedUsers": ["root", str(os.getuid())], "allowedGroups": []}, "vmnet": networks}))
    return path


LAB = {"lab": {"mode": "host", "subnet": "10.232.0.1/24", "dhcp": False, "dnsProxy": False}}


def test_a_bad_edit_leaves_the_broker_on_the_last_good_configuration(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "networks.yaml", LAB)
    sock = tmp_path / "b.sock"
    args = ["--backend", "hub", "--config", str(cfg), "--state-dir", str(tmp_path / "state")]
    with NativeBroker(sock, args) as b:
        b.wait_ready()
        st = status_json(sock)
        assert "config_error" not in st and "lab" in st["known"]
        assert b.stop() == 0
    assert "vmnet-rs: broker stopped: terminated (SIGTERM)" in b.log_text()
    # The file no longer validates: the broker starts on the last good one and says why.
    cfg.write_text(json.dumps({"vmnet": {"lab": {"mode": "host", "mtu": 70000}}}))
    with NativeBroker(sock, args) as b:
        b.wait_ready()
        st = status_json(sock)
        assert "lab" in st["known"] and st["known"]["lab"]["subnet"] == "10.232.0.1/24"
        assert f"{cfg}:1: network \"lab\": key \"mtu\": 70000 is out of range" in st["config_error"], st["config_error"]
        text = subprocess.run(
            [sys.executable, "-m", "vmnet_rs", "status", "--socket", str(sock)], capture_output=True, text=True, timeout=60
        ).stdout
        assert "  config error: " in text and 'key "mtu"' in text
    assert 'key "mtu": 70000' in b.log_text() and "serving the last good configuration" in b.log_text()


def test_without_a_last_good_configuration_it_refuses(tmp_path: Path) -> None:
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"vmnet": {"lab": {"mode": "bridged"}}}))
    out = subprocess.run(
        [str(EXE), "--backend", "hub", "--config", str(cfg), "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "b.sock"), "--python", sys.executable],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert f"vmnet-rs-broker: configuration {cfg} not loaded: {cfg}:1: network \"lab\": key \"mode\"" in out.stderr
    assert f"vmnet-rs networks check {cfg}" in out.stderr
    assert not (tmp_path / "b.sock").exists()
    out = subprocess.run([str(EXE), "--idle-timeout", "soon"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr == 'vmnet-rs-broker: --idle-timeout: "soon" is not a whole number of seconds >= 0\n'


def test_config_json_needs_no_python(tmp_path: Path) -> None:
    resolved = subprocess.run(
        [sys.executable, "-m", "vmnet_rs", "networks", "resolve", str(write_config(tmp_path / "n.yaml", LAB))],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    (tmp_path / "n.json").write_text(resolved)
    sock = tmp_path / "b.sock"
    with NativeBroker(sock, ["--backend", "hub", "--config-json", str(tmp_path / "n.json"), "--python", "/nonexistent/python"]) as b:
        b.wait_ready()
        assert status_json(sock)["known"]["lab"]["subnet"] == "10.232.0.1/24"
        # Ctrl-C: torn down, exit 130, as `vmnet-rs broker`.
        assert b.stop(signal.SIGINT) == 130
    assert "vmnet-rs: broker stopped: interrupted (Ctrl-C)" in b.log_text()


@pytest.mark.root
@pytest.mark.slow
def test_native_broker_in_a_namespace_serves_status_and_open(netns, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "networks.yaml", LAB)
    sock = tmp_path / "b.sock"
    args = ["--config", str(cfg), "--idle-timeout", "0", "--state-dir", str(tmp_path / "state")]
    with NativeBroker(sock, args, prefix=netns.argv([])) as b:
        b.wait_ready()
        st = status_json(sock)
        assert st["backend"] == "platform" and st["endpoint"] == str(sock)
        assert f"vmnet-rs: broker pid {st['pid']} listening on {sock}; networks: " in b.log_text()
        with Client(str(sock), timeout=30) as c:
            a = c.open("lab", "datagram")
            z = c.open("lab", "datagram")
            try:
                assert a.subnet == "10.232.0.1/24" and a.mac != z.mac
                # A broadcast frame from one port arrives at the other through the bridge.
                frame = b"\xff" * 6 + bytes.fromhex(a.mac.replace(":", "")) + b"\x88\xb5" + b"native-broker".ljust(46, b"\0")
                os.write(a.fd, frame)
                deadline_hit = False
                while not deadline_hit:
                    r, _, _ = select.select([z.fd], [], [], 20)
                    deadline_hit = not r
                    if r and b"native-broker" in os.read(z.fd, 65536):
                        break
                assert not deadline_hit, "the frame did not arrive on the other port"
                bridges = [link for link in netns.links() if link == "vmr-lab"]
                assert len(bridges) == 1, netns.links()
            finally:
                a.close()
                z.close()
        assert b.stop() == 0
    # SIGTERM tore the network down.
    assert not [link for link in netns.links() if link.startswith(("vmr-", "vmt"))], netns.links()
    assert "broker stopped: terminated (SIGTERM)" in b.log_text()


@pytest.mark.root
def test_native_broker_refuses_without_cap_net_admin(netns, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "networks.yaml", LAB)
    argv = netns.argv(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", str(EXE), "--config", str(cfg),
                       "--socket", str(tmp_path / "b.sock"), "--state-dir", str(tmp_path / "state"), "--python", sys.executable])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("vmnet-rs-broker: the broker cannot start here: CAP_NET_ADMIN: not held by this process (run the broker as root"), out.stderr
    assert len(out.stderr.splitlines()) == 1


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate (systemd) is not installed")
def test_socket_activated_start_serves_the_passed_socket_and_exits_idle(tmp_path: Path) -> None:
    cfg = tmp_path / "networks.yaml"
    cfg.write_text(json.dumps({"broker": {"allowedUsers": ["root", str(os.getuid())], "allowedGroups": [], "idleTimeout": 1}, "vmnet": LAB}))
    sock = tmp_path / "b.sock"
    log = tmp_path / "activated.log"
    argv = ["systemd-socket-activate", "--seqpacket", "-l", str(sock), "--fdname=broker", str(EXE), "-v", "--backend", "hub",
            "--config", str(cfg), "--state-dir", str(tmp_path / "state"), "--no-endpoints", "--python", sys.executable]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until("the activation socket", sock.exists, 30)
            # The first connection starts the broker on the socket systemd holds.
            assert status_json(sock)["idle_timeout_s"] == 1
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    # Started on demand: the start line says so, and that it exits when idle.
    assert f"listening on {sock} (started on demand); " in text
    assert "exits by itself after 1s with no network, lease or connection" in text
    assert "vmnet-rs: broker stopped: idle: no network, lease or connection for 1s" in text


def test_ctrl_c_names_the_vms_that_lose_their_network_and_exits_130(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "networks.yaml", LAB)
    sock = tmp_path / "b.sock"
    with NativeBroker(sock, ["--backend", "hub", "--config", str(cfg), "--no-endpoints", "--state-dir", str(tmp_path / "state")]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=30) as c:
            c.acquire("lab", vm_name="web1")
            assert b.stop(signal.SIGINT) == 130
    log = b.log_text()
    assert f"VM web1 (pid {os.getpid()} " in log and "loses its network lab (lease 1): the broker is stopping: interrupted (Ctrl-C)" in log, log
    assert "vmnet-rs: broker stopped: interrupted (Ctrl-C)" in log
