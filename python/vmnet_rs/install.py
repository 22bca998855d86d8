"""Registering the broker with the system: ``vmnet-rs install`` / ``uninstall``.

Both platforms run the native executable ``vmnet-rs-broker`` that the package
installs beside its Python (docs/packaging.md); no Python interpreter is
copied or signed. The broker reads the configuration at each start (Python
resolves the YAML for it), so an edit to the file needs no new install.

macOS: a per-user LaunchAgent whose label is the broker's Mach service;
launchd starts the broker on the first lookup of the service (or the first
connection to an endpoint socket, ``Sockets``) and the broker exits when idle
(no ``RunAtLoad``, no ``KeepAlive``). vmnet needs the
``com.apple.security.virtualization`` entitlement on the main executable, so
install signs exactly that binary ad hoc with it (``codesign --force -s -
--entitlements``), then verifies the signature and reads the entitlement
back. A stamp file records the signed binary's hash: when the binary changed
(an upgrade replaced it) or the plist differs, install boots the old job out,
signs again and bootstraps it again. launchd's ``gui/<uid>`` domain exists
only while the user is logged in at the screen; over SSH without one, install
says so and ``--domain user`` registers in ``user/<uid>`` instead.

Linux: systemd socket units (the broker socket, ``FileDescriptorName=broker``,
and one unit per endpoint socket, named ``<network>.stream`` /
``<network>.dgram``) and a service unit running ``vmnet-rs-broker`` as root,
started by socket activation; the ``vmnet-rs`` group (allowed to call the
broker by default) is created if missing.

Every action is first collected into a :class:`Plan`; ``--dry-run`` prints
the plan (files with their content, commands in order) for either platform
from any machine, and does nothing.
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
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from . import __version__, _native, drivers
from .errors import VmnetError

if TYPE_CHECKING:
    from .config import Config, NetworkConfig

DEFAULT_MACH_SERVICE: str = _native.DEFAULT_MACH_SERVICE
ENTITLEMENT = "com.apple.security.virtualization"
#: The native broker executable the package installs into its scripts directory.
BROKER_EXECUTABLE = "vmnet-rs-broker"
#: launchd's SIGTERM->SIGKILL grace; vmnet shutdown is slow (Lima uses 20 s).
EXIT_TIMEOUT_S = 20
#: How long install waits for a booted-out job to exit before bootstrapping
#: it again: its ExitTimeOut and some margin.
BOOTOUT_WAIT_S = EXIT_TIMEOUT_S + 10
#: How long ``launchctl bootstrap`` is retried while it answers EIO (the old
#: job is still leaving).
BOOTSTRAP_RETRY_S = 15
#: How ``launchctl bootstrap`` says the old job is still exiting.
BOOTSTRAP_BUSY = "Input/output error"
#: Pause between two polls of launchctl.
POLL_INTERVAL_S = 0.25
#: The variable the LaunchAgent sets to the ``Sockets`` keys it lists, so the
#: broker can warn about one the configuration no longer names.
LAUNCHD_SOCKETS_ENV = "VMNET_RS_LAUNCHD_SOCKETS"
SYSTEMD_DIR = Path("/etc/systemd/system")
SOCKET_UNIT = "vmnet-rs.socket"
SERVICE_UNIT = "vmnet-rs.service"
GROUP = "vmnet-rs"
#: Endpoint kinds (network key ``endpoints``) and the suffix of their socket
#: file and activation name (the rule lives in drivers.endpoint_paths).
ENDPOINT_KINDS = drivers.ENDPOINT_SUFFIXES
#: macOS sun_path holds 104 bytes, the terminating NUL included.
SUN_PATH_MAX = 104


@dataclass
class FileWrite:
    path: Path
    content: bytes
    mode: int = 0o644


Command = List[str]


Runner = Callable[[Command], subprocess.CompletedProcess]


def _subprocess_runner(c: Command) -> subprocess.CompletedProcess:
    return subprocess.run(c, capture_output=True, text=True)


@dataclass
class Plan:
    """What install or uninstall would do, in order."""

    platform: str
    dirs: List[Path] = field(default_factory=list)
    #: Modes of directories in ``dirs`` that must not be the umask's
    #: (the endpoint folder: 0700, only its owner may reach the sockets).
    dir_modes: Dict[Path, int] = field(default_factory=dict)
    writes: List[FileWrite] = field(default_factory=list)
    commands: List[Command] = field(default_factory=list)
    #: Commands whose failure is expected and harmless (a bootout of a job that is not loaded).
    optional: List[Command] = field(default_factory=list)
    #: Commands repeated until they fail, at most this many seconds (a
    #: ``launchctl print`` of a booted-out job, until the job has left).
    until_fails: Dict[Tuple[str, ...], float] = field(default_factory=dict)
    #: Commands retried while their output contains the text, at most this
    #: many seconds (``launchctl bootstrap`` answering EIO).
    retry_while: Dict[Tuple[str, ...], Tuple[str, float]] = field(default_factory=dict)
    #: Text a command's output must contain (the entitlement read back after signing).
    expect: Dict[Tuple[str, ...], str] = field(default_factory=dict)
    #: What to tell the user when a command fails.
    explain: Dict[Tuple[str, ...], str] = field(default_factory=dict)
    removals: List[Path] = field(default_factory=list)
    #: Commands run after the removals (systemd's daemon-reload on uninstall).
    after: List[Command] = field(default_factory=list)
    #: Written last, after every command succeeded: (path, what it records, content maker).
    stamp: Optional[Tuple[Path, str, Callable[[], bytes]]] = None
    notes: List[str] = field(default_factory=list)
    up_to_date: bool = False

    def describe(self) -> str:
        lines: List[str] = [f"platform: {self.platform}"]
        lines += [f"note: {n}" for n in self.notes]
        if self.up_to_date:
            lines.append("already installed and up to date: nothing to do")
        for d in self.dirs:
            mode = self.dir_modes.get(d)
            lines.append(f"mkdir {d}" + (f" (mode {mode:o})" if mode is not None else ""))
        for w in self.writes:
            lines.append(f"write {w.path} (mode {w.mode:o}):")
            lines += ["    " + line for line in w.content.decode().splitlines()]
        for c in self.commands:
            suffix = "  (may fail harmlessly)" if c in self.optional else ""
            if tuple(c) in self.expect:
                suffix += f"  (output must contain {self.expect[tuple(c)]})"
            if tuple(c) in self.until_fails:
                suffix += f"  (repeated until it fails, at most {self.until_fails[tuple(c)]:g} s)"
            if tuple(c) in self.retry_while:
                text, limit = self.retry_while[tuple(c)]
                suffix += f"  (retried while it says {text!r}, at most {limit:g} s)"
            lines.append(f"run: {shlex.join(c)}{suffix}")
        for r in self.removals:
            lines.append(f"remove {r}")
        for c in self.after:
            lines.append(f"run: {shlex.join(c)}")
        if self.stamp is not None:
            lines.append(f"write {self.stamp[0]} ({self.stamp[1]})")
        return "\n".join(lines)

    def execute(self, runner: Runner = _subprocess_runner, clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep) -> None:
        """Does it all. ``runner`` runs one command (tests pass a fake
        launchctl); ``clock`` and ``pause`` pace the bounded waits."""
        self._runner, self._clock, self._pause = runner, clock, pause
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
            mode = self.dir_modes.get(d)
            if mode is not None:
                os.chmod(d, mode)
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
        if self.stamp is not None:
            path, _, make = self.stamp
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(make())

    def _call(self, c: Command) -> Optional[subprocess.CompletedProcess]:
        try:
            return getattr(self, "_runner", _subprocess_runner)(c)
        except FileNotFoundError:
            if c in self.optional:
                return None
            raise VmnetError(f"`{shlex.join(c)}` cannot run: {c[0]} is not installed") from None

    def _run(self, c: Command) -> None:
        hint = self.explain.get(tuple(c))
        clock = getattr(self, "_clock", time.monotonic)
        pause = getattr(self, "_pause", time.sleep)
        proc = self._call(c)
        if proc is None:
            return
        if tuple(c) in self.until_fails:
            deadline = clock() + self.until_fails[tuple(c)]
            while proc.returncode == 0:
                if clock() >= deadline:
                    message = f"`{shlex.join(c)}` still succeeds after {self.until_fails[tuple(c)]:g} s"
                    raise VmnetError(f"{message}\n{hint}" if hint else message)
                pause(POLL_INTERVAL_S)
                proc = self._call(c)
                if proc is None:
                    return
            return
        if tuple(c) in self.retry_while:
            busy, limit = self.retry_while[tuple(c)]
            deadline = clock() + limit
            while proc.returncode != 0 and busy in proc.stdout + proc.stderr and clock() < deadline:
                pause(POLL_INTERVAL_S)
                proc = self._call(c)
                if proc is None:
                    return
        if proc.returncode != 0 and c not in self.optional:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            message = f"`{shlex.join(c)}` failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}"
            raise VmnetError(f"{message}\n{hint}" if hint else message)
        want = self.expect.get(tuple(c))
        if want is not None and want not in proc.stdout + proc.stderr:
            message = f"`{shlex.join(c)}` does not show {want}"
            raise VmnetError(f"{message}\n{hint}" if hint else message)


def current_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def broker_executable() -> Path:
    """The ``vmnet-rs-broker`` this package installed: in the scripts
    directory of this Python's environment (a virtualenv's ``bin/``), else
    beside this interpreter, else on PATH. Returns the scripts-directory path
    even when it is missing (a dry run shows it; a real install refuses)."""
    scripts = Path(sysconfig.get_path("scripts")) / BROKER_EXECUTABLE
    for candidate in (scripts, Path(sys.executable).parent / BROKER_EXECUTABLE):
        if candidate.is_file():
            return candidate
    found = shutil.which(BROKER_EXECUTABLE)
    return Path(found) if found else scripts


def _require_broker_executable(exe: Path) -> None:
    if not exe.is_file():
        raise VmnetError(
            f"{exe} is missing: the vmnet-rs package installs it (`pip install vmnet-rs`, or `pip install .` in a checkout); "
            "run install with the Python of that environment"
        )


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _endpoints(cfg: "Config", socket: str, macos: bool, home: Path) -> List[Tuple[str, str, Path]]:
    """(network, activation suffix, socket path) for every endpoint the
    configuration turns on, as the broker would serve them
    (:func:`vmnet_rs.endpoints.endpoint_paths`)."""
    from .endpoints import endpoint_paths

    return [
        (name, ENDPOINT_KINDS[kind], Path(path))
        for name, kinds in endpoint_paths(cfg, socket, macos=macos, home=home).items()
        for kind, path in kinds.items()
    ]


# --- macOS ---------------------------------------------------------------------------


def _support_dir(home: Path) -> Path:
    return home / "Library" / "Application Support" / "vmnet-rs"


def _plist_path(home: Path, label: str) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def _log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "vmnet-rs"


def macos_plist(
    label: str,
    exe: Path,
    home: Path,
    config: Optional[str],
    python: str,
    endpoints: Sequence[Tuple[str, str, Path]] = (),
    owner: Optional[Tuple[int, int]] = None,
) -> bytes:
    """The LaunchAgent. ``owner`` (uid, gid) owns the endpoint socket files
    launchd creates (by default launchd's choice, which the user's own VMs
    may not be able to open)."""
    if owner is None:
        owner = (os.getuid(), os.getgid())
    args = [str(exe), "--mach-service", label, "--python", python]
    if config:
        args += ["--config", config]
    logs = _log_dir(home)
    doc: Dict[str, Any] = {
        "Label": label,
        "ProgramArguments": args,
        "MachServices": {label: True},
        "WorkingDirectory": str(_support_dir(home)),
        "StandardOutPath": str(logs / "broker.log"),
        "StandardErrorPath": str(logs / "broker.log"),
        "ExitTimeOut": EXIT_TIMEOUT_S,
    }
    if endpoints:
        # launchd holds each endpoint socket and starts the broker on the
        # first connection (launchd.plist(5) Sockets; the broker takes them
        # by these names with launch_activate_socket).
        # Connecting to a Unix socket needs write permission on its file:
        # the user's own VMs need it to be the user's (SockPathOwner/Group).
        doc["Sockets"] = {
            f"{network}.{kind}": {
                "SockFamily": "Unix",
                "SockType": "stream" if kind == "stream" else "dgram",
                "SockPathName": str(path),
                "SockPathMode": 0o600,
                "SockPathOwner": owner[0],
                "SockPathGroup": owner[1],
            }
            for network, kind, path in endpoints
        }
        # The broker warns at start about a key here that its configuration
        # no longer names (launchd would start it for nothing, again and again).
        doc["EnvironmentVariables"] = {LAUNCHD_SOCKETS_ENV: ",".join(f"{network}.{kind}" for network, kind, _ in endpoints)}
    return plistlib.dumps(doc, sort_keys=True)


def entitlements_plist() -> bytes:
    return plistlib.dumps({ENTITLEMENT: True}, sort_keys=True)


def _stamp(label: str, plist: bytes, exe: Path) -> bytes:
    """What install records after signing: the signed binary's hash tells an
    upgrade (a new, unsigned binary) from the binary install signed."""
    doc = {
        "version": __version__,
        "broker": str(exe),
        "broker_sha256": _file_hash(exe),
        "plist_sha256": hashlib.sha256(plist).hexdigest(),
        "label": label,
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def macos_install_plan(
    label: str,
    home: Path,
    uid: int,
    config: Optional[str] = None,
    force: bool = False,
    exe: Optional[Path] = None,
    python: Optional[str] = None,
    endpoints: Sequence[Tuple[str, str, Path]] = (),
    domain: str = "gui",
    gid: Optional[int] = None,
) -> Plan:
    exe = exe or broker_executable()
    python = python or sys.executable
    gid = os.getgid() if gid is None else gid
    support = _support_dir(home)
    ent = support / "entitlements.plist"
    stamp_path = support / "install.json"
    plist_path = _plist_path(home, label)
    plist = macos_plist(label, exe, home, config, python, list(endpoints), owner=(uid, gid))
    target = f"{domain}/{uid}"
    plan = Plan("macos")
    plan.notes.append(f"LaunchAgent {label} in {target}; broker executable {exe} (signed ad hoc with {ENTITLEMENT})")
    for _network, _kind, path in endpoints:
        if len(str(path).encode()) >= SUN_PATH_MAX:
            raise VmnetError(
                f"endpoint socket {path} is {len(str(path).encode())} bytes, past macOS's {SUN_PATH_MAX - 1}-byte limit: "
                "set a shorter broker key endpointDir in the configuration"
            )
    try:
        recorded = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        recorded = {}
    signed_binary_unchanged = recorded.get("broker") == str(exe) and recorded.get("broker_sha256") == _file_hash(exe)
    current = plist_path.is_file() and plist_path.read_bytes() == plist and signed_binary_unchanged and recorded.get("version") == __version__
    if current and not force:
        plan.up_to_date = True
        return plan
    if recorded and not signed_binary_unchanged:
        plan.notes.append(f"{exe} changed since it was signed (an upgrade): it is signed again")
    if plist_path.exists():
        plan.notes.append("an installed LaunchAgent differs (moved or changed package): it is replaced")
    plan.dirs += [support, _log_dir(home), plist_path.parent]
    if endpoints:
        # The endpoint folder is the check on macOS (no datagram peer
        # credentials): only its owner may reach the sockets (docs/endpoints.md).
        for folder in sorted({path.parent for _n, _k, path in endpoints}):
            plan.dirs.append(folder)
            plan.dir_modes[folder] = 0o700
    plan.writes.append(FileWrite(ent, entitlements_plist()))
    plan.writes.append(FileWrite(plist_path, plist))
    # launchd's domain for the user's GUI session exists only while they are
    # logged in at the screen (not over SSH alone).
    probe = ["launchctl", "print", target]
    plan.commands.append(probe)
    if domain == "gui":
        plan.explain[tuple(probe)] = (
            f"launchd has no {target} domain: nobody is logged in at this Mac's screen as uid {uid} (an SSH session has none). "
            "Log in at the screen (or through Screen Sharing) and run `vmnet-rs install` again, "
            "or run `vmnet-rs install --domain user` to register the broker in user/{uid}".replace("{uid}", str(uid))
        )
    # The old job goes first and is waited for (bounded: its ExitTimeOut):
    # launchd refuses to bootstrap a label whose job is still exiting
    # ("5: Input/output error"), and the binary is signed while nothing runs it.
    bootout = ["launchctl", "bootout", f"{target}/{label}"]
    plan.commands.append(bootout)
    plan.optional.append(bootout)
    gone = ["launchctl", "print", f"{target}/{label}"]
    plan.commands.append(gone)
    plan.optional.append(gone)
    plan.until_fails[tuple(gone)] = BOOTOUT_WAIT_S
    plan.explain[tuple(gone)] = f"the old broker job {label} did not exit; stop it (`launchctl bootout {target}/{label}`) and run install again"
    sign = ["codesign", "--force", "-s", "-", "--entitlements", str(ent), str(exe)]
    verify = ["codesign", "--verify", "--strict", str(exe)]
    show = ["codesign", "-d", "--entitlements", "-", str(exe)]
    plan.commands += [sign, verify, show]
    plan.explain[tuple(sign)] = f"codesign could not sign {exe}: it comes with Xcode's command line tools (`xcode-select --install`)"
    plan.explain[tuple(verify)] = f"the signature of {exe} does not verify: run `vmnet-rs install --force`"
    plan.expect[tuple(show)] = ENTITLEMENT
    plan.explain[tuple(show)] = f"{exe} was signed but does not carry {ENTITLEMENT}; vmnet would refuse it"
    bootstrap = ["launchctl", "bootstrap", target, str(plist_path)]
    plan.commands.append(bootstrap)
    plan.retry_while[tuple(bootstrap)] = (BOOTSTRAP_BUSY, BOOTSTRAP_RETRY_S)
    plan.stamp = (stamp_path, "records the signed binary's sha256, so an upgrade is noticed", lambda: _stamp(label, plist, exe))
    return plan


def macos_uninstall_plan(label: str, home: Path, uid: int, domain: str = "gui") -> Plan:
    support = _support_dir(home)
    plan = Plan("macos")
    bootout = ["launchctl", "bootout", f"{domain}/{uid}/{label}"]
    plan.commands.append(bootout)
    plan.optional.append(bootout)
    plan.removals += [_plist_path(home, label), support / "entitlements.plist", support / "install.json"]
    plan.notes.append("the signed vmnet-rs-broker stays where the package installed it (pip uninstall removes it)")
    return plan


# --- Linux ---------------------------------------------------------------------------


def _unit_escape(name: str) -> str:
    """A network name as part of a systemd unit name (systemd.unit(5): only
    ASCII letters, digits, ``:_.-``; anything else as ``\\xNN``)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in ":_.-" else "".join(f"\\x{b:02x}" for b in c.encode()) for c in name)


