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

#: The data directory of a broker run by root when nothing names one
#: (`broker::launch::SYSTEM_DATA_DIR`): the real machine's, never a test's.
REAL_DATA_DIR = Path("/var/lib/vmnet-rs")


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


def tree_snapshot(root: Path) -> dict:
    """Every path under ``root`` (itself included) with its kind, size and
    modification time; empty when ``root`` does not exist."""
    out = {}
    if not root.exists() and not root.is_symlink():
        return out
    for path in [root, *sorted(root.rglob("*"))]:
        try:
            st = path.lstat()
        except OSError:
            continue
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session", autouse=True)
def real_data_dir_untouched():
    """Fails the session when a test changed the real data directory: every
    broker a test starts must keep its records in a directory of its own
    (``data_dir`` below, or its own ``--data-dir``/``--state-dir``)."""
    before = tree_snapshot(REAL_DATA_DIR)
    yield
    after = tree_snapshot(REAL_DATA_DIR)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote to {REAL_DATA_DIR}, the real broker's data directory: {', '.join(changed[:10])}"


@pytest.fixture(autouse=True)
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory every broker this test starts uses unless it is
    given its own (``$VMNET_RS_DATA_DIR``: brokers in this process, and
    subprocesses that inherit the environment): a broker run by root with
    neither ``--data-dir`` nor ``--state-dir`` would otherwise write its
    address records to :data:`REAL_DATA_DIR`. A test of the default
    removes the variable itself (``monkeypatch.delenv``)."""
    d = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("VMNET_RS_DATA_DIR", str(d))
    return d
