"""``vmnet-rs doctor``: every precondition of the broker on this platform and
a live test, one verdict per line, then a summary to paste into a bug report.

Linux: ``/dev/net/tun``, ``ip``, ``nft``, ``dnsmasq``, CAP_NET_ADMIN (the
broker's own start-up checks, ``vmnet::preflight``), IPv4 forwarding, the
broker socket and its group, subnets that collide with host routes, each
watched piece of every live network (bridge, addresses, nftables table,
forwarding, dnsmasq: FAIL naming the network and the missing piece), the
broker answering, and a relay test: two ports opened on a network through
the broker for each adaptor kind (datagram, datagram_next, stream), a frame
sent each way, each checked on arrival.

macOS: the OS version, the broker binary's signature and entitlement, the
LaunchAgent and its launchd domain, the Mach service answering, a network
created (a serialization acquired twice and compared), and the same relay
test (two interfaces started on the network).

Verdicts: ``ok``, ``warn`` (works, but worth knowing), ``FAIL`` (the broker
or the live test cannot work until fixed; the line says how), ``skip``
(could not be checked because an earlier check failed). Exit status 1 when
any check fails.
"""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import platform
import pwd
import select
import stat
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import click

from . import __version__, framing

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
#: The adaptor kinds the relay test goes through (``tap`` is Linux's direct
#: TAP fd, no relay, so it is not one of them).
RELAY_KINDS = ("datagram", "datagram_next", "stream")
#: An experimental ethertype (IEEE 802 local experimental 1): no host stack answers it.
ETHERTYPE = 0x88B5
FRAME_TIMEOUT_S = 10.0


@dataclass
class Check:
    name: str
    verdict: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" ({self.fix})" if self.fix and self.verdict in (FAIL, WARN) else ""
        return f"{self.verdict:<4}  {self.name}: {self.detail}{fix}"


# --- frames through two ports ---------------------------------------------------------


def _frame(src_mac: str, marker: bytes) -> bytes:
    """A broadcast frame from ``src_mac`` carrying ``marker``."""
    return b"\xff" * 6 + bytes.fromhex(src_mac.replace(":", "")) + struct.pack(">H", ETHERTYPE) + marker.ljust(46, b"\0")


def _send(fd: int, kind: str, frame: bytes) -> None:
    os.write(fd, framing.encode(frame) if kind == "stream" else frame)


