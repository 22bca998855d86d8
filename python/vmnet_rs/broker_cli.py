"""``vmnet-rs broker``: run the broker in the foreground until it is idle.

Lima's spellings work: ``--mach-service NAME`` (macOS: serve that Mach
service, as launchd starts it) and ``--unregister-mach-service`` (boot the
LaunchAgent out and delete its files, then exit).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Optional

import click

from .errors import ConfigError, VmnetError

log = logging.getLogger("vmnet_rs")


def _native_log_level() -> str:
    level = logging.getLogger("vmnet_rs").getEffectiveLevel()
    return "debug" if level <= logging.DEBUG else "info" if level <= logging.INFO else "warning"


@click.command("broker")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Networks and broker settings (YAML).")
@click.option("--socket", "socket", default=None, help="Linux: the socket to serve (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option("--idle-timeout", type=click.IntRange(min=0), default=None, help="Seconds with nothing in use before networks go and the broker exits (0: never).")
@click.option("--mach-service", "--mach-service-name", "mach_service", default=None, help="macOS: the Mach service to serve (as launchd starts it).")
@click.option("--unregister-mach-service", is_flag=True, help="macOS: remove the LaunchAgent (as `vmnet-rs uninstall`) and exit.")
@click.option("--backend", type=click.Choice(["platform", "hub"]), default="platform", hidden=True, help="hub: in-process test network.")
@click.option("--state-dir", default=None, hidden=True, help="Linux backend records (default /run/vmnet-rs/state).")
@click.option("--monitor-interval", type=float, default=1.0, hidden=True, help="Seconds between lease checks.")
def broker_command(
    config_file: Optional[str],
    socket: Optional[str],
    idle_timeout: Optional[int],
    mach_service: Optional[str],
    unregister_mach_service: bool,
    backend: str,
    state_dir: Optional[str],
    monitor_interval: float,
) -> None:
    """Run the broker in the foreground; it exits when idle (launchd or systemd start it again)."""
    if unregister_mach_service:
        from .install import run_plan, uninstall_plan

        run_plan(uninstall_plan("macos", mach_service, config_file), dry_run=False)
        return
    if sys.platform == "darwin" or mach_service is not None:
        if sys.platform != "darwin":
            raise ConfigError("--mach-service: Mach services exist only on macOS; on Linux the broker serves --socket")
        raise VmnetError("the macOS broker (XPC Mach service) is not available in this build; the Linux socket broker is")
    from . import _native
    from .broker import Broker

    _native.set_log_level(_native_log_level())
    config = None
    try:
        from .config import load_config  # type: ignore[attr-defined]
    except ImportError:
        if config_file is not None:
            raise ConfigError("--config: this build cannot read config files (vmnet_rs.config is missing)") from None
    else:
        config = load_config(config_file)
    broker = Broker(config, socket=socket, idle_timeout=idle_timeout, backend=backend, state_dir=state_dir, monitor_interval=monitor_interval)
    # systemd and launchd stop the broker with SIGTERM: tear the networks
    # down as for Ctrl-C instead of dying with them in place.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        broker.start()
        click.echo(f"vmnet-rs: broker pid {os.getpid()} serving {broker.socket}", err=True)
        reason = broker.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(f"vmnet-rs: broker stopped: {reason}", err=True)
