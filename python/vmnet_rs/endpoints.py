"""Where a broker serves each network's socket paths (``docs/endpoints.md``).

Mirrors ``rust/src/broker/endpoints.rs``: the directory is
``--endpoint-dir``, else the config's ``endpointDir``, else the broker
socket's directory (Linux) or ``~/Library/Application Support/vmnet-rs/endpoints``
(macOS); the file names are :func:`vmnet_rs.drivers.endpoint_paths`'s.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, Optional

from . import drivers
from .config import Config


def default_dir(broker_socket: str, macos: bool = sys.platform == "darwin", home: Optional[Path] = None) -> Path:
    """The platform's endpoint directory when none is configured (``macos``
    chooses the platform, so a plan for either is made on any machine)."""
    if macos:
        return (home or Path.home()) / "Library" / "Application Support" / "vmnet-rs" / "endpoints"
    return Path(broker_socket).parent


def endpoint_dir(
    config: Config, socket: Optional[str] = None, explicit: Optional[str] = None,
    macos: bool = sys.platform == "darwin", home: Optional[Path] = None,
) -> Path:
    """The directory a broker with ``config`` would use."""
    if explicit:
        return Path(explicit)
    if config.broker.endpoint_dir:
        return Path(config.broker.endpoint_dir)
    sock = socket or os.environ.get("VMNET_RS_SOCKET") or config.broker.socket
    return default_dir(sock, macos, home)


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
