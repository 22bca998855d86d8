"""Driver wiring: how each VM engine is handed its network.

This module owns the exact command-line strings that join a VM engine to a
vmnet-rs network, the mapping from an engine's backend names to the fd type
the broker hands out, and the MAC addresses VMs get when none is given. It
does no I/O: ``vmnet-rs run`` (:mod:`vmnet_rs.run`) and Python users call it
with the fds they obtained from the broker.

Engines and backends (``--network NAME:BACKEND``):

========  ============  ======================  =================================================
engine    backend       broker fd type          arguments (``<i>`` = NIC index + 1, ``<N>`` = fd)
========  ============  ======================  =================================================
qemu      tap           macOS: datagram         ``-netdev tap,id=net<i>,fd=<N>``
                        Linux: tap (the TAP fd)
qemu      tap_next      macOS: datagram_next    ``-netdev tap,id=net<i>,fd=<N>``
                        Linux: tap + vnet_hdr
qemu      socket        stream                  ``-netdev socket,id=net<i>,fd=<N>``
qemu      stream        stream                  ``-netdev stream,id=net<i>,addr.type=fd,addr.str=<N>``
qemu      dgram         datagram                ``-netdev dgram,id=net<i>,local.type=fd,local.str=<N>``
qemu      dgram_next    datagram_next           same as dgram
krunkit   datagram      datagram                ``--device virtio-net,type=unixgram,fd=<N>,mac=<MAC>``
krunkit   datagram_next datagram_next           same as datagram
krunkit   stream        stream                  ``--device virtio-net,type=unixstream,fd=<N>,mac=<MAC>``
vfkit     datagram      datagram                ``--device virtio-net,fd=<N>,mac=<MAC>``
vfkit     datagram_next datagram_next           same as datagram
========  ============  ======================  =================================================

Every QEMU netdev is followed by ``-device virtio-net-pci,netdev=net<i>,mac=<MAC>``
(``virtio-net-ccw`` for ``qemu-system-s390x``). krunkit gets ``,offloading=on``
only when the network has offload (checksum offload and TSO on the vmnet
interface); without it krunkit's default (off) matches the interface.

The QEMU backend names are Lima's (``_LIMA_QEMU_VMNET_BACKEND``), with Lima's
meaning on macOS. On Linux there is no need for a relay in front of QEMU: the
broker hands QEMU the TAP device's own fd (fd type ``tap``), which QEMU reads
and writes directly. ``tap_next`` asks the broker to open that TAP with
``IFF_VNET_HDR``, so the guest gets checksum offload and TSO through the
kernel. QEMU learns this from the fd itself (``TUNGETIFF``): QEMU refuses
``vnet_hdr=`` together with ``fd=`` ("vnet_hdr= ... are invalid with fd=",
QEMU 7.2), so the netdev string is the same for both.

Other programs (``generic``) name the fd type directly and receive the fd
numbers and MACs through placeholders in their arguments (:func:`substitute`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import _native
from .errors import ConfigError

# fd numbers the VM inherits its network sockets at: 3 for the first NIC,
# 4 for the second, ... (0-2 are stdio).
FIRST_FD = 3

QEMU = "qemu"
KRUNKIT = "krunkit"
VFKIT = "vfkit"
GENERIC = "generic"

# Broker fd types (the request's FdType).
DATAGRAM = "datagram"
DATAGRAM_NEXT = "datagram_next"
STREAM = "stream"
TAP = "tap"


@dataclass(frozen=True)
class Backend:
    """One way of joining an engine to a network.

    ``fd_type`` is what the broker is asked for; ``vnet_hdr`` asks for a TAP
    fd opened with ``IFF_VNET_HDR`` (Linux ``tap`` fd type only).
    """

    engine: str
    name: str
    fd_type: str
    vnet_hdr: bool = False


def _is_macos(platform: str) -> bool:
    return platform == "darwin"


def _platform_key(platform: str) -> str:
    return "darwin" if _is_macos(platform) else "linux"


def resolve_backend(engine: str, name: str | None, platform: str = sys.platform) -> Backend:
    """The :class:`Backend` called ``name`` (or the default) for ``engine``; a clear error otherwise."""
    table = backends(engine, platform)
    chosen = name or default_backend(engine, platform)
    if chosen not in table:
        where = "macOS" if _is_macos(platform) else "Linux"
        raise ConfigError(
            f"backend {chosen!r} is not available for {engine} on {where}; choose one of: {', '.join(table)}"
        )
    return table[chosen]


# --- MAC addresses -----------------------------------------------------------

def normalize_mac(mac: str) -> str:
    """``mac`` as lower-case colon-separated hex; raises ConfigError unless it
    is a VM's MAC by the configuration's rule (the native ``check_mac``)."""
    normalised, why = _native.check_mac(mac or "")
    if why == "syntax":
        raise ConfigError(f"MAC address {mac!r} is not six hex octets like 52:54:00:12:34:56")
    if why == "multicast":
        raise ConfigError(f"MAC address {mac!r} is a multicast address; a NIC needs a unicast one (even first octet)")
    if why == "zero" or normalised is None:
        raise ConfigError(f"MAC address {mac!r} is all zeros; give a real address or leave --mac out")
    return normalised


def derive_mac(vm_name: str, network: str, occurrence: int = 0) -> str:
    """A stable, locally administered unicast MAC for a VM's NIC on ``network``.

    The same (VM name, network, occurrence) always gives the same address, so
    a VM keeps its DHCP lease across restarts; ``occurrence`` tells apart two
    NICs of one VM on the same network. 46 of the 48 bits come from SHA-256,
    so distinct inputs collide with probability about n^2 / 2^47.
    """
    digest = hashlib.sha256(f"vmnet-rs\0{vm_name}\0{network}\0{occurrence}".encode()).digest()
    octets = bytearray(digest[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{o:02x}" for o in octets)


# --- NICs and argument builders ----------------------------------------------


@dataclass(frozen=True)
class Nic:
    """One VM network interface: which network, how it is joined, its fd number and MAC.

    ``index`` is 0-based; ``fd`` is the number the VM process sees.
    ``offload`` says whether the network's interfaces use checksum offload/TSO.
    """

    index: int
    network: str
    backend: Backend
    fd: int
    mac: str
    offload: bool = False


def plan_nics(
    networks: Sequence[tuple[str, str | None]],
    engine: str,
    vm_name: str,
    macs: Sequence[str] = (),
    platform: str = sys.platform,
    offload: Mapping[str, bool] | None = None,
) -> list[Nic]:
    """The NICs for ``networks`` (``(name, backend or None)`` pairs), at fds 3, 4, ...

    ``macs`` give the first NICs' addresses in order; the rest are derived
    with :func:`derive_mac`. Raises ConfigError on a bad or repeated MAC.
    """
    if not networks:
        raise ConfigError("no network given; add --network NAME[:BACKEND] (e.g. --network shared)")
    if len(macs) > len(networks):
        raise ConfigError(f"{len(macs)} --mac options for {len(networks)} --network options; give at most one per network")
    nics: list[Nic] = []
    seen: dict[str, int] = {}
    for i, (network, backend_name) in enumerate(networks):
        if not network:
            raise ConfigError("empty network name in --network; use NAME or NAME:BACKEND")
        backend = resolve_backend(engine, backend_name, platform)
        occurrence = seen.get(network, 0)
        seen[network] = occurrence + 1
        mac = normalize_mac(macs[i]) if i < len(macs) else derive_mac(vm_name, network, occurrence)
        nics.append(Nic(i, network, backend, FIRST_FD + i, mac, bool((offload or {}).get(network, False))))
    dup = _first_duplicate(n.mac for n in nics)
    if dup:
        raise ConfigError(f"MAC address {dup} is given to two NICs; every NIC needs its own")
    return nics


def _first_duplicate(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None


def qemu_netdev(nic: Nic) -> str:
    """The ``-netdev`` value for ``nic`` (docs/engines.md)."""
    i, n, name = nic.index + 1, nic.fd, nic.backend.name
    if name in ("tap", "tap_next"):
        return f"tap,id=net{i},fd={n}"
    if name == "socket":
        return f"socket,id=net{i},fd={n}"
    if name == "stream":
        return f"stream,id=net{i},addr.type=fd,addr.str={n}"
    if name in ("dgram", "dgram_next"):
        return f"dgram,id=net{i},local.type=fd,local.str={n}"
    raise ConfigError(f"backend {name!r} is not a QEMU backend")


def qemu_nic_model(program: str) -> str:
    """The virtio-net device model for a QEMU binary: ccw on s390x, else PCI."""
    return "virtio-net-ccw" if os.path.basename(program) == "qemu-system-s390x" else "virtio-net-pci"


def qemu_args(nics: Sequence[Nic], program: str = "qemu-system-x86_64") -> list[str]:
    """The QEMU arguments for ``nics``: one ``-netdev`` and one ``-device`` per NIC."""
    model = qemu_nic_model(program)
    args: list[str] = []
    for nic in nics:
        args += ["-netdev", qemu_netdev(nic), "-device", f"{model},netdev=net{nic.index + 1},mac={nic.mac}"]
    return args


def check_qemu_ids(args: Sequence[str], nics: Sequence[Nic]) -> None:
    """Raises ConfigError if ``args`` already define a netdev id that :func:`qemu_args` would add."""
    ours = {f"net{nic.index + 1}" for nic in nics}
    for flag, value in zip(args, args[1:]):
        if flag.lstrip("-") not in ("netdev", "nic"):
            continue
        for part in value.split(","):
            key, _, ident = part.partition("=")
            if key == "id" and ident in ours:
                raise ConfigError(
                    f"the QEMU command line already has a netdev with id={ident}, which vmnet-rs adds for "
                    f"--network {nic_for(nics, ident).network}; rename yours, or wire vmnet-rs in yourself with "
                    "placeholders ({fd0}, {mac0})"
                )


def nic_for(nics: Sequence[Nic], netdev_id: str) -> Nic:
    return next(n for n in nics if f"net{n.index + 1}" == netdev_id)


def krunkit_args(nics: Sequence[Nic]) -> list[str]:
    """The krunkit arguments: ``--device virtio-net,type=unixgram|unixstream,fd=N,mac=M[,offloading=on]``."""
    args: list[str] = []
    for nic in nics:
        kind = "unixstream" if nic.backend.fd_type == STREAM else "unixgram"
        value = f"virtio-net,type={kind},fd={nic.fd},mac={nic.mac}"
        if nic.offload:
            value += ",offloading=on"
        args += ["--device", value]
    return args


def vfkit_args(nics: Sequence[Nic]) -> list[str]:
    """The vfkit arguments: ``--device virtio-net,fd=N,mac=M`` (a connected datagram socket)."""
    args: list[str] = []
    for nic in nics:
        args += ["--device", f"virtio-net,fd={nic.fd},mac={nic.mac}"]
    return args


def _generic_args(nics: Sequence[Nic], program: str) -> list[str]:
    raise ConfigError(
        f"{os.path.basename(program)} is not a VM engine vmnet-rs knows (qemu-system-*, krunkit, vfkit); "
        "put placeholders such as {fd0} and {mac0} in its arguments"
    )


# --- engines -------------------------------------------------------------------
#
# One Engine per VM engine: everything vmnet-rs knows about it. A new engine
# is one more entry in ENGINE_TABLE (and its argument builder above).


@dataclass(frozen=True)
class Engine:
    """One VM engine: how to recognise it, its backends, its default, its arguments.

    ``backends(platform)`` lists the ways it joins a network on ``platform``
    (``sys.platform`` values); ``default`` maps ``"linux"``/``"darwin"`` to the
    backend used when ``--network`` names none; ``args(nics, program)`` builds
    the arguments appended to its command line; ``offload`` says whether the
    builder passes the network's offload setting on to the engine (krunkit's
    ``offloading=on``); ``matches(basename)`` recognises its program.
    """

    name: str
    backends: Callable[[str], list[Backend]]
    default: Mapping[str, str]
    args: Callable[[Sequence[Nic], str], list[str]]
    offload: bool
    matches: Callable[[str], bool]


def _qemu_backends(platform: str) -> list[Backend]:
    if _is_macos(platform):
        taps = [Backend(QEMU, "tap", DATAGRAM), Backend(QEMU, "tap_next", DATAGRAM_NEXT)]
    else:
        taps = [Backend(QEMU, "tap", TAP), Backend(QEMU, "tap_next", TAP, vnet_hdr=True)]
    return taps + [
        Backend(QEMU, "socket", STREAM),
        Backend(QEMU, "stream", STREAM),
        Backend(QEMU, "dgram", DATAGRAM),
        Backend(QEMU, "dgram_next", DATAGRAM_NEXT),
    ]


def _generic_backends(platform: str) -> list[Backend]:
    table = [Backend(GENERIC, n, n) for n in (DATAGRAM, DATAGRAM_NEXT, STREAM)]
    if not _is_macos(platform):
        table += [Backend(GENERIC, "tap", TAP), Backend(GENERIC, "tap_next", TAP, vnet_hdr=True)]
    return table


# Default backends, and why (docs/usage.md "Backends"; the numbers are in
# docs/performance.md):
# - qemu on Linux: tap_next hands QEMU the TAP fd itself (no relay at all)
#   with IFF_VNET_HDR, so the guest gets checksum offload and TSO: it moves
#   64 KiB segments where the socket backends move 1514-byte frames
#   (VM to VM per backend: tests/vm/bench.py, numbers in docs/performance.md).
# - qemu on macOS: tap (a datagram socketpair), Lima's default and fastest
#   in Lima's ranking (tap > socket = stream > dgram > dgram_next > tap_next).
# - krunkit: stream. Datagram is reported slightly faster, but under
#   `iperf3 -P 3` krunkit's NIC stopped on ENOBUFS over datagram while stream
#   kept running (docs/engines.md); a NIC that stops is worse than a few
#   percent.
# - vfkit: datagram, the only socket kind vfkit takes by fd.
# - generic: datagram, the simplest framing (one frame per datagram).
ENGINE_TABLE: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine(QEMU, _qemu_backends, {"linux": "tap_next", "darwin": "tap"}, lambda nics, program: qemu_args(nics, program),
               offload=False, matches=lambda base: base.startswith("qemu-system-")),
        Engine(KRUNKIT, lambda _p: [Backend(KRUNKIT, n, n) for n in (DATAGRAM, DATAGRAM_NEXT, STREAM)],
               {"linux": STREAM, "darwin": STREAM}, lambda nics, _program: krunkit_args(nics),
               offload=True, matches=lambda base: base == "krunkit"),
        Engine(VFKIT, lambda _p: [Backend(VFKIT, n, n) for n in (DATAGRAM, DATAGRAM_NEXT)],
               {"linux": DATAGRAM, "darwin": DATAGRAM}, lambda nics, _program: vfkit_args(nics),
               offload=False, matches=lambda base: base == "vfkit"),
        # Anything else: fds and MACs through placeholders (substitute); always last.
        Engine(GENERIC, _generic_backends, {"linux": DATAGRAM, "darwin": DATAGRAM}, _generic_args,
               offload=False, matches=lambda _base: True),
    )
}
ENGINES = tuple(ENGINE_TABLE)


def get_engine(name: str) -> Engine:
    """The :class:`Engine` called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return ENGINE_TABLE[name]
    except KeyError:
        raise ConfigError(f"unknown VM engine {name!r}; known: {', '.join(ENGINES)}") from None


