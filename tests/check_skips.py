"""Fails a test run that skipped a test the allow-list does not name.

``python tests/check_skips.py JUNIT_XML [ALLOWED]`` reads pytest's
``--junitxml`` report and ``tests/allowed-skips.txt`` (one fnmatch pattern
of a test id a line, `` -- `` and the reason; ``#`` comments). Prints each
skipped test with its reason; exits 1 naming every skip not allowed, 0
otherwise. ``scripts/test`` runs it as root, where every test can run."""

from __future__ import annotations

import fnmatch
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Tuple

ALLOWED = Path(__file__).with_name("allowed-skips.txt")


def allowed_patterns(path: Path) -> List[Tuple[str, str]]:
    """(pattern, reason) of each line; a line without a reason is an error."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, sep, reason = line.partition(" -- ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: give each allowed skip a reason: PATTERN -- WHY")
        out.append((pattern.strip(), reason.strip()))
    return out


def skipped(report: Path) -> List[Tuple[str, str]]:
    """(test id, reason) of every skipped test in a junit report."""
    out = []
    for case in ET.parse(report).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is None:
            continue
        module = case.get("classname", "")
        # classname is the module's dotted path (from the run's directory),
        # then any class names.
        parts = module.split(".")
        n = next((k for k in range(len(parts), 0, -1) if Path(*parts[:k]).with_suffix(".py").is_file()), len(parts))
        test_id = "::".join(["/".join(parts[:n]) + ".py", *parts[n:], case.get("name", "")])
        out.append((test_id, skip.get("message", "")))
    return out


def main(argv: List[str]) -> int:
    report = Path(argv[1])
    allowed = allowed_patterns(Path(argv[2]) if len(argv) > 2 else ALLOWED)
    bad = []
    for test_id, reason in skipped(report):
        ok = any(fnmatch.fnmatchcase(test_id, p) for p, _ in allowed)
        print(f"skipped{'' if ok else ' (NOT ALLOWED)'}: {test_id}: {reason}")
        if not ok:
            bad.append(test_id)
    if bad:
        print(f"check_skips: {len(bad)} skip(s) not in {argv[2] if len(argv) > 2 else ALLOWED}: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
