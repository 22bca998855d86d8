"""``vmnet-rs run``: run a VM with its network fds wired in.

The wrapper asks the broker for one fd per ``--network``, makes the VM
program inherit them at fixed numbers (3, 4, ...), appends the arguments its
engine needs (:mod:`vmnet_rs.drivers`) or fills placeholders such as
``{fd0}`` in the given arguments, and runs it. It stays alive while the VM
runs: it holds the broker connection (so the leases, adaptors and TAPs live
exactly as long as the VM), forwards SIGINT, SIGTERM and SIGHUP to the VM,
and exits with the VM's status (128 + N when the VM dies of signal N).

Runs on the main thread only. Invariants: every fd obtained from the broker is
closed in this process once the child has been spawned (or on any error); the
child gets the network fds at 3, 4, ... (replacing whatever the caller had
there) and, as with ``exec``, whatever else the caller let it inherit;
nothing vmnet-rs opens itself (the broker connection included) leaks into it.

Known limit: the leases belong to this process's broker connection, so if
the wrapper itself is killed with SIGKILL the VM keeps running without its
network (nothing forwards SIGKILL; posix_spawn cannot set a parent-death
signal).

Exit codes: the VM's own; 1 when the broker refused or is missing; 2 for bad
usage; 126 when the program cannot be executed; 127 when it is not found.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import click

from . import drivers
from .errors import BrokerError, BrokerUnavailableError, ConfigError, VmnetError

EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Broker fds are first moved up to here, so that placing them at 3, 4, ...
# in the child can never overwrite one another.
HIGH_FD_BASE = 100


def connect(socket: str | None) -> Any:
    """A broker client (the seam tests replace with a fake).

    Raises :class:`BrokerUnavailableError` when no broker answers.
    """
    try:
        from . import Client  # type: ignore[attr-defined]
    except ImportError as e:  # a build without the broker client
        raise BrokerUnavailableError(f"this vmnet-rs build has no broker client ({e}); reinstall vmnet-rs") from e
    return Client(socket=socket)


client_factory: Callable[[str | None], Any] = connect


class ProgramNotFound(VmnetError):
    """The VM program is not on PATH (exit 127)."""


class ProgramNotRunnable(VmnetError):
    """The VM program exists but cannot be executed (exit 126)."""


@dataclass
class Plan:
    """What ``vmnet-rs run`` will do: the program, its final argv and its NICs."""

    program: str
    argv: list[str]
    engine: str
    nics: list[drivers.Nic]
    substituted: bool


def parse_network(spec: str) -> tuple[str, str | None]:
    """``NAME[:BACKEND]`` as (name, backend or None)."""
    name, sep, backend = spec.partition(":")
    if not name or (sep and not backend):
        raise ConfigError(f"--network {spec!r}: expected NAME or NAME:BACKEND, e.g. shared or shared:stream")
    return name, backend or None


def resolve_program(program: str) -> str:
    """The executable path for ``program`` (searched on PATH unless it has a slash)."""
    if os.sep in program:
        path = program
        if not os.path.isfile(path):
            raise ProgramNotFound(f"program not found: {program}")
    else:
        found = shutil.which(program)
        if found is None:
            raise ProgramNotFound(f"program not found on PATH: {program}")
        path = found
    if not os.access(path, os.X_OK):
        raise ProgramNotRunnable(f"program is not executable: {path}")
    return path


def vm_name(name: str | None, command: Sequence[str]) -> str:
    """The VM's name for MAC derivation: ``--name``, else QEMU's ``-name``, else from the command."""
    if name:
        return name
    args = list(command[1:])
    for i, a in enumerate(args[:-1]):
        if a in ("-name", "--name"):
            value = args[i + 1]
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest="):]
            return value.split(",")[0]
    digest = hashlib.sha256("\0".join(command).encode()).hexdigest()[:12]
    return f"{os.path.basename(command[0])}-{digest}"


def plan(
    command: Sequence[str],
    networks: Sequence[str],
    macs: Sequence[str] = (),
    name: str | None = None,
    offload: dict[str, bool] | None = None,
    mtus: dict[int, int] | None = None,
    platform: str = sys.platform,
    check_only: bool = False,
) -> Plan:
    """Builds the final command line; touches nothing (no broker, no processes).

    ``check_only`` validates a command line whose ``{mtuN}`` values are not
    known yet (they stay unfilled).
    """
    if not command:
        raise ConfigError("no program given; usage: vmnet-rs run [OPTIONS] -- PROGRAM [ARGS]...")
    program = command[0]
    engine = drivers.engine_for(program)
    nets = [parse_network(n) for n in networks] or [("shared", None)]
    nics = drivers.plan_nics(nets, engine, vm_name(name, command), macs, platform, offload)
    args = list(command[1:])
    if drivers.has_placeholders(args):
        filled = drivers.substitute(args, nics, mtus, keep_unknown_mtu=check_only)
        return Plan(program, [program, *filled], engine, nics, True)
    if engine == drivers.QEMU:
        drivers.check_qemu_ids(args, nics)
    return Plan(program, [program, *args, *drivers.engine_args(engine, nics, program)], engine, nics, False)


def needs_broker_for_args(p: Plan, command: Sequence[str]) -> bool:
    """Whether the argument text depends on what the broker says (krunkit offload, MTU placeholders)."""
    return (p.engine == drivers.KRUNKIT and not p.substituted) or any("{mtu" in a for a in command[1:])


def _move_high(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` at or above HIGH_FD_BASE; closes ``fd``."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD_BASE)
    os.close(fd)
    return high


def spawn(path: str, argv: Sequence[str], fds: Sequence[int]) -> int:
    """Starts ``path`` with ``fds`` at 3, 4, ... and returns its pid.

    ``fds`` must be close-on-exec and at or above HIGH_FD_BASE; the child's
    dup2 clears close-on-exec on the copies only.
    """
    actions = [(os.POSIX_SPAWN_DUP2, fd, drivers.FIRST_FD + i) for i, fd in enumerate(fds)]
    return os.posix_spawn(path, list(argv), os.environ, file_actions=actions)


def exit_status(wait_status: int) -> int:
    """A shell-style exit status: the code, or 128 + N for death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def run_vm(
    command: Sequence[str],
    networks: Sequence[str],
    macs: Sequence[str] = (),
    name: str | None = None,
    socket: str | None = None,
) -> int:
    """Opens the networks, runs the VM to its end and returns its exit status."""
    if not command:
        raise ConfigError("no program given; usage: vmnet-rs run [OPTIONS] -- PROGRAM [ARGS]...")
    path = resolve_program(command[0])
    first = plan(command, networks, macs, name, check_only=True)  # validate everything before the broker
    client = client_factory(socket)
    high: list[int] = []
    try:
        offload: dict[str, bool] = {}
        mtus: dict[int, int] = {}
        for nic in first.nics:
            opened = client.open(nic.network, nic.backend.fd_type, mac=nic.mac, vnet_hdr=nic.backend.vnet_hdr)
            high.append(_move_high(int(opened.fd)))
            offload[nic.network] = offload.get(nic.network, False) or bool(getattr(opened, "offload", False))
            mtu = getattr(opened, "mtu", None)
            if mtu:
                mtus[nic.index] = int(mtu)
        final = plan(command, networks, macs, name, offload=offload, mtus=mtus)
        return _supervise(path, final.argv, high)
    finally:
        for fd in high:
            try:
                os.close(fd)
            except OSError:
                pass
        client.close()


