"""The broker and its clients (protocol: ``docs/protocol.md``).

:class:`Broker` runs a broker inside this process on native threads (the
``vmnet-rs broker`` command is ``Broker(...).serve_forever()``).
:class:`Client` is one connection to a broker: everything it opens or
acquires is leased to that connection and released when it closes, also when
the process dies.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, TypeVar, Union

from . import _native
from .errors import BrokerError, BrokerUnavailableError, ConfigError, NotAuthorizedError

#: Where the broker listens unless ``--socket`` or ``$VMNET_RS_SOCKET`` say
#: otherwise; these defaults and the codes below are the Rust broker's own.
DEFAULT_SOCKET: str = _native.DEFAULT_SOCKET
#: The environment variable naming the broker socket (broker and clients alike).
SOCKET_ENV: str = _native.SOCKET_ENV
#: macOS: the broker's Mach service unless ``mach_service`` or this variable say otherwise.
DEFAULT_MACH_SERVICE: str = _native.DEFAULT_MACH_SERVICE
MACH_SERVICE_ENV = "VMNET_RS_MACH_SERVICE"

#: Error codes of replies (``error`` key); 3-7 are vmnet-broker's.
NOT_ALLOWED: int = _native.ERROR_CODES["NOT_ALLOWED"]
INVALID_REQUEST: int = _native.ERROR_CODES["INVALID_REQUEST"]
NOT_FOUND: int = _native.ERROR_CODES["NOT_FOUND"]
CREATE_FAILURE: int = _native.ERROR_CODES["CREATE_FAILURE"]
INTERNAL_ERROR: int = _native.ERROR_CODES["INTERNAL_ERROR"]
CONFIG_MISMATCH: int = _native.ERROR_CODES["CONFIG_MISMATCH"]
LIMIT: int = _native.ERROR_CODES["LIMIT"]
NAME_TAKEN: int = _native.ERROR_CODES["NAME_TAKEN"]

#: The kinds of fd a client can open; ``tap`` only on Linux.
FD_TYPES = ("datagram", "datagram_next", "stream", "tap")


def socket_path(socket: Optional[Union[str, "os.PathLike[str]"]] = None) -> str:
    """``socket`` if given, else ``$VMNET_RS_SOCKET`` if set, else the default."""
    return str(_native.socket_path(None if socket is None else os.fspath(socket)))


class RequestError(BrokerError):
    """The broker answered with an error; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class RequestNotAuthorizedError(RequestError, NotAuthorizedError):
    """The broker refused the caller (code 3)."""


def _raise_for(reply: Mapping[str, Any], asked: str) -> None:
    if "error" not in reply:
        return
    code = int(reply["error"])
    message = str(reply.get("message") or f"error code {code}")
    text = f"{asked}: {message}"
    if code == NOT_ALLOWED:
        raise RequestNotAuthorizedError(text, code)
    raise RequestError(text, code)


