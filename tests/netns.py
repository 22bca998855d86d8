"""Private network namespaces for tests.

Every test that creates links, bridges, TAPs, routes or nftables rules does so
inside a namespace made here: it has no route out, and it is deleted (with
every link in it and every process started in it) when the test ends, also
when the test fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from typing import Sequence


class NetNs:
    """A named network namespace (``ip netns``) with loopback up."""

    def __init__(self, prefix: str = "vmrt") -> None:
        # Names stay unique across parallel runs and short enough for link names.
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """The argv that runs ``cmd`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self.argv(cmd), timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"in netns {self.name}: {shlex.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), **kw)

    def links(self) -> list[str]:
        out = self.run(["ip", "-o", "link", "show"]).stdout
        return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def __enter__(self) -> "NetNs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
