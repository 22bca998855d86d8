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
    runs = [line for line in text.splitlines() if line.startswith("run: ")]
    # The commands, in order: domain probe, the old job out and gone, sign
    # the binary, verify, read the entitlement back, load it again.
    assert runs == [
        f"run: launchctl print gui/{os.getuid()}",
        f"run: launchctl bootout gui/{os.getuid()}/io.github.vmnet-rs.broker  (may fail harmlessly)",
        f"run: launchctl print gui/{os.getuid()}/io.github.vmnet-rs.broker  (may fail harmlessly)  (repeated until it fails, at most 30 s)",
        f"run: codesign --force -s - --entitlements '{ent}' {exe}",
        f"run: codesign --verify --strict {exe}",
        f"run: codesign -d --entitlements - {exe}  (output must contain com.apple.security.virtualization)",
        f"run: launchctl bootstrap gui/{os.getuid()} {plist_path}  (retried while it says 'Input/output error', at most 15 s)",
    ]
    # Exactly one binary is signed, and no Python interpreter is copied or signed.
    assert text.count("codesign --force") == 1 and "copy " not in text and "PYTHONHOME" not in text
    assert text.rstrip().endswith(f"write {support / 'install.json'} (records the signed binary's sha256, so an upgrade is noticed)")
    # Nothing was written.
    assert not plist_path.exists() and not support.exists()


def test_macos_plist_runs_the_binary_with_endpoint_sockets(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "vmnet-rs-broker"
    endpoints = [("lab", "stream", tmp_path / "ep" / "lab.stream.sock"), ("lab", "dgram", tmp_path / "ep" / "lab.dgram.sock")]
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, "/etc/n.yaml", exe=exe, python="/opt/py/bin/python3", endpoints=endpoints, gid=20)
    doc = plistlib.loads(next(w.content for w in plan.writes if w.path.name == "io.example.vmnet.plist"))
    assert doc["Label"] == "io.example.vmnet"
    assert doc["MachServices"] == {"io.example.vmnet": True}
    assert doc["ProgramArguments"] == [str(exe), "--mach-service", "io.example.vmnet", "--python", "/opt/py/bin/python3", "--config", "/etc/n.yaml"]
    # The socket files are the user's (SockPathOwner/SockPathGroup), or the
    # user's own VMs could get EACCES connecting to them.
    mine = {"SockPathMode": 0o600, "SockPathOwner": 501, "SockPathGroup": 20}
    assert doc["Sockets"] == {
        "lab.stream": {"SockFamily": "Unix", "SockType": "stream", "SockPathName": str(endpoints[0][2]), **mine},
        "lab.dgram": {"SockFamily": "Unix", "SockType": "dgram", "SockPathName": str(endpoints[1][2]), **mine},
    }
    # The keys listed for the broker, which warns about any its configuration no longer names.
    assert doc["EnvironmentVariables"] == {"VMNET_RS_LAUNCHD_SOCKETS": "lab.stream,lab.dgram"}
    # The endpoint folder is made 0700 (the check on macOS), not the umask's 0755.
    assert plan.dir_modes == {tmp_path / "ep": 0o700}
    assert doc["ExitTimeOut"] == 20
    assert "RunAtLoad" not in doc and "KeepAlive" not in doc
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


class FakeLaunchd:
    """launchctl and codesign as a reinstall meets them: the booted-out job
    takes `exit_polls` polls of `launchctl print` to leave, and `bootstrap`
    answers "5: Input/output error" while it has not (launchctl's words)."""

    def __init__(self, label: str, exit_polls: int, eio_after_exit: int = 0) -> None:
        self.label = label
        self.loaded = True
        self.exiting = 0
        self.exit_polls = exit_polls
        self.eio_after_exit = eio_after_exit
        self.calls: list = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.now += seconds

    def run(self, argv):
        self.calls.append(argv[:2])
        ok = lambda out="": subprocess.CompletedProcess(argv, 0, out, "")  # noqa: E731
        if argv[0] == "codesign":
            return ok("[Dict] [Key] com.apple.security.virtualization [Value] [Bool] true")
        verb = argv[1]
        if verb == "print" and argv[2].endswith("/" + self.label):
            if self.exiting > 0:
                self.exiting -= 1
                return ok("state = exiting")
            if self.loaded:
                return ok("state = running")
            return subprocess.CompletedProcess(argv, 113, "", f"Could not find service \"{self.label}\" in domain")
        if verb == "print":
            return ok("domain")
        if verb == "bootout":
            self.loaded = False
            self.exiting = self.exit_polls
            return ok()
        if verb == "bootstrap":
            if self.exiting > 0 or self.eio_after_exit > 0:
                self.eio_after_exit = max(0, self.eio_after_exit - 1)
                return subprocess.CompletedProcess(argv, 5, "", "Bootstrap failed: 5: Input/output error")
            self.loaded = True
            return ok()
        raise AssertionError(f"unexpected command {argv}")


