"""``vmnet-rs leases NAME``: the DHCP leases a Linux network handed out.

Reads the lease file the network's dnsmasq keeps in the backend's state
directory, so it works whichever process (usually the broker) owns the
network. Needs read access to that directory (root by default).
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from .errors import NetworkError

STATE_DIR_ENV = "VMNET_RS_STATE_DIR"


def default_state_dir() -> str:
    """``$VMNET_RS_STATE_DIR``, else the Linux backend's default."""
    from ._native import DEFAULT_NETWORK_STATE_DIR

    return os.environ.get(STATE_DIR_ENV) or DEFAULT_NETWORK_STATE_DIR


def read_leases(name: str, state_dir: str) -> list[dict]:
    """The leases of network ``name`` recorded in ``state_dir``, sorted by address."""
    if not sys.platform.startswith("linux"):
        raise NetworkError(f"leases of network {name!r}: only the Linux backend keeps a lease file")
    from ._native import network_leases

    leases = network_leases(name, state_dir)
    return sorted(leases, key=lambda lease: tuple(int(p) for p in str(lease["address"]).split(".")))


def format_expiry(expires: int, now: float | None = None) -> str:
    if expires == 0:
        return "never"
    left = int(expires - (time.time() if now is None else now))
    if left <= 0:
        return "expired"
    return f"{left // 3600}h{left % 3600 // 60:02d}m"


@click.command("leases")
@click.argument("name")
@click.option("--state-dir", default=None, metavar="DIR", help=f"The backend's state directory (default: ${STATE_DIR_ENV} or the broker's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def leases(name: str, state_dir: str | None, as_json: bool) -> None:
    """Show the DHCP leases of network NAME (Linux)."""
    rows = read_leases(name, state_dir or default_state_dir())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"network {name!r} has handed out no leases")
        return
    click.echo(f"{'ADDRESS':<16} {'MAC':<18} {'EXPIRES IN':<10} HOSTNAME")
    for r in rows:
        click.echo(f"{r['address']:<16} {r['mac']:<18} {format_expiry(int(r['expires'])):<10} {r['hostname'] or '-'}")
