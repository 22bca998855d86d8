"""``vmnet-rs networks``: show the resolved networks; ``networks check``: validate files.

Both read configuration through :mod:`vmnet_rs.config`, so they apply the
same rules as the broker. Exit codes as in :mod:`vmnet_rs.cli`: an invalid
configuration exits 2 with every problem printed, one per line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import click

from .config import Config, NetworkConfig, config_search_path, load_config
from .errors import ConfigError

EXIT_INVALID = 2

# The boolean keys shown in the table's ON column, in documented order.
_FLAGS = ("dhcp", "dnsProxy", "nat44", "nat66", "routerAdvertisement", "isolation", "offload")


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Configuration file (default: $VMNET_RS_CONFIG, else ~/.config/vmnet-rs/networks.yaml, else /etc/vmnet-rs/networks.yaml "
    "on Linux or Lima's networks.yaml on macOS; keys: docs/config.md in the vmnet-rs source, or `vmnet-rs networks --json` for every key with its default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the file's shape, every default filled in).")
@click.pass_context
def networks(ctx: click.Context, config_path: Optional[Path], as_json: bool) -> None:
    """Show the networks the broker would serve, defaults filled in.

    Without a subcommand, prints a table (or JSON with --json) of every
    network: those in the configuration file plus the built-in "shared" and
    "host" unless the file redefines them.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = load_config(config_path)
    if as_json:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        for warning in changed_meaning(cfg):
            click.echo(warning, err=True)
        return
    click.echo(format_table(cfg))


@networks.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def check(files: Tuple[Path, ...]) -> None:
    """Validate configuration FILES; print every problem and exit 2 if any.

    A valid file prints one line naming its networks (built-ins included).
    """
    failed = False
    for path in files:
        try:
            cfg = load_config(path)
        except ConfigError as e:
            failed = True
            for line in str(e).splitlines():
                click.echo(line, err=True)
            continue
        names = ", ".join(sorted(cfg.networks))
        click.echo(f"{path}: ok: {len(cfg.networks)} networks ({names})")
        for warning in changed_meaning(cfg):
            click.echo(f"{path}: {warning}", err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_INVALID)


@networks.command("resolve")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.pass_context
def resolve(ctx: click.Context, file: Optional[Path]) -> None:
    """Print the resolved configuration of FILE as compact JSON.

    The file's shape with every default and built-in filled in, as the core
    validates it. The native broker (``vmnet-rs-broker --config FILE``) runs
    this at start so YAML stays Python's; without FILE, the group's
    ``--config``, then the search path. Problems: as ``check``, exit 2.
    """
    path = file if file is not None else ctx.parent.params.get("config_path") if ctx.parent else None
    click.echo(load_config(path).to_json())


def effective_flags(net: NetworkConfig, platform: str) -> Tuple[List[str], List[str]]:
    """(on, off): the boolean keys the platform really turns on for ``net``,
    and those the file asks for that stay off there, each with why. NAT
    exists only in shared mode; on Linux IPv6 (NAT66, router advertisements)
    exists only with an ``ipv6Prefix`` (docs/config.md)."""
    asked = net.to_dict()
    on: List[str] = []
    off: List[str] = []
    for key in _FLAGS:
        if not asked[key]:
            continue
        why = None
        if key in ("nat44", "nat66") and net.mode != "shared":
            why = "host mode has no NAT"
        elif key in ("nat66", "routerAdvertisement") and platform == "linux" and not net.ipv6_prefix:
            why = "no IPv6 on Linux without ipv6Prefix"
        elif key == "routerAdvertisement" and platform == "macos" and net.mode != "shared":
            why = "vmnet ignores it in host mode"
        if why is None:
            on.append(key)
        else:
            off.append(f"{key} ({why})")
    return on, off


def datagram_size_note(net: NetworkConfig, platform: str) -> Optional[str]:
    """What a datagram endpoint client must do to carry an ``offload``
    network's 64 KiB frames on macOS, where a Unix datagram socket keeps
    2048-byte sends and a 4096-byte receive queue unless the client raises
    them (docs/engines.md, "QEMU on macOS"); ``None`` elsewhere."""
    if platform != "macos" or not net.offload or "datagram" not in net.endpoints:
        return None
    return ("offload: only clients that raise their socket buffers (vfkit; libkrun/krunkit, send buffer >= 65550 bytes) "
            "carry 64 KiB frames; QEMU -netdev dgram keeps 2048-byte sends: give QEMU the stream endpoint")


def datagram_queue_note(platform: str, limit: Optional[int] = None) -> Optional[str]:
    """Linux: what the datagram endpoint's receive queue will be when this
    namespace's ``net.unix.max_dgram_qlen`` (``limit``; read from /proc
    when ``None``) is under the broker's wanted depth (docs/endpoints.md,
    "The receive queue"); ``None`` when it is not, on macOS, or unknown."""
    from ._native import DATAGRAM_QUEUE_FRAMES as wanted

    if platform != "linux":
        return None
    if limit is None:
        try:
            limit = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text().strip())
        except (OSError, ValueError):
            return None
    if limit >= wanted:
        return None
    return (f"net.unix.max_dgram_qlen is {limit} here: a root broker makes the endpoint with a {wanted}-datagram queue "
            f"in its own network namespace, any other keeps {limit} and slows under load "
            f"(`sysctl -w net.unix.max_dgram_qlen={wanted}`, systemd's default)")


