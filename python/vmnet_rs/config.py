"""Network configuration: YAML files of named networks, as typed objects.

A file is Lima's ``networks.yaml`` shape: a top-level ``vmnet:`` mapping of
network names to their settings (Lima's keys, read unchanged, plus the ones
vmnet-rs adds), and vmnet-rs's own ``broker:`` section. Lima's other
top-level keys (``paths``, ``group``, ``networks``) are accepted and ignored.
The built-in ``shared`` and ``host`` networks exist unless the file redefines
them. The reference for every key is ``docs/config.md``.

Loading goes: YAML (syntax and duplicate keys are the only checks made
here) -> JSON -> the one validator, ``rust/src/config`` (the rules the
broker applies), which returns the normalised document or structured
problems (section, network, key path, what is wrong, what is allowed, a
did-you-mean hint) -> frozen dataclasses. Every problem is reported, one per
line of the :class:`~vmnet_rs.errors.ConfigError` message, in the form::

    networks.yaml:7: network "shared": key "mtu": 70000 is out of range; use 1280..9000

The line is the YAML line of the problem's key path (or of the nearest
enclosing key the file has).

Attributes are snake_case; keys on disk and in JSON are camelCase.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from . import _native
from .errors import ConfigError

__all__ = [
    "BrokerSettings",
    "Config",
    "DhcpReservation",
    "NetworkConfig",
    "PortForward",
    "RepairSettings",
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

PathLike = Union[str, "os.PathLike[str]"]
_Path = Tuple[Union[str, int], ...]
#: A problem as (key path from the document root, message without its source).
_Problem = Tuple[_Path, str]


# --- the typed model -----------------------------------------------------------------

# The model's fields are Rust's (``rust/src/config.rs``) under their snake_case
# names; the camelCase mapping Rust reads and writes is derived from them, so a
# key is one field line here and no hand-written copy of each field.

_T = TypeVar("_T", bound="_Camel")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_camel(f.name): _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _from_plain(tp: Any, value: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        if value is None:
            return None
        return _from_plain(next(a for a in args if a is not type(None)), value)
    if origin is tuple:
        return tuple(_from_plain(args[0], v) for v in value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(**{f.name: _from_plain(hints[f.name], value[_camel(f.name)]) for f in dataclasses.fields(tp)})
    return value


class _Camel:
    """``to_dict``/``from_dict`` in Rust's camelCase shape, derived from the fields."""

    def to_dict(self) -> Dict[str, Any]:
        """The camelCase mapping, keys in field (documented) order."""
        return dict(_to_plain(self))

    @classmethod
    def from_dict(cls: Type[_T], d: Mapping[str, Any]) -> _T:
        """Builds from a normalised mapping (as the native validator returns it)."""
        built: _T = _from_plain(cls, d)
        return built


@dataclass(frozen=True)
class PortForward(_Camel):
    """A host port forwarded to an address and port inside the network (shared mode)."""

    protocol: str
    external_port: int
    internal_address: str
    internal_port: int
    address_family: str


@dataclass(frozen=True)
class DhcpReservation(_Camel):
    """A fixed IPv4 address for one MAC address."""

    mac: str
    address: str


@dataclass(frozen=True)
class NetworkConfig(_Camel):
    """One network with every default filled in (see ``docs/config.md``).

    The defaults live in the native validator; :meth:`lima_default` is an
    entry with no keys, and ``dataclasses.replace`` changes some of them."""

    mode: str
    dhcp: bool
    dns_proxy: bool
    mtu: int
    nat44: bool
    nat66: bool
    router_advertisement: bool
    subnet: Optional[str]
    ipv6_prefix: Optional[str]
    port_forwarding: Tuple[PortForward, ...]
    dhcp_reservations: Tuple[DhcpReservation, ...]
    #: Who answers DHCP and DNS: ``"platform"`` (vmnet, dnsmasq) or ``"broker"`` (its own port).
    addresses: str
    external_interface: Optional[str]
    #: The DNS domain of the network's VM names; ``None``: ``<network>.vmnet.internal``.
    domain: Optional[str]
    isolation: bool
    offload: bool
    #: The socket paths the broker offers for the network (``docs/endpoints.md``).
    endpoints: Tuple[str, ...]
    #: Who may use this network; ``None``: the broker's ``allowedUsers`` / ``allowedGroups``.
    allowed_users: Optional[Tuple[str, ...]]
    allowed_groups: Optional[Tuple[str, ...]]

    @classmethod
    def lima_default(cls, mode: str = "shared") -> NetworkConfig:
        """Lima's defaults for an entry giving only its mode (as the validator fills them)."""
        return cls.from_json(json.dumps({"mode": mode}), mode)

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