def endpoint_socket_unit_name(network: str, kind: str) -> str:
    return f"vmnet-rs-{_unit_escape(network)}-{kind}.socket"


def linux_socket_unit(socket: str) -> bytes:
    return f"""[Unit]
Description=vmnet-rs broker socket
# Documentation: docs/linux.md and docs/security.md in the vmnet-rs source; vmnet-rs install --help

[Socket]
ListenSequentialPacket={socket}
FileDescriptorName=broker
Service={SERVICE_UNIT}
SocketMode=0666
DirectoryMode=0755
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
""".encode()


def linux_endpoint_socket_unit(network: str, kind: str, path: Path) -> bytes:
    """One endpoint socket: systemd names every fd of a socket unit alike
    (FileDescriptorName=), so each endpoint has its own unit."""
    listen = "ListenStream" if kind == "stream" else "ListenDatagram"
    # Datagram peers' credentials come with each datagram (SCM_CREDENTIALS).
    creds = "PassCredentials=yes\n" if kind == "dgram" else ""
    return f"""[Unit]
Description=vmnet-rs {kind} endpoint of network {network}
# Documentation: docs/linux.md and docs/security.md in the vmnet-rs source; vmnet-rs install --help
PartOf={SOCKET_UNIT}

[Socket]
{listen}={path}
FileDescriptorName={network}.{kind}
Service={SERVICE_UNIT}
SocketMode=0660
SocketGroup={GROUP}
DirectoryMode=0755
{creds}RemoveOnStop=yes

[Install]
WantedBy=sockets.target
""".encode()