def _platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def format_table(cfg: Config, platform: Optional[str] = None) -> str:
    """The networks as an aligned table (the ON column as ``platform``,
    default this machine's, really runs them), then one line per port
    forward, reservation, external interface and flag that stays off."""
    platform = platform or _platform()
    if cfg.source is None:
        searched = ", ".join(str(p) for p in config_search_path())
        header = f"config: built-in defaults (no file at {searched})"
    else:
        header = f"config: {cfg.source}"
    rows: List[List[str]] = [["NAME", "MODE", "SUBNET", "IPV6 PREFIX", "MTU", "ON"]]
    details: List[str] = []
    from .endpoints import endpoint_paths

    paths = endpoint_paths(cfg)
    for name in sorted(cfg.networks):
        net = cfg.networks[name]
        rows.append([
            name,
            net.mode,
            net.subnet or "auto",
            net.ipv6_prefix or ("none" if platform == "linux" else "auto"),
            str(net.mtu),
            " ".join(effective_flags(net, platform)[0]) or "-",
        ])
        details.extend(f"{name}: {d}" for d in _details(net))
        off = effective_flags(net, platform)[1]
        if off:
            details.append(f"{name}: off on {platform}: {', '.join(off)}")
        for kind, path in sorted(paths.get(name, {}).items(), reverse=True):
            notes = [datagram_size_note(net, platform), datagram_queue_note(platform)] if kind == "datagram" else []
            note = "; ".join(n for n in notes if n) or None
            details.append(f"{name}: {kind} endpoint {path}" + (f" ({note})" if note else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    b = cfg.broker
    lines = [header]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if details:
        lines.append("")
        lines += details
    lines.append("")
    idle = f"{b.idle_timeout}s" if b.idle_timeout else "never"
    lines.append(f"broker: idle timeout {idle} (unused networks are torn down after it)")
    lines += access_lines(cfg)
    return "\n".join(lines)


def network_access(net: NetworkConfig, cfg: Config) -> Tuple[Sequence[str], Sequence[str]]:
    """(users, groups) besides root and the broker's own user who may use
    ``net``: a network that names either ``allowedUsers`` or ``allowedGroups``
    has only its own lists, the unnamed one empty (fail closed); one that names
    neither has the broker's (docs/config.md). As the broker's
    ``policy::network_access``."""
    if net.allowed_users is None and net.allowed_groups is None:
        return cfg.broker.allowed_users, cfg.broker.allowed_groups
    return net.allowed_users or (), net.allowed_groups or ()


def changed_meaning(cfg: Config) -> List[str]:
    """A warning for each network whose access changed when one named list
    stopped falling back to the broker's other one (CHANGELOG.md): the network
    names one list, leaves the other unset, and the broker's other list is not
    empty, so those it let in before no longer pass."""
    b = cfg.broker
    out = []
    for name in sorted(cfg.networks):
        net = cfg.networks[name]
        if net.allowed_users is not None and net.allowed_groups is None and b.allowed_groups:
            named, key, lost = "allowedUsers", "allowedGroups", b.allowed_groups
        elif net.allowed_groups is not None and net.allowed_users is None and b.allowed_users:
            named, key, lost = "allowedGroups", "allowedUsers", b.allowed_users
        else:
            continue
        out.append(
            f"warning: network {name} names only {named}, so its {key} is empty: the broker's "
            f"{key} [{', '.join(lost)}] no longer applies to it (an unset list used to fall back "
            f"to the broker's; see the changelog); to keep them, add {key}: [{', '.join(lost)}] to network {name}"
        )
    return out


def access_lines(cfg: Config) -> List[str]:
    """Who may use each network (docs/security.md): networks with the broker's
    lists on one line, each network with its own lists on its own, then a
    warning for each network whose meaning changed (:func:`changed_meaning`)."""
    b = cfg.broker
    out = [f"access: root and the broker's own user use and define every network; others use these, "
           f"define their own per clientNetworks: {b.client_networks}, and hold at most "
           f"{b.max_ports_per_user} ports each (maxPortsPerUser)"]

    def lists(users: Sequence[str], groups: Sequence[str]) -> str:
        return f"users [{', '.join(users)}], groups [{', '.join(groups)}]"

    shared = sorted(n for n, net in cfg.networks.items() if net.allowed_users is None and net.allowed_groups is None)
    if shared:
        out.append(f"  {', '.join(shared)}: {lists(b.allowed_users, b.allowed_groups)} (the broker's)")
    for name in sorted(set(cfg.networks) - set(shared)):
        users, groups = network_access(cfg.networks[name], cfg)
        out.append(f"  {name}: {lists(users, groups)} (its own allowedUsers/allowedGroups; an unnamed one is empty)")
    out += changed_meaning(cfg)
    return out


def _details(net: NetworkConfig) -> List[str]:
    out = []
    if net.addresses == "broker":
        out.append("addresses and names from the broker's own port (no vmnet DHCP, no dnsmasq)")
    if net.external_interface:
        out.append(f"external interface {net.external_interface}")
    for pf in net.port_forwarding:
        target = f"[{pf.internal_address}]" if pf.address_family == "ipv6" else pf.internal_address
        out.append(f"forward {pf.protocol}/{pf.address_family} host port {pf.external_port} -> {target}:{pf.internal_port}")
    for r in net.dhcp_reservations:
        out.append(f"reserve {r.address} for {r.mac}")
    return out
