"""Boot a test VM with QEMU (TCG) and talk to it over its serial console.

A :class:`Guest` wraps one running QEMU (or a wrapper such as ``vmnet-rs run``
that execs QEMU) whose serial console is on stdin/stdout. The guest's
``/init`` (see :mod:`vm.initramfs`) prints ``VMNET-LEASE <ip/mask> <router>``
and ``VMNET-READY``, then runs a shell without echo; :meth:`Guest.sh` sends a
command followed by a marker line and returns its exit status and output.

Everything is bounded by generous timeouts (TCG on a busy 2-core machine is
slow) and :meth:`Guest.close` always ends the process.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from .initramfs import build_initramfs, kernel_path

BOOT_TIMEOUT_S = 180.0


def qemu_base_argv(name: str, memory_mb: int = 256, extra_append: str = "") -> list[str]:
    """A QEMU command line for a test VM, without any network device."""
    kernel = kernel_path()
    initrd = build_initramfs(kernel)
    append = f"console=ttyS0 panic=-1 no_timer_check quiet loglevel=1 {extra_append}".strip()
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-name", name, "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]


class GuestError(AssertionError):
    """A guest did not do what the test asked; the message holds its console log."""


class Guest:
    """One running VM process whose serial console is its stdin/stdout."""

    def __init__(self, argv: Sequence[str], name: str, log_dir: Path | None = None, **popen_kw) -> None:
        self.name = name
        self.argv = list(argv)
        self._buf = ""
        self._cond = threading.Condition()
        self._log = open(log_dir / f"{name}.console.log", "w") if log_dir else None
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, **popen_kw)
        self._reader = threading.Thread(target=self._read, name=f"console-{name}", daemon=True)
        self._reader.start()
        self.ip: str | None = None
        self.prefix: int | None = None
        self.router: str | None = None
        self.mac: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            text = chunk.decode("utf-8", "replace").replace("\r", "")
            if self._log:
                self._log.write(text)
                self._log.flush()
            with self._cond:
                self._buf += text
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def console(self) -> str:
        with self._cond:
            return self._buf

    def _fail(self, what: str) -> GuestError:
        tail = self.console[-4000:]
        return GuestError(f"guest {self.name}: {what}\n--- argv: {' '.join(self.argv)}\n--- console (tail):\n{tail}")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Waits until ``pattern`` appears on the console after offset ``start``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, start)
                if m:
                    return m
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise self._fail(f"exited with {self.proc.returncode} before printing {pattern!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"no {pattern!r} within {timeout:.0f}s")
                self._cond.wait(min(left, 1.0))

    def wait_ready(self, timeout: float = BOOT_TIMEOUT_S) -> "Guest":
        """Waits for boot and DHCP; records the lease. Raises if there is none."""
        self.wait_for(r"VMNET-READY", timeout)
        m = re.search(r"VMNET-MAC (\S+)", self.console)
        self.mac = m.group(1) if m else None
        m = re.search(r"VMNET-LEASE (\d+\.\d+\.\d+\.\d+)/(\d+) (\S*)", self.console)
        if not m:
            raise self._fail("booted without a DHCP lease")
        self.ip, self.prefix, self.router = m.group(1), int(m.group(2)), m.group(3) or None
        # Swallow whatever reaches the shell before it turned echo off.
        self.sh("true", timeout=60)
        return self

    def sh(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Runs ``command`` in the guest shell; returns (exit status, output)."""
        if self.proc.poll() is not None:
            raise self._fail(f"exited with {self.proc.returncode}; cannot run {command!r}")
        marker = f"VMNET-RC-{uuid.uuid4().hex[:12]}"
        with self._cond:
            start = len(self._buf)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command} 2>&1; echo {marker}=$?\n".encode())
        self.proc.stdin.flush()
        m = self.wait_for(re.escape(marker) + r"=(\d+)\n", timeout, start)
        return int(m.group(1)), self._buf[start:m.start()]

    def check(self, command: str, timeout: float = 60.0) -> str:
        """Runs ``command``; raises with the console log unless it exits 0."""
        rc, out = self.sh(command, timeout)
        if rc != 0:
            raise self._fail(f"{command!r} exited {rc}:\n{out}")
        return out

    def close(self, timeout: float = 15.0) -> int | None:
        """Ends the VM process (SIGTERM, then SIGKILL) and returns its status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._reader.join(5)
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self._log:
            self._log.close()
        return self.proc.returncode


def iperf3_bits_per_second(output: str) -> float:
    """The receiver's rate from an ``iperf3 -c`` run's text output, in bit/s."""
    units = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
    for line in output.splitlines():
        if line.rstrip().endswith("receiver"):
            m = re.search(r"([\d.]+)\s+([KMG]?)bits/sec", line)
            if m:
                return float(m.group(1)) * units[m.group(2)]
    raise ValueError(f"no receiver line in iperf3 output:\n{output}")


def start_guests(count: int, start: Callable[[int], "Guest"]) -> list["Guest"]:
    """``start(0)``, ``start(1)``, ...: the guests started so far are closed
    if a later one fails to start."""
    guests: list[Guest] = []
    try:
        for i in range(count):
            guests.append(start(i))
    except BaseException:
        for g in guests:
            g.close()
        raise
    return guests
