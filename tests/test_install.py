"""`vmnet-rs install` / `uninstall` / `status`: the plans for both platforms,
checked through --dry-run output and the plan objects; nothing is installed."""

from __future__ import annotations

import json
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from vmnet_rs import __version__, install


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "VMNET_RS_CONFIG": str(home / "none.yaml")}
    return subprocess.run([sys.executable, "-m", "vmnet_rs", *args], capture_output=True, text=True, timeout=120, env=env)


def test_macos_dry_run_plist_signing_and_launchctl(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    out = run_cli("install", "--dry-run", "--platform", "macos", home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    support = tmp_path / "Library" / "Application Support" / "vmnet-rs"
    plist_path = tmp_path / "Library" / "LaunchAgents" / "io.github.vmnet-rs.broker.plist"
    exe = support / "vmnet-rs-broker"
    assert f"write {plist_path} (mode 644):" in text
    assert f"run: codesign --force -s - --entitlements '{support / 'entitlements.plist'}' '{exe}'" in text
    assert "run: launchctl bootout gui/" in text and "(may fail harmlessly)" in text
    assert f"launchctl bootstrap gui/" in text and str(plist_path) in text
    # Nothing was written.
    assert not plist_path.exists() and not support.exists()
    # The plist itself, as the plan holds it.
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501)
    doc = plistlib.loads(next(w.content for w in plan.writes if w.path.name == "io.example.vmnet.plist"))
    assert doc["Label"] == "io.example.vmnet"
    assert doc["MachServices"] == {"io.example.vmnet": True}
    assert doc["ProgramArguments"][1:] == ["-m", "vmnet_rs", "broker", "--mach-service", "io.example.vmnet"]
    assert doc["ExitTimeOut"] == 20
    assert "RunAtLoad" not in doc and "KeepAlive" not in doc
    assert doc["StandardOutPath"].endswith("Library/Logs/vmnet-rs/broker.log")
    assert doc["EnvironmentVariables"]["PYTHONHOME"] == sys.base_prefix
    ent = plistlib.loads(next(w.content for w in plan.writes if w.path.name == "entitlements.plist"))
    assert ent == {"com.apple.security.virtualization": True}
    assert ["launchctl", "bootstrap", "gui/501", str(tmp_path / "Library/LaunchAgents/io.example.vmnet.plist")] in plan.commands


def test_macos_refreshes_when_the_package_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501)
    # Lay the files down as install would (without codesign/launchctl).
    for d in plan.dirs:
        d.mkdir(parents=True, exist_ok=True)
    for src, dst, _mode in plan.copies:
        Path(dst).write_bytes(Path(src).read_bytes())
    for w in plan.writes:
        w.path.write_bytes(w.content)
    again = install.macos_install_plan("io.example.vmnet", tmp_path, 501)
    assert again.up_to_date and not again.commands
    # Another version of the package: everything is redone.
    monkeypatch.setattr(install, "__version__", __version__ + ".post1")
    changed = install.macos_install_plan("io.example.vmnet", tmp_path, 501)
    assert not changed.up_to_date
    assert any("replaced" in n for n in changed.notes)
    assert ["launchctl", "bootout", "gui/501/io.example.vmnet"] in changed.commands
    # Forced.
    monkeypatch.setattr(install, "__version__", __version__)
    assert not install.macos_install_plan("io.example.vmnet", tmp_path, 501, force=True).up_to_date


def test_linux_dry_run_units(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    out = run_cli("install", "--dry-run", "--platform", "linux", "--socket", "/run/test-vmnet/b.sock", home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "write /etc/systemd/system/vmnet-rs.socket (mode 644):" in text
    assert "    ListenSequentialPacket=/run/test-vmnet/b.sock" in text
    assert "    SocketMode=0666" in text
    assert "write /etc/systemd/system/vmnet-rs.service (mode 644):" in text
    assert f"    ExecStart={sys.executable} -m vmnet_rs broker" in text
    assert "run: systemctl daemon-reload" in text
    assert "run: systemctl enable --now vmnet-rs.socket" in text
    out = run_cli("uninstall", "--dry-run", "--platform", "linux", home=tmp_path)
    assert "run: systemctl disable --now vmnet-rs.socket vmnet-rs.service" in out.stdout
    assert "remove /etc/systemd/system/vmnet-rs.service" in out.stdout
    assert out.stdout.rstrip().endswith("run: systemctl daemon-reload")


def test_linux_plan_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "_group_exists", lambda name: True)
    plan = install.linux_install_plan("/run/x.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path)
    assert {w.path.name for w in plan.writes} == {"vmnet-rs.socket", "vmnet-rs.service"}
    service = next(w.content.decode() for w in plan.writes if w.path.name == "vmnet-rs.service")
    assert "--config /etc/vmnet-rs/n.yaml" in service
    for w in plan.writes:
        w.path.write_bytes(w.content)
    assert install.linux_install_plan("/run/x.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path).up_to_date
    changed = install.linux_install_plan("/run/y.sock", "/etc/vmnet-rs/n.yaml", unit_dir=tmp_path)
    assert [w.path.name for w in changed.writes] == ["vmnet-rs.socket"]
    assert ["systemctl", "try-restart", "vmnet-rs.service"] in changed.commands


def test_lima_unregister_spelling_and_mach_service_on_linux(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    out = run_cli("broker", "--mach-service", "io.lima-vm.vmnet", home=tmp_path)
    if sys.platform != "darwin":
        assert out.returncode == 2
        assert "Mach services exist only on macOS" in out.stderr
        out = run_cli("broker", "--unregister-mach-service", home=tmp_path)
        assert out.returncode == 2 and "vmnet-rs uninstall" in out.stderr


def test_status_without_broker(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    env_sock = tmp_path / "none.sock"
    out = run_cli("status", "--json", "--platform", "linux", "--socket", str(env_sock), home=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["broker"]["running"] is False and "no broker answers" in doc["broker"]["error"]
    assert doc["installed"]["platform"] == "linux"
