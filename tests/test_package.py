"""The package's front: version, exception hierarchy, CLI entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vmnet_rs
from vmnet_rs import errors


def test_version_matches_cargo_manifest() -> None:
    cargo = (Path(__file__).parent.parent / "Cargo.toml").read_text()
    line = next(l for l in cargo.splitlines() if l.startswith("version = "))
    assert vmnet_rs.__version__ == line.split('"')[1]


def test_every_error_is_a_vmnet_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.VmnetError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.NotAuthorizedError, PermissionError)


def test_module_entry_prints_version() -> None:
    out = subprocess.run([sys.executable, "-m", "vmnet_rs", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vmnet-rs, version {vmnet_rs.__version__}"
