"""``vmnet-rs run`` against a fake broker client: fd wiring, statuses, signals, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from brokerproc import readline_within, wait_until
from vmnet_rs import drivers, run
from vmnet_rs.cli import cli

TESTS = Path(__file__).resolve().parent
CHILD = str(TESTS / "run_child.py")
WRAPPER = (
    "import sys; sys.path.insert(0, {tests!r}); import fakeclient; fakeclient.install(); "
    "from vmnet_rs.cli import main; main()"
).format(tests=str(TESTS))


def wrapper(args, tmp_path, mode="ok", **kw):
    env = dict(os.environ, VMNET_FAKE_JOURNAL=str(tmp_path / "journal"), VMNET_FAKE_MODE=mode)
    return subprocess.Popen([sys.executable, "-c", WRAPPER, "run", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def journal(tmp_path):
    path = tmp_path / "journal"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def report(stdout: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith("report "):
            return json.loads(line[len("report "):])
    raise AssertionError(f"no report in child output:\n{stdout}")


def journal_until(tmp_path, what, predicate, timeout=30):
    """The journal once ``predicate(ops)`` holds (the fake server writes ``close`` when the connection ends)."""
    return wait_until(what, lambda: (lambda ops: ops if predicate(ops) else None)(journal(tmp_path)), timeout)


def closed(tmp_path):
    return journal_until(tmp_path, "the broker connection to end", lambda ops: ops and ops[-1]["op"] == "close")


def test_exec_gives_fds_at_3_and_4_the_broker_connection_and_the_exit_status(tmp_path):
    p = wrapper(["--name", "vm1", "-n", "shared:datagram", "-n", "host:stream", "--",
                 sys.executable, CHILD, "7", "{fd0}", "{mac0}", "{fdtype0}", "{fd1}", "{mac1}", "{fdtype1}"], tmp_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    r = report(out)
    assert r["pid"] == p.pid  # the VM is the process vmnet-rs run was: no wrapper
    broker_fd = int(r["broker_fd"])
    assert broker_fd >= run.HIGH_FD_BASE
    # stdio, the two networks and the broker connection, nothing else leaks
    assert r["open_fds"] == [0, 1, 2, 3, 4, broker_fd]
    assert r["nics"] == [
        {"fd": 3, "mac": drivers.derive_mac("vm1", "shared"), "fd_type": "datagram", "kind": "SOCK_DGRAM", "echo": "hello 0"},
        {"fd": 4, "mac": drivers.derive_mac("vm1", "host"), "fd_type": "stream", "kind": "SOCK_STREAM", "echo": "hello 1"},
    ]
    ops = closed(tmp_path)
    assert [o["op"] for o in ops] == ["connect", "open", "open", "close"]
    assert ops[1] == {"op": "open", "network": "shared", "fd_type": "datagram",
                      "mac": drivers.derive_mac("vm1", "shared"), "vnet_hdr": False, "vm_name": "vm1"}


def test_supervise_gives_fds_at_3_and_4_and_keeps_the_connection(tmp_path):
    p = wrapper(["--supervise", "--name", "vm1", "-n", "shared:datagram", "-n", "host:stream", "--",
                 sys.executable, CHILD, "7", "{fd0}", "{mac0}", "{fdtype0}", "{fd1}", "{mac1}", "{fdtype1}"], tmp_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    r = report(out)
    assert r["pid"] != p.pid and r["broker_fd"] is None
    assert r["open_fds"] == [0, 1, 2, 3, 4]  # stdio and the two networks, nothing else leaks
    assert [n["echo"] for n in r["nics"]] == ["hello 0", "hello 1"]
    assert [o["op"] for o in closed(tmp_path)] == ["connect", "open", "open", "close"]


def test_explicit_mac_and_linux_tap_next_asks_for_vnet_hdr(tmp_path):
    if sys.platform != "linux":
        pytest.skip("tap fd type is Linux-only")
    vm = [sys.executable, CHILD, "0", "{fd0}", "{mac0}", "{fdtype0}"]
    p = wrapper(["--mac", "52:54:00:aa:bb:cc", "-n", "shared:tap_next", "--", *vm], tmp_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert report(out)["nics"][0]["mac"] == "52:54:00:aa:bb:cc"
    opens = [o for o in journal(tmp_path) if o["op"] == "open"]
    assert opens == [{"op": "open", "network": "shared", "fd_type": "tap", "mac": "52:54:00:aa:bb:cc", "vnet_hdr": True,
                      "vm_name": run.vm_name(None, vm)}]


def wait_ready(p):
    assert p.stdout is not None
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = readline_within(p, max(deadline - time.monotonic(), 0.1))
        lines.append(line)
        if line.strip() == "ready" or not line:
            break
    assert "ready\n" in lines, "".join(lines) + p.stderr.read()
    return report("".join(lines))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_supervise_forwards_signals_and_returns_the_vm_status(tmp_path, sig):
    p = wrapper(["--supervise", "-n", "shared", "--", sys.executable, CHILD, "wait", "{fd0}", "{mac0}", "{fdtype0}"], tmp_path)
    try:
        wait_ready(p)
        assert [o["op"] for o in journal(tmp_path)] == ["connect", "open"]  # leases held while the VM runs
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        assert f"got-signal {int(sig)}" in out
        assert p.returncode == 100 + sig, err
        closed(tmp_path)
    finally:
        p.kill()
        p.wait()


def test_exec_vm_killed_with_sigkill_ends_its_leases(tmp_path):
    p = wrapper(["-n", "shared", "--", sys.executable, CHILD, "wait", "{fd0}", "{mac0}", "{fdtype0}"], tmp_path)
    try:
        r = wait_ready(p)
        assert r["pid"] == p.pid
        assert [o["op"] for o in journal(tmp_path)] == ["connect", "open"]  # the VM holds the lease
        p.kill()
        assert p.wait(60) == -signal.SIGKILL
        closed(tmp_path)  # nothing else held the connection
    finally:
        p.kill()
        p.wait()


def test_supervise_says_once_when_the_broker_goes_away(tmp_path):
    p = wrapper(["--supervise", "-n", "shared", "--", sys.executable, CHILD, "wait", "{fd0}", "{mac0}", "{fdtype0}"],
                tmp_path)
    try:
        r = wait_ready(p)
        os.kill(journal(tmp_path)[0]["server_pid"], signal.SIGKILL)  # the "broker" crashes
        assert p.stderr is not None
        line = readline_within(p, 30, p.stderr)
        assert line == (f"vmnet-rs: the broker on /run/vmnet-rs/broker.sock went away; VM pid {r['pid']} has lost its "
                        "network (it keeps running; restart the broker, then the VM)\n")
        assert p.poll() is None  # the VM keeps running
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert (p.returncode, err) == (100 + signal.SIGINT, ""), out  # said once
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("mode,status", [("--exec", -9), ("--supervise", 128 + 9)])
def test_vm_killed_by_signal(tmp_path, mode, status):
    p = wrapper([mode, "-n", "shared", "--", "/bin/sh", "-c", "kill -9 $$; : {fd0}"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    closed(tmp_path)


def one_line_error(p, code):
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_broker_is_one_line(tmp_path):
    line = one_line_error(wrapper(["--", sys.executable, CHILD, "0", "{fd0}", "{mac0}", "{fdtype0}"], tmp_path,
                                  mode="unavailable"), 1)
    assert line.startswith("vmnet-rs: no broker answers")


def test_unknown_network_is_one_line_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    line = one_line_error(wrapper(["-n", "nosuchnet", "--", "/bin/sh", "-c", f"touch {marker}; : {{fd0}}"], tmp_path), 1)
    assert line == "vmnet-rs: unknown network 'nosuchnet'; known: shared, host"
    assert not marker.exists()
    closed(tmp_path)


def test_program_not_found_is_one_line_127(tmp_path):
    line = one_line_error(wrapper(["--", "no-such-vm-program", "{fd0}"], tmp_path), 127)
    assert line == "vmnet-rs: program not found on PATH: no-such-vm-program"
    assert journal(tmp_path) == []  # the broker was never asked


def test_unknown_program_without_placeholders_is_usage_error(tmp_path):
    line = one_line_error(wrapper(["--", "/bin/true"], tmp_path), 2)
    assert "true is not a VM engine vmnet-rs knows" in line
    assert journal(tmp_path) == []


def test_bad_network_spec_is_usage_error(tmp_path):
    line = one_line_error(wrapper(["-n", "shared:", "--", "/bin/true", "{fd0}"], tmp_path), 2)
    assert "expected NAME or NAME:BACKEND" in line


# --- --print-args (in process) -------------------------------------------------

@pytest.fixture
def fake_broker(monkeypatch, tmp_path):
    """The fake broker client in this process, journalling to tmp_path/journal."""
    sys.path.insert(0, str(TESTS))
    import fakeclient

    monkeypatch.setenv("VMNET_FAKE_JOURNAL", str(tmp_path / "journal"))
    monkeypatch.setattr(run, "client_factory", fakeclient.FakeClient)


def split_runner():
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by itself


def invoke(args):
    return CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)


def test_print_args_qemu_checks_the_networks_and_leases_nothing(fake_broker, tmp_path):
    r = invoke(["--print-args", "--name", "vm1", "-n", "shared:stream", "-n", "host:dgram_next", "--",
                "qemu-system-x86_64", "-m", "256", "-nographic"])
    assert r.exit_code == 0, r.output
    m0, m1 = drivers.derive_mac("vm1", "shared"), drivers.derive_mac("vm1", "host")
    assert r.output == (
        "qemu-system-x86_64 -m 256 -nographic "
        f"-netdev stream,id=net1,addr.type=fd,addr.str=3 -device virtio-net-pci,netdev=net1,mac={m0} "
        f"-netdev dgram,id=net2,local.type=fd,local.str=4 -device virtio-net-pci,netdev=net2,mac={m1}\n"
    )
    assert [o["op"] for o in closed(tmp_path)] == ["connect", "networks", "close"]  # asked, leased nothing


def test_print_args_without_broker_says_the_networks_are_not_checked(monkeypatch):
    sys.path.insert(0, str(TESTS))
    import fakeclient

    monkeypatch.setenv("VMNET_FAKE_MODE", "unavailable")
    monkeypatch.setattr(run, "client_factory", fakeclient.FakeClient)
    r = split_runner().invoke(cli, ["run", "--print-args", "--mac", "52:54:00:00:00:01", "-n", "nosuch:tap",
                                    "--", "qemu-system-x86_64"])
    assert r.exit_code == 0
    assert r.stdout.startswith("qemu-system-x86_64 -netdev tap,id=net1,fd=3 ")
    assert r.stderr.startswith("vmnet-rs: could not ask the broker, so the networks are not checked: no broker answers")
    assert "offload" not in r.stderr  # QEMU's arguments do not depend on it


def test_print_args_unknown_backend_fails_as_the_run_would(fake_broker, tmp_path):
    printed = invoke(["--print-args", "-n", "shared:nosuch", "--", "qemu-system-x86_64"])
    p = wrapper(["-n", "shared:nosuch", "--", "qemu-system-x86_64"], tmp_path)
    assert printed.exit_code == 2
    assert printed.output.strip().endswith("backend 'nosuch' is not available for qemu on Linux; choose one of: "
                                           "tap, tap_next, socket, stream, dgram, dgram_next")
    assert one_line_error(p, 2) == printed.output.strip()


def test_print_args_qemu_name_gives_the_vm_name(fake_broker):
    r = invoke(["--print-args", "--", "qemu-system-x86_64", "-name", "guest=web,debug-threads=on"])
    assert drivers.derive_mac("web", "shared") in r.output


def test_print_args_vfkit(fake_broker):
    r = invoke(["--print-args", "--name", "v", "--mac", "52:54:00:00:00:01", "--", "vfkit", "--cpus", "2"])
    assert r.output == "vfkit --cpus 2 --device virtio-net,fd=3,mac=52:54:00:00:00:01\n"


def test_print_args_krunkit_asks_the_broker_for_offload(monkeypatch, fake_broker):
    monkeypatch.setenv("VMNET_FAKE_MODE", "offload")
    r = invoke(["--print-args", "--mac", "52:54:00:00:00:01", "-n", "shared:datagram", "--", "krunkit"])
    assert r.output == "krunkit --device virtio-net,type=unixgram,fd=3,mac=52:54:00:00:00:01,offloading=on\n"


def test_print_args_krunkit_without_broker_warns_and_assumes_no_offload(monkeypatch):
    sys.path.insert(0, str(TESTS))
    import fakeclient

    monkeypatch.setenv("VMNET_FAKE_MODE", "unavailable")
    monkeypatch.setattr(run, "client_factory", fakeclient.FakeClient)
    r = split_runner().invoke(cli, ["run", "--print-args", "--mac", "52:54:00:00:00:01", "--", "krunkit"])
    assert r.stdout == "krunkit --device virtio-net,type=unixstream,fd=3,mac=52:54:00:00:00:01\n"
    assert "assuming the networks have no offload" in r.stderr


def test_print_args_placeholders_are_filled_not_appended(fake_broker):
    r = invoke(["--print-args", "--mac", "52:54:00:00:00:01", "--", "qemu-system-x86_64",
                "-netdev", "socket,id=n0,fd={fd0}", "-device", "e1000,netdev=n0,mac={mac0}"])
    assert r.output == "qemu-system-x86_64 -netdev socket,id=n0,fd=3 -device e1000,netdev=n0,mac=52:54:00:00:00:01\n"


def test_vm_name_default_is_stable_per_command():
    a = run.vm_name(None, ["krunkit", "--cpus", "2"])
    assert a == run.vm_name(None, ["krunkit", "--cpus", "2"])
    assert a != run.vm_name(None, ["krunkit", "--cpus", "4"])
    assert a.startswith("krunkit-")


def test_mtu_placeholder_is_filled_from_the_broker(tmp_path):
    out_file = tmp_path / "out"
    p = wrapper(["-n", "shared:stream", "--", "/bin/sh", "-c", f"echo {{fd0}} {{mtu0}} {{fdtype0}} > {out_file}"],
                tmp_path, mode="offload")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out_file.read_text() == "3 9000 stream\n"


def test_print_args_mtu_placeholder_asks_the_broker_list_only(fake_broker, tmp_path):
    r = invoke(["--print-args", "-n", "host", "--", "my-vmm", "--fd={fd0}", "--mtu={mtu0}"])
    assert r.output == "my-vmm --fd=3 --mtu=1500\n"
    assert [o["op"] for o in closed(tmp_path)] == ["connect", "networks", "close"]  # nothing leased


@pytest.mark.parametrize("program", ["krunkit", "qemu-system-x86_64"])
def test_print_args_unknown_network_from_the_broker(fake_broker, program):
    r = invoke(["--print-args", "-n", "nosuch", "--", program])
    assert (r.exit_code, r.output) == (1, "vmnet-rs: unknown network 'nosuch'; the broker knows: host, shared\n")


def test_print_args_refuses_a_clashing_qemu_netdev(fake_broker):
    r = invoke(["--print-args", "--", "qemu-system-x86_64", "-netdev", "user,id=net1"])
    assert r.exit_code == 2
    assert "already has a netdev with id=net1" in r.output


def test_program_that_cannot_be_executed_is_one_line_126(tmp_path):
    not_exec = tmp_path / "vm.sh"
    not_exec.write_text("#!/bin/sh\n")
    not_exec.chmod(0o644)
    line = one_line_error(wrapper(["--", str(not_exec), "{fd0}"], tmp_path), 126)
    assert line == f"vmnet-rs: program is not executable: {not_exec}"
    bad_format = tmp_path / "garbage"
    bad_format.write_bytes(b"\x00\x01not an executable")
    bad_format.chmod(0o755)
    line = one_line_error(wrapper(["--", str(bad_format), "{fd0}"], tmp_path), 126)
    assert line == f"vmnet-rs: cannot run {bad_format}: Exec format error"
    closed(tmp_path)  # the broker fds were given back
