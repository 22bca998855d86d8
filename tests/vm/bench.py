"""VM-to-VM throughput per QEMU backend, through a real broker: the benchmark
behind the README's backend table.

Run as root from the repository root (it creates and deletes its own network
namespaces; it never touches the machine's network)::

    .venv/bin/python tests/vm/bench.py [--seconds 10] [--repeat 3] [--backend tap_next ...]

For each run and backend it starts a broker in a fresh namespace, boots two
TCG guests with ``vmnet-rs run`` on ``shared``, checks leases and pings, and
measures iperf3 from the first guest to the second. A hand-made bridge + TAP
pair (no vmnet-rs) runs first in each round as the baseline. It prints a
Markdown table (Mbit/s, one column per round) and writes the raw numbers as
JSON (``--json``, default ``bench-out/vm-backends.json``). TCG makes every
number low: compare backends within a round, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from netns import NetNs  # noqa: E402
from vm.broker import BrokerProcess, run_guest  # noqa: E402
from vm.checks import check_pair  # noqa: E402
from vm.lan import Lan  # noqa: E402
from vm.qemu import Guest, qemu_base_argv  # noqa: E402

BACKENDS = ["tap_next", "tap", "socket", "stream", "dgram", "dgram_next"]
BASELINE = "baseline (bridge+tap, no vmnet-rs)"


def measure_baseline(seconds: int, workdir: Path) -> float:
    with NetNs(prefix="vmbench") as ns:
        lan = Lan(ns, workdir)
        guests: list[Guest] = []
        try:
            for i in range(2):
                tap = lan.add_tap(f"tap{i}")
                argv = qemu_base_argv(f"bench-base{i}") + [
                    "-netdev", f"tap,id=net1,ifname={tap},script=no,downscript=no",
                    "-device", f"virtio-net-pci,netdev=net1,mac=52:54:00:77:01:0{i + 1}",
                ]
                guests.append(Guest(ns.argv(argv), f"bench-base{i}", log_dir=workdir))
            for g in guests:
                g.wait_ready()
            return check_pair(guests[0], guests[1], lan.gateway, iperf_seconds=seconds)
        finally:
            for g in guests:
                g.close()
            lan.close()


def measure_backend(backend: str, seconds: int, workdir: Path) -> float:
    with NetNs(prefix="vmbench") as ns:
        broker = BrokerProcess(ns, workdir)
        guests: list[Guest] = []
        try:
            guests = [run_guest(ns, broker, f"bench-{backend}-{i}", [f"shared:{backend}"], workdir) for i in range(2)]
            for g in guests:
                g.wait_ready()
            return check_pair(guests[0], guests[1], "192.168.107.1", iperf_seconds=seconds)
        finally:
            for g in guests:
                g.close()
            broker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 duration per measurement (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all backends (default 3)")
    ap.add_argument("--backend", action="append", choices=BACKENDS, help="only these backends (repeatable)")
    ap.add_argument("--json", type=Path, default=Path("bench-out/vm-backends.json"), help="where to write the numbers")
    args = ap.parse_args()
    backends = args.backend or BACKENDS
    results: dict[str, list[float | None]] = {BASELINE: []}
    results.update({b: [] for b in backends})
    for r in range(args.repeat):
        for label in [BASELINE, *backends]:
            with tempfile.TemporaryDirectory(prefix="vmnet-bench-") as tmp:
                try:
                    if label == BASELINE:
                        rate = measure_baseline(args.seconds, Path(tmp))
                    else:
                        rate = measure_backend(label, args.seconds, Path(tmp))
                except AssertionError as e:  # a failed guest check: report it, keep going
                    print(f"round {r + 1} {label}: failed: {str(e).splitlines()[0]}", file=sys.stderr)
                    results[label].append(None)
                    continue
            results[label].append(rate / 1e6)
            print(f"round {r + 1} {label}: {rate / 1e6:.0f} Mbit/s", file=sys.stderr)
    header = "| backend (Mbit/s) | " + " | ".join(f"round {i + 1}" for i in range(args.repeat)) + " |"
    print(header)
    print("|---|" + "---|" * args.repeat)
    for label, rates in results.items():
        cells = " | ".join("failed" if x is None else f"{x:.0f}" for x in rates)
        print(f"| {label} | {cells} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "mbit_per_s": results}, indent=2) + "\n")
    return 0 if all(x is not None for rates in results.values() for x in rates) else 1


if __name__ == "__main__":
    sys.exit(main())