def _supervise(path: str, argv: Sequence[str], fds: list[int]) -> int:
    """Spawns the VM, forwards signals to it, waits for it, returns its status."""
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if child:
            try:
                os.kill(child[0], signum)
            except ProcessLookupError:
                pass
        else:
            pending.append(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        if pending:
            return 128 + pending[0]
        # Exec resets the handlers installed above to the default in the child;
        # signals this process ignores (nohup, background job) stay ignored.
        try:
            child.append(spawn(path, argv, fds))
        except OSError as e:
            raise ProgramNotRunnable(f"cannot run {path}: {e.strerror or e}") from None
        for fd in fds:
            os.close(fd)
        fds.clear()
        _, status = os.waitpid(child[0], 0)
        return exit_status(status)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-n", "--network", "networks", multiple=True, metavar="NAME[:BACKEND]",
              help="Network to join, repeatable (default: shared). BACKEND per engine, see the README.")
@click.option("--mac", "macs", multiple=True, metavar="MAC",
              help="MAC for the n-th --network (default: derived from the VM name and network).")
@click.option("--name", default=None, help="VM name for stable MACs (default: QEMU -name, else from the command).")
@click.option("--socket", default=None, metavar="PATH", help="Broker socket (default: the system broker).")
@click.option("--print-args", is_flag=True, help="Print the final command line and exit without running it.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- PROGRAM [ARGS]...")
def run_command(networks: tuple[str, ...], macs: tuple[str, ...], name: str | None, socket: str | None,
                print_args: bool, command: tuple[str, ...]) -> None:
    """Run a VM (qemu-system-*, krunkit, vfkit, or any program) on vmnet-rs networks.

    The network fds are inherited at 3, 4, ...; known engines get the right
    arguments appended, other programs take placeholders in ARGS:
    {fd0} {mac0} {network0} {fdtype0} {mtu0} (0 = first --network).
    """
    try:
        if print_args:
            click.echo(shlex.join(print_plan(command, networks, macs, name, socket).argv))
            return
        status = run_vm(command, networks, macs, name, socket)
    except ProgramNotFound as e:
        click.echo(f"vmnet-rs: {e}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except ProgramNotRunnable as e:
        click.echo(f"vmnet-rs: {e}", err=True)
        sys.exit(EXIT_CANNOT_RUN)
    sys.exit(status)


def print_plan(command: Sequence[str], networks: Sequence[str], macs: Sequence[str], name: str | None,
               socket: str | None) -> Plan:
    """The plan ``--print-args`` shows: fds 3, 4, ... and derived MACs.

    The broker is asked (for its network list, which leases nothing) only when
    the text depends on it: krunkit's ``offloading=on`` and ``{mtuN}``.
    """
    p = plan(command, networks, macs, name, check_only=True)
    if not needs_broker_for_args(p, command):
        return p
    try:
        client = client_factory(socket)
    except BrokerUnavailableError as e:
        if any("{mtu" in a for a in command[1:]):
            raise
        click.echo(f"vmnet-rs: {e}; assuming the networks have no offload", err=True)
        return p
    try:
        known = {info.get("name"): info for info in client.networks()}
        offload: dict[str, bool] = {}
        mtus: dict[int, int] = {}
        for nic in p.nics:
            if nic.network not in known:
                raise BrokerError(f"unknown network {nic.network!r}; the broker knows: {', '.join(sorted(map(str, known)))}")
            cfg = known[nic.network].get("config") or {}
            offload[nic.network] = bool(cfg.get("offload", False))
            if cfg.get("mtu"):
                mtus[nic.index] = int(cfg["mtu"])
        return replace(p, argv=plan(command, networks, macs, name, offload=offload, mtus=mtus).argv)
    finally:
        client.close()
