"""Network configuration: YAML files of named networks, as typed objects.

A file is Lima's ``networks.yaml`` shape: a top-level ``vmnet:`` mapping of
network names to their settings (Lima's keys, read unchanged, plus the ones
vmnet-rs adds), and vmnet-rs's own ``broker:`` section. Lima's other
top-level keys (``paths``, ``group``, ``networks``) are accepted and ignored.
The built-in ``shared`` and ``host`` networks exist unless the file redefines
them. The reference for every key is ``docs/config.md``.

Loading goes: YAML -> Python checks of what is cheap here (YAML syntax,
duplicate keys, types, unknown keys) -> JSON -> the native validator (the
same rules the broker applies, ``rust/src/config.rs``) -> normalised JSON ->
frozen dataclasses. Every problem is reported, one per line of the
:class:`~vmnet_rs.errors.ConfigError` message, in the form::

    networks.yaml:7: network "shared": key "mtu": 70000 is out of range; use 1280..9000

The Python checks print exactly what the native ones print for the same
mistake (tests hold the two in step); the line number is added here, from
the YAML, to problems found by either.

Attributes are snake_case; keys on disk and in JSON are camelCase.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from . import _native
from .errors import ConfigError

__all__ = [
    "BrokerSettings",
    "Config",
    "DhcpReservation",
    "NetworkConfig",
    "PortForward",
    "ENV_VAR",
    "config_search_path",
    "find_config_file",
    "load_config",
    "load_config_text",
]

#: Environment variable naming the configuration file.
ENV_VAR = "VMNET_RS_CONFIG"
#: Where root's broker reads its configuration on Linux.
SYSTEM_CONFIG = Path("/etc/vmnet-rs/networks.yaml")

_KEYS: Dict[str, List[str]] = _native.config_keys()

PathLike = Union[str, "os.PathLike[str]"]
_Path = Tuple[Union[str, int], ...]


# --- the typed model -----------------------------------------------------------------


@dataclass(frozen=True)
class PortForward:
    """A host port forwarded to an address and port inside the network (shared mode)."""

    protocol: str
    external_port: int
    internal_address: str
    internal_port: int
    address_family: str

    def to_dict(self) -> Dict[str, Any]:
        return {
            "protocol": self.protocol,
            "externalPort": self.external_port,
            "internalAddress": self.internal_address,
            "internalPort": self.internal_port,
            "addressFamily": self.address_family,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PortForward:
        return cls(
            protocol=d["protocol"],
            external_port=d["externalPort"],
            internal_address=d["internalAddress"],
            internal_port=d["internalPort"],
            address_family=d["addressFamily"],
        )


@dataclass(frozen=True)
class DhcpReservation:
    """A fixed IPv4 address for one MAC address."""

    mac: str
    address: str

    def to_dict(self) -> Dict[str, Any]:
        return {"mac": self.mac, "address": self.address}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DhcpReservation:
        return cls(mac=d["mac"], address=d["address"])


@dataclass(frozen=True)
class NetworkConfig:
    """One network with every default filled in (see ``docs/config.md``)."""

    mode: str = "shared"
    dhcp: bool = True
    dns_proxy: bool = True
    mtu: int = 1500
    nat44: bool = True
    nat66: bool = True
    router_advertisement: bool = True
    subnet: Optional[str] = None
    ipv6_prefix: Optional[str] = None
    port_forwarding: Tuple[PortForward, ...] = ()
    dhcp_reservations: Tuple[DhcpReservation, ...] = ()
    external_interface: Optional[str] = None
    isolation: bool = False
    offload: bool = False
    #: The socket paths the broker offers for the network (``docs/endpoints.md``).
    endpoints: Tuple[str, ...] = ("stream", "datagram")
    #: Who may use this network; ``None``: the broker's ``allowedUsers`` / ``allowedGroups``.
    allowed_users: Optional[Tuple[str, ...]] = None
    allowed_groups: Optional[Tuple[str, ...]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The camelCase mapping, keys in documented order."""
        return {
            "mode": self.mode,
            "dhcp": self.dhcp,
            "dnsProxy": self.dns_proxy,
            "mtu": self.mtu,
            "nat44": self.nat44,
            "nat66": self.nat66,
            "routerAdvertisement": self.router_advertisement,
            "subnet": self.subnet,
            "ipv6Prefix": self.ipv6_prefix,
            "portForwarding": [p.to_dict() for p in self.port_forwarding],
            "dhcpReservations": [r.to_dict() for r in self.dhcp_reservations],
            "externalInterface": self.external_interface,
            "isolation": self.isolation,
            "offload": self.offload,
            "endpoints": list(self.endpoints),
            "allowedUsers": list(self.allowed_users) if self.allowed_users is not None else None,
            "allowedGroups": list(self.allowed_groups) if self.allowed_groups is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetworkConfig:
        """Builds from a normalised mapping (as the native validator returns it)."""
        return cls(
            mode=d["mode"],
            dhcp=d["dhcp"],
            dns_proxy=d["dnsProxy"],
            mtu=d["mtu"],
            nat44=d["nat44"],
            nat66=d["nat66"],
            router_advertisement=d["routerAdvertisement"],
            subnet=d.get("subnet"),
            ipv6_prefix=d.get("ipv6Prefix"),
            port_forwarding=tuple(PortForward.from_dict(p) for p in d.get("portForwarding", [])),
            dhcp_reservations=tuple(DhcpReservation.from_dict(r) for r in d.get("dhcpReservations", [])),
            external_interface=d.get("externalInterface"),
            isolation=d.get("isolation", False),
            offload=d.get("offload", False),
            endpoints=tuple(d.get("endpoints", ("stream", "datagram"))),
            allowed_users=_accounts(d.get("allowedUsers")),
            allowed_groups=_accounts(d.get("allowedGroups")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, name: str, source: str = "<json>", *, lima: bool = False) -> NetworkConfig:
        """Validates one network entry as JSON; with ``lima=True`` Go-style
        empty values (``""``, ``0``, ``null``) also mean "unset"."""
        return cls.from_dict(json.loads(_native.validate_network(text, source, name, lima)))

    def differences(self, other: NetworkConfig) -> List[str]:
        """``key: mine != theirs`` for each key that differs (values as JSON)."""
        return list(_native.network_differences(self.to_json(), other.to_json()))

    @property
    def gateway(self) -> Optional[str]:
        """The host's address on the network (the subnet's first host), if fixed."""
        return self.subnet.split("/")[0] if self.subnet else None


def _accounts(value: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    return tuple(value) if value is not None else None


#: Values of the broker's ``clientNetworks``.
CLIENT_NETWORKS = ("none", "restricted", "any")


def _default_client_networks() -> str:
    # A per-user agent on macOS (Lima's behaviour); a root broker serving others elsewhere.
    return "any" if sys.platform == "darwin" else "none"


@dataclass(frozen=True)
class BrokerSettings:
    """The broker's own settings (see ``docs/config.md``)."""

    idle_timeout: int = 120
    allowed_users: Tuple[str, ...] = ("root",)
    allowed_groups: Tuple[str, ...] = ("vmnet-rs",)
    client_networks: str = field(default_factory=_default_client_networks)
    max_ports_per_user: int = 64
    socket: str = "/run/vmnet-rs/broker.sock"
    mach_service: str = "io.github.vmnet-rs.broker"
    #: Where the per-network endpoint sockets go; "" means the platform default.
    endpoint_dir: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {
            "idleTimeout": self.idle_timeout,
            "allowedUsers": list(self.allowed_users),
            "allowedGroups": list(self.allowed_groups),
            "clientNetworks": self.client_networks,
            "maxPortsPerUser": self.max_ports_per_user,
            "socket": self.socket,
            "machService": self.mach_service,
            "endpointDir": self.endpoint_dir,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BrokerSettings:
        return cls(
            idle_timeout=d["idleTimeout"],
            allowed_users=tuple(d["allowedUsers"]),
            allowed_groups=tuple(d["allowedGroups"]),
            client_networks=d["clientNetworks"],
            max_ports_per_user=d["maxPortsPerUser"],
            socket=d["socket"],
            mach_service=d["machService"],
            endpoint_dir=d.get("endpointDir", ""),
        )


@dataclass(frozen=True)
class Config:
    """A resolved configuration: broker settings and every network, built-ins included.

    ``source`` is the file it came from, or ``None`` for the built-in defaults.
    """

    broker: BrokerSettings = field(default_factory=BrokerSettings)
    networks: Mapping[str, NetworkConfig] = field(default_factory=dict, hash=False)
    source: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The file's shape: ``{"broker": ..., "vmnet": {name: ...}}``, names sorted."""
        return {
            "broker": self.broker.to_dict(),
            "vmnet": {name: self.networks[name].to_dict() for name in sorted(self.networks)},
        }

    def to_json(self) -> str:
        """Compact JSON, byte for byte what the native validator prints."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> Config:
        """Validates a document in the file's shape given as JSON."""
        normalised = _native.validate_config(text, source)
        return cls._from_normalised(normalised, source)

    @classmethod
    def defaults(cls) -> Config:
        """The embedded defaults: built-in ``shared`` and ``host``, default broker settings."""
        return cls._from_normalised(_native.default_config_json(), None)

    @classmethod
    def _from_normalised(cls, text: str, source: Optional[str]) -> Config:
        d = json.loads(text)
        networks = {name: NetworkConfig.from_dict(n) for name, n in d["vmnet"].items()}
        return cls(broker=BrokerSettings.from_dict(d["broker"]), networks=networks, source=source)

    def network(self, name: str) -> NetworkConfig:
        """The named network; :class:`ConfigError` naming the known ones if absent."""
        try:
            return self.networks[name]
        except KeyError:
            known = ", ".join(sorted(self.networks))
            where = self.source or "the built-in defaults"
            raise ConfigError(f'{where}: no network named "{name}"; known networks: {known}') from None


# --- finding the file ------------------------------------------------------------------


def _lima_networks_yaml() -> Path:
    lima_home = os.environ.get("LIMA_HOME") or str(Path.home() / ".lima")
    return Path(lima_home) / "_config" / "networks.yaml"


def _user_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vmnet-rs" / "networks.yaml"


def config_search_path() -> List[Path]:
    """Where :func:`load_config` looks when no file is named, first match wins.

    Linux as root: ``/etc/vmnet-rs/networks.yaml``. Otherwise
    ``$XDG_CONFIG_HOME/vmnet-rs/networks.yaml`` (``~/.config/...``), then on
    Linux the system file (what root's broker reads), and on macOS Lima's
    ``$LIMA_HOME/_config/networks.yaml`` (``~/.lima/...``), so the networks
    match what a Lima client asks for.
    """
    if sys.platform.startswith("linux"):
        if os.geteuid() == 0:
            return [SYSTEM_CONFIG]
        return [_user_config(), SYSTEM_CONFIG]
    if sys.platform == "darwin":
        return [_user_config(), _lima_networks_yaml()]
    return [_user_config()]


def find_config_file(path: Optional[PathLike] = None) -> Optional[Path]:
    """The file to load: ``path``, else ``$VMNET_RS_CONFIG``, else the first
    existing file of :func:`config_search_path`, else ``None`` (built-ins only).

    Raises :class:`ConfigError` (one line) when a place on the search path
    cannot be looked at (an unreadable home directory)."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    for candidate in config_search_path():
        try:
            if candidate.is_file():
                return candidate
        except OSError as e:
            raise ConfigError(
                f"{candidate}: cannot look for a configuration file there: {e.strerror or e}; "
                f"make that directory readable, or name a file with --config or {ENV_VAR}"
            ) from None
    return None


def load_config(path: Optional[PathLike] = None) -> Config:
    """Loads, checks and resolves the configuration (see :func:`find_config_file`).

    Raises :class:`ConfigError` listing every problem, one per line.
    """
    found = find_config_file(path)
    if found is None:
        return Config.defaults()
    source = str(found)
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        # Mention the variable only when it named the file.
        unset = f" (or unset {ENV_VAR})" if path is None and os.environ.get(ENV_VAR) else ""
        raise ConfigError(f"{source}: cannot read the configuration: {reason}; give a readable YAML file{unset}") from None
    return load_config_text(text, source)


def load_config_text(text: str, source: str = "<string>") -> Config:
    """Like :func:`load_config` for YAML (or JSON) text already in hand."""
    data, lines, problems = _parse_yaml(text, source)
    data = {} if data is None else _jsonable(data)
    problems += _check(data, source)
    try:
        normalised = _native.validate_config(json.dumps(data), source)
    except ConfigError as e:
        native = [p for p in str(e).splitlines() if p]
        # The native checker finds everything the Python one does (same text) and more.
        merged = problems + [p for p in native if p not in problems]
        raise ConfigError(_render(merged, source, lines)) from None
    if problems:
        raise ConfigError(_render(problems, source, lines))
    return Config._from_normalised(normalised, source)


# --- YAML ----------------------------------------------------------------------------


class _Fatal(Exception):
    pass


def _parse_yaml(text: str, source: str) -> Tuple[Any, Dict[_Path, int], List[str]]:
    """Parses one YAML document; returns the data, the line of each key and
    list item (by path), and problems (syntax, duplicate keys)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: Dict[_Path, int] = {}
        problems: List[str] = []
        _index(node, (), lines, problems, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        what = e.problem or e.context or "unreadable"
        raise ConfigError(f"{where}: not valid YAML: {what}; fix the syntax (indentation, colons, quotes)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}; fix the syntax") from None
    finally:
        loader.dispose()
    return data, lines, problems


def _index(node: yaml.Node, path: _Path, lines: Dict[_Path, int], problems: List[str], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: Dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            line = key_node.start_mark.line + 1
            if key in seen and key_node.tag != "tag:yaml.org,2002:merge":
                problems.append(_duplicate_message(source, path + (key,), seen[key]))
            seen[key] = line
            lines[path + (key,)] = line
            _index(value_node, path + (key,), lines, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines, problems, source)


def _duplicate_message(source: str, path: _Path, first_line: int) -> str:
    if len(path) == 2 and path[0] == "vmnet":
        return f"{_scope(source, path[:2])}defined twice (first on line {first_line}); keep one"
    return f"{_scope(source, path)}key {_q(_key_text(path))}: given twice (first on line {first_line}); keep one"


def _jsonable(value: Any) -> Any:
    """YAML values JSON cannot carry become strings, so the checks report
    them as the wrong type rather than failing to encode them."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=str)
    return value


# --- messages (same text as rust/src/config/read.rs) -----------------------------------


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _show(value: Any) -> str:
    text = json.dumps(_jsonable(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text[:57] + "..." if len(text) > 60 else text


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a " + type(value).__name__


def _is_kind(value: Any) -> str:
    return f"{_show(value)} is {_kind(value)}"


def _norm(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a):
        cur = [i + 1] * (len(b) + 1)
        for j, cb in enumerate(b):
            cur[j + 1] = min(prev[j] + (ca != cb), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(b)]


def did_you_mean(unknown: str, known: Sequence[str]) -> Optional[str]:
    """The closest known key, by the native checker's rule (edit distance
    within a third of the key's length, case, ``_`` and ``-`` ignored; or a
    key the unknown one begins), so both print the same hint."""
    u = _norm(unknown)
    best: Optional[Tuple[int, str]] = None
    for k in known:
        kn = _norm(k)
        d = _edit_distance(u, kn)
        if d <= max(len(kn) // 3, 1):
            score = d
        elif len(u) >= 3 and kn.startswith(u):
            score = 1000 + len(kn) - len(u)
        else:
            continue
        if best is None or score < best[0]:
            best = (score, k)
    return best[1] if best else None


def _unknown_key(key: str, known: Sequence[str]) -> str:
    hint = did_you_mean(key, known)
    hint_text = f" (did you mean {_q(hint)}?)" if hint else ""
    return f"unknown key{hint_text}; allowed keys: {', '.join(known)}"


def _scope(source: str, path: _Path) -> str:
    if len(path) >= 2 and path[0] == "vmnet":
        return f"{source}: network {_q(str(path[1]))}: "
    if len(path) >= 1 and path[0] == "broker":
        return f"{source}: broker: "
    return f"{source}: "


def _key_text(path: _Path) -> str:
    """The key part of a path as messages print it: ``portForwarding[0].externalPort``."""
    rest = path[2:] if path[:1] == ("vmnet",) else path[1:] if path[:1] == ("broker",) else path
    out = ""
    for part in rest:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


# --- the cheap checks --------------------------------------------------------------------


def _check(data: Any, source: str) -> Iterator[str]:
    """Types and unknown keys, in the order and words of the native checker."""
    if not isinstance(data, dict):
        yield (f'{source}: the file holds {_kind(data)}; use a mapping with a "vmnet" section '
               f'of networks (and optionally "broker")')
        return
    top, ignored = _KEYS["top"], _KEYS["ignored_top"]
    for key in data:
        if key not in top and key not in ignored:
            hint = did_you_mean(str(key), top)
            hint_text = f" (did you mean {_q(hint)}?)" if hint else ""
            yield (f"{source}: key {_q(str(key))}: unknown key{hint_text}; allowed keys: {', '.join(top)} "
                   f"(Lima's {', '.join(ignored)} are read and ignored)")
    broker = data.get("broker")
    if broker is not None:
        yield from _check_broker(broker, source)
    vmnet = data.get("vmnet")
    if vmnet is None:
        return
    if not isinstance(vmnet, dict):
        yield f'{source}: key "vmnet": {_is_kind(vmnet)}; use a mapping of network names to their settings'
        return
    for name, entry in vmnet.items():
        yield from _check_network(entry, source, str(name))


_STRING_KEYS = {
    "subnet": 'a network address and prefix length like "192.168.107.0/24"',
    "ipv6Prefix": 'a unique local /64 like "fd00:1:2:3::/64"',
    "externalInterface": 'a host interface name like "en0"',
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_network(entry: Any, source: str, name: str) -> Iterator[str]:
    p = f"{source}: network {_q(name)}: "
    if not isinstance(entry, dict):
        yield f"{p}{_is_kind(entry)}; use a mapping of settings such as mode and subnet"
        return
    known = _KEYS["network"]
    for key in entry:
        if key not in known:
            yield f"{p}key {_q(str(key))}: {_unknown_key(str(key), known)}"
    mode = entry.get("mode")
    if mode is not None and not isinstance(mode, str):
        yield f'{p}key "mode": {_is_kind(mode)}; use "shared" or "host"'
    for key in ("dhcp", "dnsProxy"):
        yield from _check_bool(p, entry, key)
    mtu = entry.get("mtu")
    if mtu is not None and not _is_int(mtu):
        yield f'{p}key "mtu": {_is_kind(mtu)}; use an integer in 1280..9000'
    for key in ("nat44", "nat66", "routerAdvertisement"):
        yield from _check_bool(p, entry, key)
    for key in ("subnet", "ipv6Prefix", "externalInterface"):
        v = entry.get(key)
        if v is not None and not isinstance(v, str):
            yield f"{p}key {_q(key)}: {_is_kind(v)}; use {_STRING_KEYS[key]}"
    for key in ("isolation", "offload"):
        yield from _check_bool(p, entry, key)
    endpoints = entry.get("endpoints")
    if endpoints is not None:
        if not isinstance(endpoints, list):
            yield f'{p}key "endpoints": {_is_kind(endpoints)}; use a list of "stream" and "datagram" (or [] for none)'
        else:
            for i, item in enumerate(endpoints):
                if not isinstance(item, str):
                    yield f'{p}key {_q(f"endpoints[{i}]")}: {_is_kind(item)}; use "stream" or "datagram"'
    yield from _check_accounts(p, entry)
    yield from _check_items(p, entry, "portForwarding", _KEYS["port_forward"],
                            "mappings with protocol, externalPort, internalAddress and internalPort",
                            "a mapping with protocol, externalPort, internalAddress and internalPort",
                            _check_port_forward)
    yield from _check_items(p, entry, "dhcpReservations", _KEYS["dhcp_reservation"],
                            "mappings with mac and address", "a mapping with mac and address",
                            _check_reservation)


def _check_bool(p: str, entry: Dict[str, Any], key: str) -> Iterator[str]:
    v = entry.get(key)
    if v is not None and not isinstance(v, bool):
        yield f"{p}key {_q(key)}: {_is_kind(v)}; use true or false"


def _check_items(p: str, entry: Dict[str, Any], key: str, known: Sequence[str], list_of: str, one: str,
                 check_item: Any) -> Iterator[str]:
    items = entry.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        yield f"{p}key {_q(key)}: {_is_kind(items)}; use a list of {list_of}"
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            yield f"{p}key {_q(f'{key}[{i}]')}: {_is_kind(item)}; use {one}"
            continue
        for k in item:
            if k not in known:
                yield f"{p}key {_q(f'{key}[{i}].{k}')}: {_unknown_key(str(k), known)}"
        yield from check_item(p, f"{key}[{i}].", item)


def _check_port_forward(p: str, path: str, item: Dict[str, Any]) -> Iterator[str]:
    proto = item.get("protocol")
    if proto is not None and not isinstance(proto, str):
        yield f'{p}key {_q(path + "protocol")}: {_is_kind(proto)}; use "tcp" or "udp"'
    for key in ("externalPort",):
        v = item.get(key)
        if v is not None and not _is_int(v):
            yield f"{p}key {_q(path + key)}: {_is_kind(v)}; use an integer in 1..65535"
    v = item.get("internalAddress")
    if v is not None and not isinstance(v, str):
        yield f'{p}key {_q(path + "internalAddress")}: {_is_kind(v)}; use the VM\'s address, like "192.168.107.10"'
    v = item.get("internalPort")
    if v is not None and not _is_int(v):
        yield f'{p}key {_q(path + "internalPort")}: {_is_kind(v)}; use an integer in 1..65535'
    v = item.get("addressFamily")
    if v is not None and not isinstance(v, str):
        yield f'{p}key {_q(path + "addressFamily")}: {_is_kind(v)}; use "ipv4" or "ipv6"'


def _check_reservation(p: str, path: str, item: Dict[str, Any]) -> Iterator[str]:
    v = item.get("mac")
    if v is not None and not isinstance(v, str):
        yield f'{p}key {_q(path + "mac")}: {_is_kind(v)}; use a MAC address like "52:54:00:12:34:56"'
    v = item.get("address")
    if v is not None and not isinstance(v, str):
        yield f'{p}key {_q(path + "address")}: {_is_kind(v)}; use an IPv4 address inside the subnet'


def _check_accounts(p: str, mapping: Dict[str, Any]) -> Iterator[str]:
    """``allowedUsers`` / ``allowedGroups`` (broker and network): lists of names or ids."""
    for key, what in (("allowedUsers", "user"), ("allowedGroups", "group")):
        v = mapping.get(key)
        if v is None:
            continue
        if not isinstance(v, list):
            yield f"{p}key {_q(key)}: {_is_kind(v)}; use a list of {what} names or numeric ids"
            continue
        for i, item in enumerate(v):
            if not isinstance(item, str) and not _is_int(item):
                yield f"{p}key {_q(f'{key}[{i}]')}: {_is_kind(item)}; use a {what} name or numeric id"


def _check_broker(broker: Any, source: str) -> Iterator[str]:
    p = f"{source}: broker: "
    if not isinstance(broker, dict):
        yield f"{p}{_is_kind(broker)}; use a mapping with keys such as idleTimeout and socket"
        return
    known = _KEYS["broker"]
    for key in broker:
        if key not in known:
            yield f"{p}key {_q(str(key))}: {_unknown_key(str(key), known)}"
    v = broker.get("idleTimeout")
    if v is not None and not _is_int(v):
        yield f'{p}key "idleTimeout": {_is_kind(v)}; use an integer in 0..4294967295 (seconds; 0 never times out)'
    yield from _check_accounts(p, broker)
    v = broker.get("clientNetworks")
    if v is not None and not isinstance(v, str):
        yield f'{p}key "clientNetworks": {_is_kind(v)}; use one of {", ".join(CLIENT_NETWORKS)}'
    v = broker.get("maxPortsPerUser")
    if v is not None and not _is_int(v):
        yield f'{p}key "maxPortsPerUser": {_is_kind(v)}; use an integer in 1..65535 (ports one user may hold at once)'
    v = broker.get("socket")
    if v is not None and not isinstance(v, str):
        yield f'{p}key "socket": {_is_kind(v)}; use an absolute path like "/run/vmnet-rs/broker.sock"'
    v = broker.get("machService")
    if v is not None and not isinstance(v, str):
        yield f'{p}key "machService": {_is_kind(v)}; use a reverse-DNS name like "io.github.vmnet-rs.broker"'
    v = broker.get("endpointDir")
    if v is not None and not isinstance(v, str):
        yield f'{p}key "endpointDir": {_is_kind(v)}; use an absolute directory like "/run/vmnet-rs"'


# --- line numbers ------------------------------------------------------------------------

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_NETWORK_RE = re.compile(rf"network ({_QUOTED}): (?:key ({_QUOTED}): )?")
_BROKER_RE = re.compile(rf"broker: (?:key ({_QUOTED}): )?")
_TOP_RE = re.compile(rf"key ({_QUOTED}): ")
_KEY_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(key: str) -> _Path:
    return tuple(int(m.group(2)) if m.group(2) else m.group(1) for m in _KEY_PART_RE.finditer(key))


def _problem_path(rest: str) -> Optional[_Path]:
    m = _NETWORK_RE.match(rest)
    if m:
        base: _Path = ("vmnet", json.loads(m.group(1)))
        return base + (_split_key(json.loads(m.group(2))) if m.group(2) else ())
    m = _BROKER_RE.match(rest)
    if m:
        return ("broker",) + (_split_key(json.loads(m.group(1))) if m.group(1) else ())
    m = _TOP_RE.match(rest)
    if m:
        return (json.loads(m.group(1)),)
    return None


def _line_of(problem: str, source: str, lines: Dict[_Path, int]) -> Optional[int]:
    """The YAML line of the nearest key a problem names, if the YAML has it."""
    prefix = f"{source}: "
    if not problem.startswith(prefix):
        return None
    path = _problem_path(problem[len(prefix):])
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _render(problems: List[str], source: str, lines: Dict[_Path, int]) -> str:
    """One problem per line, in file order, each ``src: ...`` given its line
    as ``src:7: ...`` where the YAML has one."""
    out = []
    for i, problem in enumerate(problems):
        line = _line_of(problem, source, lines)
        if line is not None:
            problem = f"{source}:{line}: {problem[len(source) + 2:]}"
        out.append((line or 0, i, problem))
    return "\n".join(p for _, _, p in sorted(out))
