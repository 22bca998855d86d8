"""``vmnet-rs resolve NAME``: what a VM name is, answered by the broker.

NAME is ``alpha`` (any live network), ``alpha.shared``, the full
``alpha.shared.vmnet.internal`` (the network's ``domain``), ``host.<domain>``
(the gateway), or an address (its name). For scripts: one line per answer,
``FQDN ADDRESS [ADDRESS6] KIND``, or ``--json``. Exits 1 when nothing has
that name (the reason as one ``vmnet-rs:`` line).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import click


def format_answers(answers: List[Dict[str, Any]]) -> List[str]:
    """One line per answer: FQDN, IPv4 address, IPv6 address if any, kind, network."""
    lines = []
    for a in answers:
        addrs = " ".join(str(a[k]) for k in ("address", "address6") if a.get(k))
        lines.append(f"{a['fqdn']} {addrs or '-'} {a['kind']} (network {a['network']})")
    return lines


@click.command("resolve")
@click.argument("name")
@click.option("--socket", default=None, help="The broker socket (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of answers.")
def resolve_command(name: str, socket: Optional[str], as_json: bool) -> None:
    """Show the address of VM NAME (or the name of an address) from the broker:
    granted names (run --name), claimed DHCP host names, host (the gateway)."""
    from .broker import Client

    with Client(socket, timeout=30) as c:
        answers = c.resolve(name)
    if as_json:
        click.echo(json.dumps(answers, indent=2, sort_keys=True))
        return
    for line in format_answers(answers):
        click.echo(line)
