"""VM-to-VM throughput per QEMU backend, through a real broker: the benchmark
behind docs/performance.md's backend table.

Run as root from the repository root (it creates and deletes its own network
namespaces; it never touches the machine's network)::

    .venv/bin/python tests/vm/bench.py [--seconds 10] [--repeat 3] [--backend tap_next ...]

For each run and backend it starts a broker in a fresh namespace, boots two
TCG guests with ``vmnet-rs run`` on ``shared``, checks leases and pings, and
measures iperf3 from the first guest to the second. A hand-made bridge + TAP
pair (no vmnet-rs) runs first in each round as the baseline.

The path endpoints (docs/engines.md) are measured the same way, each beside
its own limit, QEMU joined directly to QEMU with the same netdev type and no
vmnet-rs at all (static addresses, no DHCP):

- ``path-stream``: both guests connect to ``shared.stream.sock``
  (``-netdev stream,server=off``); ``direct-stream``: one guest listens
  (``server=on``), the other connects;
- ``path-dgram``: both guests send to ``shared.dgram.sock``
  (``-netdev dgram`` with unix paths); ``direct-dgram``: each sends to the
  other's path.

It prints a Markdown table (Mbit/s, one column per round, then the median)
and writes the raw numbers as JSON (``--json``, default
``bench-out/vm-backends.json``): per label the rates of every round and
their median, the load average before each measurement, and per path kind
the endpoint path's rate over its direct link's in each round
(``ratios_rounds``; the two run back to back), the median of those
(``ratios``, the figure the docs quote) and the ratio of the two medians
(``ratios_of_medians``). Issue 18's measurement is

    .venv/bin/python tests/vm/bench.py --seconds 8 --repeat 5 --no-baseline \
        --backend direct-dgram --backend path-dgram --backend direct-stream --backend path-stream

(five rounds back to back, each measuring the four in that order, as
``scripts/bench-report --vm`` runs it).
TCG makes every number low: compare backends within a round, not
absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from brokerproc import wait_until  # noqa: E402
from netns import NetNs  # noqa: E402
from vm.broker import BrokerProcess, path_guest, run_guest  # noqa: E402
from vm.checks import check_pair  # noqa: E402
from vm.lan import Lan  # noqa: E402
from vm.qemu import Guest, qemu_base_argv, start_guests  # noqa: E402

from vmnet_rs import drivers  # noqa: E402

BACKENDS = ["tap_next", "tap", "socket", "stream", "dgram", "dgram_next"]
PATHS = ["path-stream", "direct-stream", "path-dgram", "direct-dgram"]
BASELINE = "baseline (bridge+tap, no vmnet-rs)"
DIRECT_ADDRS = ("10.78.0.1/24", "10.78.0.2/24")


def pair_rate(guests: list[Guest], gateway: str | None, seconds: int, **check: object) -> float:
    """iperf3 between two started guests once both are up; closes both.
    ``gateway`` None: a direct link has none, the second guest (its address
    known once it is up) stands in for it."""
    try:
        for g in guests:
            g.wait_ready()
        a, b = guests
        return check_pair(a, b, gateway if gateway is not None else b.ip or "", iperf_seconds=seconds, **check)
    finally:
        for g in guests:
            g.close()


def measure_baseline(seconds: int, workdir: Path) -> float:
    with NetNs(prefix="vmbench") as ns:
        lan = Lan(ns, workdir)
        try:
            guests = start_guests(2, lambda i: lan.tap_guest(i, f"bench-base{i}", f"52:54:00:77:01:0{i + 1}", workdir))
            return pair_rate(guests, lan.gateway, seconds)
        finally:
            lan.close()


def measure_backend(backend: str, seconds: int, workdir: Path) -> float:
    with NetNs(prefix="vmbench") as ns:
        broker = BrokerProcess(ns, workdir)
        try:
            guests = start_guests(2, lambda i: run_guest(ns, broker, f"bench-{backend}-{i}", [f"shared:{backend}"], workdir))
            return pair_rate(guests, "192.168.107.1", seconds)
        finally:
            broker.close()


def measure_path(kind: str, seconds: int, workdir: Path) -> float:
    """Two guests joined to ``shared`` through its stream or datagram endpoint."""
    with NetNs(prefix="vmbench") as ns:
        broker = BrokerProcess(ns, workdir)
        try:
            guests = start_guests(2, lambda i: path_guest(ns, broker, f"bench-{kind}-{i}", "shared", kind, workdir))
            return pair_rate(guests, "192.168.107.1", seconds)
        finally:
            broker.close()


def direct_guests(ns: NetNs, kind: str, workdir: Path) -> list[Guest]:
    """Two guests joined to each other by QEMU alone (``stream`` or ``dgram``), with static addresses."""
    macs = ("52:54:00:77:02:01", "52:54:00:77:02:02")
    paths = (str(workdir / "direct-a.sock"), str(workdir / "direct-b.sock"))
    if kind == "stream":
        netdevs = [f"stream,id=net1,server={side},addr.type=unix,addr.path={paths[0]}" for side in ("on", "off")]
    else:
        netdevs = [f"dgram,id=net1,local.type=unix,local.path={paths[i]},remote.type=unix,remote.path={paths[1 - i]}"
                   for i in range(2)]

    def start(i: int) -> Guest:
        name = f"bench-direct-{kind}-{i}"
        argv = qemu_base_argv(name, extra_append=f"vmnet_static={DIRECT_ADDRS[i]}") + [
            "-netdev", netdevs[i], "-device", f"virtio-net-pci,netdev=net1,mac={macs[i]}"]
        guest = Guest(ns.argv(argv), name, log_dir=workdir)
        if kind == "stream" and i == 0:  # the client needs the listener's path
            wait_until("the stream listener's socket", lambda: os.path.exists(paths[0]) or guest.proc.poll() is not None, timeout=60)
        return guest

    return start_guests(2, start)


def measure_direct(kind: str, seconds: int, workdir: Path) -> float:
    with NetNs(prefix="vmbench") as ns:
        guests = direct_guests(ns, kind, workdir)
        return pair_rate(guests, None, seconds, routers=(None,))


def measure(label: str, seconds: int, workdir: Path) -> float:
    if label == BASELINE:
        return measure_baseline(seconds, workdir)
    if label.startswith("path-"):
        return measure_path(drivers.STREAM if label == "path-stream" else drivers.DATAGRAM, seconds, workdir)
    if label.startswith("direct-"):
        return measure_direct(label[len("direct-"):], seconds, workdir)
    return measure_backend(label, seconds, workdir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="iperf3 duration per measurement (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over all backends (default 3)")
    ap.add_argument("--backend", action="append", choices=BACKENDS + PATHS,
                    help="only these backends or path kinds (repeatable; default: all)")
    ap.add_argument("--no-baseline", action="store_true", help="leave out the hand-made bridge + TAP baseline")
    ap.add_argument("--json", type=Path, default=Path("bench-out/vm-backends.json"), help="where to write the numbers")
    args = ap.parse_args()
    backends = args.backend or BACKENDS + PATHS
    labels = backends if args.no_baseline else [BASELINE, *backends]
    results: dict[str, list[float | None]] = {label: [] for label in labels}
    load: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.repeat):
        for label in labels:
            load[label].append(round(os.getloadavg()[0], 2))
            with tempfile.TemporaryDirectory(prefix="vmnet-bench-") as tmp:
                try:
                    rate = measure(label, args.seconds, Path(tmp))
                except AssertionError as e:  # a failed guest check: report it, keep going
                    print(f"round {r + 1} {label}: failed: {str(e).splitlines()[0]}", file=sys.stderr)
                    results[label].append(None)
                    continue
            results[label].append(rate / 1e6)
            print(f"round {r + 1} {label}: {rate / 1e6:.0f} Mbit/s (load {load[label][-1]})", file=sys.stderr)
    out = summarise(results)
    header = "| backend (Mbit/s) | " + " | ".join(f"round {i + 1}" for i in range(args.repeat)) + " | median |"
    print(header)
    print("|---|" + "---|" * (args.repeat + 1))
    for label, rates in results.items():
        cells = " | ".join("failed" if x is None else f"{x:.0f}" for x in rates)
        median = out["median"][label]
        print(f"| {label} | {cells} | {'-' if median is None else f'{median:.0f}'} |")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for kind, ratio in out["ratios"].items():
        per = ", ".join(fmt(x) for x in out["ratios_rounds"][kind])
        print(f"{kind}: endpoint path / direct link = {fmt(ratio)} (median of the rounds' ratios {per}; "
              f"ratio of the medians {fmt(out['ratios_of_medians'][kind])})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seconds": args.seconds, "rounds": args.repeat, "mbit_per_s": results, "loadavg_before": load, **out},
                                    indent=2) + "\n")
    return 0 if all(x is not None for rates in results.values() for x in rates) else 1


def summarise(results: dict[str, list[float | None]]) -> dict[str, Any]:
    """Per label the median of its rounds (None if any failed); per path
    kind the endpoint path over its direct link in each round
    (``ratios_rounds``: the two ran back to back, so a change of load hits
    both), their median (``ratios``, the verdict), and the endpoint path's
    median over its direct link's (``ratios_of_medians``)."""
    median = {label: (round(statistics.median(rates), 1) if rates and None not in rates else None) for label, rates in results.items()}
    ratios: dict[str, float | None] = {}
    ratios_rounds: dict[str, list[float | None]] = {}
    ratios_of_medians: dict[str, float | None] = {}
    for kind in ("dgram", "stream"):
        if f"path-{kind}" not in results or f"direct-{kind}" not in results:
            continue
        per = [round(p / d, 3) if p is not None and d else None for p, d in zip(results[f"path-{kind}"], results[f"direct-{kind}"])]
        ratios_rounds[kind] = per
        ratios[kind] = round(statistics.median(per), 3) if per and None not in per else None
        path, direct = median[f"path-{kind}"], median[f"direct-{kind}"]
        ratios_of_medians[kind] = round(path / direct, 3) if path is not None and direct else None
    return {"median": median, "ratios": ratios, "ratios_rounds": ratios_rounds, "ratios_of_medians": ratios_of_medians}


if __name__ == "__main__":
    sys.exit(main())