def _arrives(fd: int, kind: str, marker: bytes, timeout: float = FRAME_TIMEOUT_S) -> bool:
    """Reads frames from ``fd`` until one carries ``marker`` or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, 65536 + 4)
        if not data:
            return False
        if kind != "stream":
            if marker in data:
                return True
            continue
        frames, pending = framing.split(pending + data)
        if any(marker in frame for frame in frames):
            return True
    return False


def relay_check(client: Any, network: str, kind: str) -> Check:
    """Two ports of ``kind`` on ``network``; a frame each way, checked on arrival."""
    name = f"relay {kind}"
    try:
        a = client.open(network, kind)
    except Exception as e:  # noqa: BLE001 - any failure is the verdict
        return Check(name, FAIL, f"cannot open a {kind} port on {network}: {e}", "see the broker's log (vmnet-rs -v broker, or journalctl -u vmnet-rs)")
    try:
        try:
            b = client.open(network, kind)
        except Exception as e:  # noqa: BLE001
            return Check(name, FAIL, f"cannot open a second {kind} port on {network}: {e}", "see the broker's log")
        try:
            directions = []
            for src, dst, label in ((a, b, "a->b"), (b, a, "b->a")):
                marker = f"vmnet-rs-doctor {kind} {label} {os.getpid()}".encode()
                _send(src.fd, kind, _frame(src.mac, marker))
                directions.append((label, _arrives(dst.fd, kind, marker)))
        finally:
            b.close()
    finally:
        a.close()
    lost = [label for label, arrived in directions if not arrived]
    if lost:
        return Check(name, FAIL, f"frames {', '.join(lost)} did not arrive within {FRAME_TIMEOUT_S:.0f}s on {network}", "run with the broker at -vv and look at the relay counters in `vmnet-rs status`")
    return Check(name, OK, f"two ports on {network} ({a.mac}, {b.mac}): a frame arrived each way")


# --- Linux -----------------------------------------------------------------------------


def _preflight_checks() -> List[Check]:
    from . import _native

    out = []
    for c in _native.preflight_checks():
        verdict = OK if c["ok"] else FAIL
        if c["name"] == "CAP_NET_ADMIN" and not c["ok"] and os.geteuid() != 0:
            # A user's doctor lacks it; the broker runs as root (systemd).
            verdict = WARN
            c["detail"] = "not held by this (non-root) process; the broker needs it and has it when systemd runs it as root"
        out.append(Check(c["name"], verdict, c["detail"], c["fix"]))
    return out


def _forwarding_check() -> Check:
    try:
        value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    except OSError as e:
        return Check("IPv4 forwarding", WARN, f"cannot read net.ipv4.ip_forward: {e}")
    if value == "1":
        return Check("IPv4 forwarding", OK, "net.ipv4.ip_forward = 1")
    return Check(
        "IPv4 forwarding", WARN, "net.ipv4.ip_forward = 0 now", "the broker turns it on when it creates a network with nat44; nothing to do unless a firewall resets it"
    )


def _socket_checks(path: str, groups: List[str]) -> List[Check]:
    out = []
    try:
        st = os.stat(path)
    except OSError:
        out.append(Check("broker socket", FAIL, f"nothing at {path}", "register the broker with `sudo vmnet-rs install`, or start `sudo vmnet-rs broker`"))
        return out
    if not stat.S_ISSOCK(st.st_mode):
        out.append(Check("broker socket", FAIL, f"{path} is not a socket", "remove it; the broker makes the socket"))
        return out
    out.append(Check("broker socket", OK, f"{path} (mode {stat.S_IMODE(st.st_mode):o})"))
    me = pwd.getpwuid(os.getuid()).pw_name
    for g in groups:
        try:
            members = grp.getgrnam(g)
        except KeyError:
            out.append(Check(f"group {g}", WARN, f"no group {g} (allowedGroups names it)", f"`sudo groupadd --system {g}`, or `sudo vmnet-rs install`"))
            continue
        if os.getuid() == 0 or members.gr_gid in os.getgroups() or me in members.gr_mem:
            out.append(Check(f"group {g}", OK, f"{me} may call the broker"))
        else:
            out.append(Check(f"group {g}", WARN, f"{me} is not in {g}", f"`sudo usermod -aG {g} {me}`, then log in again"))
    return out


def _host_routes() -> List[Dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(out.stderr.strip() or f"ip route exited {out.returncode}")
    return list(json.loads(out.stdout or "[]"))


def subnet_collisions(networks: Mapping[str, Any], routes: List[Dict[str, Any]]) -> List[Check]:
    """One check per network with a fixed subnet: FAIL when a host route
    (other than the network's own bridge) overlaps it."""
    from ._native import bridge_name

    out = []
    for name in sorted(networks):
        subnet = networks[name].subnet
        if not subnet:
            out.append(Check(f"subnet {name}", OK, "chosen by the broker at creation (no fixed subnet)"))
            continue
        net = ipaddress.ip_interface(subnet).network
        own = bridge_name(name)
        clashes = []
        for r in routes:
            dst = r.get("dst", "")
            if dst in ("default", "") or r.get("dev") == own or r.get("type") in ("broadcast", "local") or ":" in dst:
                continue
            try:
                other = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
            except ValueError:
                continue
            if isinstance(other, ipaddress.IPv4Network) and net.overlaps(other):
                clashes.append(f"{dst} dev {r.get('dev', '?')}")
        if clashes:
            out.append(Check(f"subnet {name}", FAIL, f"{subnet} overlaps host route {', '.join(sorted(set(clashes)))}", f"give network {name} another subnet in networks.yaml"))
        else:
            out.append(Check(f"subnet {name}", OK, f"{subnet} overlaps no host route"))
    return out


def linux_checks(socket: Optional[str], network: str, config: Optional[str]) -> List[Check]:
    from .broker import socket_path
    from .config import load_config

    checks = _preflight_checks()
    checks.append(_forwarding_check())
    cfg = load_config(config)
    path = socket_path(socket) if socket or os.environ.get("VMNET_RS_SOCKET") else cfg.broker.socket
    checks += _socket_checks(path, list(cfg.broker.allowed_groups))
    try:
        checks += subnet_collisions(cfg.networks, _host_routes())
    except (OSError, ValueError) as e:
        checks.append(Check("subnets", WARN, f"cannot list host routes: {e}"))
    checks += _live_checks(lambda: _connect(path, None), path, network)
    return checks


# --- macOS -----------------------------------------------------------------------------


def _run(argv: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} not found")


def macos_release(product: str, darwin: str) -> str:
    """The macOS version from ``platform.mac_ver()[0]`` (``product``) and the
    Darwin kernel release (``darwin``, ``platform.release()`` on a Mac).

    On macOS 26 ``platform.mac_ver()`` says "16.0" in many builds (Python
    built with an older SDK reads the compatibility string); the kernel
    release is not rewritten: from Darwin 25 (macOS 26) on, macOS's major is
    Darwin's plus one and the minors agree. A product of 16 with no usable
    kernel release still means 26 (docs/macos.md)."""
    parts = darwin.split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) >= 25:
        return f"{int(parts[0]) + 1}.{int(parts[1])}"
    head, _, rest = product.partition(".")
    if head == "16":
        return f"26.{rest}" if rest else "26"
    return product