def backends(engine_name: str, platform: str = sys.platform) -> dict[str, Backend]:
    """The backends ``engine_name`` offers on ``platform`` (``sys.platform`` values), by name."""
    return {b.name: b for b in get_engine(engine_name).backends(platform)}


def default_backend(engine_name: str, platform: str = sys.platform) -> str:
    """The backend ``engine_name`` uses when ``--network`` names none."""
    return get_engine(engine_name).default[_platform_key(platform)]


def engine_for(program: str) -> str:
    """The engine a program is, by its basename: qemu-system-*, krunkit, vfkit, else generic."""
    base = os.path.basename(program)
    return next(e.name for e in ENGINE_TABLE.values() if e.matches(base))


def engine_args(engine_name: str, nics: Sequence[Nic], program: str) -> list[str]:
    """The arguments to append to ``program``'s command line for ``nics``."""
    return get_engine(engine_name).args(nics, program)


# --- path endpoints (docs/engines.md) ----------------------------------------
#
# The broker also listens, per network, on two socket paths that VM engines
# connect to by themselves, with no `vmnet-rs run` in between:
# `<endpointDir>/<network>.stream.sock` (4-byte big-endian length + frame, one
# connection per VM) and `<endpointDir>/<network>.dgram.sock` (one frame per
# datagram; each client binds its own path). The builders below give each
# engine's arguments for them; docs/engines.md shows them in use and
# tests/test_drivers.py pins them.