def linux_service_unit(config: Optional[str], exe: Path, python: str, socket_units: List[str]) -> bytes:
    args = [str(exe), "--python", python]
    if config:
        args += ["--config", config]
    return f"""[Unit]
Description=vmnet-rs broker (VM networks on demand)
# Documentation: docs/linux.md and docs/security.md in the vmnet-rs source; vmnet-rs install --help
Requires={SOCKET_UNIT}
After={" ".join(socket_units)} network.target

[Service]
Type=simple
ExecStart={shlex.join(args)}
Sockets={" ".join(socket_units)}
# The broker exits when idle; the sockets start it again on the next request.
Restart=no
TimeoutStopSec={EXIT_TIMEOUT_S}

[Install]
Also={" ".join(socket_units)}
""".encode()


def _root_runs_what_others_can_change(paths: Sequence[Path]) -> List[str]:
    """Warnings for files systemd runs as root that a non-root user could
    replace (a virtualenv in a home directory): that user could become root."""
    out = []
    for p in paths:
        for f in (p, p.parent):
            try:
                st = f.stat()
            except OSError:
                continue
            if st.st_uid != 0 or st.st_mode & 0o022:
                out.append(
                    f"WARNING: {f} is owned by uid {st.st_uid} (mode {st.st_mode & 0o777:o}) and systemd runs {p} as root: "
                    "whoever can change it can become root; on a shared machine install vmnet-rs as root into a root-owned prefix"
                )
                break
    return out