def _decode_configs(value: Any) -> Any:
    """Replaces JSON ``config`` bytes in a reply with dicts, recursively."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("config", "Configuration") and isinstance(v, bytes):
                try:
                    out[k] = json.loads(v)
                    continue
                except ValueError:
                    pass
            out[k] = _decode_configs(v)
        return out
    return value


@dataclass
class Opened:
    """An fd on a network, from :meth:`Client.open`.

    ``fd`` belongs to the caller: pass it to the VM (``subprocess`` with
    ``pass_fds`` makes it inheritable in the child) and close it here. The
    adaptor or TAP behind it lives while the client's connection is open and
    the VM holds its end.
    """

    fd: int
    fd_type: str
    mac: str
    mtu: int
    offload: bool
    network: str
    config: Dict[str, Any]
    subnet: str
    lease: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Closes this process's copy of the fd (idempotent)."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A local broker that has not answered a request in this long is broken.
DEFAULT_REQUEST_TIMEOUT = 60.0


_R = TypeVar("_R")
if TYPE_CHECKING:
    # Annotations only (this module postpones them): ParamSpec is in typing from 3.10.
    from typing_extensions import ParamSpec

    _P = ParamSpec("_P")


def _parameters_of(full: Callable[_P, Any]) -> Callable[[Callable[..., _R]], Callable[_P, _R]]:
    """Gives the decorated function ``full``'s parameters, for type checkers
    and for :func:`inspect.signature` (``help()``), so a function that
    passes its arguments on to ``full`` does not write them out again."""

    def take(f: Callable[..., _R]) -> Callable[_P, _R]:
        f.__signature__ = inspect.signature(full)  # type: ignore[attr-defined]
        return f

    return take


class Client:
    """One connection to the broker; it holds the leases.

    ``Client(socket=None)`` connects to ``socket``, else ``$VMNET_RS_SOCKET``,
    else ``/run/vmnet-rs/broker.sock``; raises :class:`BrokerUnavailableError`
    when no broker answers. ``timeout`` bounds each request (seconds; default
    :data:`DEFAULT_REQUEST_TIMEOUT`, ``None`` waits forever); a request that
    times out raises and leaves the connection unusable.
    """

    def __init__(
        self,
        socket: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        mach_service: Optional[str] = None,
    ) -> None:
        # macOS: a session to the Mach service (`mach_service`, else
        # $VMNET_RS_MACH_SERVICE, else the default); `socket` is for Linux.
        if sys.platform == "darwin":
            mach_service = mach_service or os.environ.get(MACH_SERVICE_ENV) or DEFAULT_MACH_SERVICE
        self.socket = socket_path(socket) if sys.platform != "darwin" else str(mach_service)
        try:
            self._conn = _native.Client(self.socket if sys.platform != "darwin" else None, timeout, mach_service)
        except BrokerUnavailableError as e:
            # One clear line; the native message says what to do.
            raise BrokerUnavailableError(str(e)) from None

    # -- raw -----------------------------------------------------------------------

    def request(self, message: Mapping[str, Any]) -> Dict[str, Any]:
        """Sends one message and returns the reply as it came (no error check)."""
        return dict(self._conn.request(dict(message)))

    def _command(self, command: str, asked: str, **args: Any) -> Dict[str, Any]:
        msg: Dict[str, Any] = {"command": command}
        msg.update({k: v for k, v in args.items() if v is not None})
        reply = self.request(msg)
        _raise_for(reply, asked)
        return reply

    # -- commands ------------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self._command("ping", "ping the broker").get("pong"))

    def version(self) -> Dict[str, Any]:
        return self._command("version", "ask the broker's version")

    def open(
        self,
        network: str,
        fd_type: str,
        mac: Optional[str] = None,
        vnet_hdr: bool = False,
        config: Optional[Mapping[str, Any]] = None,
        accept_existing: bool = False,
        vm_name: Optional[str] = None,
        name: Optional[str] = None,
    ) -> Opened:
        """Opens an fd of ``fd_type`` (datagram, datagram_next, stream, tap) on ``network``.

        ``vm_name`` names the VM in ``vmnet-rs status`` and the broker's log.
        ``name`` asks for the DNS name ``<name>.<network>.vmnet.internal``
        (the network's ``domain``); the reply's ``extra`` then holds
        ``name``, ``fqdn``, ``name_kind`` and ``address`` (the IPv4 address
        the broker keeps for that name). A name a running VM holds is
        refused: :class:`RequestError` with code ``NAME_TAKEN``.
        ``config`` (the network's configuration as a dict) must match the
        live network unless ``accept_existing``; otherwise
        :class:`RequestError` with code ``CONFIG_MISMATCH`` names both.
        """
        reply = self._command(
            "open",
            f"open a {fd_type} fd on network {network}",
            network=network,
            fd_type=fd_type,
            mac=mac,
            vnet_hdr=True if vnet_hdr else None,
            config=json.dumps(dict(config)).encode() if config is not None else None,
            accept_existing=True if accept_existing else None,
            vm_name=vm_name,
            name=name,
        )
        reply = _decode_configs(reply)
        known = {"ok", "fd", "fd_type", "mac", "mtu", "offload", "network", "config", "subnet", "lease"}
        return Opened(
            fd=int(reply["fd"]),
            fd_type=str(reply["fd_type"]),
            mac=str(reply["mac"]),
            mtu=int(reply["mtu"]),
            offload=bool(reply["offload"]),
            network=str(reply["network"]),
            config=dict(reply.get("config") or {}),
            subnet=str(reply.get("subnet", "")),
            lease=int(reply.get("lease", 0)),
            extra={k: v for k, v in reply.items() if k not in known},
        )

    def acquire_named(
        self,
        network: str,
        config: Optional[Mapping[str, Any]] = None,
        accept_existing: bool = False,
        vm_name: Optional[str] = None,
        name: Optional[str] = None,
        mac: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Leases ``network`` and returns the broker's whole reply:
        ``network`` (its serialization, as :meth:`acquire` returns it),
        ``lease``, and with a ``name`` also ``name``, ``fqdn``,
        ``name_kind``, ``address``, ``mac``.
        ``vm_name`` names the VM in ``vmnet-rs status`` and the broker's log.
        ``name`` asks for a DNS name as :meth:`open` does, for the VM with
        ``mac`` (else one the broker chooses). ``config`` and
        ``accept_existing`` are as for :meth:`open`."""
        reply = self._command(
            "acquire",
            f"acquire network {network}",
            network_name=network,
            config=json.dumps(dict(config)).encode() if config is not None else None,
            accept_existing=True if accept_existing else None,
            vm_name=vm_name,
            name=name,
            mac=mac,
        )
        return dict(reply)

    @_parameters_of(acquire_named)
    def acquire(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Leases ``network`` and returns its serialization (what a
        Virtualization.framework VM attaches to; a description on Linux):
        the ``network`` of :meth:`acquire_named`'s reply, which takes the
        same parameters."""
        return dict(self.acquire_named(*args, **kwargs)["network"])

    def resolve(self, name: str) -> List[Dict[str, Any]]:
        """What ``name`` (``alpha``, ``alpha.shared``,
        ``alpha.shared.vmnet.internal``, or an address) is on the live
        networks: one dict per answer with ``network``, ``name``, ``fqdn``,
        ``kind`` (granted, claimed, host), ``address`` and, where known,
        ``address6`` and ``mac``. :class:`RequestError` ``NOT_FOUND`` when none."""
        reply = self._command("resolve", f"resolve {name}", name=name)
        return [dict(a) for _, a in sorted(reply.get("answers", {}).items())]

    def status(self) -> Dict[str, Any]:
        """Networks, leases, adaptors (with counters) and broker counters."""
        return _decode_configs(self._command("status", "ask the broker's status"))

    def networks(self) -> List[Dict[str, Any]]:
        """Every network the broker knows or runs, each a dict with ``name``."""
        reply = _decode_configs(self._command("list", "list the broker's networks"))
        return [dict(info, name=name) for name, info in sorted(reply["networks"].items())]

    def release(self, network: Optional[str] = None, lease: Optional[int] = None) -> int:
        """Releases this connection's leases on ``network`` (or one ``lease``); returns how many."""
        what = f"network {network}" if network is not None else f"lease {lease}"
        return int(self._command("release", f"release {what}", network=network, lease=lease)["released"])

    def shutdown(self) -> None:
        """Asks the broker to stop (root or the broker's own user only)."""
        self._command("shutdown", "stop the broker")

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection: the broker releases everything it leased to it."""
        self._conn.close()

    def fileno(self) -> Optional[int]:
        """The connection's socket fd on Linux (to poll for the broker going away); None on macOS."""
        fd = self._conn.fileno()
        return None if fd is None else int(fd)

    def detach(self) -> int:
        """Hands the connection's socket fd to the caller, who then holds the leases.

        The fd is close-on-exec; a process that clears that flag and execs
        passes the leases to the program it runs (``vmnet-rs run``). This
        client is closed afterwards. Linux only: on macOS the connection is
        an XPC session and :class:`BrokerError` is raised.
        """
        return int(self._conn.detach())

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Broker:
    """A broker running in this process on native threads.

    ``config`` is a :class:`vmnet_rs.config.Config` (its broker settings and
    networks), or ``None`` for the built-in networks and default settings.
    ``socket`` overrides the socket path (Linux; else ``$VMNET_RS_SOCKET``,
    else the config's, else the default); ``mach_service`` the Mach service
    (macOS; else the config's ``machService``); ``code_signing_requirement``
    (macOS) is a requirement every caller must satisfy, and
    ``lima_serialization_rule`` (macOS) applies Lima's rule: before 26.2,
    serialization requests only from callers with the broker's CDHash;
    ``idle_timeout`` (seconds, 0 = never) overrides the config's.
    ``backend="hub"`` uses the in-process test network instead of the
    platform's. ``endpoints=True`` serves each configured network's socket
    paths (``docs/endpoints.md``) under ``endpoint_dir`` (else the config's
    ``endpointDir``, else the platform default). ``host_dns`` (Linux) points
    the DNS proxy at the host's resolvers unless ``$VMNET_RS_DNS_RESOLV_FILE``
    chose, as ``vmnet-rs broker`` does. Every default is decided by the same
    Rust function as ``vmnet-rs-broker``'s (``broker::launch``).

    Idle networks are torn down after the idle timeout. The broker itself
    exits when idle only if started on demand (systemd socket activation,
    launchd) or if ``exit_when_idle`` is true (default: true exactly when
    ``idle_timeout`` is given); otherwise it runs until stopped. A broker
    that bound endpoint sockets itself never exits when idle.
    """

    def __init__(
        self,
        config: Any = None,
        socket: Optional[Union[str, "os.PathLike[str]"]] = None,
        idle_timeout: Optional[int] = None,
        backend: str = "platform",
        state_dir: Optional[str] = None,
        monitor_interval: float = 1.0,
        mach_service: Optional[str] = None,
        code_signing_requirement: Optional[str] = None,
        lima_serialization_rule: bool = False,
        endpoints: bool = False,
        endpoint_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        exit_when_idle: Optional[bool] = None,
        host_dns: bool = False,
        data_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None:
        config_json = None
        config_source = None
        if config is not None:
            config_json = config.to_json()
            config_source = config.source
        if idle_timeout is not None and idle_timeout < 0:
            raise ConfigError(f"idle timeout {idle_timeout} must be >= 0 seconds (0 = never exit)")
        self._native = _native.Broker(
            None if socket is None else os.fspath(socket),
            config_json,
            idle_timeout,
            backend,
            state_dir,
            monitor_interval,
            mach_service,
            code_signing_requirement,
            lima_serialization_rule,
            endpoints,
            None if endpoint_dir is None else os.fspath(endpoint_dir),
            config_source,
            exit_when_idle,
            host_dns,
            None if data_dir is None else os.fspath(data_dir),
        )

    @property
    def socket(self) -> str:
        return str(self._native.socket)

    @property
    def dns_resolv_file(self) -> Optional[str]:
        """The DNS proxy's upstream file set at start (Linux, ``host_dns``), or ``None``."""
        return self._native.dns_resolv_file

    @property
    def endpoints(self) -> Dict[str, Dict[str, str]]:
        """Network -> ``{"stream": path, "datagram": path}`` of the endpoints served."""
        return dict(self._native.endpoints)

    @property
    def running(self) -> bool:
        return bool(self._native.running)

    @property
    def start_line(self) -> str:
        """The line a broker prints once it serves (the same for ``vmnet-rs-broker``)."""
        return str(self._native.start_line)

    def start(self) -> "Broker":
        """Binds the socket (or takes the one systemd passed) and serves."""
        self._native.start()
        return self

    def stop(self, reason: Optional[str] = None) -> None:
        """Stops serving and tears down every network; ``reason`` goes to the
        log, with every VM that loses its network. Idempotent."""
        self._native.stop(reason)

    def wait(self, timeout: Optional[float] = None) -> Optional[str]:
        """Waits for the broker to stop by itself; returns why, or ``None`` on timeout."""
        return self._native.wait(timeout)

    def serve_forever(self) -> str:
        """Starts (if needed) and serves until idle exit, a shutdown request
        or Ctrl-C; returns why it stopped. Always stops the broker."""
        if not self.running:
            self.start()
        stop_reason = None
        try:
            while True:
                reason = self._native.wait(0.25)
                if reason is not None:
                    return reason
        except KeyboardInterrupt as e:
            stop_reason = str(e) or "interrupted (Ctrl-C)"
            return stop_reason
        finally:
            self.stop(stop_reason)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Broker",
    "BrokerUnavailableError",
    "Client",
    "Opened",
    "RequestError",
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "FD_TYPES",
    "socket_path",
]
