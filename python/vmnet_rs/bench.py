"""``vmnet-rs bench``: how fast the adaptors move frames, beside baselines.

Everything happens in network namespaces this command creates and deletes
(as root); the machine's own network is never touched. One run measures:

* per path and frame size (64 and 1514 bytes), delivered frames/s and Gbit/s
  through ``generator -> socket -> adaptor -> TAP -> bridge -> TAP -> adaptor
  -> socket -> sink``, for the three adaptor kinds, and two baselines in the
  same run: ``kernel`` (the generator writes TAP A, the sink reads TAP B) and
  ``per_frame`` (a relay doing one read and one write per frame on two
  blocking threads, socket_vmnet's design);
* the same with 2 and 4 pairs at once (64-byte frames), for scaling;
* a TCP iperf3 run between two namespaces attached through adaptors, next to
  the same run over a plain veth pair;
* the endpoint paths (``bench_endpoints``): stream and datagram clients
  through a broker's endpoint sockets on a real bridge, beside a direct
  socket link of the same kind, with the drops the broker's ``status``
  counts; and a client that stops reading beside one that reads.

Generators and sinks are native threads (``_native.bench_flows``); the
generator sends as fast as its socket accepts, so what is reported is the
*delivered* rate, with loss (sent but never received) and CPU time beside it.

Rounds (``--rounds``, 3 by default, 1 with ``--quick``): the cases that the
ratios pair up (the 1-pair fd relay cases and the endpoint cases, per
size, then the slow-reader case) run once per round, back to back in an
order that puts the two sides of each ratio next to each other, so a change
of load hits both alike. Every ratio is the median of its per-round ratios
(``bench_rounds``); the multi-pair scaling cases and iperf3 run once.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any, Dict, List, Optional, Tuple

import click

from . import _native
from .adaptor import Adaptor
from .bench_endpoints import ENDPOINT_PATHS, endpoint_bench, endpoint_summary
from .bench_rounds import merge_rounds, merge_slow_reader, paired_ratio, ratio, spread
from .errors import VmnetError

KINDS = ["datagram", "datagram_next", "stream"]
BASELINES = ["kernel", "per_frame"]
PATHS = BASELINES + KINDS
SIZES = [64, 1514]
PAIRS = [1, 2, 4]
FRAMING = {"datagram": "datagram", "datagram_next": "datagram", "stream": "stream"}
#: The order a round runs its cases of one size in: the two sides of each
#: ratio the summaries take stand next to each other (stream relay beside the
#: per-frame relay, each endpoint beside its direct link and its fd relay).
ROUND_ORDER = ["per_frame", "stream", "endpoint_stream", "direct_stream", "direct_datagram", "endpoint_datagram",
               "datagram", "datagram_next", "kernel"]
ONCE_NOTE = "the multi-pair scaling cases and iperf3 run once, not per round"


class BenchError(VmnetError):
    """The benchmark could not set up or run."""


def _run(cmd: List[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")
    return r


class Namespace:
    """A private network namespace (``ip netns``), deleted on close."""

    def __init__(self, tag: str) -> None:
        self.name = f"vmrs-bench-{tag}-{uuid.uuid4().hex[:6]}"
        _run(["ip", "netns", "add", self.name])
        try:
            self.ip("link set lo up")
            for key in ("all", "default"):
                # No IPv6 chatter (router solicitations, MLD) on the links.
                self.exec(["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"], check=False)
        except BaseException:  # a failure or a stop (SIGTERM) before the caller holds it
            self.close()
            raise

    def exec(self, cmd: List[str], **kw: Any) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", self.name, *cmd], **kw)

    def ip(self, *lines: str) -> None:
        """Runs ``ip`` commands (one per line) inside the namespace, in one batch."""
        _run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n")

    def bridge_fdb(self, *lines: str) -> None:
        _run(["bridge", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n")

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def _mac(pair: int, side: int) -> str:
    return f"02:00:00:00:{pair:02x}:{side:02x}"


class Bench:
    def __init__(self, seconds: float, iperf_seconds: float, dgram_qlen: Optional[int], log=None) -> None:
        self.seconds = seconds
        self.iperf_seconds = iperf_seconds
        self.dgram_qlen = dgram_qlen
        self.log = log or (lambda msg: None)
        # The relays' TAPs are opened as a broker opens relayed ports' TAPs.
        self.tap_offload = _native.tap_userspace_offload_wanted()

    def namespace(self, tag: str) -> Namespace:
        ns = Namespace(tag)
        try:
            if self.dgram_qlen is not None:
                # Per namespace: sockets made in it (relays are started there) get it.
                ns.exec(["sysctl", "-qw", f"net.unix.max_dgram_qlen={self.dgram_qlen}"])
        except BaseException:  # as in Namespace(): not yet the caller's to close
            ns.close()
            raise
        return ns

    # --- frame paths --------------------------------------------------------------

    def run_case(self, ns: Namespace, path: str, size: int, pairs: int) -> Dict[str, Any]:
        with ExitStack() as stack:
            flows: List[Tuple[int, str, int, str, str, str]] = []
            adaptors: List[Adaptor] = []
            relays: List[Any] = []
            links: List[str] = []
            fdb: List[str] = []
            for p in range(pairs):
                a_name, b_name = f"ba{p}", f"bb{p}"
                mac_a, mac_b = _mac(p, 1), _mac(p, 2)
                if path in BASELINES:
                    fds = []
                    for name in (a_name, b_name):
                        fd = _native.bench_open_tap(ns.name, name)
                        stack.callback(os.close, fd)
                        fds.append(fd)
                    if path == "kernel":
                        flows.append((fds[0], "tap", fds[1], "tap", mac_a, mac_b))
                    else:
                        ra, rb = _native.BenchPerFrameRelay(fds[0], ns.name), _native.BenchPerFrameRelay(fds[1], ns.name)
                        stack.callback(rb.close)
                        stack.callback(ra.close)
                        relays += [ra, rb]
                        flows.append((ra.fileno(), "datagram", rb.fileno(), "datagram", mac_a, mac_b))
                else:
                    # The TAPs a broker gives relayed ports: the comparisons
                    # with the endpoint paths pair like with like.
                    a = Adaptor(path, tap=a_name, netns=ns.name, mac=mac_a, tap_offload=self.tap_offload)
                    stack.callback(a.close)
                    b = Adaptor(path, tap=b_name, netns=ns.name, mac=mac_b, tap_offload=self.tap_offload)
                    stack.callback(b.close)
                    adaptors += [a, b]
                    flows.append((a.fileno(), FRAMING[path], b.fileno(), FRAMING[path], mac_a, mac_b))
                for name in (a_name, b_name):
                    links += [f"link set {name} master br0", f"link set {name} up"]
                fdb += [f"fdb replace {mac_a} dev {a_name} master static", f"fdb replace {mac_b} dev {b_name} master static"]
            ns.ip(*links)
            ns.bridge_fdb(*fdb)
            r = _native.bench_flows(flows, size, self.seconds)
            # One snapshot per adaptor, so the totals agree with each other.
            snapshots = [x.stats() for x in adaptors]

            def total(counter: str) -> int:
                return sum(s[d][counter] for s in snapshots for d in ("host_to_vm", "vm_to_host"))

            drops, waits, moved, batches = total("drops"), total("waits"), total("packets"), total("batches")
            running = all(x.running for x in adaptors)
        window = r["window_s"]
        fl = r["flows"]
        sent = sum(f["sent"] for f in fl)
        received = sum(f["received"] for f in fl)
        in_window = sum(f["received_in_window"] for f in fl)
        gen_cpu = sum(f["generator_cpu_s"] for f in fl)
        sink_cpu = sum(f["sink_cpu_s"] for f in fl)
        return {
            "path": path,
            "frame_bytes": size,
            "pairs": pairs,
            "window_s": round(window, 3),
            "frames_per_s": round(in_window / window),
            "gbit_per_s": round(sum(f["bytes_in_window"] for f in fl) * 8 / window / 1e9, 3),
            "sent": sent,
            "received": received,
            "loss": round(1 - received / sent, 4) if sent else None,
            "reordered": sum(f["reordered"] for f in fl),
            "adaptor_drops": drops,
            "adaptor_waits": waits,
            "adaptor_frames_per_batch": round(moved / batches, 1) if batches else None,
            "adaptors_ran_throughout": running,
            "cpu_s": round(r["process_cpu_s"], 3),
            "cpu_cores": round(r["process_cpu_s"] / window, 2),
            "generator_cpu_s": round(gen_cpu, 3),
            "sink_cpu_s": round(sink_cpu, 3),
            "relay_cpu_s": round(max(0.0, r["process_cpu_s"] - gen_cpu - sink_cpu), 3),
            # CPU per delivered frame: steadier than frames/s on a shared machine.
            "cpu_us_per_frame": round(r["process_cpu_s"] / in_window * 1e6, 2) if in_window else None,
            "relay_cpu_us_per_frame": round(max(0.0, r["process_cpu_s"] - gen_cpu - sink_cpu) / in_window * 1e6, 2) if in_window else None,
        }

    def switch(self) -> Tuple[Namespace, int]:
        """The namespace with the bridge the fd relay cases use, and its
        unix datagram queue length."""
        ns = self.namespace("sw")
        try:
            qlen = int(ns.exec(["sysctl", "-n", "net.unix.max_dgram_qlen"]).stdout.strip())
            ns.ip("link add br0 type bridge forward_delay 0 stp_state 0", "link set br0 up")
        except BaseException:
            ns.close()
            raise
        return ns, qlen

    def rounds(self, adaptor_paths: List[str], endpoint_paths: List[str], sizes: List[int], pairs_list: List[int],
               rounds: int, slow: bool) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Optional[int]]:
        """Every frame case of a run: ``rounds`` rounds of the paired cases
        (per size the 1-pair fd relay cases and the endpoint cases in
        ``ROUND_ORDER``, then the slow-reader case per kind), then the
        multi-pair cases once. Returns the fd relay cases, the endpoint
        results and the unix datagram queue length of the switch."""
        one_pair = adaptor_paths if 1 in pairs_list else []
        order = [p for p in ROUND_ORDER if p in one_pair or p in endpoint_paths]
        slow_kinds = [k for k in ("datagram", "stream") if slow and f"endpoint_{k}" in endpoint_paths]
        raw: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
        slow_raw: Dict[str, List[Dict[str, Any]]] = {k: [] for k in slow_kinds}
        qlen: Optional[int] = self.dgram_qlen
        with ExitStack() as stack:
            sw: Optional[Namespace] = None
            if adaptor_paths:
                sw, qlen = self.switch()
                stack.callback(sw.close)
            ep = stack.enter_context(endpoint_bench(self.namespace, self.seconds, BenchError, self.log)) if endpoint_paths else None
            for n in range(rounds):
                tag = f"round {n + 1}/{rounds}"
                for size in sizes:
                    for path in order:
                        if path in PATHS:
                            assert sw is not None
                            c = self.run_case(sw, path, size, 1)
                            self.log(f"{tag} {path:>17} {size:>5} B x1: {c['frames_per_s']:>9} frames/s  loss {c['loss']}")
                        else:
                            assert ep is not None
                            c = ep.case(path, size)
                            self.log(f"{tag} {path:>17} {size:>5} B x1: {c['frames_per_s']:>9} frames/s  loss {c['loss']}  "
                                     f"uncounted {c['uncounted']}")
                        raw.setdefault((path, size), []).append(c)
                for kind in slow_kinds:
                    assert ep is not None
                    r = ep.slow_reader(kind, 1514)
                    self.log(f"{tag} slow reader ({kind}): {r['alone']['frames_per_s']} frames/s alone, "
                             f"{r['beside_stopped_reader']['frames_per_s']} beside ({r['ratio']})")
                    slow_raw[kind].append(r)
            cases = [merge_rounds(raw[(p, size)]) for size in sizes for p in one_pair]
            for pairs in pairs_list:
                if pairs == 1:
                    continue
                for path in adaptor_paths:
                    assert sw is not None
                    c = self.run_case(sw, path, 64, pairs)
                    self.log(f"{path:>17}    64 B x{pairs}: {c['frames_per_s']:>9} frames/s  loss {c['loss']} (once)")
                    cases.append(merge_rounds([c]))
        endpoints: Dict[str, Any] = {"skipped": "not asked for (--paths)"}
        if endpoint_paths:
            endpoints = {"rounds": rounds,
                         "cases": [merge_rounds(raw[(p, size)]) for size in sizes for p in endpoint_paths],
                         "slow_reader": [merge_slow_reader(slow_raw[k]) for k in slow_kinds]}
        return cases, endpoints, qlen

    # --- iperf3 -----------------------------------------------------------------

    def _iperf(self, client: Namespace, server: Namespace, server_ip: str) -> Dict[str, Any]:
        srv = subprocess.Popen(["ip", "netns", "exec", server.name, "iperf3", "-s", "-1", "-B", server_ip],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while ":5201" not in server.exec(["ss", "-Hltn"], check=False).stdout:
                if srv.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"iperf3 server in {server.name} did not start listening")
                time.sleep(0.05)
            cpu0 = _own_cpu()
            r = client.exec(["iperf3", "-c", server_ip, "-t", str(self.iperf_seconds), "-J", "--connect-timeout", "3000"],
                            check=False, timeout=self.iperf_seconds + 60)
            try:
                data = json.loads(r.stdout)
            except ValueError:
                data = {"error": r.stderr.strip() or "no JSON output"}
            if r.returncode != 0 or "error" in data:
                raise BenchError(f"iperf3 from {client.name} to {server_ip} failed: {data.get('error')}")
            cpu = _own_cpu() - cpu0
            end = data["end"]
            return {
                "gbit_per_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
                "retransmits": end.get("sum_sent", {}).get("retransmits"),
                "seconds": self.iperf_seconds,
                "relay_cpu_s": round(cpu, 3),
            }
        finally:
            srv.kill()
            srv.wait()

    def iperf_veth(self) -> Dict[str, Any]:
        # Each namespace is closed even when making the next one fails.
        with Namespace("ia") as a, Namespace("ib") as b:
            veth = f"bv{uuid.uuid4().hex[:6]}"
            a.ip(f"link add {veth}a type veth peer name {veth}b netns {b.name}",
                 f"addr add 10.77.0.1/24 dev {veth}a", f"link set {veth}a up")
            b.ip(f"addr add 10.77.0.2/24 dev {veth}b", f"link set {veth}b up")
            return self._iperf(a, b, "10.77.0.2")

    def iperf_adaptor(self, kind: str) -> Dict[str, Any]:
        """Two namespaces, each a "VM": its TAP joined by an adaptor (playing
        the VM's NIC) to the socket of an adaptor on the bridge's TAP."""
        with self.namespace("sw") as sw, self.namespace("ia") as a, self.namespace("ib") as b:
            with ExitStack() as stack:
                sw.ip("link add br0 type bridge forward_delay 0 stp_state 0", "link set br0 up")
                for i, (vm_ns, ip) in enumerate(((a, "10.77.0.1"), (b, "10.77.0.2"))):
                    port = Adaptor(kind, tap=f"sp{i}", netns=sw.name, tap_offload=self.tap_offload)
                    stack.callback(port.close)
                    nic = Adaptor(kind, tap="eth0", netns=vm_ns.name, vm_socket_fd=port.fileno())
                    stack.callback(nic.close)
                    sw.ip(f"link set sp{i} master br0", f"link set sp{i} up")
                    vm_ns.ip(f"addr add {ip}/24 dev eth0", "link set eth0 up")
                return self._iperf(a, b, "10.77.0.2")

    def iperf_cases(self) -> Dict[str, Any]:
        if shutil.which("iperf3") is None:
            return {"skipped": "iperf3 is not installed (scripts/install-deps installs it)"}
        out: Dict[str, Any] = {"veth": self.iperf_veth()}
        self.log(f"iperf3 veth: {out['veth']['gbit_per_s']} Gbit/s")
        for kind in KINDS:
            out[kind] = self.iperf_adaptor(kind)
            self.log(f"iperf3 {kind}: {out[kind]['gbit_per_s']} Gbit/s")
        out["note"] = ("adaptor path: namespace TAP -> adaptor -> socket -> adaptor -> TAP -> bridge -> TAP -> adaptor "
                       "-> socket -> adaptor -> namespace TAP, MTU 1500, no offload through the sockets; "
                       "veth: a plain veth pair with the kernel's default offloads (TSO/GSO)")
        return out


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _find(cases: List[Dict[str, Any]], path: str, size: int, pairs: int) -> Optional[Dict[str, Any]]:
    for c in cases:
        if c["path"] == path and c["frame_bytes"] == size and c["pairs"] == pairs:
            return c
    return None


def summarise(cases: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per path: frames/s at each size and pairs, and the ratios the goals name.

    A ratio between two 1-pair cases is the median of its per-round ratios
    (``bench_rounds.paired_ratio``), the per-round values beside it under
    the same name + ``_rounds``; ``scaling_4_vs_1`` (the multi-pair cases
    run once) is the 4-pair rate over the 1-pair median."""
    out: Dict[str, Any] = {}
    for path in PATHS:
        fps = {str(s): (_find(cases, path, s, 1) or {}).get("frames_per_s") for s in SIZES}
        pairs = {str(p): (_find(cases, path, 64, p) or {}).get("frames_per_s") for p in PAIRS}
        entry: Dict[str, Any] = {"frames_per_s": fps, "frames_per_s_64B_by_pairs": pairs}
        ratios: Dict[str, Any] = {"scaling_4_vs_1": ratio(pairs["4"], pairs["1"])}
        if path in KINDS:
            # Relay CPU per delivered frame against the per-frame relay's (lower is better).
            for name, base, key in (("vs_per_frame", "per_frame", "frames_per_s"),
                                    ("relay_cpu_vs_per_frame", "per_frame", "relay_cpu_us_per_frame"),
                                    ("vs_kernel", "kernel", "frames_per_s")):
                ratios[name], ratios[name + "_rounds"] = {}, {}
                for s in SIZES:
                    ratios[name][str(s)], ratios[name + "_rounds"][str(s)] = paired_ratio(_find(cases, path, s, 1), _find(cases, base, s, 1), key)
        entry["ratios"] = ratios
        out[path] = entry
    return out


DEFAULT_DGRAM_QLEN = 512


def run(quick: bool, seconds: Optional[float] = None, log=None, *, paths: Optional[List[str]] = None,
        sizes: Optional[List[int]] = None, pairs: Optional[List[int]] = None, iperf: bool = True,
        dgram_qlen: Optional[int] = DEFAULT_DGRAM_QLEN, tap_uring: bool = True, slow_reader: bool = True,
        rounds: Optional[int] = None) -> Dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("the benchmark creates network namespaces and TAP devices: run it as root")
    if not sys.platform.startswith("linux"):
        raise BenchError("the benchmark runs on Linux (TAP devices and network namespaces)")
    secs = seconds if seconds is not None else (0.3 if quick else 3.0)
    n_rounds = rounds if rounds is not None else (1 if quick else 3)
    if n_rounds < 1:
        raise BenchError(f"--rounds must be at least 1, not {n_rounds}")
    os.environ["VMNET_RS_TAP_URING"] = "1" if tap_uring else "0"
    bench = Bench(secs, iperf_seconds=1 if quick else 5, dgram_qlen=dgram_qlen, log=log)
    t0 = time.monotonic()
    wanted = paths if paths is not None else PATHS + ENDPOINT_PATHS
    adaptor_paths = [p for p in wanted if p in PATHS]
    endpoint_paths = [p for p in wanted if p in ENDPOINT_PATHS]
    cases, endpoints, qlen = bench.rounds(adaptor_paths, endpoint_paths, sizes or SIZES, pairs or PAIRS, n_rounds, slow_reader)
    if endpoint_paths:
        endpoints["summary"] = endpoint_summary(endpoints, cases, sizes or SIZES)
    iperf_result = bench.iperf_cases() if iperf else {"skipped": "not asked for (--no-iperf)"}
    try:
        host_qlen: Optional[int] = int(open("/proc/sys/net/unix/max_dgram_qlen").read())
    except OSError:
        host_qlen = None
    return {
        "mode": "quick" if quick else "full",
        "seconds_per_case": secs,
        "rounds": n_rounds,
        "rounds_note": ("each round runs, per frame size, the 1-pair fd relay cases and the endpoint cases back to back, "
                        "then the slow-reader case; a case's figures are medians over the rounds (each round under "
                        "`rounds`), its counts sums, every ratio the median of the per-round ratios; " + ONCE_NOTE),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "settings": {
            "unix_max_dgram_qlen": qlen,
            "host_unix_max_dgram_qlen": host_qlen,
            "tap_io_uring": tap_uring,
            # Relays' TAPs as a broker opens relayed ports' TAPs
            # (VMNET_RS_TAP_OFFLOAD; the endpoint ports' broker too).
            "tap_offload_in_userspace": bench.tap_offload,
            "generator_window_frames": 256,
        },
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_before": list(os.getloadavg())},
        "cases": cases,
        "paths": summarise(cases),
        "kinds": {k: v for k, v in summarise(cases).items() if k in KINDS},
        "endpoints": endpoints,
        "iperf3": iperf_result,
    }


def fmt_ratio(median: Optional[float], rounds: Optional[List[Optional[float]]] = None) -> str:
    """A ratio, with the spread of its per-round values when there are
    several: ``1.10 [0.95-1.31]``."""
    if median is None:
        return "-"
    sp = spread(rounds or [])
    if rounds is None or len(rounds) < 2 or sp is None:
        return f"{median:.2f}"
    return f"{median:.2f} [{sp[0]:.2f}-{sp[1]:.2f}]"


def fps_spread(case: Dict[str, Any]) -> str:
    """How far a case's frames/s spread over its rounds, in percent of the median."""
    rounds = case.get("rounds") or []
    sp = spread([r.get("frames_per_s") for r in rounds])
    if len(rounds) < 2 or sp is None or not case.get("frames_per_s"):
        return "-"
    return f"{(sp[1] - sp[0]) / case['frames_per_s'] * 100:.0f}%"


def rounds_line(result: Dict[str, Any]) -> str:
    n = result.get("rounds", 1)
    return (f"{n} round{'s' if n != 1 else ''}: per frame size the 1-pair fd relay cases and the endpoint cases back to back, "
            "then the slow reader; frames/s and CPU are medians over the rounds, losses summed, ratios the median of "
            f"the per-round ratios [min-max]; {ONCE_NOTE}.")


def table(result: Dict[str, Any]) -> str:
    st = result["settings"]
    n = result.get("rounds", 1)
    lines = [f"vmnet-rs bench ({result['mode']}, {result['seconds_per_case']} s per case, {n} round{'s' if n != 1 else ''}, "
             f"{result['machine']['cpus']} CPUs, Linux {result['machine']['kernel']}; "
             f"unix dgram qlen {st['unix_max_dgram_qlen']}, TAP io_uring {'on' if st['tap_io_uring'] else 'off'})",
             rounds_line(result), ""]
    us = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    if result["cases"]:
        head = (f"{'path':<14}{'frame':>6}{'pairs':>6}{'rounds':>7}{'frames/s':>11}{'spread':>8}{'Gbit/s':>8}{'loss':>8}"
                f"{'CPU cores':>10}{'CPU us/frame':>13}{'relay us/frame':>15}")
        lines += [head, "-" * len(head)]
        for c in result["cases"]:
            loss = "-" if c["loss"] is None else f"{c['loss'] * 100:.1f}%"
            lines.append(f"{c['path']:<14}{c['frame_bytes']:>6}{c['pairs']:>6}{len(c.get('rounds') or [c]):>7}{c['frames_per_s']:>11,}"
                         f"{fps_spread(c):>8}{c['gbit_per_s']:>8.2f}{loss:>8}{c['cpu_cores']:>10.2f}{us(c['cpu_us_per_frame']):>13}"
                         f"{us(c['relay_cpu_us_per_frame']):>15}")
        lines += ["", f"{'kind':<15}{'ratio (median [min-max] of rounds)':<36}{'64 B':>20}{'1514 B':>20}"]
        for k, v in result["kinds"].items():
            r = v["ratios"]
            # Only the ratios this run measured both sides of.
            for name, label in (("vs_per_frame", "frames/s vs per_frame"), ("vs_kernel", "frames/s vs kernel"),
                                ("relay_cpu_vs_per_frame", "relay CPU/frame vs per_frame")):
                per, rounds = r.get(name, {}), r.get(name + "_rounds", {})
                if any(per.get(sz) is not None for sz in ("64", "1514")):
                    lines.append(f"{k:<15}{label:<36}" + "".join(f"{fmt_ratio(per.get(sz), rounds.get(sz)):>20}" for sz in ("64", "1514")))
            if r["scaling_4_vs_1"] is not None:
                lines.append(f"{k:<15}{'frames/s, 4 pairs vs 1 (64 B, once)':<36}{fmt_ratio(r['scaling_4_vs_1']):>20}")
    lines += endpoint_table(result.get("endpoints", {}))
    ip = result["iperf3"]
    lines.append("")
    if "skipped" in ip:
        lines.append(f"iperf3: skipped ({ip['skipped']})")
    else:
        lines.append("iperf3 TCP, one stream (once): " + ", ".join(f"{k} {v['gbit_per_s']:.2f} Gbit/s" for k, v in ip.items() if isinstance(v, dict)))
    return "\n".join(lines)


def endpoint_table(ep: Dict[str, Any]) -> List[str]:
    """The endpoint cases and their ratios against the same run's baselines
    (medians of the per-round ratios, their spread in brackets)."""
    if "cases" not in ep:
        return ["", f"endpoint paths: skipped ({ep.get('skipped', 'not measured')})"] if ep else []
    us = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    head = (f"{'endpoint path':<18}{'frame':>6}{'rounds':>7}{'frames/s':>11}{'spread':>8}{'Gbit/s':>8}{'lost':>8}{'counted':>9}"
            f"{'uncounted':>10}{'CPU us/frame':>13}{'relay us/frame':>15}")
    lines = ["", head, "-" * len(head)]
    for c in ep["cases"]:
        counted = sum(c["counted_drops"].values())
        lines.append(f"{c['path']:<18}{c['frame_bytes']:>6}{len(c.get('rounds') or [c]):>7}{c['frames_per_s']:>11,}{fps_spread(c):>8}"
                     f"{c['gbit_per_s']:>8.2f}{c['lost']:>8}{counted:>9}{c['uncounted']:>10}{us(c['cpu_us_per_frame']):>13}"
                     f"{us(c['relay_cpu_us_per_frame']):>15}")
    lines.append("")
    for kind, per in ep.get("summary", {}).items():
        for size, x in per.items():
            if not isinstance(x, dict):
                continue
            fds = [n for n in ("datagram", "datagram_next", "stream") if x.get("frames_per_s_vs_" + n) is not None]
            fd = ", ".join(f"vs fd {n} {fmt_ratio(x['frames_per_s_vs_' + n], x.get('frames_per_s_vs_' + n + '_rounds'))} "
                           f"(relay CPU/frame {fmt_ratio(x.get('relay_cpu_per_frame_vs_' + n), x.get('relay_cpu_per_frame_vs_' + n + '_rounds'))})"
                           for n in fds)
            loss = "-" if x.get("loss") is None else f"{x['loss'] * 100:.2f}%"
            lines.append(f"endpoint {kind} {size} B: frames/s vs direct {kind} link "
                         f"{fmt_ratio(x['frames_per_s_vs_direct'], x.get('frames_per_s_vs_direct_rounds'))}{', ' + fd if fd else ''}; "
                         f"lost {loss} over all rounds, uncounted {x.get('uncounted')}")
    for s in ep.get("slow_reader", []):
        n = len(s.get("rounds") or [s])
        lines.append(f"slow reader ({s['kind']}, {s['frame_bytes']} B): a flow beside a client that stopped reading "
                     f"{s['beside_stopped_reader']['frames_per_s']:,} frames/s, alone {s['alone']['frames_per_s']:,}: "
                     f"{fmt_ratio(s['ratio'], s.get('ratio_rounds'))}x (median of {n} round{'s' if n != 1 else ''}); "
                     f"{s['stopped_reader']['frames_sent_to_it']} frames sent to the stopped client")
    return lines


#: One colour per path, the same in every panel of the chart.
COLOURS = {"kernel": "#7f7f7f", "per_frame": "#bcbd22", "datagram": "#1f77b4", "datagram_next": "#2ca02c", "stream": "#d62728"}
BENCH_EXTRA = "pip install 'vmnet-rs[bench]'"


def require_matplotlib() -> None:
    """Fails at once, before any measuring, when --png cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError(f"--png needs matplotlib, which is not installed: {BENCH_EXTRA} (or leave out --png)") from None


def chart_figure(result: Dict[str, Any]) -> Any:
    """The chart as a matplotlib figure: delivered frames/s for 64- and
    1514-byte frames, aggregate frames/s over pairs, and CPU time per
    delivered frame (the steadier figure on a shared machine); one colour
    per path in every panel, every axis labelled, frames/s from zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    paths = [p for p in PATHS if any(c["path"] == p for c in cases)]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    for ax, size in zip(axes[:2], SIZES):
        vals = [((_find(cases, p, size, 1) or {}).get("frames_per_s") or 0) / 1e3 for p in paths]
        ax.bar(paths, vals, color=[COLOURS[p] for p in paths])
        ax.set_title(f"{size}-byte frames, 1 pair")
        ax.set_xlabel("path")
        ax.set_ylabel("delivered frames/s (thousands)")
        ax.set_ylim(bottom=0)
        ax.tick_params(axis="x", rotation=30)
    ax = axes[2]
    for p in paths:
        ns = [n for n in PAIRS if _find(cases, p, 64, n)]
        ys = [((_find(cases, p, 64, n) or {}).get("frames_per_s") or 0) / 1e3 for n in ns]
        ax.plot(ns, ys, marker="o", color=COLOURS[p], label=p)
    ax.set_title("64-byte frames, all pairs together")
    ax.set_xlabel("pairs of VMs")
    ax.set_ylabel("delivered frames/s (thousands)")
    ax.set_xticks(PAIRS)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax = axes[3]
    width = 0.8 / len(SIZES)
    for i, size in enumerate(SIZES):
        vals = [(_find(cases, p, size, 1) or {}).get("cpu_us_per_frame") or 0 for p in paths]
        xs = [k + (i - (len(SIZES) - 1) / 2) * width for k in range(len(paths))]
        # Same colour per path; the frame size by hatching.
        ax.bar(xs, vals, width=width, color=[COLOURS[p] for p in paths], hatch="" if i == 0 else "//", edgecolor="black",
               label=f"{size}-byte frames")
    ax.set_xticks(range(len(paths)))
    ax.set_xticklabels(paths, rotation=30)
    ax.set_title("CPU per delivered frame, 1 pair")
    ax.set_xlabel("path")
    ax.set_ylabel("CPU time per frame (µs)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.suptitle(f"vmnet-rs bench ({result['mode']}, {result['seconds_per_case']} s per case, "
                 f"{result['machine']['cpus']} CPUs, Linux {result['machine']['kernel']})")
    fig.tight_layout()
    return fig


def chart(result: Dict[str, Any], path: str) -> str:
    """Writes the chart (:func:`chart_figure`) to ``path`` as PNG; returns
    its absolute path."""
    import matplotlib.pyplot as plt

    fig = chart_figure(result)
    out = os.path.abspath(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def stop_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@click.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--quick", is_flag=True, help="A short run (under a minute), for CI.")
@click.option("--png", "png", type=click.Path(dir_okay=False), help=f"Also write a chart to this PNG file (needs matplotlib: {BENCH_EXTRA}).")
@click.option("--seconds", type=float, default=None, help="Seconds per case (default 3, or 0.3 with --quick).")
@click.option("--paths", default=",".join(PATHS + ENDPOINT_PATHS), show_default=True, help="Comma-separated paths to measure.")
@click.option("--sizes", default="64,1514", show_default=True, help="Comma-separated frame sizes (bytes).")
@click.option("--pairs", default="1,2,4", show_default=True, help="Comma-separated numbers of pairs (more than 1: 64-byte frames).")
@click.option("--iperf/--no-iperf", default=True, show_default=True, help="Run the iperf3 TCP comparison.")
@click.option("--dgram-qlen", default=str(DEFAULT_DGRAM_QLEN), show_default=True,
              help="net.unix.max_dgram_qlen in the benchmark namespaces (systemd sets 512; the kernel default is 10), or 'host' to keep the host's.")
@click.option("--tap-uring/--no-tap-uring", default=True, show_default=True, help="Batch TAP reads and writes with io_uring.")
@click.option("--slow-reader/--no-slow-reader", default=True, show_default=True,
              help="Measure a flow beside an endpoint client that stopped reading.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Rounds of the paired cases (1-pair fd relays, endpoints, slow reader); ratios are medians of the "
                   "per-round ratios (default 3, or 1 with --quick; multi-pair cases and iperf3 run once).")
def bench(as_json: bool, quick: bool, png: Optional[str], seconds: Optional[float], paths: str, sizes: str, pairs: str,
          iperf: bool, dgram_qlen: str, tap_uring: bool, slow_reader: bool, rounds: Optional[int]) -> None:
    """Measure the adaptors against kernel-only and per-frame baselines (root; own namespaces)."""
    log = (lambda m: click.echo(m, err=True)) if not as_json else None
    path_list = [p for p in paths.split(",") if p]
    unknown = [p for p in path_list if p not in PATHS + ENDPOINT_PATHS]
    if unknown:
        raise click.BadParameter(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS + ENDPOINT_PATHS)}", param_hint="--paths")
    try:
        size_list = [int(x) for x in sizes.split(",") if x]
        pair_list = [int(x) for x in pairs.split(",") if x]
        qlen = None if dgram_qlen == "host" else int(dgram_qlen)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if png:
        require_matplotlib()
    # A stop (SIGTERM) unwinds like Ctrl-C, so every namespace, TAP and
    # broker the run made is deleted by its own cleanup on the way out.
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        result = run(quick, seconds, log=log, paths=path_list, sizes=size_list, pairs=pair_list, iperf=iperf,
                     dgram_qlen=qlen, tap_uring=tap_uring, slow_reader=slow_reader, rounds=rounds)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if png:
        result["png"] = chart(result, png)
        click.echo(f"vmnet-rs bench: chart written to {result['png']}", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(table(result))


if __name__ == "__main__":
    bench()
