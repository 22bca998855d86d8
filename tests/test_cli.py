"""The command line through click's CliRunner: networks, networks check, help, exit codes."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import click
import pytest
from click.testing import CliRunner

from vmnet_rs import NetworkError, __version__
from vmnet_rs import config as cfgmod
from vmnet_rs.cli import EXIT_FAILED, EXIT_USAGE, cli, main, report_error
from vmnet_rs.config import Config

DATA = Path(__file__).parent / "data"


@pytest.fixture
def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


@pytest.fixture
def no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMNET_RS_CONFIG", raising=False)
    monkeypatch.setattr(cfgmod, "config_search_path", lambda: [tmp_path / "absent.yaml"])


def test_networks_prints_the_builtins(runner: CliRunner, no_config_file: None) -> None:
    result = runner.invoke(cli, ["networks"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("config: built-in defaults")
    assert lines[1].split() == ["NAME", "MODE", "SUBNET", "IPV6", "PREFIX", "MTU", "ON"]
    if sys.platform == "darwin":
        assert lines[2].split() == ["host", "host", "192.168.108.1/24", "auto", "1500", "dhcp", "dnsProxy"]
        assert lines[3].split() == ["shared", "shared", "192.168.107.1/24", "auto", "1500", "dhcp", "dnsProxy", "nat44", "nat66", "routerAdvertisement"]
    else:
        # Linux: no IPv6 without an ipv6Prefix, no NAT in host mode.
        assert lines[2].split() == ["host", "host", "192.168.108.1/24", "none", "1500", "dhcp", "dnsProxy"]
        assert lines[3].split() == ["shared", "shared", "192.168.107.1/24", "none", "1500", "dhcp", "dnsProxy", "nat44"]
    assert "broker: idle timeout 120s (unused networks are torn down after it)" in lines


def test_networks_show_what_the_platform_really_runs(tmp_path: Path) -> None:
    """The ON column is what the platform turns on; what the file asks for
    that stays off is listed with the reason; idle timeout 0 reads never."""
    from vmnet_rs.networks_cli import format_table

    cfg = cfgmod.load_config(write(tmp_path, (
        "broker:\n  idleTimeout: 0\n"
        "vmnet:\n"
        "  v6:\n    mode: shared\n    subnet: 10.9.0.0/24\n    ipv6Prefix: fd00:9::/64\n"
        "  lan:\n    mode: host\n    subnet: 10.8.0.0/24\n    routerAdvertisement: true\n"
    )))
    linux = format_table(cfg, "linux").splitlines()
    row = {line.split()[0]: line.split() for line in linux[2:6]}
    assert row["v6"][3:] == ["fd00:9::/64", "1500", "dhcp", "dnsProxy", "nat44", "nat66", "routerAdvertisement"]
    assert row["lan"][3:] == ["none", "1500", "dhcp", "dnsProxy"]
    assert row["shared"][3:] == ["none", "1500", "dhcp", "dnsProxy", "nat44"]
    assert "lan: off on linux: nat44 (host mode has no NAT), nat66 (host mode has no NAT), routerAdvertisement (no IPv6 on Linux without ipv6Prefix)" in linux
    assert "shared: off on linux: nat66 (no IPv6 on Linux without ipv6Prefix), routerAdvertisement (no IPv6 on Linux without ipv6Prefix)" in linux
    assert "broker: idle timeout never (unused networks are torn down after it)" in linux
    macos = format_table(cfg, "macos").splitlines()
    row = {line.split()[0]: line.split() for line in macos[2:6]}
    assert row["shared"][3:] == ["auto", "1500", "dhcp", "dnsProxy", "nat44", "nat66", "routerAdvertisement"]
    assert "lan: off on macos: nat44 (host mode has no NAT), nat66 (host mode has no NAT), routerAdvertisement (vmnet ignores it in host mode)" in macos


def test_an_offload_datagram_endpoint_says_which_clients_carry_64k_frames(tmp_path: Path) -> None:
    """macOS: an offload network's datagram endpoint line names the clients
    that raise their buffers and sends QEMU to the stream endpoint; no note
    without offload, without a datagram endpoint, or on Linux."""
    from vmnet_rs.networks_cli import format_table

    cfg = cfgmod.load_config(write(tmp_path, (
        "vmnet:\n"
        "  fast:\n    mode: shared\n    subnet: 10.9.0.0/24\n    offload: true\n"
        "  plain:\n    mode: shared\n    subnet: 10.8.0.0/24\n"
        "  streamonly:\n    mode: shared\n    subnet: 10.7.0.0/24\n    offload: true\n    endpoints: [stream]\n"
    )))
    macos = format_table(cfg, "macos").splitlines()
    fast = [line for line in macos if line.startswith("fast: datagram endpoint ")]
    assert len(fast) == 1 and "vfkit" in fast[0] and "65550" in fast[0] and "stream endpoint" in fast[0], fast
    assert [line for line in macos if line.startswith("fast: stream endpoint ")][0].endswith(".stream.sock")
    assert [line for line in macos if line.startswith("plain: datagram endpoint ")][0].endswith(".dgram.sock")
    assert not any("65550" in line for line in macos if not line.startswith("fast:"))
    assert not any("65550" in line for line in format_table(cfg, "linux").splitlines())


def test_networks_json_is_the_resolved_config(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["networks", "--config", str(DATA / "full.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == cfgmod.load_config(DATA / "full.yaml").to_dict()
    assert sorted(doc["vmnet"]) == ["backplane", "host", "lab", "shared"]
    # The JSON is itself a valid configuration.
    assert Config.from_json(result.stdout).to_dict() == doc


def test_networks_table_shows_forwards_and_reservations(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["networks", "--config", str(DATA / "full.yaml")])
    assert result.exit_code == 0, result.output
    assert "lab: forward tcp/ipv4 host port 2222 -> 10.77.0.10:22" in result.stdout
    assert "lab: forward udp/ipv6 host port 5353 -> [fd00:77::10]:5353" in result.stdout
    assert "lab: reserve 10.77.0.10 for 52:54:00:aa:bb:01" in result.stdout
    assert "lab: external interface en1" in result.stdout


def test_networks_env_variable(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMNET_RS_CONFIG", str(DATA / "lima-networks.yaml"))
    result = runner.invoke(cli, ["networks", "--json"])
    assert result.exit_code == 0, result.output
    assert "jumbo" in json.loads(result.stdout)["vmnet"]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "networks.yaml"
    p.write_text(text)
    return p


def test_networks_with_a_bad_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = write(tmp_path, "vmnet:\n  shared:\n    mtu: 70000\n")
    result = runner.invoke(cli, ["networks", "--config", str(bad)])
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr == f'vmnet-rs: {bad}:3: network "shared": key "mtu": 70000 is out of range; use 1280..9000\n'


def test_check_ok(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["networks", "check", str(DATA / "lima-networks.yaml"), str(DATA / "full.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{DATA / 'lima-networks.yaml'}: ok: 5 networks (host, jumbo, lab-host, scratch, shared)",
        f"{DATA / 'full.yaml'}: ok: 4 networks (backplane, host, lab, shared)",
    ]


def test_check_prints_every_problem_and_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = write(tmp_path, "vmnet:\n  lab:\n    mtu: 1\n    subnet: 10.0.0.0/30\n    colour: red\n")
    result = runner.invoke(cli, ["networks", "check", str(bad), str(DATA / "full.yaml")])
    assert result.exit_code == 2
    errors = result.stderr.splitlines()
    assert [e.split(": ", 1)[0] for e in errors] == [f"{bad}:3", f"{bad}:4", f"{bad}:5"]
    assert errors[0] == f'{bad}:3: network "lab": key "mtu": 1 is out of range; use 1280..9000'
    # The good file after it is still checked.
    assert result.stdout.startswith(f"{DATA / 'full.yaml'}: ok")


def test_check_needs_a_file(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["networks", "check"])
    assert result.exit_code == 2
    assert "Missing argument" in result.stderr


def commands(group: click.Group, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    yield prefix
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,)


@pytest.mark.parametrize("path", list(commands(cli)), ids=lambda p: " ".join(p) or "vmnet-rs")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_on_every_command(runner: CliRunner, path: Tuple[str, ...], flag: str) -> None:
    result = runner.invoke(cli, [*path, flag])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"vmnet-rs, version {__version__}\n"


@pytest.mark.parametrize("args, level", [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)])
def test_verbose_sets_the_log_level(runner: CliRunner, no_config_file: None, args: List[str], level: int) -> None:
    result = runner.invoke(cli, [*args, "networks"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("vmnet_rs").level == level


def run_main(args: List[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    code = info.value.code
    return code if isinstance(code, int) else 1


def test_main_exit_codes(tmp_path: Path, no_config_file: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["networks"]) == 0
    assert run_main(["--version"]) == 0
    assert run_main(["no-such-command"]) == EXIT_USAGE
    bad = write(tmp_path, "vmnet: [1]\n")
    assert run_main(["networks", "--config", str(bad)]) == EXIT_USAGE
    assert run_main(["networks", "check", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f'{bad}:1: key "vmnet": [1] is a list; use a mapping of network names to their settings' in err


def test_other_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_error(NetworkError("network \"lab\": bridge vmnet0 could not be created: busy")) == EXIT_FAILED
    assert capsys.readouterr().err == 'vmnet-rs: network "lab": bridge vmnet0 could not be created: busy\n'


def test_python_m_cli_registers_every_command() -> None:
    """`python -m vmnet_rs.cli` and `python -m vmnet_rs` offer the same commands."""
    import subprocess
    import sys

    outs = [subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=60) for mod in ("vmnet_rs.cli", "vmnet_rs")]
    for out in outs:
        assert out.returncode == 0, out.stderr
    commands = sorted(cli.commands)
    assert commands == ["bench", "broker", "doctor", "install", "leases", "networks", "resolve", "run", "status", "uninstall"]
    for out in outs:
        listed = out.stdout.split("Commands:")[1].split()
        assert [name for name in commands if name in listed] == commands


def test_adaptor_examples_give_the_vm_the_adaptors_mac() -> None:
    """The Adaptor docstring and docs/adaptors.md's Python section pass the
    adaptor's MAC to the VM (without it DHCP and port filters miss the VM)."""
    from vmnet_rs import Adaptor, adaptor

    doc = (Path(__file__).parent.parent / "docs" / "adaptors.md").read_text()
    section = doc.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    for text in (adaptor.__doc__ or "", section):
        assert 'f"virtio-net-pci,netdev=n0,mac={a.mac}"' in text
    assert Adaptor.mac.__doc__