def _group_exists(name: str) -> bool:
    try:
        import grp

        grp.getgrnam(name)
        return True
    except (KeyError, ImportError):
        return False


def linux_install_plan(
    socket: str,
    config: Optional[str] = None,
    unit_dir: Path = SYSTEMD_DIR,
    force: bool = False,
    exe: Optional[Path] = None,
    python: Optional[str] = None,
    endpoints: Sequence[Tuple[str, str, Path]] = (),
) -> Plan:
    exe = exe or broker_executable()
    python = python or sys.executable
    plan = Plan("linux")
    endpoint_units = [(endpoint_socket_unit_name(n, k), linux_endpoint_socket_unit(n, k, p)) for n, k, p in endpoints]
    socket_units = [SOCKET_UNIT] + [name for name, _ in endpoint_units]
    units = [FileWrite(unit_dir / SOCKET_UNIT, linux_socket_unit(socket))]
    units += [FileWrite(unit_dir / name, content) for name, content in endpoint_units]
    units.append(FileWrite(unit_dir / SERVICE_UNIT, linux_service_unit(config, exe, python, socket_units)))
    changed = [u for u in units if force or not u.path.is_file() or u.path.read_bytes() != u.content]
    # Endpoint units of networks no longer configured.
    stale = sorted(p for p in unit_dir.glob("vmnet-rs-*.socket") if p.name not in socket_units) if unit_dir.is_dir() else []
    plan.notes.append(f"systemd units in {unit_dir}; socket {socket}; broker executable {exe}, run as root; callers are checked by SO_PEERCRED")
    plan.notes += _root_runs_what_others_can_change([exe, Path(python)])
    if not _group_exists(GROUP):
        plan.commands.append(["groupadd", "--system", GROUP])
    if not changed and not plan.commands and not stale:
        plan.up_to_date = True
        return plan
    for p in stale:
        disable = ["systemctl", "disable", "--now", p.name]
        plan.commands.append(disable)
        plan.optional.append(disable)
    plan.removals += stale
    plan.writes += changed
    plan.after.append(["systemctl", "daemon-reload"])
    plan.after.append(["systemctl", "enable", "--now", *socket_units])
    if changed:
        # A running broker keeps the old code and sockets: restart it if it runs.
        plan.after.append(["systemctl", "try-restart", SERVICE_UNIT])
    return plan