#: Endpoint kind (network key ``endpoints``) -> the word in its socket file
#: name (``<network>.stream.sock``) and its activation name (systemd
#: ``FileDescriptorName=``, launchd ``Sockets`` key: ``<network>.stream``).
#: The broker's own rule (``rust/src/broker/endpoints.rs``), read from ``_native``.
ENDPOINT_SUFFIXES: dict[str, str] = dict(_native.ENDPOINT_SUFFIXES)
STREAM_SUFFIX = str(_native.endpoint_path("", "", STREAM))
DGRAM_SUFFIX = str(_native.endpoint_path("", "", DATAGRAM))
# QEMU's stream client retries a lost connection this often (QEMU >= 9.2), so
# a VM gets its network back by itself when the broker restarts (Lima's value).
RECONNECT_MS = 500


def endpoint_paths(endpoint_dir: str, network: str) -> dict[str, str]:
    """The ``stream`` and ``datagram`` endpoint paths of ``network`` under ``endpoint_dir``."""
    return {kind: str(_native.endpoint_path(endpoint_dir, network, kind)) for kind in (STREAM, DATAGRAM)}


def qemu_stream_path_args(path: str, mac: str, index: int = 0, reconnect_ms: int | None = RECONNECT_MS,
                          program: str = "qemu-system-x86_64") -> list[str]:
    """QEMU joined to a stream endpoint: ``-netdev stream,server=off,addr.type=unix,addr.path=PATH``.

    ``reconnect_ms`` (QEMU >= 9.2; None leaves it out) makes QEMU connect
    again after the broker restarts.
    """
    netdev = f"stream,id=net{index + 1},server=off,addr.type=unix,addr.path={_qemu_value(path)}"
    if reconnect_ms is not None:
        netdev += f",reconnect-ms={int(reconnect_ms)}"
    return ["-netdev", netdev, "-device", f"{qemu_nic_model(program)},netdev=net{index + 1},mac={normalize_mac(mac)}"]


