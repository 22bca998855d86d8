"""`vmnet-rs install` / `uninstall`: the plans for both platforms,
checked through --dry-run output and the plan objects; nothing is installed."""

from __future__ import annotations

import hashlib
import json
import os
import plistlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vmnet_rs import install
from vmnet_rs.errors import VmnetError


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "VMNET_RS_CONFIG": str(home / "none.yaml")}
    return subprocess.run([sys.executable, "-m", "vmnet_rs", *args], capture_output=True, text=True, timeout=120, env=env)


def test_macos_dry_run_signs_and_starts_the_native_binary_only() -> None:
    # A home as short as /Users/NAME: endpoint socket paths must fit in sun_path.
    with tempfile.TemporaryDirectory(prefix="vh", dir="/tmp") as home:
        _macos_dry_run(Path(home))


def _macos_dry_run(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    out = run_cli("install", "--dry-run", "--platform", "macos", home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    support = tmp_path / "Library" / "Application Support" / "vmnet-rs"
    plist_path = tmp_path / "Library" / "LaunchAgents" / "io.github.vmnet-rs.broker.plist"
    exe = install.broker_executable()
    assert exe.name == "vmnet-rs-broker"
    ent = support / "entitlements.plist"
    assert f"write {plist_path} (mode 644):" in text
    # The commands, in order: domain probe, sign the binary, verify, read the entitlement back, reload.
    runs = [line for line in text.splitlines() if line.startswith("run: ")]
    assert runs == [
        f"run: launchctl print gui/{os.getuid()}",
        f"run: codesign --force -s - --entitlements '{ent}' {exe}",
        f"run: codesign --verify --strict {exe}",
        f"run: codesign -d --entitlements - {exe}  (output must contain com.apple.security.virtualization)",
        f"run: launchctl bootout gui/{os.getuid()}/io.github.vmnet-rs.broker  (may fail harmlessly)",
        f"run: launchctl bootstrap gui/{os.getuid()} {plist_path}",
    ]
    # Exactly one binary is signed, and no Python interpreter is copied or signed.
    assert text.count("codesign --force") == 1 and "copy " not in text and "PYTHONHOME" not in text
    assert text.rstrip().endswith(f"write {support / 'install.json'} (records the signed binary's sha256, so an upgrade is noticed)")
    # Nothing was written.
    assert not plist_path.exists() and not support.exists()


def test_macos_plist_runs_the_binary_with_endpoint_sockets(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "vmnet-rs-broker"
    endpoints = [("lab", "stream", tmp_path / "ep" / "lab.stream.sock"), ("lab", "dgram", tmp_path / "ep" / "lab.dgram.sock")]
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, "/etc/n.yaml", exe=exe, python="/opt/py/bin/python3", endpoints=endpoints)
    doc = plistlib.loads(next(w.content for w in plan.writes if w.path.name == "io.example.vmnet.plist"))
    assert doc["Label"] == "io.example.vmnet"
    assert doc["MachServices"] == {"io.example.vmnet": True}
    assert doc["ProgramArguments"] == [str(exe), "--mach-service", "io.example.vmnet", "--python", "/opt/py/bin/python3", "--config", "/etc/n.yaml"]
    assert doc["Sockets"] == {
        "lab.stream": {"SockFamily": "Unix", "SockType": "stream", "SockPathName": str(endpoints[0][2]), "SockPathMode": 0o600},
        "lab.dgram": {"SockFamily": "Unix", "SockType": "dgram", "SockPathName": str(endpoints[1][2]), "SockPathMode": 0o600},
    }
    assert doc["ExitTimeOut"] == 20
    assert "RunAtLoad" not in doc and "KeepAlive" not in doc and "EnvironmentVariables" not in doc
    assert doc["StandardOutPath"].endswith("Library/Logs/vmnet-rs/broker.log")
    ent = plistlib.loads(next(w.content for w in plan.writes if w.path.name == "entitlements.plist"))
    assert ent == {"com.apple.security.virtualization": True}
    assert ["codesign", "--force", "-s", "-", "--entitlements", str(tmp_path / "Library/Application Support/vmnet-rs/entitlements.plist"), str(exe)] in plan.commands
    assert ["launchctl", "bootstrap", "gui/501", str(tmp_path / "Library/LaunchAgents/io.example.vmnet.plist")] in plan.commands
    # No GUI login: the failure of the domain probe says so and what to do.
    hint = plan.explain[("launchctl", "print", "gui/501")]
    assert "nobody is logged in at this Mac's screen" in hint and "--domain user" in hint
    user = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, domain="user")
    assert ["launchctl", "bootstrap", "user/501", str(tmp_path / "Library/LaunchAgents/io.example.vmnet.plist")] in user.commands


def test_macos_endpoint_paths_past_sun_path_are_refused(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 100) / "lab.stream.sock"
    with pytest.raises(VmnetError, match="past macOS's 103-byte limit: set a shorter broker key endpointDir"):
        install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=tmp_path / "b", endpoints=[("lab", "stream", long)])