def macos_checks(mach_service: Optional[str], network: str) -> List[Check]:
    from .install import DEFAULT_MACH_SERVICE, ENTITLEMENT, _plist_path, broker_executable

    checks = []
    release = macos_release(platform.mac_ver()[0], platform.release()) or "unknown"
    major = int(release.split(".")[0]) if release[:1].isdigit() else 0
    if major >= 26:
        checks.append(Check("macOS", OK, f"{release} ({platform.machine()})"))
    else:
        checks.append(Check("macOS", FAIL, f"{release}: vmnet_network needs macOS 26 or later", "upgrade macOS"))
    exe = broker_executable()
    if not exe.is_file():
        checks.append(Check("broker binary", FAIL, f"{exe} is missing", "reinstall the package: pip install vmnet-rs"))
    else:
        verify = _run(["codesign", "--verify", "--strict", str(exe)])
        if verify.returncode == 0:
            checks.append(Check("signature", OK, f"{exe} verifies"))
        else:
            checks.append(Check("signature", FAIL, f"{exe}: {(verify.stderr or verify.stdout).strip()}", "run `vmnet-rs install` (it signs the binary)"))
        ent = _run(["codesign", "-d", "--entitlements", "-", str(exe)])
        if ENTITLEMENT in ent.stdout + ent.stderr:
            checks.append(Check("entitlement", OK, f"{exe} carries {ENTITLEMENT}"))
        else:
            checks.append(Check("entitlement", FAIL, f"{exe} lacks {ENTITLEMENT} (vmnet answers VMNET_MEM_FAILURE without it)", "run `vmnet-rs install`"))
    label = mach_service or os.environ.get("VMNET_RS_MACH_SERVICE") or DEFAULT_MACH_SERVICE
    plist = _plist_path(Path.home(), label)
    if plist.is_file():
        checks.append(Check("LaunchAgent", OK, str(plist)))
    else:
        checks.append(Check("LaunchAgent", FAIL, f"no {plist}", "run `vmnet-rs install`"))
    uid = os.getuid()
    for domain in (f"gui/{uid}", f"user/{uid}"):
        if _run(["launchctl", "print", f"{domain}/{label}"]).returncode == 0:
            checks.append(Check("launchd domain", OK, f"{label} loaded in {domain}"))
            break
    else:
        gui = _run(["launchctl", "print", f"gui/{uid}"]).returncode == 0
        hint = "run `vmnet-rs install`" if gui else "no gui/<uid> domain (no login at the screen): log in at the screen, or `vmnet-rs install --domain user`"
        checks.append(Check("launchd domain", FAIL, f"{label} is not loaded in gui/{uid} or user/{uid}", hint))
    checks += _live_checks(lambda: _connect(None, label), label, network, serialization=True)
    return checks