def qemu_dgram_path_args(path: str, local_path: str, mac: str, index: int = 0,
                         program: str = "qemu-system-x86_64") -> list[str]:
    """QEMU joined to a datagram endpoint: it binds ``local_path`` and sends to ``path``.

    QEMU does not remove ``local_path`` when it exits, and refuses to start
    if it exists: pick a fresh one per run (e.g. in a per-VM directory).
    """
    netdev = (f"dgram,id=net{index + 1},local.type=unix,local.path={_qemu_value(local_path)},"
              f"remote.type=unix,remote.path={_qemu_value(path)}")
    return ["-netdev", netdev, "-device", f"{qemu_nic_model(program)},netdev=net{index + 1},mac={normalize_mac(mac)}"]


def krunkit_path_args(path: str, mac: str, offload: bool = False) -> list[str]:
    """krunkit joined to an endpoint: ``type=unixstream`` for ``*.stream.sock``, else ``type=unixgram``."""
    kind = "unixstream" if path.endswith(STREAM_SUFFIX) else "unixgram"
    value = f"virtio-net,type={kind},path={path},mac={normalize_mac(mac)}"
    if offload:
        value += ",offloading=on"
    return ["--device", value]


def vfkit_path_args(path: str, mac: str) -> list[str]:
    """vfkit joined to a datagram endpoint (``unixSocketPath=``; vfkit sends its ``VFKT`` greeting first)."""
    if not path.endswith(DGRAM_SUFFIX):
        raise ConfigError(f"vfkit joins a datagram endpoint (*{DGRAM_SUFFIX}); {path} is not one")
    return ["--device", f"virtio-net,unixSocketPath={path},mac={normalize_mac(mac)}"]


