"""Brokers run as subprocesses for tests: the real ``vmnet-rs broker``
command, optionally inside a network namespace, with helpers to wait for its
socket, count its open fds and stop it (also when a test fails).

A test broker allows root and the user running the tests (the default
settings allow only root and the ``vmnet-rs`` group), so the fast tests pass
without root; a test that passes its own ``--config`` decides for itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

from vmnet_rs.broker import Client
from vmnet_rs.errors import BrokerUnavailableError


def wait_until(what: str, predicate, timeout: float = 30.0, interval: float = 0.05):
    """``predicate()``'s first truthy value, polled every ``interval`` seconds;
    AssertionError naming ``what`` after ``timeout`` seconds. The one polling
    helper of the Python tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def readline_within(proc: subprocess.Popen, timeout: float, stream=None):
    """One line of ``proc``'s stdout (or ``stream``, one of its pipes) within
    ``timeout`` seconds; past it, kills ``proc`` and raises AssertionError
    naming it. Every read of a child's pipe goes through here, so a child
    that stops talking fails the test instead of hanging it."""
    stream = proc.stdout if stream is None else stream
    got: list = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        reader.join(30)
        raise AssertionError(f"no line from {proc.args!r} within {timeout}s")
    return got[0]


def wait_serving(proc: subprocess.Popen, socket: Path, name: str, log_text, timeout: float) -> None:
    """Polls until the broker ``proc`` answers ``ping`` on ``socket``; fails at
    once, with its log, if it exits first."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited {proc.returncode} before serving:\n{log_text()}")
        try:
            with Client(str(socket), timeout=10) as c:
                return c.ping()
        except BrokerUnavailableError:
            return False

    wait_until(f"{name} on {socket}", ready, timeout)


def stop_process(proc: subprocess.Popen, sig: int) -> int:
    """Sends ``sig`` to a running ``proc`` and waits for it (SIGKILL after 30
    seconds); returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


def kill_client_mid_request(socket: Path, network: str, fd_types: Sequence[str], script: Path) -> None:
    """Runs a client (``script`` is written) that opens one port per entry
    of ``fd_types`` on ``network`` and then keeps opening more, and SIGKILLs
    it once it is three requests into that loop: what a VM dying at any
    moment leaves behind."""
    script.write_text(
        "import sys\n"
        "from vmnet_rs import Client\n"
        "c = Client(sys.argv[1], timeout=20)\n"
        f"nics = [c.open({network!r}, k) for k in {list(fd_types)!r}]\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        f"    c.request({{'command': 'open', 'network': {network!r}, 'fd_type': {fd_types[-1]!r}}})\n"
        "    print('more', flush=True)\n"
    )
    victim = subprocess.Popen([sys.executable, str(script), str(socket)], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        assert readline_within(victim, 60).strip() == "ready"
        for _ in range(3):
            assert readline_within(victim, 60).strip() == "more"
    finally:
        victim.kill()
        victim.wait(timeout=30)
        if victim.stdout is not None:
            victim.stdout.close()


class BrokerProcess:
    """``python -m vmnet_rs broker ...`` in a subprocess."""

    def __init__(
        self,
        socket: Path,
        args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        env: Optional[dict] = None,
        log: Optional[Path] = None,
    ) -> None:
        self.socket = socket
        self.log = log or socket.with_suffix(".log")
        if "--config" not in args:
            args = [*args, "--config", str(config_file(socket.with_suffix(".yaml"), allow_me()))]
        argv: List[str] = [*prefix, sys.executable, "-m", "vmnet_rs", "-vv", "broker", "--socket", str(socket), *args]
        self._log_file = open(self.log, "wb")
        full_env = dict(os.environ)
        full_env.pop("LISTEN_FDS", None)
        full_env.pop("LISTEN_PID", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env)
        self._pid: Optional[int] = None

    def wait_ready(self, timeout: float = 60.0) -> "BrokerProcess":
        wait_serving(self.proc, self.socket, "the broker", self.log_text, timeout)
        return self

    @property
    def pid(self) -> int:
        """The broker's own pid (differs from proc.pid under `ip netns exec`)."""
        if self._pid is None:
            with Client(str(self.socket), timeout=10) as c:
                self._pid = int(c.status()["pid"])
        return self._pid

    def fds(self) -> List[str]:
        """Where the broker's open fds point (readlink of /proc/PID/fd/*)."""
        out = []
        base = Path(f"/proc/{self.pid}/fd")
        for entry in base.iterdir():
            try:
                out.append(os.readlink(entry))
            except OSError:
                pass
        return sorted(out)

    def log_text(self) -> str:
        self._log_file.flush()
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self._log_file.close()

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def allow_me(**settings: object) -> dict:
    """Broker settings that allow root and the user running the tests."""
    return {"allowedUsers": sorted({"root", str(os.getuid())}), "allowedGroups": [], **settings}


def broker_config(path: Path, **settings: object):
    """A :class:`vmnet_rs.config.Config` for an in-process test broker:
    built-in networks, :func:`allow_me` settings (written to ``path``)."""
    from vmnet_rs.config import load_config

    return load_config(config_file(path, allow_me(**settings)))


def config_file(path: Path, broker: dict, vmnet: Optional[dict] = None) -> Path:
    """Writes a broker config (JSON is YAML) and returns its path."""
    import json

    doc = {"broker": broker}
    if vmnet is not None:
        doc["vmnet"] = vmnet
    path.write_text(json.dumps(doc))
    return path
