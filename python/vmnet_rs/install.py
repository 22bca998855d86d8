"""Registering the broker with the system: ``vmnet-rs install`` / ``uninstall``.

macOS: a per-user LaunchAgent whose label is the broker's Mach service;
launchd starts the broker on the first lookup of the service and the broker
exits when idle (no ``RunAtLoad``, no ``KeepAlive``). vmnet needs the
``com.apple.security.virtualization`` entitlement, which belongs to the main
executable, not to a Python extension; so install copies the Python
interpreter into ``~/Library/Application Support/vmnet-rs/vmnet-rs-broker``
(the app binary inside a framework build's ``Python.app``, whose ``bin/python3``
is only a launcher that execs it), signs the copy ad hoc with that
entitlement (``codesign --force -s - --entitlements``), and runs
``<copy> -m vmnet_rs broker --mach-service LABEL`` with ``PYTHONHOME`` and
``PYTHONPATH`` pointing at the original installation. A stamp file records
the package version and location and the interpreter's hash; when any of
them, or the plist's content, differs from what is installed, install boots
the old job out, rewrites and re-signs everything and bootstraps it again.

Linux: a systemd socket unit (``ListenSequentialPacket=``, the broker socket)
and a service unit running ``python -m vmnet_rs broker`` as root, started by
socket activation; the ``vmnet-rs`` group (allowed to call the broker by
default) is created if missing.

Every action is first collected into a :class:`Plan`; ``--dry-run`` prints
the plan (files with their content, commands) and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from . import __version__
from .errors import VmnetError

DEFAULT_MACH_SERVICE = "io.github.vmnet-rs.broker"
ENTITLEMENT = "com.apple.security.virtualization"
#: launchd's SIGTERM->SIGKILL grace; vmnet shutdown is slow (Lima uses 20 s).
EXIT_TIMEOUT_S = 20
SYSTEMD_DIR = Path("/etc/systemd/system")
SOCKET_UNIT = "vmnet-rs.socket"
SERVICE_UNIT = "vmnet-rs.service"
GROUP = "vmnet-rs"


@dataclass
class FileWrite:
    path: Path
    content: bytes
    mode: int = 0o644


@dataclass
class Plan:
    """What install or uninstall would do, in order."""

    platform: str
    dirs: List[Path] = field(default_factory=list)
    writes: List[FileWrite] = field(default_factory=list)
    copies: List[tuple] = field(default_factory=list)  # (src, dst, mode)
    commands: List[List[str]] = field(default_factory=list)
    #: Commands whose failure is expected and harmless (a bootout of a job that is not loaded).
    optional: List[List[str]] = field(default_factory=list)
    removals: List[Path] = field(default_factory=list)
    #: Commands run after the removals (systemd's daemon-reload on uninstall).
    after: List[List[str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    up_to_date: bool = False

    def describe(self) -> str:
        lines: List[str] = [f"platform: {self.platform}"]
        lines += [f"note: {n}" for n in self.notes]
        if self.up_to_date:
            lines.append("already installed and up to date: nothing to do")
        for d in self.dirs:
            lines.append(f"mkdir {d}")
        for src, dst, mode in self.copies:
            lines.append(f"copy {src} -> {dst} (mode {mode:o})")
        for w in self.writes:
            lines.append(f"write {w.path} (mode {w.mode:o}):")
            lines += ["    " + line for line in w.content.decode().splitlines()]
        for c in self.commands:
            suffix = "  (may fail harmlessly)" if c in self.optional else ""
            lines.append(f"run: {shlex.join(c)}{suffix}")
        for r in self.removals:
            lines.append(f"remove {r}")
        for c in self.after:
            lines.append(f"run: {shlex.join(c)}")
        return "\n".join(lines)

    def execute(self) -> None:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        for src, dst, mode in self.copies:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(dst) + ".new")
            shutil.copyfile(src, tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, dst)
        for w in self.writes:
            w.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = w.path.with_name(w.path.name + ".new")
            tmp.write_bytes(w.content)
            os.chmod(tmp, w.mode)
            os.replace(tmp, w.path)
        # Commands run after the files they use exist; on uninstall the
        # removals come after the commands that unload them.
        for c in self.commands:
            self._run(c)
        for r in self.removals:
            try:
                r.unlink()
            except FileNotFoundError:
                pass
        for c in self.after:
            self._run(c)

    def _run(self, c: List[str]) -> None:
        try:
            proc = subprocess.run(c, capture_output=True, text=True)
        except FileNotFoundError:
            if c in self.optional:
                return
            raise VmnetError(f"`{shlex.join(c)}` cannot run: {c[0]} is not installed") from None
        if proc.returncode != 0 and c not in self.optional:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise VmnetError(f"`{shlex.join(c)}` failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}")


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


# --- macOS ---------------------------------------------------------------------------


def _support_dir(home: Path) -> Path:
    return home / "Library" / "Application Support" / "vmnet-rs"


def _plist_path(home: Path, label: str) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def _log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "vmnet-rs"


def interpreter_binary() -> Path:
    """The real interpreter binary to copy and sign (see the module doc)."""
    app = Path(sys.base_prefix) / "Resources" / "Python.app" / "Contents" / "MacOS" / "Python"
    if app.is_file():
        return app
    return Path(os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable))


def _package_root() -> Path:
    """The directory holding the ``vmnet_rs`` package (goes on PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


def _python_path() -> str:
    """The import path the copied interpreter needs: the package's root, then
    this interpreter's site-packages (a virtualenv's included)."""
    entries = [str(_package_root())]
    for p in sys.path:
        if p and p.endswith("-packages") and p not in entries:
            entries.append(p)
    return os.pathsep.join(entries)


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def macos_plist(label: str, exe: Path, home: Path, config: Optional[str]) -> bytes:
    args = [str(exe), "-m", "vmnet_rs", "broker", "--mach-service", label]
    if config:
        args += ["--config", config]
    logs = _log_dir(home)
    doc: Dict[str, Any] = {
        "Label": label,
        "ProgramArguments": args,
        "MachServices": {label: True},
        "EnvironmentVariables": {"PYTHONHOME": sys.base_prefix, "PYTHONPATH": _python_path()},
        "WorkingDirectory": str(_support_dir(home)),
        "StandardOutPath": str(logs / "broker.log"),
        "StandardErrorPath": str(logs / "broker.log"),
        "ExitTimeOut": EXIT_TIMEOUT_S,
    }
    return plistlib.dumps(doc, sort_keys=True)


def entitlements_plist() -> bytes:
    return plistlib.dumps({ENTITLEMENT: True}, sort_keys=True)


def _stamp(label: str, plist: bytes, source: Path) -> bytes:
    doc = {
        "version": __version__,
        "package": str(_package_root()),
        "interpreter": str(source),
        "interpreter_sha256": _file_hash(source),
        "plist_sha256": hashlib.sha256(plist).hexdigest(),
        "label": label,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def macos_install_plan(label: str, home: Path, uid: int, config: Optional[str] = None, force: bool = False) -> Plan:
    support = _support_dir(home)
    exe = support / "vmnet-rs-broker"
    ent = support / "entitlements.plist"
    stamp_path = support / "install.json"
    plist_path = _plist_path(home, label)
    source = interpreter_binary()
    plist = macos_plist(label, exe, home, config)
    stamp = _stamp(label, plist, source)
    plan = Plan("macos")
    plan.notes.append(f"LaunchAgent {label} in gui/{uid}; broker executable {exe} (ad-hoc signed copy of {source})")
    current = plist_path.is_file() and plist_path.read_bytes() == plist and stamp_path.is_file() and stamp_path.read_bytes() == stamp and exe.is_file()
    if current and not force:
        plan.up_to_date = True
        return plan
    if plist_path.exists():
        plan.notes.append("an installed LaunchAgent differs (moved or changed package): it is replaced")
    plan.dirs += [support, _log_dir(home), plist_path.parent]
    plan.copies.append((source, exe, 0o755))
    plan.writes.append(FileWrite(ent, entitlements_plist()))
    plan.writes.append(FileWrite(plist_path, plist))
    plan.writes.append(FileWrite(stamp_path, stamp))
    bootout = ["launchctl", "bootout", f"gui/{uid}/{label}"]
    plan.commands.append(["codesign", "--force", "-s", "-", "--entitlements", str(ent), str(exe)])
    plan.commands.append(bootout)
    plan.optional.append(bootout)
    plan.commands.append(["launchctl", "bootstrap", f"gui/{uid}", str(plist_path)])
    return plan


def macos_uninstall_plan(label: str, home: Path, uid: int) -> Plan:
    support = _support_dir(home)
    plan = Plan("macos")
    bootout = ["launchctl", "bootout", f"gui/{uid}/{label}"]
    plan.commands.append(bootout)
    plan.optional.append(bootout)
    plan.removals += [_plist_path(home, label), support / "vmnet-rs-broker", support / "entitlements.plist", support / "install.json"]
    return plan


# --- Linux ---------------------------------------------------------------------------


def linux_socket_unit(socket: str) -> bytes:
    return f"""[Unit]
Description=vmnet-rs broker socket
Documentation=https://github.com/vmnet-rs/vmnet-rs

[Socket]
ListenSequentialPacket={socket}
SocketMode=0666
DirectoryMode=0755
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
""".encode()


def linux_service_unit(config: Optional[str], python: str) -> bytes:
    args = [python, "-m", "vmnet_rs", "broker"]
    if config:
        args += ["--config", config]
    return f"""[Unit]
Description=vmnet-rs broker (VM networks on demand)
Documentation=https://github.com/vmnet-rs/vmnet-rs
Requires={SOCKET_UNIT}
After={SOCKET_UNIT} network.target

[Service]
Type=simple
ExecStart={shlex.join(args)}
Environment=PYTHONPATH={_package_root()}
# The broker exits when idle; the socket starts it again on the next request.
Restart=no
TimeoutStopSec={EXIT_TIMEOUT_S}

[Install]
Also={SOCKET_UNIT}
""".encode()


def _group_exists(name: str) -> bool:
    try:
        import grp

        grp.getgrnam(name)
        return True
    except (KeyError, ImportError):
        return False


def linux_install_plan(socket: str, config: Optional[str] = None, unit_dir: Path = SYSTEMD_DIR, force: bool = False) -> Plan:
    plan = Plan("linux")
    units = [
        FileWrite(unit_dir / SOCKET_UNIT, linux_socket_unit(socket)),
        FileWrite(unit_dir / SERVICE_UNIT, linux_service_unit(config, sys.executable)),
    ]
    changed = [u for u in units if force or not u.path.is_file() or u.path.read_bytes() != u.content]
    plan.notes.append(f"systemd units in {unit_dir}; socket {socket}; the broker runs as root, callers are checked by SO_PEERCRED")
    if not _group_exists(GROUP):
        plan.commands.append(["groupadd", "--system", GROUP])
    if not changed and not plan.commands:
        plan.up_to_date = True
        return plan
    plan.writes += changed
    plan.commands.append(["systemctl", "daemon-reload"])
    plan.commands.append(["systemctl", "enable", "--now", SOCKET_UNIT])
    if changed:
        # A running broker keeps the old code: restart it if it runs.
        plan.commands.append(["systemctl", "try-restart", SERVICE_UNIT])
    return plan


def linux_uninstall_plan(unit_dir: Path = SYSTEMD_DIR) -> Plan:
    plan = Plan("linux")
    disable = ["systemctl", "disable", "--now", SOCKET_UNIT, SERVICE_UNIT]
    plan.commands.append(disable)
    plan.optional.append(disable)
    plan.removals += [unit_dir / SOCKET_UNIT, unit_dir / SERVICE_UNIT]
    plan.after.append(["systemctl", "daemon-reload"])
    plan.notes.append("the vmnet-rs group is kept (remove it with `groupdel vmnet-rs`)")
    return plan


# --- commands ------------------------------------------------------------------------


def _load_settings(config: Optional[str]) -> Dict[str, Any]:
    """Broker settings from the config file (or defaults)."""
    from .config import load_config

    return dict(load_config(config).broker.to_dict())


def install_plan(platform: str, config: Optional[str], socket: Optional[str], mach_service: Optional[str], force: bool = False) -> Plan:
    if config is not None:
        config = os.path.abspath(config)
    settings = _load_settings(config)
    if platform == "macos":
        label = mach_service or settings.get("machService") or DEFAULT_MACH_SERVICE
        return macos_install_plan(label, Path.home(), os.getuid(), config, force)
    from .broker import socket_path

    sock = socket or os.environ.get("VMNET_RS_SOCKET") or settings.get("socket") or socket_path(None)
    return linux_install_plan(sock, config, force=force)


def uninstall_plan(platform: str, mach_service: Optional[str], config: Optional[str] = None) -> Plan:
    if platform == "macos":
        settings = _load_settings(config)
        label = mach_service or settings.get("machService") or DEFAULT_MACH_SERVICE
        return macos_uninstall_plan(label, Path.home(), os.getuid())
    return linux_uninstall_plan()


def run_plan(plan: Plan, dry_run: bool) -> None:
    if dry_run:
        click.echo(plan.describe())
        return
    if plan.up_to_date:
        click.echo("vmnet-rs: already installed and up to date")
        return
    plan.execute()


_platform_option = click.option(
    "--platform", type=click.Choice(["macos", "linux"]), default=None, hidden=True, help="Plan for this platform (tests)."
)


@click.command("install")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Broker config file the service uses.")
@click.option("--socket", "socket", default=None, help="Linux: the broker socket (default /run/vmnet-rs/broker.sock).")
@click.option("--mach-service", default=None, help=f"macOS: the Mach service and LaunchAgent label (default {DEFAULT_MACH_SERVICE}).")
@click.option("--force", is_flag=True, help="Rewrite and reload even if up to date.")
@click.option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")
@_platform_option
def install_command(config: Optional[str], socket: Optional[str], mach_service: Optional[str], force: bool, dry_run: bool, platform: Optional[str]) -> None:
    """Register the broker: a LaunchAgent (macOS) or systemd socket + service (Linux)."""
    plan = install_plan(platform or current_platform(), config, socket, mach_service, force)
    run_plan(plan, dry_run)


@click.command("uninstall")
@click.option("--mach-service", default=None, help="macOS: the LaunchAgent label to remove.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
@_platform_option
def uninstall_command(mach_service: Optional[str], dry_run: bool, platform: Optional[str]) -> None:
    """Unregister the broker and remove the files install wrote."""
    run_plan(uninstall_plan(platform or current_platform(), mach_service), dry_run)


def installed_summary(platform: str, mach_service: Optional[str] = None) -> Dict[str, Any]:
    """What is installed, from the files install writes."""
    if platform == "macos":
        label = mach_service or DEFAULT_MACH_SERVICE
        plist = _plist_path(Path.home(), label)
        stamp = _support_dir(Path.home()) / "install.json"
        info: Dict[str, Any] = {"platform": "macos", "label": label, "plist": str(plist), "installed": plist.is_file()}
        if stamp.is_file():
            try:
                recorded = json.loads(stamp.read_text())
                info["installed_version"] = recorded.get("version")
                info["up_to_date"] = recorded.get("version") == __version__ and recorded.get("package") == str(_package_root())
            except ValueError:
                info["up_to_date"] = False
        return info
    units = [SYSTEMD_DIR / SOCKET_UNIT, SYSTEMD_DIR / SERVICE_UNIT]
    return {"platform": "linux", "units": [str(u) for u in units], "installed": all(u.is_file() for u in units)}