def lima_networks(path: str) -> list[dict[str, str]]:
    """The ``networks:`` entry of a Lima instance (``limactl start`` YAML) for a stream endpoint."""
    if not path.endswith(STREAM_SUFFIX):
        raise ConfigError(f"Lima's `socket:` network is a stream socket (*{STREAM_SUFFIX}); {path} is not one")
    return [{"socket": path}]


def socket_vmnet_client_argv(path: str, mac: str, program: str = "qemu-system-x86_64") -> list[str]:
    """``socket_vmnet_client PATH QEMU ... -netdev socket,fd=3``: the client connects, then execs QEMU with the socket at fd 3."""
    if not path.endswith(STREAM_SUFFIX):
        raise ConfigError(f"socket_vmnet_client connects to a stream socket (*{STREAM_SUFFIX}); {path} is not one")
    return ["socket_vmnet_client", path, program, "-netdev", f"socket,id=net1,fd={FIRST_FD}",
            "-device", f"{qemu_nic_model(program)},netdev=net1,mac={normalize_mac(mac)}"]


def _qemu_value(text: str) -> str:
    """``text`` as one QEMU option value (a comma doubled, as QEMU's option parser wants)."""
    return text.replace(",", ",,")


# --- placeholders for other programs -----------------------------------------

# {fdN} fd number, {macN} MAC, {networkN} network name, {mtuN} MTU (needs the
# broker), {fdtypeN} broker fd type. N is the 0-based NIC index. Any other
# text, braces included, is passed through unchanged.
_PLACEHOLDER_RE = re.compile(r"\{(fd|mac|network|mtu|fdtype)(\d+)\}")
PLACEHOLDERS = ("fd", "mac", "network", "mtu", "fdtype")


