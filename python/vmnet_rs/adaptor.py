"""Packet relays (adaptors) from Python, without a broker.

An :class:`Adaptor` joins the VM end of a socket to a TAP device or to a
port on a network it creates itself::

    from vmnet_rs import Adaptor

    with Adaptor("stream", network="shared") as a:      # Linux, as root
        qemu = subprocess.Popen([..., "-netdev", f"stream,id=n0,addr.type=fd,addr.str={a.fileno()}",
                                 "-device", f"virtio-net-pci,netdev=n0,mac={a.mac}"],
                                pass_fds=[a.fileno()])

Give the VM the adaptor's MAC (:attr:`Adaptor.mac`, or pass ``mac=`` to
choose it): the network's DHCP server and port filters know the VM by it.

The relay runs on a native thread (no GIL) until the VM closes its end, the
interface goes away, or :meth:`Adaptor.close` is called.
"""

from __future__ import annotations

import json
import os
import socket
from socket import socket as Socket  # the class's `socket` method hides the module in annotations
from typing import Any, Dict, Mapping, Optional, Union

from . import _native
from .config import NetworkConfig, load_config
from .errors import ConfigError

KINDS = ("datagram", "datagram_next", "stream")

ConfigLike = Union[NetworkConfig, Mapping[str, Any], None]


def _config_json(network: str, config: ConfigLike) -> str:
    if config is None:
        return load_config().network(network).to_json()
    if isinstance(config, NetworkConfig):
        return config.to_json()
    if isinstance(config, Mapping):
        return NetworkConfig.from_json(json.dumps(dict(config)), network, source="Adaptor(config=...)").to_json()
    raise ConfigError(f"Adaptor(config=...): expected a NetworkConfig or a mapping, got {type(config).__name__}")


class Adaptor:
    """A relay between a VM socket and a TAP (by ``tap`` name or ``tap_fd``)
    or a new port on ``network`` (created here from ``config``, or from the
    loaded configuration's entry of that name; this object keeps it alive).

    ``netns`` (with ``tap``) creates the TAP inside that network namespace
    (an ``ip netns`` name or a path). ``mac`` is the MAC the VM will use
    (random if not given). Buffer sizes default per kind; the values the
    kernel granted are in :attr:`info`. ``vm_socket_fd`` relays on (a dup of)
    an existing connected socket instead of making a new pair; then there is
    no :meth:`fileno`. ``tap_offload`` (with ``tap`` or ``tap_fd``) opens the
    TAP the way a broker opens a relayed port's TAP (docs/linux.md): the
    kernel may hand it TCP segmentation and checksum work, which the relay
    does in user space, while the VM still sees plain frames of at most the
    MTU. ``vnet_hdr`` instead passes the virtio-net headers to the VM: 12
    bytes (``virtio_net_hdr_v1``) on a TAP given by name; a ``tap_fd`` keeps
    the size its opener set.
    """

    def __init__(
        self,
        kind: str = "datagram",
        *,
        tap: Optional[str] = None,
        tap_fd: Optional[int] = None,
        netns: Optional[str] = None,
        network: Optional[str] = None,
        config: ConfigLike = None,
        state_dir: Optional[Union[str, os.PathLike[str]]] = None,
        mac: Optional[str] = None,
        vnet_hdr: bool = False,
        tap_offload: bool = False,
        send_buffer_bytes: Optional[int] = None,
        recv_buffer_bytes: Optional[int] = None,
        vm_socket_fd: Optional[int] = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"adaptor kind {kind!r} is not one of {', '.join(KINDS)}")
        config_json = _config_json(network, config) if network is not None else None
        self._native: Optional[_native.Adaptor] = _native.Adaptor(
            kind,
            tap=tap,
            tap_fd=tap_fd,
            netns=netns,
            network=network,
            config_json=config_json,
            state_dir=os.fspath(state_dir) if state_dir is not None else None,
            mac=mac,
            vnet_hdr=vnet_hdr,
            tap_offload=tap_offload,
            send_buffer_bytes=send_buffer_bytes,
            recv_buffer_bytes=recv_buffer_bytes,
            vm_socket_fd=vm_socket_fd,
        )
        self.kind = kind
        self.info: Dict[str, Any] = dict(self._native.info())

    def _live(self) -> _native.Adaptor:
        if self._native is None:
            from .errors import AdaptorError

            raise AdaptorError(f"the {self.kind} adaptor is closed")
        return self._native

    def fileno(self) -> int:
        """The VM end of the socket; it stays owned by the adaptor (pass it
        with ``pass_fds``, or :func:`os.dup` it)."""
        return self._live().fileno()

    def socket(self) -> Socket:
        """A new Python socket object on a duplicate of the VM end."""
        return socket.socket(fileno=os.dup(self.fileno()))

    def detach(self) -> Socket:
        """Hands the VM end over as a socket object the caller now owns; the
        adaptor stops holding it, so the relay ends when the VM (every
        holder of the fd) closes it. :meth:`fileno` is unusable afterwards."""
        return socket.socket(fileno=self._live().detach())

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Counters per direction (``host_to_vm``, ``vm_to_host``): packets,
        bytes, batches, drops, waits, errors, and the causes of errors apart:
        malformed, runts, refused (docs/adaptors.md)."""
        return dict(self._live().stats())

    @property
    def mac(self) -> str:
        """The MAC the VM must use (``mac=`` as given, else chosen at random)."""
        return str(self.info["mac"])

    @property
    def running(self) -> bool:
        return self._native is not None and self._native.is_running()

    @property
    def end_reason(self) -> Optional[str]:
        """Why the relay ended; ``None`` while it runs."""
        return None if self._native is None else self._native.end_reason()

    def wait(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the relay to end by itself."""
        return True if self._native is None else self._native.wait(timeout)

    def close(self) -> None:
        """Stops the relay, closes the VM end and the interface, and tears
        down a network this adaptor created. Idempotent."""
        if self._native is not None:
            self._native.close()
            self._native = None

    def __enter__(self) -> "Adaptor":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.info.get("device") or self.info.get("network") or "?"
        state = "closed" if self._native is None else ("running" if self.running else "ended")
        return f"<Adaptor {self.kind} on {where} {state}>"


__all__ = ["Adaptor", "KINDS"]