def test_help_texts_point_to_documentation_a_pip_user_has(runner: CliRunner) -> None:
    """No help text sends a pip user to the README or a docs/ file they do
    not have: --help itself, or a URL."""

    def every_command(group: click.Group, path: List[str]) -> Iterator[List[str]]:
        yield path
        for name, sub in sorted(group.commands.items()):
            if isinstance(sub, click.Group):
                yield from every_command(sub, path + [name])
            else:
                yield path + [name]

    seen = 0
    for path in every_command(cli, []):
        out = runner.invoke(cli, [*path, "--help"], terminal_width=1000)
        assert out.exit_code == 0, (path, out.output)
        text = " ".join(out.output.split())
        # No web address (none is published); a docs/ file is named as part
        # of the source, which a pip user can fetch, never bare.
        assert "http" not in text and "README" not in text, (path, out.output)
        for at in [i for i in range(len(text)) if text.startswith("docs/", i)]:
            assert "vmnet-rs source" in text[max(0, at - 120):at + 120], (path, text[at:at + 120])
        seen += 1
    assert seen >= 10
    assert "the docs/ folder of the vmnet-rs source" in " ".join(runner.invoke(cli, ["--help"]).output.split())


def test_broker_state_dir_is_visible_and_the_environment_sets_it(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--state-dir is in `vmnet-rs broker --help`; without it the broker
    uses $VMNET_RS_STATE_DIR, as `vmnet-rs leases` does."""
    from vmnet_rs import broker as broker_mod
    from vmnet_rs import broker_cli

    help_text = runner.invoke(cli, ["broker", "--help"], terminal_width=1000).output
    assert "--state-dir DIR" in help_text and "$VMNET_RS_STATE_DIR" in help_text
    seen = {}

    class Recorder:
        def __init__(self, config: object, **kw: object) -> None:
            seen.update(kw)
            raise broker_mod.BrokerError("recorded")

    monkeypatch.setattr(broker_mod, "Broker", Recorder)
    monkeypatch.setattr(broker_cli, "refuse_without_preconditions", lambda: None, raising=False)
    monkeypatch.setenv("VMNET_RS_STATE_DIR", str(tmp_path / "env-state"))
    monkeypatch.setenv("VMNET_RS_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    r = runner.invoke(cli, ["broker", "--backend", "hub", "--socket", str(tmp_path / "b.sock")])
    # The command leaves the default to the one launch rule (broker::launch),
    # which takes $VMNET_RS_STATE_DIR.
    from vmnet_rs import _native

    assert r.exit_code == 1 and seen["state_dir"] is None, (r.output, seen)
    assert _native.default_state_dir() == str(tmp_path / "env-state")
    seen.clear()
    r = runner.invoke(cli, ["broker", "--backend", "hub", "--socket", str(tmp_path / "b.sock"), "--state-dir", str(tmp_path / "flag")])
    assert seen["state_dir"] == str(tmp_path / "flag")
