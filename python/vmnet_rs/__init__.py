"""vmnet-rs: shared and host-only VM networks without root.

A broker keeps named networks alive and hands each VM either the network's
serialization (Virtualization.framework) or a socket whose far end a packet
relay (an adaptor) joins to the network (QEMU, krunkit, vfkit).
"""

from __future__ import annotations

from ._native import __version__
from .broker import Broker, Client, Opened
from .errors import (
    AdaptorError,
    BrokerError,
    BrokerUnavailableError,
    ConfigError,
    NetworkError,
    NotAuthorizedError,
    VmnetError,
)
from .adaptor import Adaptor

__all__ = [
    "Adaptor",
    "AdaptorError",
    "Broker",
    "Client",
    "Opened",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "NetworkError",
    "NotAuthorizedError",
    "VmnetError",
    "__version__",
]
