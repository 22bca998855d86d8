"""``vmnet-rs status``: what is installed and what the running broker is doing."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import click

from .install import _platform_option, current_platform, installed_summary


@click.command("status")
@click.option("--socket", "socket", default=None, help="The broker socket (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_platform_option
def status_command(socket: Optional[str], as_json: bool, platform: Optional[str]) -> None:
    """Show what is installed and what the broker is doing."""
    from .broker import Client
    from .errors import BrokerError

    out: Dict[str, Any] = {"installed": installed_summary(platform or current_platform())}
    try:
        with Client(socket, timeout=30) as c:
            out["broker"] = c.status()
    except BrokerError as e:
        out["broker"] = {"running": False, "error": str(e)}
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True, default=str))
        return
    inst = out["installed"]
    click.echo(f"installed: {'yes' if inst['installed'] else 'no'} ({inst['platform']})")
    b = out["broker"]
    if "error" in b:
        click.echo(f"broker: not reachable: {b['error']}")
        return
    click.echo(f"broker: pid {b['pid']} version {b['version']} on {b['endpoint']}, up {b['uptime_s']}s, idle timeout {b['idle_timeout_s']}s")
    if b.get("config_error"):
        # The file did not resolve at the broker's start: it serves the last good configuration.
        for line in str(b["config_error"]).splitlines():
            click.echo(f"  config error: {line}")
    for name, n in sorted(b.get("networks", {}).items()):
        idle = f", idle {n['idle_s']}s" if "idle_s" in n else ""
        click.echo(f"  network {name}: {n['subnet']} on {n['device'] or '-'}, {n['leases']} lease(s){idle}")
    for lid, lease in sorted(b.get("leases", {}).items(), key=lambda kv: int(kv[0])):
        ad = b.get("adaptors", {}).get(lid)
        extra = ""
        if ad:
            h, v = ad["host_to_vm"], ad["vm_to_host"]
            extra = f", host->vm {h['packets']} pkts/{h['drops']} drops, vm->host {v['packets']} pkts/{v['drops']} drops"
        click.echo(f"  lease {lid}: {lease['network']} {lease['fd_type']} pid {lease['pid']}{extra}")
    for name, ep in sorted(b.get("endpoints", {}).items()):
        paths = ", ".join(f"{k} {ep[k]}" for k in ("stream", "datagram") if k in ep)
        click.echo(f"  endpoints {name}: {paths}, {len(ep.get('ports', {}))} port(s)")
        for lid, p in sorted(ep.get("ports", {}).items(), key=lambda kv: int(kv[0])):
            mac = p.get("mac", "no frame yet")
            click.echo(f"    lease {lid}: {p['via']} pid {p['pid']} uid {p['uid']} {mac}")
    if "max_ports_per_user" in b:
        click.echo(f"  access: clientNetworks {b['client_networks']}, maxPortsPerUser {b['max_ports_per_user']}")
    for uid, u in sorted(b.get("users", {}).items(), key=lambda kv: int(kv[0])):
        limit = f" of {u['max_ports']}" if "max_ports" in u else " (root: no limit)"
        click.echo(f"  uid {uid}: {u['ports']} port(s){limit}, {u['leases']} lease(s)")
    c = b.get("counters", {})
    click.echo("  counters: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