# --- both ------------------------------------------------------------------------------


def _connect(socket: Optional[str], mach_service: Optional[str]) -> Any:
    from .broker import Client

    return Client(socket, timeout=30, mach_service=mach_service)


def _live_checks(connect: Any, where: str, network: str, serialization: bool = False) -> List[Check]:
    from .errors import VmnetError

    names = ["broker answers", *(["serialization"] if serialization else []), *(f"relay {k}" for k in RELAY_KINDS)]
    try:
        client = connect()
        st = client.status()
    except VmnetError as e:
        # The client's message already says what to do.
        first = Check("broker answers", FAIL, f"{where}: {e}")
        return [first] + [Check(n, SKIP, "no broker to test through") for n in names[1:]]
    out = [Check("broker answers", OK, f"{where}: pid {st.get('pid')} version {st.get('version')} backend {st.get('backend')}")]
    out += network_piece_checks(st)
    out += host_lookup_checks(st)
    out += datagram_queue_checks(st)
    if st.get("config_error"):
        out.append(Check("broker configuration", WARN, f"serving the last good configuration: {st['config_error']}", "fix the file named; `vmnet-rs networks check FILE`"))
    with client:
        if serialization:
            out.append(_serialization_check(client, network))
        out += [relay_check(client, network, kind) for kind in RELAY_KINDS]
    return out


def network_piece_checks(status: Mapping[str, Any]) -> List[Check]:
    """One check per watched piece of each live network (Linux: bridge,
    address, table, forwarding, dnsmasq), from the broker's ``status``:
    FAIL naming the network and the piece when it is missing, warn when it
    is present but left alone (repairs off, or another program manages it)."""
    out = []
    for name, n in sorted(status.get("networks", {}).items()):
        for piece, p in sorted(n.get("pieces", {}).items()):
            label = f"network {name} {piece}"
            repairs = f", repaired {p['repairs']} time(s)" if p.get("repairs") else ""
            alone = p.get("left_alone")
            if not p.get("ok"):
                why = f"; left alone: {alone}" if alone else "; the broker is putting it back"
                fix = "see the broker's log; docs/linux.md says what repairs do and how to turn them off" if alone else "run doctor again in a few seconds"
                out.append(Check(label, FAIL, f"{p.get('missing') or piece} is missing from network {name}{why}{repairs}", fix))
            elif alone:
                out.append(Check(label, WARN, f"present, but left alone: {alone}{repairs}", "see docs/linux.md (repairs)"))
            else:
                out.append(Check(label, OK, f"present{repairs}"))
    return out


def datagram_queue_checks(status: Mapping[str, Any]) -> List[Check]:
    """One check per live datagram endpoint, from the broker's ``status``:
    its receive queue (docs/endpoints.md, "The receive queue"). OK when it
    holds as many datagrams as the broker wants (512), a warning with the
    fix when it holds fewer (Linux: ``net.unix.max_dgram_qlen`` where the
    socket was made, and the broker could not make it in a namespace of its
    own)."""
    from .status_cli import datagram_queue_text

    out = []
    for name, ep in sorted(status.get("endpoints", {}).items()):
        q = ep.get("datagram_queue")
        if q is None:
            continue
        note = q.get("note")
        if not note:
            out.append(Check(f"datagram endpoint {name} queue", OK, datagram_queue_text(q)))
            continue
        detail, _, fix = note.partition(" Fix: ")
        out.append(Check(f"datagram endpoint {name} queue", WARN, detail.rstrip("."), fix))
    return out