def test_macos_reinstall_waits_for_the_old_job_and_retries_bootstrap(tmp_path: Path) -> None:
    exe = tmp_path / "bin" / "vmnet-rs-broker"
    exe.parent.mkdir()
    exe.write_bytes(b"binary")
    ep = tmp_path / "ep"
    endpoints = [("lab", "stream", ep / "lab.stream.sock")]
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py", endpoints=endpoints, gid=20)
    fake = FakeLaunchd("io.example.vmnet", exit_polls=3, eio_after_exit=2)
    plan.execute(runner=fake.run, clock=fake.clock, pause=fake.pause)
    assert fake.loaded, "the new job is loaded"
    verbs = [c[1] for c in fake.calls]
    # Signed only once the old job has left; bootstrap retried through EIO.
    first_sign = verbs.index("--force")
    assert verbs[:first_sign] == ["print", "bootout", "print", "print", "print", "print"]
    assert verbs[first_sign:] == ["--force", "--verify", "-d", "bootstrap", "bootstrap", "bootstrap"]
    # The endpoint folder is 0700 whatever the umask.
    assert (ep.stat().st_mode & 0o777) == 0o700
    assert plan.stamp is not None and plan.stamp[0].is_file()


def test_macos_reinstall_gives_up_on_a_job_that_never_leaves(tmp_path: Path) -> None:
    exe = tmp_path / "vmnet-rs-broker"
    exe.write_bytes(b"binary")
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py", gid=20)
    fake = FakeLaunchd("io.example.vmnet", exit_polls=10**6)
    with pytest.raises(VmnetError, match="did not exit"):
        plan.execute(runner=fake.run, clock=fake.clock, pause=fake.pause)
    assert fake.now <= install.BOOTOUT_WAIT_S + 1, "bounded by the wait"
    assert "bootstrap" not in [c[1] for c in fake.calls] and "--force" not in [c[1] for c in fake.calls]
    # A bootstrap that keeps answering EIO is reported, after its bound.
    plan = install.macos_install_plan("io.example.vmnet", tmp_path, 501, exe=exe, python="/py", gid=20, force=True)
    fake = FakeLaunchd("io.example.vmnet", exit_polls=0, eio_after_exit=10**6)
    with pytest.raises(VmnetError, match="Input/output error"):
        plan.execute(runner=fake.run, clock=fake.clock, pause=fake.pause)


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


def test_resolver_dry_run_prints_what_it_would_write_and_run(tmp_path, monkeypatch):
    """`vmnet-rs install --resolver --dry-run`: each network's name domain,
    pointed at its gateway; on Linux also the marker in the data directory
    that has the broker register it again on each bridge it makes, and
    resolvectl only for bridges that exist; nothing is changed (a dry run only)."""
    from click.testing import CliRunner

    from vmnet_rs.cli import cli

    cfg = tmp_path / "networks.yaml"
    cfg.write_text("vmnet:\n  lab:\n    mode: host\n    subnet: 10.61.0.0/24\n    domain: lab.internal\n  quiet:\n    mode: host\n    subnet: 10.62.0.0/24\n    dnsProxy: false\n")
    mac = CliRunner().invoke(cli, ["install", "--resolver", "--dry-run", "--platform", "macos", "--config", str(cfg)])
    assert mac.exit_code == 0, mac.output
    assert "write /etc/resolver/lab.internal (mode 644):\n    # vmnet-rs: names of VMs on this network\n    nameserver 10.61.0.1\n" in mac.output
    assert "write /etc/resolver/shared.vmnet.internal (mode 644):" in mac.output and "nameserver 192.168.107.1" in mac.output
    assert "quiet" not in mac.output, "a network without dnsProxy answers no names"
    monkeypatch.setenv("VMNET_RS_DATA_DIR", str(tmp_path / "data"))
    linux = CliRunner().invoke(cli, ["install", "--resolver", "--dry-run", "--platform", "linux", "--config", str(cfg)])
    assert linux.exit_code == 0, linux.output
    assert f"write {tmp_path}/data/resolver/lab.json (mode 644):" in linux.output, linux.output
    assert "bridge vmr-lab does not exist now; the broker registers lab.internal on it when it makes it" in linux.output, linux.output
    assert not Path("/etc/resolver/lab.internal").exists() and not (tmp_path / "data").exists()
    # With the bridge there (the plan only): resolvectl now, and the marker the broker reads.
    from vmnet_rs.config import load_config
    from vmnet_rs.install import resolver_plan

    plan = resolver_plan("linux", load_config(str(cfg)), link_exists=lambda b: b == "vmr-lab")
    assert plan.commands == [["resolvectl", "dns", "vmr-lab", "10.61.0.1"], ["resolvectl", "domain", "vmr-lab", "~lab.internal"]]
    markers = {w.path.name: json.loads(w.content) for w in plan.writes}
    assert markers["lab.json"] == {"network": "lab", "domain": "lab.internal", "dns": "10.61.0.1"}
    assert markers["shared.json"] == {"network": "shared", "domain": "shared.vmnet.internal", "dns": "192.168.107.1"}
    assert "quiet.json" not in markers and {w.path.parent for w in plan.writes} == {tmp_path / "data" / "resolver"}


