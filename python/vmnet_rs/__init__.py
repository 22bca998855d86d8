"""vmnet-rs: shared and host-only VM networks without root.

A broker keeps named networks alive and hands each VM either the network's
serialization (Virtualization.framework) or a socket whose far end a packet
relay (an adaptor) joins to the network (QEMU, krunkit, vfkit).
"""

from __future__ import annotations

from ._native import __version__
from .broker import Broker, Client, Opened
from . import errors
from .errors import *  # noqa: F401,F403 (the exception types, listed in errors.__all__)
from .adaptor import Adaptor

__all__ = ["Adaptor", "Broker", "Client", "Opened", "__version__", *errors.__all__]