def linux_uninstall_plan(unit_dir: Path = SYSTEMD_DIR) -> Plan:
    plan = Plan("linux")
    endpoint_units = sorted(p.name for p in unit_dir.glob("vmnet-rs-*.socket")) if unit_dir.is_dir() else []
    disable = ["systemctl", "disable", "--now", SOCKET_UNIT, *endpoint_units, SERVICE_UNIT]
    plan.commands.append(disable)
    plan.optional.append(disable)
    plan.removals += [unit_dir / SOCKET_UNIT, *(unit_dir / u for u in endpoint_units), unit_dir / SERVICE_UNIT]
    plan.after.append(["systemctl", "daemon-reload"])
    plan.notes.append("the vmnet-rs group is kept (remove it with `groupdel vmnet-rs`)")
    return plan


# --- the host's resolver (VM names) ------------------------------------------------

MACOS_RESOLVER_DIR = Path("/etc/resolver")
#: The first line of every ``/etc/resolver`` file install writes (uninstall
#: removes only those).
MACOS_RESOLVER_HEADER = b"# vmnet-rs: names of VMs on this network\n"


def network_domain(name: str, net: "NetworkConfig") -> str:
    """The network's name domain (docs/config.md, "Names and addresses")."""
    return net.domain or f"{name}.vmnet.internal"