@dataclass(frozen=True)
class RepairSettings(_Camel):
    """Linux: the pieces of a live network the broker puts back when the host
    removes them, and when it stops (another program manages a piece); see
    ``docs/linux.md``."""

    pieces: Tuple[str, ...]
    limit: int
    window: int


@dataclass(frozen=True)
class BrokerSettings(_Camel):
    """The broker's own settings (see ``docs/config.md``); :meth:`default`
    gives the validator's defaults."""

    idle_timeout: int
    allowed_users: Tuple[str, ...]
    allowed_groups: Tuple[str, ...]
    client_networks: str
    max_ports_per_user: int
    socket: str
    mach_service: str
    #: Where the per-network endpoint sockets go; "" means the platform default.
    endpoint_dir: str
    #: Where the address records live (they outlast a reboot); "" means the default.
    data_dir: str
    #: Linux: which pieces of a live network are put back when the host removes them.
    repair: RepairSettings

    @classmethod
    def default(cls) -> BrokerSettings:
        return Config.defaults().broker

@dataclass(frozen=True)
class Config:
    """A resolved configuration: broker settings and every network, built-ins included.

    ``source`` is the file it came from, or ``None`` for the built-in defaults.
    """

    broker: BrokerSettings
    networks: Mapping[str, NetworkConfig] = field(hash=False)
    source: Optional[str]

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
        return cls._from_dict(json.loads(text), source)

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any], source: Optional[str]) -> Config:
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
    result = json.loads(_native.check_config(json.dumps(data), source))
    problems += [(tuple(p["path"]), p["detail"]) for p in result["problems"]]
    if problems:
        raise ConfigError(_render(problems, source, lines))
    return Config._from_dict(result["config"], source)


# --- YAML ----------------------------------------------------------------------------


class _Fatal(Exception):
    pass


def _parse_yaml(text: str, source: str) -> Tuple[Any, Dict[_Path, int], List[_Problem]]:
    """Parses one YAML document; returns the data, the line of each key and
    list item (by path), and problems (syntax, duplicate keys)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: Dict[_Path, int] = {}
        problems: List[_Problem] = []
        _index(node, (), lines, problems)
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


def _index(node: yaml.Node, path: _Path, lines: Dict[_Path, int], problems: List[_Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: Dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            line = key_node.start_mark.line + 1
            if key in seen and key_node.tag != "tag:yaml.org,2002:merge":
                problems.append((path + (key,), _duplicate_message(path + (key,), seen[key])))
            seen[key] = line
            lines[path + (key,)] = line
            _index(value_node, path + (key,), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines, problems)


def _duplicate_message(path: _Path, first_line: int) -> str:
    """The problem's text (without source) for a key given twice."""
    if len(path) == 2 and path[0] == "vmnet":
        return f"network {_q(str(path[1]))}: defined twice (first on line {first_line}); keep one"
    if path[:1] == ("vmnet",):
        scope, rest = f"network {_q(str(path[1]))}: ", path[2:]
    elif path[:1] == ("broker",):
        scope, rest = "broker: ", path[1:]
    else:
        scope, rest = "", path
    key = ""
    for part in rest:
        key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + part
    return f"{scope}key {_q(key)}: given twice (first on line {first_line}); keep one"


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


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


# --- line numbers ------------------------------------------------------------------------


def _line_of(path: _Path, lines: Dict[_Path, int]) -> Optional[int]:
    """The YAML line of a key path, or of the nearest enclosing key the file has."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _render(problems: List[_Problem], source: str, lines: Dict[_Path, int]) -> str:
    """One problem per line, in file order, as ``src:7: detail`` where the
    YAML has a line for the problem's key path, else ``src: detail``."""
    out = []
    for i, (path, detail) in enumerate(problems):
        line = _line_of(path, lines)
        where = f"{source}:{line}" if line is not None else source
        out.append((line or 0, i, f"{where}: {detail}"))
    return "\n".join(p for _, _, p in sorted(out))
