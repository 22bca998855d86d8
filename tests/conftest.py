from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from netns import NetNs  # noqa: E402

# dnsmasq in tests never gets an upstream DNS server: every broker and network
# a test starts inherits this (an empty resolv file means none).
os.environ["VMNET_RS_DNS_RESOLV_FILE"] = ""


# The per-test ceiling of a slow test (QEMU TCG guests, benchmarks) that
# names none of its own; every other test has pyproject's `timeout`.
SLOW_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns():
    """A fresh network namespace, deleted with all it holds after the test."""
    ns = NetNs()
    try:
        yield ns
    finally:
        ns.close()