def host_lookup_checks(status: Mapping[str, Any]) -> List[Check]:
    """Whether the host finds each live network's names through its own
    resolver (``host.<domain>`` must give the gateway): OK, or a warning
    naming the fix (``vmnet-rs install --resolver``; `vmnet-rs resolve`
    answers either way)."""
    from .install import host_lookup_works

    out = []
    for name, n in sorted(status.get("networks", {}).items()):
        host = n.get("names", {}).get("host")
        if not host or not host.get("address"):
            continue
        ok, detail = host_lookup_works("host", str(host["fqdn"]), str(host["address"]))
        fix = "" if ok else "sudo vmnet-rs install --resolver (vmnet-rs resolve NAME answers without it)"
        out.append(Check(f"network {name} host lookups", OK if ok else WARN, detail, fix))
    return out


def _serialization_check(client: Any, network: str) -> Check:
    try:
        first = client.acquire(network)
        second = client.acquire(network)
    except Exception as e:  # noqa: BLE001
        return Check("serialization", FAIL, f"cannot acquire {network}: {e}", "see the broker's log")
    if not first:
        return Check("serialization", FAIL, f"{network}: the broker returned an empty serialization", "see the broker's log")
    if first != second:
        return Check("serialization", FAIL, f"{network}: two acquisitions returned different serializations", "report this with the summary below")
    return Check("serialization", OK, f"{network}: {len(first)} keys, the same on a second acquire")


def datagram_size_checks(networks: Mapping[str, Any], platform_name: str) -> List[Check]:
    """One line per ``offload`` network with a datagram endpoint on macOS:
    only clients that raise their buffers carry its 64 KiB frames
    (``networks_cli.datagram_size_note``; docs/engines.md)."""
    from .networks_cli import datagram_size_note

    out = []
    for name, net in sorted(networks.items()):
        note = datagram_size_note(net, platform_name)
        if note:
            out.append(Check(f"datagram endpoint {name}", WARN, note, "QEMU on macOS: use the stream endpoint or `vmnet-rs run` (docs/engines.md)"))
    return out


def _datagram_size_checks(config: Optional[str], platform_name: str) -> List[Check]:
    from .config import load_config
    from .errors import ConfigError

    try:
        cfg = load_config(config)
    except ConfigError as e:
        return [Check("datagram endpoints", SKIP, f"configuration not read: {e}")]
    return datagram_size_checks(cfg.networks, platform_name)


def summary(checks: List[Check]) -> Dict[str, Any]:
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in (OK, WARN, FAIL, SKIP)}
    return {
        "vmnet-rs": __version__,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "counts": counts,
        "failed": [c.name for c in checks if c.verdict == FAIL],
    }


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--socket", "socket", default=None, help="Linux: the broker socket (default: $VMNET_RS_SOCKET, the config's socket).")
@click.option("--mach-service", default=None, help="macOS: the broker's Mach service.")
@click.option("--network", default="host", show_default=True, help="The network the live test opens ports on.")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="The configuration whose networks and settings are checked.")
def doctor_command(as_json: bool, socket: Optional[str], mach_service: Optional[str], network: str, config: Optional[str]) -> None:
    """Check every precondition and run a live relay test; one verdict per line."""
    checks = macos_checks(mach_service, network) if sys.platform == "darwin" else linux_checks(socket, network, config)
    checks += _datagram_size_checks(config, "macos" if sys.platform == "darwin" else "linux")
    info = summary(checks)
    if as_json:
        click.echo(json.dumps({"checks": [asdict(c) for c in checks], "summary": info}, indent=2))
    else:
        for c in checks:
            click.echo(c.line())
        click.echo("")
        click.echo("summary (paste into a bug report):")
        click.echo(f"  vmnet-rs {info['vmnet-rs']}; {info['platform']}; {info['python']}")
        counts = info["counts"]
        click.echo(f"  {counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} failed, {counts[SKIP]} skipped" + (f": {', '.join(info['failed'])}" if info["failed"] else ""))
    if info["failed"]:
        raise click.exceptions.Exit(1)


__all__ = ["doctor_command", "Check", "subnet_collisions", "relay_check", "network_piece_checks", "datagram_size_checks", "datagram_queue_checks"]

