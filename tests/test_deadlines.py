"""Nothing waits forever: the library's Client bounds each request by
default, and the suite's per-test ceiling (pytest-timeout, pyproject.toml)
turns a hang into a failure that names the test."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vmnet_rs import Client
from vmnet_rs.broker import DEFAULT_REQUEST_TIMEOUT
from vmnet_rs.errors import VmnetError


def rcvtimeo(c: Client) -> float:
    fd = c.fileno()
    assert fd is not None
    s = socket.socket(fileno=fd)
    try:
        sec, usec = struct.unpack("ll", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll")))
    finally:
        s.detach()
    return sec + usec / 1e6


@pytest.fixture
def silent_broker(tmp_path: Path):
    """A socket that accepts connections and never answers."""
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(str(path))
    srv.listen(4)
    yield path
    srv.close()


@pytest.mark.skipif(sys.platform == "darwin", reason="the Unix socket transport is Linux's")
def test_client_requests_have_a_deadline_by_default(silent_broker: Path) -> None:
    assert DEFAULT_REQUEST_TIMEOUT == 60.0
    with Client(str(silent_broker)) as c:
        assert rcvtimeo(c) == DEFAULT_REQUEST_TIMEOUT
    with Client(str(silent_broker), timeout=None) as c:
        assert rcvtimeo(c) == 0.0, "timeout=None waits forever, as asked"
    with Client(str(silent_broker), timeout=0.3) as c:
        start = time.monotonic()
        with pytest.raises(VmnetError, match="did not reply in time"):
            c.ping()
        assert time.monotonic() - start < 10
        with pytest.raises(VmnetError, match="cannot be used again"):
            c.ping()


HANGS = """
import time

def test_that_hangs():
    time.sleep(3600)
"""


def test_a_hung_test_fails_within_its_ceiling_naming_itself(tmp_path: Path) -> None:
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent(HANGS))
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "2", "-o", "addopts=",
                          str(tmp_path / "test_hangs.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    took = time.monotonic() - start
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Timeout" in run.stdout and "FAILED test_hangs.py::test_that_hangs" in run.stdout, run.stdout
    assert took < 60, f"took {took:.1f}s"


def test_the_suite_has_a_ceiling(request: pytest.FixtureRequest) -> None:
    """pyproject's pytest options give every test a ceiling (slow tests
    raise theirs with ``@pytest.mark.timeout``)."""
    assert 0 < float(request.config.getini("timeout")) <= 600


def test_a_skip_not_in_the_allowed_list_fails_the_run(tmp_path: Path) -> None:
    """scripts/test (as root) runs tests/check_skips.py on pytest's report."""
    (tmp_path / "test_skips.py").write_text(textwrap.dedent("""
        import pytest

        def test_runs():
            pass

        def test_cannot_run_here():
            pytest.skip("the thing is missing")

        @pytest.mark.skipif(True, reason="allowed, with a reason")
        def test_allowed():
            pass
    """))
    report = tmp_path / "report.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={report}",
                    "test_skips.py"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    allowed = tmp_path / "allowed.txt"
    check = Path(__file__).with_name("check_skips.py")
    allowed.write_text("# comment\ntest_skips.py::test_allowed -- it says why\n")
    run = subprocess.run([sys.executable, str(check), str(report), str(allowed)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 1, run
    assert "skipped (NOT ALLOWED): test_skips.py::test_cannot_run_here: the thing is missing" in run.stdout, run.stdout
    assert "skipped: test_skips.py::test_allowed: allowed, with a reason" in run.stdout, run.stdout
    assert "1 skip(s) not in" in run.stderr and "test_skips.py::test_cannot_run_here" in run.stderr, run.stderr
    allowed.write_text("test_skips.py::test_* -- every one\n")
    assert subprocess.run([sys.executable, str(check), str(report), str(allowed)], capture_output=True, timeout=60, cwd=tmp_path).returncode == 0
    allowed.write_text("test_skips.py::test_allowed\n")
    run = subprocess.run([sys.executable, str(check), str(report), str(allowed)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode != 0 and "give each allowed skip a reason" in run.stderr, run
    # The committed list: short, each line with its reason.
    from check_skips import ALLOWED, allowed_patterns

    assert len(allowed_patterns(ALLOWED)) <= 5
