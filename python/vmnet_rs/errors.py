"""The exceptions vmnet-rs raises, rooted at :class:`VmnetError`.

The native module raises these same classes (it imports them from here), so
``except vmnet_rs.VmnetError`` catches everything vmnet-rs reports.
"""

from __future__ import annotations


class VmnetError(Exception):
    """Base class: something vmnet-rs was asked to do did not happen."""


class ConfigError(VmnetError, ValueError):
    """A configuration file or value is invalid; the message says where and how to fix it."""


class NetworkError(VmnetError):
    """A network or interface could not be created, started or stopped."""


class AdaptorError(VmnetError):
    """A packet relay could not be started or failed."""


class BrokerError(VmnetError):
    """The broker refused a request or could not be reached."""


class NotAuthorizedError(BrokerError, PermissionError):
    """The broker refused the caller."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """No broker answers on the socket or Mach service."""


__all__ = [
    "AdaptorError",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigError",
    "NetworkError",
    "NotAuthorizedError",
    "VmnetError",
]