def test_macos_signs_again_after_an_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "bin" / "vmnet-rs-broker"
    exe.parent.mkdir()
    exe.write_bytes(b"signed binary")
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py")
    # Lay the files down as install would (without codesign/launchctl).
    for d in plan.dirs:
        d.mkdir(parents=True, exist_ok=True)
    for w in plan.writes:
        w.path.write_bytes(w.content)
    assert plan.stamp is not None
    plan.stamp[0].write_bytes(plan.stamp[2]())
    recorded = json.loads(plan.stamp[0].read_text())
    assert recorded["broker"] == str(exe) and recorded["broker_sha256"] == hashlib.sha256(b"signed binary").hexdigest()
    again = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py")
    assert again.up_to_date and not again.commands
    # pip upgraded the package: a new, unsigned binary in the same place.
    exe.write_bytes(b"new unsigned binary")
    changed = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py")
    assert not changed.up_to_date
    assert any("changed since it was signed" in n for n in changed.notes)
    assert ["codesign", "--force", "-s", "-", "--entitlements", str(tmp_path / "Library/Application Support/vmnet-rs/entitlements.plist"), str(exe)] in changed.commands
    assert ["launchctl", "bootout", "gui/501/io.example.vmnet"] in changed.commands
    # Forced.
    exe.write_bytes(b"signed binary")
    assert install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py").up_to_date
    assert not install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py", force=True).up_to_date


