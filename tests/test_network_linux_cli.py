"""``vmnet-rs leases``: reading a network's lease file (no root needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from vmnet_rs.cli import cli
from vmnet_rs.leases import format_expiry

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux backend")


def recorded_network(state_dir, name: str, lease_text: str) -> None:
    state_dir.mkdir(exist_ok=True)
    record = {"version": 1, "name": name, "bridge": f"vmr-{name}", "table": f"vmnet_rs_{name}", "netns": "net:[1]", "owner_pid": 1, "owner_start": 1}
    (state_dir / f"{name}.json").write_text(json.dumps(record))
    (state_dir / f"{name}.leases").write_text(lease_text)


def test_leases_table_and_json(tmp_path):
    soon = int(time.time()) + 3600
    recorded_network(
        tmp_path,
        "lab",
        f"{soon} 52:54:00:00:00:0a 10.1.0.10 * 01:52:54:00:00:00:0a\n{soon} 52:54:00:00:00:02 10.1.0.9 vm2 *\nduid 00:01:00:01\n",
    )
    r = CliRunner().invoke(cli, ["leases", "lab", "--state-dir", str(tmp_path), "--socket", str(tmp_path / "no-broker.sock")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == ["ADDRESS", "MAC", "EXPIRES", "IN", "NAME"]
    # Sorted numerically by address: .9 before .10.
    assert lines[1].split()[:2] == ["10.1.0.9", "52:54:00:00:00:02"] and lines[1].split()[-1] == "vm2"
    assert lines[2].split()[:2] == ["10.1.0.10", "52:54:00:00:00:0a"] and lines[2].split()[-1] == "-"
    r = CliRunner().invoke(cli, ["leases", "lab", "--state-dir", str(tmp_path), "--json"])
    assert [x["address"] for x in json.loads(r.output)] == ["10.1.0.9", "10.1.0.10"]


def test_leases_name_the_vm_where_the_guest_sent_no_hostname(tmp_path):
    """The broker knows each lease's VM name (`vm_name`) and MAC: `leases`
    shows it where the DHCP lease has no hostname."""
    from brokerproc import BrokerProcess

    from vmnet_rs import Client

    soon = int(time.time()) + 3600
    state = tmp_path / "state"
    recorded_network(state, "shared", f"{soon} 52:54:00:00:00:0a 192.168.107.10 * *\n{soon} 52:54:00:00:00:0b 192.168.107.11 guest2 *\n")
    sock = tmp_path / "b.sock"
    with BrokerProcess(sock, ["--backend", "hub", "--no-endpoints", "--idle-timeout", "0"]) as b:
        b.wait_ready()
        with Client(str(sock), timeout=20) as c, c.open("shared", "stream", mac="52:54:00:00:00:0a", vm_name="web1"):
            r = CliRunner().invoke(cli, ["leases", "shared", "--state-dir", str(state), "--socket", str(sock)])
            j = CliRunner().invoke(cli, ["leases", "shared", "--state-dir", str(state), "--socket", str(sock), "--json"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].startswith("192.168.107.10   52:54:00:00:00:0a ") and lines[1].endswith(" (VM web1)"), lines
    assert lines[2].endswith(" guest2"), lines
    assert [x.get("vm_name") for x in json.loads(j.output)] == ["web1", None]


def test_no_leases_yet(tmp_path):
    recorded_network(tmp_path, "empty", "")
    (tmp_path / "empty.leases").unlink()
    r = CliRunner().invoke(cli, ["leases", "empty", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0 and "no leases" in r.output


def test_unknown_network_is_an_error(tmp_path):
    r = CliRunner().invoke(cli, ["leases", "nope", "--state-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "nope" in r.stderr and str(tmp_path) in r.stderr
    # Through the real entry point: one line on stderr, exit 1.
    p = subprocess.run([sys.executable, "-m", "vmnet_rs", "leases", "nope", "--state-dir", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1
    assert p.stderr.startswith("vmnet-rs: ") and "nope" in p.stderr


def test_expiry_formatting():
    assert format_expiry(0) == "never"
    assert format_expiry(100, now=200) == "expired"
    assert format_expiry(1000 + 3600 + 120, now=1000) == "1h02m"