def _named_networks(cfg: "Config") -> List[Tuple[str, str, str]]:
    """(network, domain, gateway) of every network whose DNS answers names:
    a fixed subnet and ``dnsProxy`` on."""
    return [(n, network_domain(n, c), c.gateway) for n, c in sorted(cfg.networks.items()) if c.dns_proxy and c.gateway]


def resolver_marker(data_dir: str, network: str, domain: str, gateway: str) -> FileWrite:
    """The marker that has the broker register ``network``'s domain again on
    each bridge it makes (``broker/resolver.rs``): ``<data dir>/resolver/<network>.json``."""
    content = json.dumps({"network": network, "domain": domain, "dns": gateway}, indent=2) + "\n"
    return FileWrite(Path(data_dir) / "resolver" / f"{network}.json", content.encode(), 0o644)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def resolver_plan(platform: str, cfg: "Config", link_exists: Callable[[str], bool] = _link_exists) -> Plan:
    """Registers each network's domain with the host's resolver, so the host
    finds VMs by name. macOS: ``/etc/resolver/<domain>`` naming the gateway
    (needs administrator rights). Linux: systemd-resolved per-link DNS on
    the network's bridge (``resolvectl dns`` / ``resolvectl domain ~DOMAIN``)
    for bridges that exist now, and a marker per network in the broker's
    data directory: a per-link setting goes with its bridge, so the broker
    registers the domain again each time it makes the bridge."""
    plan = Plan(platform)
    named = _named_networks(cfg)
    if not named:
        plan.notes.append("no network has a fixed subnet and dnsProxy on: nothing to register")
        plan.up_to_date = True
        return plan
    if platform == "macos":
        for _, domain, gw in named:
            plan.writes.append(FileWrite(MACOS_RESOLVER_DIR / domain, MACOS_RESOLVER_HEADER + f"nameserver {gw}\n".encode(), 0o644))
        if os.geteuid() != 0:
            plan.notes.append(f"writing {MACOS_RESOLVER_DIR} needs administrator rights: run with sudo")
        return plan
    from ._native import bridge_name, default_data_dir

    data_dir = default_data_dir(None, cfg.broker.data_dir)
    for net, domain, gw in named:
        bridge = bridge_name(net)
        plan.writes.append(resolver_marker(data_dir, net, domain, gw))
        if not link_exists(bridge):
            plan.notes.append(f"network {net}: bridge {bridge} does not exist now; the broker registers {domain} on it when it makes it")
            continue
        plan.commands.append(["resolvectl", "dns", bridge, gw])
        plan.commands.append(["resolvectl", "domain", bridge, f"~{domain}"])
        plan.explain[("resolvectl", "dns", bridge, gw)] = f"network {net}'s bridge {bridge}: systemd-resolved must run (resolvectl)"
    plan.notes.append(f"the markers in {data_dir}/resolver have the broker register each domain again whenever it makes the network's bridge anew")
    return plan


