"""``vmnet-rs leases NAME``: the DHCP leases a Linux network handed out.

Reads the lease file the network's dnsmasq keeps in the backend's state
directory, so it works whichever process (usually the broker) owns the
network. Needs read access to that directory (root by default). Where the
guest sent no hostname, the VM's name comes from the broker (the ``vm_name``
its client gave), when a broker answers.
"""

from __future__ import annotations

import json
import sys
import time

import click

from .errors import NetworkError

from . import _native

STATE_DIR_ENV: str = _native.STATE_DIR_ENV


def default_state_dir() -> str:
    """``$VMNET_RS_STATE_DIR``, else the broker's default (the broker's own rule)."""
    return str(_native.default_state_dir())


def read_leases(name: str, state_dir: str) -> list[dict]:
    """The leases of network ``name`` recorded in ``state_dir``, sorted by address."""
    if not sys.platform.startswith("linux"):
        raise NetworkError(f"leases of network {name!r}: only the Linux backend keeps a lease file")
    from ._native import network_leases

    leases = network_leases(name, state_dir)
    return sorted(leases, key=lambda lease: tuple(int(p) for p in str(lease["address"]).split(".")))


def broker_vm_names(network: str, socket: str | None = None) -> dict[str, str]:
    """MAC -> VM name of the broker's leases on ``network``; empty when no
    broker answers or it refuses (the lease file alone is still shown)."""
    return {mac: str(lease["vm_name"]) for mac, lease in broker_leases(network, socket).items() if lease.get("vm_name")}


def broker_leases(network: str, socket: str | None = None) -> dict[str, dict]:
    """MAC -> the broker's lease (``vm_name``, ``name``, ``fqdn``,
    ``name_kind``, ``address``) on ``network``; empty when no broker answers
    or it refuses (the lease file alone is still shown)."""
    from .broker import Client
    from .errors import BrokerError

    try:
        with Client(socket, timeout=5) as c:
            status = c.status()
    except BrokerError:
        return {}
    out = {str(lease["mac"]): dict(lease) for lease in status.get("leases", {}).values() if lease.get("network") == network and lease.get("mac")}
    # Claimed names (DHCP host names no granted name holds) have no lease of their own.
    for a in status.get("networks", {}).get(network, {}).get("names", {}).values():
        if a.get("mac") and a["mac"] not in out:
            out[str(a["mac"])] = {"name": a["name"], "fqdn": a["fqdn"], "name_kind": a["kind"], "address": a.get("address")}
    return out


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
@click.option("--socket", default=None, help="The broker to ask for VM names (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def leases(name: str, state_dir: str | None, socket: str | None, as_json: bool) -> None:
    """Show the DHCP leases of network NAME (Linux): address, MAC, expiry,
    and the guest's hostname, else the VM's name from the broker."""
    rows = read_leases(name, state_dir or default_state_dir())
    known = broker_leases(name, socket) if rows else {}
    for r in rows:
        b = known.get(r["mac"], {})
        for k in ("vm_name", "name", "fqdn", "name_kind"):
            if b.get(k):
                r[k] = b[k]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"network {name!r} has handed out no leases yet")
        return
    click.echo(f"{'ADDRESS':<16} {'MAC':<18} {'EXPIRES IN':<10} NAME")
    for r in rows:
        if r.get("fqdn"):
            who = f"{r['fqdn']} ({r['name_kind']})"
        else:
            who = r["hostname"] or (f"(VM {r['vm_name']})" if r.get("vm_name") else "-")
        click.echo(f"{r['address']:<16} {r['mac']:<18} {format_expiry(int(r['expires'])):<10} {who}")