def test_uninstall_removes_what_install_resolver_left(tmp_path, monkeypatch):
    """`vmnet-rs uninstall --resolver` (and a plain uninstall on Linux)
    removes every marker `install --resolver` left in the data directory, so
    the broker registers no domain on a bridge it makes later, and reverts
    the per-link DNS of the bridges that exist now; macOS removes only the
    /etc/resolver files install wrote."""
    from click.testing import CliRunner

    from vmnet_rs.cli import cli
    from vmnet_rs.config import load_config

    cfg = tmp_path / "networks.yaml"
    cfg.write_text("vmnet:\n  lab:\n    mode: host\n    subnet: 10.61.0.0/24\n")
    data = tmp_path / "data"
    monkeypatch.setenv("VMNET_RS_DATA_DIR", str(data))
    install.resolver_plan("linux", load_config(str(cfg)), link_exists=lambda b: False).execute(runner=lambda c: pytest.fail(f"ran {c}"))
    # A marker of a network no longer configured goes too.
    (data / "resolver" / "old.json").write_text(json.dumps({"network": "old", "domain": "old.vmnet.internal", "dns": "10.9.0.1"}))
    markers = sorted((data / "resolver").glob("*.json"))
    assert [m.name for m in markers] == ["host.json", "lab.json", "old.json", "shared.json"]

    dry = CliRunner().invoke(cli, ["uninstall", "--resolver", "--dry-run", "--platform", "linux", "--config", str(cfg)])
    assert dry.exit_code == 0, dry.output
    assert all(f"remove {m}" in dry.output for m in markers), dry.output
    plain = CliRunner().invoke(cli, ["uninstall", "--dry-run", "--platform", "linux", "--config", str(cfg)])
    assert "remove /etc/systemd/system/vmnet-rs.service" in plain.output and all(f"remove {m}" in plain.output for m in markers), plain.output
    assert sorted((data / "resolver").glob("*.json")) == markers, "a dry run changes nothing"

    # vmr-lab exists now: its registration is reverted, after the markers are gone.
    plan = install.Plan("linux")
    install.add_resolver_removal(plan, str(data), link_exists=lambda b: b == "vmr-lab", resolvectl="/usr/bin/resolvectl")
    assert plan.after == [["resolvectl", "revert", "vmr-lab"]]
    ran = []

    def runner(c):
        ran.append((c, sorted(p.name for p in (data / "resolver").glob("*.json"))))
        return subprocess.CompletedProcess(c, 0, "", "")

    plan.execute(runner=runner)
    assert ran == [(["resolvectl", "revert", "vmr-lab"], [])]
    # Without resolvectl nothing was ever registered: the markers alone go.
    (data / "resolver" / "lab.json").write_text("{}")
    quiet = install.Plan("linux")
    install.add_resolver_removal(quiet, str(data), link_exists=lambda b: True, resolvectl=None)
    assert quiet.after == [] and quiet.removals == [data / "resolver" / "lab.json"]

    # macOS: only the files that carry install's header line.
    rdir = tmp_path / "etc-resolver"
    rdir.mkdir()
    ours = rdir / "lab.vmnet.internal"
    ours.write_bytes(install.MACOS_RESOLVER_HEADER + b"nameserver 10.61.0.1\n")
    (rdir / "corp.example").write_text("nameserver 10.0.0.53\n")
    mac = install.Plan("macos")
    install.add_resolver_removal(mac, "", resolver_dir=rdir)
    assert mac.removals == [ours]