def _vmnet_rs_resolver_files(resolver_dir: Path) -> List[Path]:
    """The files in ``resolver_dir`` (macOS ``/etc/resolver``) that
    ``install --resolver`` wrote: those opening with its comment line."""
    if not resolver_dir.is_dir():
        return []
    out = []
    for f in sorted(resolver_dir.iterdir()):
        try:
            if f.is_file() and f.read_bytes().startswith(MACOS_RESOLVER_HEADER):
                out.append(f)
        except OSError:
            continue
    return out


def add_resolver_removal(
    plan: Plan,
    data_dir: str,
    link_exists: Callable[[str], bool] = _link_exists,
    resolvectl: Optional[str] = None,
    resolver_dir: Path = MACOS_RESOLVER_DIR,
) -> None:
    """Adds to ``plan`` what undoes ``install --resolver``. macOS: removes
    the ``/etc/resolver`` files it wrote. Linux: removes every marker in
    ``<data_dir>/resolver`` (without one the broker registers nothing on a
    bridge it makes or puts back, ``broker/resolver.rs``), then, for each
    marker's bridge that exists now, ``resolvectl revert BRIDGE`` (the
    per-link DNS of that bridge back to none). Without resolvectl nothing
    was registered (install and the broker both need it), so nothing is
    reverted. The markers go before the reverts: a broker that makes the
    bridge in between finds no marker."""
    if plan.platform == "macos":
        plan.removals += _vmnet_rs_resolver_files(resolver_dir)
        return
    from ._native import bridge_name

    folder = Path(data_dir) / "resolver"
    markers = sorted(folder.glob("*.json")) if folder.is_dir() else []
    plan.removals += markers
    for marker in markers:
        bridge = bridge_name(marker.stem)
        if link_exists(bridge) and resolvectl:
            plan.after.append(["resolvectl", "revert", bridge])
            plan.explain[("resolvectl", "revert", bridge)] = f"network {marker.stem}'s bridge {bridge}: systemd-resolved must run (resolvectl)"
    if markers and not resolvectl:
        plan.notes.append("resolvectl is not on PATH: no bridge has a registration to revert")


def resolver_uninstall_plan(platform: str, cfg: Optional["Config"], link_exists: Callable[[str], bool] = _link_exists) -> Plan:
    """``vmnet-rs uninstall --resolver``: undoes ``install --resolver``
    (:func:`add_resolver_removal`) in the data directory ``cfg`` names."""
    plan = Plan(platform)
    data_dir = ""
    if platform == "linux":
        from ._native import default_data_dir

        data_dir = default_data_dir(None, cfg.broker.data_dir if cfg is not None else "")
    add_resolver_removal(plan, data_dir, link_exists, shutil.which("resolvectl"))
    if not plan.removals:
        plan.notes.append("no resolver registration of vmnet-rs is left: nothing to remove")
    elif platform == "macos" and os.geteuid() != 0:
        plan.notes.append(f"removing files from {MACOS_RESOLVER_DIR} needs administrator rights: run with sudo")
    return plan


def host_lookup_works(name: str, fqdn: str, expected: str) -> Tuple[bool, str]:
    """Whether the host's own resolver gives ``expected`` for ``fqdn`` (doctor)."""
    import socket as _socket

    try:
        found = sorted({i[4][0] for i in _socket.getaddrinfo(fqdn, None, _socket.AF_INET)})
    except OSError as e:
        return False, f"{fqdn} does not resolve on the host ({e}); register the domain: vmnet-rs install --resolver"
    if expected in found:
        return True, f"{fqdn} -> {expected}"
    return False, f"{fqdn} resolves to {', '.join(found)} on the host, not {expected}; register the domain: vmnet-rs install --resolver"


# --- commands ------------------------------------------------------------------------


def install_plan(
    platform: str,
    config: Optional[str],
    socket: Optional[str],
    mach_service: Optional[str],
    force: bool = False,
    domain: str = "gui",
    dry_run: bool = False,
) -> Plan:
    if config is not None:
        config = os.path.abspath(config)
    from .config import load_config

    cfg = load_config(config)
    exe = broker_executable()
    if not dry_run:
        _require_broker_executable(exe)
    home = Path.home()
    if platform == "macos":
        label = mach_service or cfg.broker.mach_service or DEFAULT_MACH_SERVICE
        endpoints = _endpoints(cfg, cfg.broker.socket, macos=True, home=home)
        return macos_install_plan(label, home, os.getuid(), config, force, exe=exe, endpoints=endpoints, domain=domain)
    from .broker import socket_path

    sock = socket or os.environ.get("VMNET_RS_SOCKET") or cfg.broker.socket or socket_path(None)
    endpoints = _endpoints(cfg, sock, macos=False, home=home)
    return linux_install_plan(sock, config, force=force, exe=exe, endpoints=endpoints)


def _config_for_uninstall(config: Optional[str]) -> Tuple[Optional["Config"], Optional[str]]:
    """The configuration, or ``None`` and why not: a file that no longer
    reads must not stop an uninstall (the defaults are used instead)."""
    from .config import load_config

    try:
        return load_config(os.path.abspath(config) if config else None), None
    except VmnetError as e:
        return None, f"the configuration does not load ({str(e).splitlines()[0]}); the default data directory is used"


