"""``vmnet-rs broker``: run the broker in the foreground.

Started by hand it runs until stopped (Ctrl-C, SIGTERM, ``shutdown``);
idle networks are still torn down after the idle timeout. It exits by
itself when idle only when systemd or launchd started it on demand, or when
``--idle-timeout`` is given. It prints one start line (where it listens,
which networks, whether and when it exits) and, when stopped, every VM
that loses its network. Exit codes: 0 after idle exit, ``shutdown`` or
SIGTERM (a service manager's stop), 130 after Ctrl-C (SIGINT).

Lima's spellings work: ``--mach-service NAME`` (macOS: serve that Mach
service, as launchd starts it) and ``--unregister-mach-service`` (boot the
LaunchAgent out and delete its files, then exit).
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Optional

import click

from .errors import ConfigError, VmnetError

log = logging.getLogger("vmnet_rs")

#: Why the broker stopped, as serve_forever() reports a signal.
INTERRUPTED = "interrupted (Ctrl-C)"
TERMINATED = "terminated (SIGTERM)"
EXIT_INTERRUPTED = 130


def refuse_without_preconditions() -> None:
    """Raises one line naming every missing precondition of the platform
    backend and what to do (the same check as ``vmnet-rs-broker``'s start)."""
    from . import _native

    failed = [c for c in _native.preflight_checks() if not c["ok"]]
    if failed:
        raise VmnetError("the broker cannot start here: " + "; ".join(f"{c['name']}: {c['detail']} ({c['fix']})" for c in failed))


def _native_log_level() -> str:
    level = logging.getLogger("vmnet_rs").getEffectiveLevel()
    return "debug" if level <= logging.DEBUG else "info" if level <= logging.INFO else "warning"


@click.command("broker")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Networks and broker settings (YAML).")
@click.option("--socket", "socket", default=None, help="Linux: the socket to serve (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option(
    "--idle-timeout",
    type=click.IntRange(min=0),
    default=None,
    metavar="S",
    help="Seconds before an unused network is torn down, and, given here, before an idle broker exits (0: never). Without it a broker started by hand runs until stopped.",
)
@click.option("--mach-service", "--mach-service-name", "mach_service", default=None, help="macOS: the Mach service to serve (as launchd starts it).")
@click.option("--unregister-mach-service", is_flag=True, help="macOS: remove the LaunchAgent (as `vmnet-rs uninstall`) and exit.")
@click.option("--code-signing-requirement", default=None, help="macOS: a code-signing requirement every caller must satisfy.")
@click.option("--lima-cdhash-rule", is_flag=True, help="macOS before 26.2: serialization only for callers with the broker's CDHash (Lima's rule).")
@click.option("--endpoint-dir", default=None, type=click.Path(file_okay=False),
              help="Where each network's stream and datagram socket paths go (default: the config's endpointDir, else "
                   "the broker socket's directory on Linux, ~/Library/Application Support/vmnet-rs/endpoints on macOS).")
@click.option("--no-endpoints", is_flag=True, help="Serve no per-network socket paths (docs/endpoints.md in the vmnet-rs source).")
@click.option("--backend", type=click.Choice(["platform", "hub"]), default="platform", hidden=True, help="hub: in-process test network.")
@click.option(
    "--state-dir",
    default=None,
    metavar="DIR",
    help="Linux: where the networks' records live (dnsmasq leases, cleanup); one per broker (default: $VMNET_RS_STATE_DIR or /run/vmnet-rs/state).",
)
@click.option(
    "--data-dir",
    default=None,
    metavar="DIR",
    help="Where the address records live, kept across reboots (default: $VMNET_RS_DATA_DIR, the config's dataDir, "
    "a state directory given, /var/lib/vmnet-rs for root on Linux, else the user's data directory; docs/config.md in the vmnet-rs source).",
)
@click.option("--monitor-interval", type=float, default=1.0, hidden=True, help="Seconds between lease checks.")
def broker_command(
    config_file: Optional[str],
    socket: Optional[str],
    idle_timeout: Optional[int],
    mach_service: Optional[str],
    unregister_mach_service: bool,
    code_signing_requirement: Optional[str],
    lima_cdhash_rule: bool,
    endpoint_dir: Optional[str],
    no_endpoints: bool,
    backend: str,
    state_dir: Optional[str],
    data_dir: Optional[str],
    monitor_interval: float,
) -> None:
    """Run the broker in the foreground until stopped (Ctrl-C).

    It exits by itself when idle only if started on demand by systemd or
    launchd (see `vmnet-rs install`) or if --idle-timeout is given.
    """
    if unregister_mach_service:
        from .install import run_plan, uninstall_plan

        if sys.platform != "darwin":
            raise ConfigError("--unregister-mach-service: Mach services exist only on macOS; on Linux use `vmnet-rs uninstall`")
        run_plan(uninstall_plan("macos", mach_service, config_file), dry_run=False)
        return
    if mach_service is not None and sys.platform != "darwin":
        raise ConfigError("--mach-service: Mach services exist only on macOS; on Linux the broker serves --socket")
    from . import _native
    from .broker import Broker
    from .config import load_config

    _native.set_log_level(_native_log_level())
    config = load_config(config_file)
    if no_endpoints and endpoint_dir is not None:
        raise ConfigError("--endpoint-dir and --no-endpoints contradict each other: give one")
    if backend == "platform":
        refuse_without_preconditions()
    broker = Broker(
        config,
        socket=socket,
        idle_timeout=idle_timeout,
        backend=backend,
        state_dir=state_dir,
        data_dir=data_dir,
        monitor_interval=monitor_interval,
        mach_service=mach_service,
        code_signing_requirement=code_signing_requirement,
        lima_serialization_rule=lima_cdhash_rule,
        endpoints=not no_endpoints,
        endpoint_dir=endpoint_dir,
        # The DNS proxy forwards to the host's resolvers unless the
        # environment chose, as vmnet-rs-broker does (broker::launch).
        host_dns=True,
    )
    # systemd and launchd stop the broker with SIGTERM: tear the networks
    # down as for Ctrl-C instead of dying with them in place.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(TERMINATED)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        broker.start()
        click.echo(broker.start_line, err=True)
        for network, paths in sorted(broker.endpoints.items()):
            click.echo(f"vmnet-rs: network {network}: " + ", ".join(f"{k} {p}" for k, p in sorted(paths.items(), reverse=True)), err=True)
        reason = broker.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(f"vmnet-rs: broker stopped: {reason}", err=True)
    if reason == INTERRUPTED:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
