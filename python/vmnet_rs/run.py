"""``vmnet-rs run``: run a VM with its network fds wired in.

The command asks the broker for one fd per ``--network``, makes the VM
program inherit them at fixed numbers (3, 4, ...), appends the arguments its
engine needs (:mod:`vmnet_rs.drivers`) or fills placeholders such as
``{fd0}`` in the given arguments, and then either

- **exec** (default on Linux): replaces itself with the VM program, which
  also inherits the broker connection (at a high fd, named in
  ``$VMNET_RS_BROKER_FD``), as ``socket_vmnet_client`` does. The connection
  holds the leases, so the leases, adaptors and TAPs end exactly when the VM
  process does, however it ends, and no wrapper process is left; or
- **supervise** (``--supervise``; default on macOS, where the broker
  connection is an XPC session that exec cannot pass on): stays alive as the
  VM's parent holding the connection, forwards SIGINT, SIGTERM and SIGHUP,
  prints one line if the broker connection drops, and exits with the VM's
  status (128 + N when the VM dies of signal N). Known limit: SIGKILL to the
  wrapper leaves the VM running without its network.

Runs on the main thread only. Invariants: every fd obtained from the broker is
closed in this process once the child has been spawned or exec failed (or on
any error); the VM gets the network fds at 3, 4, ... (replacing whatever the
caller had there) and, as with ``exec``, whatever else the caller let it
inherit; nothing else vmnet-rs opens itself leaks into it.

Exit codes: the VM's own; 1 when the broker refused or is missing; 2 for bad
usage; 126 when the program cannot be executed; 127 when it is not found.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import select
import signal
import sys
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import click

from . import drivers
from .errors import BrokerError, BrokerUnavailableError, ConfigError, VmnetError

log = logging.getLogger("vmnet_rs")

EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Broker fds are first moved up to here, so that placing them at 3, 4, ...
# in the child can never overwrite one another.
HIGH_FD_BASE = 100
# The environment variable that tells an exec'd VM program which fd is its
# broker connection (it holds the leases; the program must not close it).
BROKER_FD_ENV = "VMNET_RS_BROKER_FD"
EXEC = "exec"
SUPERVISE = "supervise"
_RESTORED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n))


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


_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def dns_name(name: str | None, command: Sequence[str]) -> str | None:
    """The DNS name the VM asks the broker for: ``--name``, else QEMU's
    ``-name``, when it is a DNS label (``<name>.<network>.vmnet.internal``);
    ``None`` for a name made from the command (no name is asked for)."""
    chosen = vm_name(name, command)
    given = bool(name) or any(a in ("-name", "--name") for a in list(command[1:])[:-1])
    return chosen if given and _DNS_LABEL.match(chosen) else None


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
    return (drivers.get_engine(p.engine).offload and not p.substituted) or any("{mtu" in a for a in command[1:])


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


def default_mode(platform: str = sys.platform) -> str:
    """``exec`` where the broker connection is a socket the VM can inherit (Linux), else ``supervise``."""
    return SUPERVISE if platform == "darwin" else EXEC


def run_vm(
    command: Sequence[str],
    networks: Sequence[str],
    macs: Sequence[str] = (),
    name: str | None = None,
    socket: str | None = None,
    mode: str | None = None,
) -> int:
    """Opens the networks, then execs the VM program (``exec``: returns only
    on failure) or runs it to its end (``supervise``) and returns its status."""
    if not command:
        raise ConfigError("no program given; usage: vmnet-rs run [OPTIONS] -- PROGRAM [ARGS]...")
    mode = mode or default_mode()
    if mode not in (EXEC, SUPERVISE):
        raise ConfigError(f"unknown run mode {mode!r}; use {EXEC} or {SUPERVISE}")
    if mode == EXEC and sys.platform == "darwin":
        raise ConfigError("--exec needs a broker connection the VM can inherit; on macOS it is an XPC session: use --supervise")
    path = resolve_program(command[0])
    first = plan(command, networks, macs, name, check_only=True)  # validate everything before the broker
    if len(first.nics) > HIGH_FD_BASE - drivers.FIRST_FD - 1:
        raise ConfigError(f"{len(first.nics)} networks are too many for one VM; at most {HIGH_FD_BASE - drivers.FIRST_FD - 1}")
    vm = vm_name(name, command)  # names the VM in `vmnet-rs status` and the broker's log
    # The DNS name asked for on every network; a name a running VM holds is refused (NAME_TAKEN).
    asked = {"name": dns} if (dns := dns_name(name, command)) else {}
    client = client_factory(socket)
    high: list[int] = []
    try:
        offload: dict[str, bool] = {}
        mtus: dict[int, int] = {}
        for nic in first.nics:
            opened = client.open(nic.network, nic.backend.fd_type, mac=nic.mac, vnet_hdr=nic.backend.vnet_hdr, vm_name=vm, **asked)
            extra = getattr(opened, "extra", None) or {}
            if extra.get("fqdn"):
                log.info("%s is %s on network %s", extra["fqdn"], extra.get("address", "?"), nic.network)
            high.append(_move_high(int(opened.fd)))
            offload[nic.network] = offload.get(nic.network, False) or bool(getattr(opened, "offload", False))
            mtu = getattr(opened, "mtu", None)
            if mtu:
                mtus[nic.index] = int(mtu)
        final = plan(command, networks, macs, name, offload=offload, mtus=mtus)
        if mode == EXEC:
            _exec(path, final.argv, high, client)  # returns only when exec failed
        return _supervise(path, final.argv, high, client)
    finally:
        for fd in high:
            try:
                os.close(fd)
            except OSError:
                pass
        client.close()


def _exec(path: str, argv: Sequence[str], fds: list[int], client: Any) -> None:
    """Replaces this process with the VM program, which inherits the network
    fds at 3, 4, ... and the broker connection at a high fd (its number in
    ``$VMNET_RS_BROKER_FD``): the leases then end exactly when the VM does.

    Returns only if exec failed (raising :class:`ProgramNotRunnable`); the
    broker connection is then closed, which gives the leases back.
    """
    conn = client.detach()
    inherited = fcntl.fcntl(conn, fcntl.F_DUPFD, HIGH_FD_BASE)  # F_DUPFD: the copy is not close-on-exec
    os.close(conn)
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, drivers.FIRST_FD + i, inheritable=True)
        env = dict(os.environ, **{BROKER_FD_ENV: str(inherited)})
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # Python ignores SIGPIPE and SIGXFSZ for itself; the VM gets the
        # defaults (as subprocess does). Handlers reset to default on exec;
        # signals the caller ignored (nohup) stay ignored.
        restored = {s: signal.signal(s, signal.SIG_DFL) for s in _RESTORED_SIGNALS}
        try:
            os.execve(path, list(argv), env)
        except OSError as e:
            for s, h in restored.items():
                signal.signal(s, h)
            raise ProgramNotRunnable(f"cannot run {path}: {e.strerror or e}") from None
    finally:
        os.close(inherited)


def _supervise(path: str, argv: Sequence[str], fds: list[int], client: Any) -> int:
    """Spawns the VM, forwards signals to it, waits for it, returns its status.

    Says once on stderr if the broker connection drops while the VM runs
    (the VM keeps running without its network).
    """
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
        stop_watching = watch_broker(client, child[0])
        try:
            _, status = os.waitpid(child[0], 0)
        finally:
            stop_watching()
        return exit_status(status)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def watch_broker(client: Any, vm_pid: int) -> Callable[[], None]:
    """Starts a daemon thread that prints one line when the broker connection
    drops (the broker stopped or crashed) and returns a function that stops
    it. Nothing is watched where the connection has no fd (macOS XPC
    sessions)."""
    fileno = getattr(client, "fileno", None)
    fd = fileno() if fileno else None
    if fd is None:
        return lambda: None
    where = getattr(client, "socket", None) or "its socket"
    wake_r, wake_w = os.pipe()

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0))
        poller.register(wake_r, select.POLLIN)
        events = dict(poller.poll())
        # The broker sends nothing unasked: any event on its connection is its end.
        if wake_r not in events and events.get(fd, 0) & ~select.POLLNVAL:
            click.echo(f"vmnet-rs: the broker on {where} went away; VM pid {vm_pid} has lost its network "
                       "(it keeps running; restart the broker, then the VM)", err=True)

    thread = threading.Thread(target=watch, name="vmnet-rs-broker-watch", daemon=True)
    thread.start()

    def stop() -> None:
        os.write(wake_w, b"x")
        thread.join(5)
        os.close(wake_w)
        os.close(wake_r)

    return stop


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-n", "--network", "networks", multiple=True, metavar="NAME[:BACKEND]",
              help="Network to join, repeatable (default: shared). BACKEND per engine: listed above.")
@click.option("--mac", "macs", multiple=True, metavar="MAC",
              help="MAC for the n-th --network (default: derived from the VM name and network).")
@click.option("--name", default=None,
              help="VM name: stable MACs, and the DNS name NAME.NETWORK.vmnet.internal with an address kept for it "
                   "(default: QEMU -name, else from the command, which asks for no DNS name).")
@click.option("--socket", default=None, metavar="PATH", help="Broker socket (default: the system broker).")
@click.option("--exec/--supervise", "exec_mode", default=None,
              help="--exec (default on Linux): become the VM program, which inherits the broker connection, so "
                   "its leases, adaptors and TAPs end exactly when the VM process ends, however it ends; no "
                   "wrapper process stays. --supervise (default on macOS, whose XPC broker connection cannot be "
                   "inherited): a wrapper holds the connection, forwards SIGINT/SIGTERM/SIGHUP, says when the "
                   "broker goes away and exits with the VM's status; SIGKILL to it leaves the VM without a network.")
@click.option("--print-args", is_flag=True,
              help="Print the final command line and exit without running it; checks the networks with the "
                   "broker (leasing nothing), or says it could not ask it.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- PROGRAM [ARGS]...")
def run_command(networks: tuple[str, ...], macs: tuple[str, ...], name: str | None, socket: str | None,
                exec_mode: bool | None, print_args: bool, command: tuple[str, ...]) -> None:
    """Run a VM (qemu-system-*, krunkit, vfkit, or any program) on vmnet-rs networks.

    The network fds are inherited at 3, 4, ...; known engines get the right
    arguments appended, other programs take placeholders in ARGS:
    {fd0} {mac0} {network0} {fdtype0} {mtu0} (0 = first --network).
    With --exec the broker connection is inherited too, at the fd named by
    $VMNET_RS_BROKER_FD; the program must keep it open.

    \b
    Backends (NAME:BACKEND; the first is the default):
      qemu-system-*  Linux: tap_next, tap, stream, socket, dgram, dgram_next
                     macOS: tap, tap_next, stream, socket, dgram, dgram_next
      krunkit        stream, datagram, datagram_next
      vfkit          datagram, datagram_next
      other          datagram, datagram_next, stream (Linux also tap, tap_next)
    """
    mode = None if exec_mode is None else (EXEC if exec_mode else SUPERVISE)
    try:
        if print_args:
            click.echo(shlex.join(print_plan(command, networks, macs, name, socket).argv))
            return
        status = run_vm(command, networks, macs, name, socket, mode)
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

    Everything a real run would check before starting the VM is checked:
    the command line and backends here, the networks with the broker (its
    network list, which leases nothing), which also gives krunkit's
    ``offloading=on`` and ``{mtuN}``. When no broker answers, the line is
    still printed with a warning that the networks were not checked, except
    where the text needs the broker (``{mtuN}``).
    """
    p = plan(command, networks, macs, name, check_only=True)
    try:
        client = client_factory(socket)
    except BrokerUnavailableError as e:
        if any("{mtu" in a for a in command[1:]):
            raise
        assumed = "; assuming the networks have no offload" if needs_broker_for_args(p, command) else ""
        click.echo(f"vmnet-rs: could not ask the broker, so the networks are not checked: {e}{assumed}", err=True)
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
