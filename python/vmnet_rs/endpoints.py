"""Where a broker serves each network's socket paths (``docs/endpoints.md``).

The rules are the broker's own, read from ``_native`` (``broker::launch``
and ``broker/endpoints.rs``): the directory is ``--endpoint-dir``, else the
config's ``endpointDir``, else the platform default; the file names are
:func:`vmnet_rs.drivers.endpoint_paths`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional

from . import _native, drivers
from .config import Config


def default_dir(broker_socket: str, macos: bool = sys.platform == "darwin", home: Optional[Path] = None) -> Path:
    """The platform's endpoint directory when none is configured (``macos``
    chooses the platform, so a plan for either is made on any machine)."""
    return Path(_native.endpoint_dir(None, "", broker_socket, macos, None if home is None else str(home)))


def endpoint_dir(
    config: Config, socket: Optional[str] = None, explicit: Optional[str] = None,
    macos: bool = sys.platform == "darwin", home: Optional[Path] = None,
) -> Path:
    """The directory a broker with ``config`` would use."""
    sock = _native.socket_path(socket, config.broker.socket)
    return Path(_native.endpoint_dir(explicit or None, config.broker.endpoint_dir, sock, macos, None if home is None else str(home)))


def endpoint_paths(
    config: Config, socket: Optional[str] = None, explicit: Optional[str] = None,
    macos: bool = sys.platform == "darwin", home: Optional[Path] = None,
) -> Dict[str, Dict[str, str]]:
    """Network -> ``{"stream": path, "datagram": path}`` (only the kinds it
    has, stream first), networks in name order."""
    d = str(endpoint_dir(config, socket, explicit, macos, home))
    out: Dict[str, Dict[str, str]] = {}
    for name, net in sorted(config.networks.items()):
        paths = drivers.endpoint_paths(d, name)
        kinds = {k: paths[k] for k in drivers.ENDPOINT_SUFFIXES if k in net.endpoints}
        if kinds:
            out[name] = kinds
    return out