def test_linux_dry_run_units(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text('{"vmnet": {"lab": {"mode": "host"}}}\n')
    out = run_cli("install", "--dry-run", "--platform", "linux", "--config", str(tmp_path / "none.yaml"), "--socket", "/run/test-vmnet/b.sock", home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    exe = install.broker_executable()
    assert "write /etc/systemd/system/vmnet-rs.socket (mode 644):" in text
    assert "    ListenSequentialPacket=/run/test-vmnet/b.sock\n    FileDescriptorName=broker\n" in text
    assert "    SocketMode=0666" in text
    # One socket unit per endpoint (systemd names all fds of a unit alike), beside the broker socket.
    assert "write /etc/systemd/system/vmnet-rs-lab-stream.socket (mode 644):" in text
    assert "    ListenStream=/run/test-vmnet/lab.stream.sock\n    FileDescriptorName=lab.stream\n    Service=vmnet-rs.service\n" in text
    assert "    ListenDatagram=/run/test-vmnet/lab.dgram.sock\n    FileDescriptorName=lab.dgram\n" in text
    assert "write /etc/systemd/system/vmnet-rs.service (mode 644):" in text
    assert f"    ExecStart={exe} --python {sys.executable} --config {tmp_path / 'none.yaml'}\n" in text
    assert "-m vmnet_rs" not in text and "PYTHONPATH" not in text
    assert "run: systemctl daemon-reload" in text
    assert (
        "run: systemctl enable --now vmnet-rs.socket vmnet-rs-host-stream.socket vmnet-rs-host-dgram.socket "
        "vmnet-rs-lab-stream.socket vmnet-rs-lab-dgram.socket vmnet-rs-shared-stream.socket vmnet-rs-shared-dgram.socket"
    ) in text
    out = run_cli("uninstall", "--dry-run", "--platform", "linux", home=tmp_path)
    assert "run: systemctl disable --now vmnet-rs.socket" in out.stdout and "vmnet-rs.service" in out.stdout
    assert "remove /etc/systemd/system/vmnet-rs.service" in out.stdout
    assert out.stdout.rstrip().endswith("run: systemctl daemon-reload")


def test_linux_plan_is_idempotent_and_drops_stale_endpoint_units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "_group_exists", lambda name: True)
    exe = Path("/opt/venv/bin/vmnet-rs-broker")
    eps = [("lab", "stream", Path("/run/lab.stream.sock")), ("lab", "dgram", Path("/run/lab.dgram.sock"))]
    plan = install.linux_install_plan("/run/x.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path, exe=exe, python="/opt/venv/bin/python", endpoints=eps)
    assert {w.path.name for w in plan.writes} == {"vmnet-rs.socket", "vmnet-rs-lab-stream.socket", "vmnet-rs-lab-dgram.socket", "vmnet-rs.service"}
    service = next(w.content.decode() for w in plan.writes if w.path.name == "vmnet-rs.service")
    assert "ExecStart=/opt/venv/bin/vmnet-rs-broker --python /opt/venv/bin/python --config /etc/vmnet-rs/n.yaml\n" in service
    assert "Sockets=vmnet-rs.socket vmnet-rs-lab-stream.socket vmnet-rs-lab-dgram.socket\n" in service
    for w in plan.writes:
        w.path.write_bytes(w.content)
    assert install.linux_install_plan("/run/x.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path, exe=exe, python="/opt/venv/bin/python", endpoints=eps).up_to_date
    changed = install.linux_install_plan("/run/y.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path, exe=exe, python="/opt/venv/bin/python", endpoints=eps)
    assert [w.path.name for w in changed.writes] == ["vmnet-rs.socket"]
    assert ["systemctl", "try-restart", "vmnet-rs.service"] in changed.after
    # The network went from the configuration: its endpoint units go too.
    gone = install.linux_install_plan("/run/x.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path, exe=exe, python="/opt/venv/bin/python")
    assert sorted(p.name for p in gone.removals) == ["vmnet-rs-lab-dgram.socket", "vmnet-rs-lab-stream.socket"]
    assert ["systemctl", "disable", "--now", "vmnet-rs-lab-stream.socket"] in gone.commands
    assert install.endpoint_socket_unit_name("a b", "dgram") == "vmnet-rs-a\\x20b-dgram.socket"


def test_a_failed_step_says_what_to_do(tmp_path: Path) -> None:
    plan = install.Plan("macos")
    probe = [sys.executable, "-c", "import sys; sys.exit('Bad request.')"]
    plan.commands.append(probe)
    plan.explain[tuple(probe)] = "log in at the screen"
    with pytest.raises(VmnetError) as e:
        plan.execute()
    assert str(e.value).splitlines()[1] == "log in at the screen"
    show = [sys.executable, "-c", "print('[Dict] other.entitlement')"]
    plan = install.Plan("macos", commands=[show], expect={tuple(show): "com.apple.security.virtualization"})
    with pytest.raises(VmnetError, match="does not show com.apple.security.virtualization"):
        plan.execute()


@pytest.mark.skipif(sys.platform == "darwin", reason="what Linux says about Mach services; macOS serves them")
def test_lima_unregister_spelling_and_mach_service_on_linux(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    out = run_cli("broker", "--mach-service", "io.lima-vm.vmnet", home=tmp_path)
    assert out.returncode == 2
    assert "Mach services exist only on macOS" in out.stderr
    out = run_cli("broker", "--unregister-mach-service", home=tmp_path)
    assert out.returncode == 2 and "vmnet-rs uninstall" in out.stderr


@pytest.mark.root
def test_linux_plan_warns_when_root_would_run_a_user_writable_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "_group_exists", lambda name: True)
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    exe, py = venv / "vmnet-rs-broker", venv / "python"
    exe.write_bytes(b"")
    py.write_bytes(b"")
    for p in (tmp_path / "venv", venv, exe, py):
        os.chmod(p, 0o755)
        os.chown(p, 0, 0)
    os.chmod(tmp_path, 0o755)
    quiet = install.linux_install_plan("/run/x.sock", unit_dir=tmp_path / "units", exe=exe, python=str(py))
    assert not [n for n in quiet.notes if n.startswith("WARNING")]
    os.chown(exe, 1000, 1000)
    loud = install.linux_install_plan("/run/x.sock", unit_dir=tmp_path / "units", exe=exe, python=str(py))
    warnings = [n for n in loud.notes if n.startswith("WARNING")]
    assert warnings == [
        f"WARNING: {exe} is owned by uid 1000 (mode 755) and systemd runs {exe} as root: whoever can change it can become root; "
        "on a shared machine install vmnet-rs as root into a root-owned prefix"
    ]