def uninstall_plan(platform: str, mach_service: Optional[str], config: Optional[str] = None, domain: str = "gui") -> Plan:
    """Undoes ``install``. On Linux also what ``install --resolver`` left
    (its markers would otherwise have a later broker register the domains
    again); on macOS its ``/etc/resolver`` files need ``uninstall --resolver``
    as administrator, and a note says so."""
    cfg, problem = _config_for_uninstall(config)
    if platform == "macos":
        label = mach_service or (cfg.broker.mach_service if cfg is not None else "") or DEFAULT_MACH_SERVICE
        plan = macos_uninstall_plan(label, Path.home(), os.getuid(), domain)
        left = _vmnet_rs_resolver_files(MACOS_RESOLVER_DIR)
        if left:
            plan.notes.append(f"{', '.join(map(str, left))}: written by install --resolver; remove with `sudo vmnet-rs uninstall --resolver`")
        return plan
    plan = linux_uninstall_plan()
    if problem:
        plan.notes.append(problem)
    from ._native import default_data_dir

    add_resolver_removal(plan, default_data_dir(None, cfg.broker.data_dir if cfg is not None else ""), resolvectl=shutil.which("resolvectl"))
    return plan


def run_plan(plan: Plan, dry_run: bool) -> None:
    if dry_run:
        click.echo(plan.describe())
        return
    if plan.up_to_date:
        click.echo("vmnet-rs: already installed and up to date")
        return
    plan.execute()


_platform_option = click.option(
    "--platform", type=click.Choice(["macos", "linux"]), default=None, help="Plan for this platform (with --dry-run, from any machine)."
)
_domain_option = click.option(
    "--domain",
    type=click.Choice(["gui", "user"]),
    default="gui",
    help="macOS: launchd domain: gui/<uid> (logged in at the screen) or user/<uid> (e.g. SSH only).",
)


@click.command("install")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Broker config file the service uses.")
@click.option("--socket", "socket", default=None, help="Linux: the broker socket (default /run/vmnet-rs/broker.sock).")
@click.option("--mach-service", default=None, help=f"macOS: the Mach service and LaunchAgent label (default {DEFAULT_MACH_SERVICE}).")
@click.option("--force", is_flag=True, help="Rewrite, sign and reload even if up to date.")
@click.option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")
@click.option("--resolver", is_flag=True,
              help="Instead: register each network's name domain with the host's resolver (macOS /etc/resolver/DOMAIN, "
                   "as administrator; Linux systemd-resolved per-link DNS on the bridge), so the host finds VMs by name.")
@_domain_option
@_platform_option
def install_command(config: Optional[str], socket: Optional[str], mach_service: Optional[str], force: bool, dry_run: bool, resolver: bool,
                    domain: str, platform: Optional[str]) -> None:
    """Register the native broker: a LaunchAgent (macOS) or systemd sockets + service (Linux)."""
    if resolver:
        from .config import load_config

        run_plan(resolver_plan(platform or current_platform(), load_config(os.path.abspath(config) if config else None)), dry_run)
        return
    plan = install_plan(platform or current_platform(), config, socket, mach_service, force, domain, dry_run)
    run_plan(plan, dry_run)


@click.command("uninstall")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="Broker config file (its dataDir holds the resolver markers).")
@click.option("--mach-service", default=None, help="macOS: the LaunchAgent label to remove.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
@click.option("--resolver", is_flag=True,
              help="Instead: undo `install --resolver` (macOS: its /etc/resolver files, as administrator; Linux: the markers "
                   "in the data directory and the per-link DNS of bridges that exist). On Linux a plain uninstall does this too.")
@_domain_option
@_platform_option
def uninstall_command(config: Optional[str], mach_service: Optional[str], dry_run: bool, resolver: bool, domain: str, platform: Optional[str]) -> None:
    """Unregister the broker and remove the files install wrote."""
    if resolver:
        cfg, problem = _config_for_uninstall(config)
        plan = resolver_uninstall_plan(platform or current_platform(), cfg)
        if problem:
            plan.notes.append(problem)
        run_plan(plan, dry_run)
        return
    run_plan(uninstall_plan(platform or current_platform(), mach_service, config=config, domain=domain), dry_run)


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
                info["broker"] = recorded.get("broker")
                info["up_to_date"] = recorded.get("version") == __version__ and recorded.get("broker_sha256") == _file_hash(Path(str(recorded.get("broker"))))
            except ValueError:
                info["up_to_date"] = False
        return info
    units = [SYSTEMD_DIR / SOCKET_UNIT, SYSTEMD_DIR / SERVICE_UNIT]
    return {"platform": "linux", "units": [str(u) for u in units], "installed": all(u.is_file() for u in units)}