def has_placeholders(args: Sequence[str]) -> bool:
    """Whether any argument holds a ``{fdN}``-style placeholder."""
    return any(_PLACEHOLDER_RE.search(a) for a in args)


def substitute(args: Sequence[str], nics: Sequence[Nic], mtus: Mapping[int, int] | None = None,
               keep_unknown_mtu: bool = False) -> list[str]:
    """``args`` with ``{fdN}``, ``{macN}``, ``{networkN}``, ``{mtuN}``, ``{fdtypeN}`` filled in.

    Raises ConfigError for a placeholder whose NIC does not exist, or whose
    MTU is unknown unless ``keep_unknown_mtu`` (then ``{mtuN}`` stays as it
    is, for checking a command line before the broker is asked). Text that
    is not a placeholder is left alone.
    """

    def value(m: re.Match[str]) -> str:
        kind, idx = m.group(1), int(m.group(2))
        if idx >= len(nics):
            raise ConfigError(f"placeholder {m.group(0)} names NIC {idx}, but only {len(nics)} --network option(s) were given")
        nic = nics[idx]
        if kind == "fd":
            return str(nic.fd)
        if kind == "mac":
            return nic.mac
        if kind == "network":
            return nic.network
        if kind == "fdtype":
            return nic.backend.fd_type
        if mtus is None or idx not in mtus:
            if keep_unknown_mtu:
                return m.group(0)
            raise ConfigError(f"placeholder {m.group(0)} needs the network's MTU, which is known only from the broker")
        return str(mtus[idx])

    return [_PLACEHOLDER_RE.sub(value, a) for a in args]


# --- Virtualization.framework ------------------------------------------------


def vz_network(client: Any, network: str) -> dict[str, Any]:
    """What a Virtualization.framework app needs to attach a VM to ``network``.

    Returns the broker's acquire reply (the network's serialization and its
    configuration). The lease lasts while ``client`` stays open; on macOS the
    app turns the serialization into a ``vmnet_network_ref`` with
    ``vmnet_network_create_with_serialization`` and attaches it with
    ``VZVmnetNetworkDeviceAttachment`` (see the README's example).
    """
    return client.acquire(network)
