"""``vmnet-rs status``: a health check of the broker, and what it is doing.

Exits 0 when the broker answers and serves the caller; 1 when it cannot be
reached or refuses the caller (the reason printed as one ``vmnet-rs:`` line,
also with ``--json``). For each lease it shows the VM's name, MAC, IP address
(from the network's DHCP lease, Linux) and the pid holding it, so a person
can tell which VM is which.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import click

from .install import _platform_option, current_platform, installed_summary

EXIT_OK = 0
EXIT_FAILED = 1


def lease_vm_name(lease: Dict[str, Any]) -> str:
    """The VM's name as the client gave it, else its DHCP hostname, else
    ``-`` (the process name is shown beside the pid)."""
    return str(lease.get("vm_name") or lease.get("hostname") or "-")


def queue(direction: Dict[str, Any]) -> str:
    """Frames the interface's own queue dropped (a TAP's), when there were any."""
    n = direction.get("queue_drops", 0)
    return f" (+{n} at the TAP queue)" if n else ""


def format_service(sv: Dict[str, Any]) -> List[str]:
    """The lines of a network's own DHCP/DNS port (``addresses: broker``)."""
    c = sv.get("counters", {})
    state = "running" if sv.get("running") else f"STOPPED: {sv.get('error') or 'unknown'}"
    upstreams = sv.get("upstreams") or "none (other names REFUSED)"
    return [
        f"    service: {sv['address']} ({sv['mac']}) {state}, names in {sv['domain']}, resolvers {upstreams}",
        f"    service dhcp: {c.get('dhcp_offers', 0)} offers, {c.get('dhcp_acks', 0)} acks, {c.get('dhcp_naks', 0)} naks, "
        f"{c.get('dhcp_releases', 0)} releases, {c.get('malformed_dhcp', 0)} malformed",
        f"    service dns: {c.get('dns_queries', 0)} queries, {c.get('dns_answered', 0)} answered, {c.get('dns_forwarded', 0)} forwarded, "
        f"{c.get('dns_failed', 0)} failed, {c.get('malformed_dns', 0)} malformed; {c.get('malformed_frames', 0)} malformed frames",
    ]


def format_status(out: Dict[str, Any]) -> List[str]:
    """The human-readable status: installed state, broker, networks, leases."""
    inst = out["installed"]
    lines = [f"installed: {'yes' if inst['installed'] else 'no'} ({inst['platform']})"]
    b = out["broker"]
    if "error" in b:
        return lines  # the reason goes to stderr as the one error line
    idle = int(b["idle_timeout_s"])
    teardown = f"idle networks torn down after {idle}s" if idle else "networks kept until it stops (idle timeout never)"
    if b.get("exits_when_idle"):
        exits = f"exits after {idle}s idle"
    else:
        exits = "runs until stopped"
    lines.append(f"broker: pid {b['pid']} version {b['version']} on {b['endpoint']}, up {b['uptime_s']}s; {teardown}; {exits}")
    if b.get("config_error"):
        # The file did not resolve at the broker's start: it serves the last good configuration.
        lines += [f"  config error: {line}" for line in str(b["config_error"]).splitlines()]
    for name, n in sorted(b.get("networks", {}).items()):
        idle_s = f", idle {n['idle_s']}s" if "idle_s" in n else ""
        repairs = f", {n['repairs']} repair(s)" if "repairs" in n else ""
        lines.append(f"  network {name}: {n['subnet']} on {n['device'] or '-'}, {n['leases']} lease(s){idle_s}{repairs}")
        for nm, a in sorted(n.get("names", {}).items()):
            lines.append(f"    name {a['fqdn']}: {a.get('address', '-')} ({a['kind']})")
        if "service" in n:
            lines += format_service(n["service"])
        for piece, p in sorted(n.get("pieces", {}).items()):
            if not p["ok"] or p.get("left_alone"):
                state = "ok" if p["ok"] else f"MISSING {p.get('missing', '')}".rstrip()
                alone = f"; left alone: {p['left_alone']}" if p.get("left_alone") else ""
                lines.append(f"    {piece}: {state}{alone}")
    for lid, lease in sorted(b.get("leases", {}).items(), key=lambda kv: int(kv[0])):
        process = f" ({lease['process']})" if lease.get("process") else ""
        named = f", name {lease['fqdn']} ({lease['name_kind']})" if lease.get("fqdn") else ""
        line = (
            f"  lease {lid}: {lease['network']} {lease['fd_type']}, VM {lease_vm_name(lease)}, MAC {lease.get('mac') or lease.get('vm_mac') or '-'}, "
            f"IP {lease.get('address') or '-'}{named}, pid {lease['pid']}{process}"
        )
        ad = b.get("adaptors", {}).get(lid)
        if ad:
            h, v = ad["host_to_vm"], ad["vm_to_host"]
            line += f"; host->vm {h['packets']} pkts/{h['drops']} drops{queue(h)}, vm->host {v['packets']} pkts/{v['drops']} drops{queue(v)}"
        lines.append(line)
    if not b.get("leases"):
        lines.append("  no leases")
    for name, ep in sorted(b.get("endpoints", {}).items()):
        paths = ", ".join(f"{k} {ep[k]}" for k in ("stream", "datagram") if k in ep)
        lines.append(f"  endpoints {name}: {paths}, {len(ep.get('ports', {}))} port(s)")
        if "datagram_queue" in ep:
            lines.append(f"    datagram {datagram_queue_text(ep['datagram_queue'])}")
        for lid, p in sorted(ep.get("ports", {}).items(), key=lambda kv: int(kv[0])):
            lines.append(f"    lease {lid}: {p['via']} pid {p['pid']} uid {p['uid']} {p.get('mac', 'no frame yet')}")
    if "max_ports_per_user" in b:
        lines.append(f"  access: clientNetworks {b['client_networks']}, maxPortsPerUser {b['max_ports_per_user']}")
    for uid, u in sorted(b.get("users", {}).items(), key=lambda kv: int(kv[0])):
        limit = f" of {u['max_ports']}" if "max_ports" in u else " (root: no limit)"
        lines.append(f"  uid {uid}: {u['ports']} port(s){limit}, {u['leases']} lease(s)")
    c = b.get("counters", {})
    lines.append("  counters: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    return lines


def datagram_queue_text(q: Dict[str, Any]) -> str:
    """One datagram endpoint's receive queue from the broker's status
    (docs/endpoints.md, "The receive queue"): its depth in datagrams
    (Linux), the receive buffer, how the socket was made, and the fix when
    it is shallower than the broker wants."""
    depth = f"{q['frames']} datagrams" if "frames" in q else "no count limit"
    buf = f", receive buffer {q['recv_bytes'] // 1024} KiB" if "recv_bytes" in q else ""
    text = f"receive queue {depth}{buf} ({q.get('made', '?')})"
    if q.get("note"):
        text += f"; WARNING: {q['note']}"
    return text


@click.command("status")
@click.option("--socket", "socket", default=None, help="The broker socket (default: $VMNET_RS_SOCKET or /run/vmnet-rs/broker.sock).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_platform_option
def status_command(socket: Optional[str], as_json: bool, platform: Optional[str]) -> None:
    """Check the broker and show what it is doing: networks, and per lease
    the VM's name, MAC, IP and pid.

    Exits 1 when the broker cannot be reached or refuses the caller.
    """
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
    else:
        for line in format_status(out):
            click.echo(line)
    if "error" in out["broker"]:
        click.echo(f"vmnet-rs: {out['broker']['error']}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED)
