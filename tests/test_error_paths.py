"""Every command a user can reach, under three failures: an unreadable HOME,
no broker, and a broker that goes away mid-request. Each ends in one
``vmnet-rs: ...`` line on stderr that says what to do, no traceback, and an
exit code from docs/usage.md's table (1 failed, 2 bad usage or configuration)."""

from __future__ import annotations

import os
import shutil
import socket as pysocket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

TIMEOUT = 120
DOCUMENTED = {0, 1, 2, 126, 127, 130}
NOBODY = 65534

# A VM command `run` accepts without the engine being installed: the broker
# is asked before anything is executed.
VM = ["qemu-system-x86_64", "-nographic"]


def cli(args: Sequence[str], env: Dict[str, str], prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "vmnet_rs", *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def one_line(out: subprocess.CompletedProcess, code: int) -> str:
    """The one stderr line of a failed command; checks its exit code."""
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmnet-rs: "), out.stderr
    assert out.returncode == code, (out.returncode, out.stderr)
    assert code in DOCUMENTED
    return lines[0]


def base_env(tmp_path: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMNET_RS_") and k not in ("LISTEN_FDS", "LISTEN_PID")}
    env["VMNET_RS_SOCKET"] = str(tmp_path / "no-broker.sock")
    env["VMNET_RS_STATE_DIR"] = str(tmp_path / "state")
    env["VMNET_RS_DNS_RESOLV_FILE"] = ""
    return env


# --- an unreadable HOME ---------------------------------------------------------------


def unreadable_home_runner(tmp_path: Path) -> tuple[Path, List[str]]:
    """(home, prefix): a HOME the command cannot read, and what runs the
    command so. As root the command runs in a user namespace where it is
    uid nobody (so it looks for its configuration in HOME, as a user's
    command does) while the kernel still checks its file access as root's
    owner bits without root's capabilities: HOME (mode 0) is unreadable,
    this interpreter under root's home still runs."""
    home = tmp_path / "home"
    (home / ".config" / "vmnet-rs").mkdir(parents=True)
    home.chmod(0)
    if os.geteuid() != 0:
        return home, []
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare (util-linux): cannot run a command as a user here")
    prefix = ["unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}"]
    probe = subprocess.run([*prefix, "ls", str(home)], capture_output=True, text=True, timeout=TIMEOUT)
    assert probe.returncode != 0, f"{home} stayed readable in a user namespace: {probe.stdout}"
    return home, prefix


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["networks"], 2, "cannot look for a configuration file there: Permission denied; make that directory readable, or name a file with --config or VMNET_RS_CONFIG"),
        (["networks", "--json"], 2, "cannot look for a configuration file there"),
        (["install", "--dry-run", "--platform", "linux"], 2, "cannot look for a configuration file there"),
        (["install", "--dry-run", "--platform", "macos"], 2, "cannot look for a configuration file there"),
        (["broker", "--backend", "hub"], 2, "cannot look for a configuration file there"),
        (["run", "-n", "shared", "--", *VM], 1, "no broker answers"),
        (["status"], 1, "no broker answers"),
        (["leases", "shared"], 1, 'network "shared" has not been created yet'),
    ],
)
def test_unreadable_home(tmp_path: Path, args: List[str], code: int, text: str) -> None:
    home, prefix = unreadable_home_runner(tmp_path)
    env = base_env(tmp_path)
    env["HOME"] = str(home)
    env.pop("XDG_CONFIG_HOME", None)
    try:
        out = cli(args, env, prefix)
    finally:
        home.chmod(0o755)
    assert text in one_line(out, code)


# --- no broker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["status"], ["status", "--json"], ["run", "-n", "shared", "--", *VM], ["run", "-n", "shared:stream", "--name", "vm1", "--", *VM]],
)
def test_no_broker(tmp_path: Path, args: List[str]) -> None:
    env = base_env(tmp_path)
    line = one_line(cli(args, env), 1)
    assert line.startswith(f"vmnet-rs: no broker answers on {tmp_path / 'no-broker.sock'}: "), line
    assert "start one with `vmnet-rs broker`" in line


def test_leases_before_the_network_exists(tmp_path: Path) -> None:
    line = one_line(cli(["leases", "shared"], base_env(tmp_path)), 1)
    assert 'network "shared" has not been created yet' in line and str(tmp_path / "state") in line


# --- a broker that goes away mid-request -----------------------------------------------


class VanishingBroker:
    """A socket that accepts each connection and closes it without a reply:
    the client's request meets a broker that went away (EPIPE on send or
    end-of-file on receive, whichever comes first)."""

    def __init__(self, path: Path) -> None:
        self.sock = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_SEQPACKET)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.accepted = 0
        # A daemon thread with a stop flag: it cannot outlive the run.
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, pysocket.timeout):
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.mark.parametrize("args", [["status"], ["run", "-n", "shared", "--", *VM], ["leases", "shared"]])
def test_broker_gone_mid_request(tmp_path: Path, args: List[str]) -> None:
    env = base_env(tmp_path)
    sock = tmp_path / "vanishing.sock"
    env["VMNET_RS_SOCKET"] = str(sock)
    broker = VanishingBroker(sock)
    try:
        out = cli(args, env)
    finally:
        broker.close()
    if args[0] == "leases":
        # leases reads the lease file; a broker gone only costs the VM names.
        assert 'has not been created yet' in one_line(out, 1)
        return
    line = one_line(out, 1)
    assert broker.accepted >= 1
    assert f"the broker on {sock} went away" in line, line
    assert "check with `vmnet-rs status`, start it again, and retry" in line
    assert "os error" not in line
