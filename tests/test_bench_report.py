"""scripts/bench-report --check: the docs quote only numbers the committed
results file holds (the benchmarks themselves stay out of CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench-report"


def results() -> dict:
    cases = []
    for n, path in enumerate(["kernel", "per_frame", "datagram", "datagram_next", "stream"]):
        for size in (64, 1514):
            cases.append({"path": path, "frame_bytes": size, "pairs": 1, "frames_per_s": 100_000 * (n + 1) + size,
                          "gbit_per_s": 1.25 * (n + 1), "cpu_us_per_frame": 3.0 + n, "sent": 1000, "received": 1000})
        for pairs in (2, 4):
            cases.append({"path": path, "frame_bytes": 64, "pairs": pairs, "frames_per_s": 150_000 * (n + 1) * pairs,
                          "gbit_per_s": 0.1, "cpu_us_per_frame": 2.0, "sent": 1000, "received": 990})
    ratios = {"vs_per_frame": {"64": 1.3, "1514": 1.4}, "vs_kernel": {"64": 0.5, "1514": 0.6}, "scaling_4_vs_1": 1.2}
    return {
        "date": "2026-12-06T23:40Z", "commit": "0123456789abcdef", "dirty": False, "command": "scripts/bench-report",
        "machine": {"cpus": 2, "kernel": "6.1.0", "loadavg": [5.0, 4.0, 3.0], "loadavg_after": [6.0, 5.0, 4.0]},
        "note": "noisy",
        "adaptors": {"seconds_per_case": 3.0, "settings": {"unix_max_dgram_qlen": 512, "tap_io_uring": True}, "cases": cases,
                     "kinds": {k: {"ratios": ratios} for k in ("datagram", "datagram_next", "stream")},
                     "iperf3": {k: {"gbit_per_s": 1.5} for k in ("veth", "datagram", "datagram_next", "stream")}},
        "endpoint_dgram": {"1514": [{"sent": 100, "received": 90, "lost": 10, "host_to_vm_drops": 4, "vm_to_host_drops": 0,
                                     "received_mbit_s": 777.0}]},
        "port_open": {"ports": 200, "p50_ms": 0.361, "p99_ms": 4.1, "max_ms": 9.0},
        "vm_paths": {"seconds": 8, "rounds": 3,
                     "mbit_per_s": {"direct-dgram": [400.0, 300.0, 350.0], "path-dgram": [330.0, 340.0, None]},
                     "median": {"direct-dgram": 350.0, "path-dgram": None}, "ratios": {"dgram": None}},
    }


def endpoints() -> dict:
    case = {"path": "endpoint_datagram", "frame_bytes": 1514, "frames_per_s": 123_000, "relay_cpu_us_per_frame": 4.25, "lost": 7,
            "counted_drops": {"relay_and_endpoint": 2, "tap_queue": 5}, "uncounted": 0}
    direct = {**case, "path": "direct_datagram", "frames_per_s": 456_000, "lost": 0, "counted_drops": {"relay_and_endpoint": 0, "tap_queue": 0}}
    slow = {"kind": "datagram", "frame_bytes": 1514, "ratio": 0.97, "alone": {"frames_per_s": 100_000},
            "beside_stopped_reader": {"frames_per_s": 97_000}, "stopped_reader": {"frames_sent_to_it": 3000}}
    summary = {"datagram": {"1514": {"frames_per_s_vs_direct": 0.27, "frames_per_s_vs_datagram": 1.1, "relay_cpu_per_frame_vs_datagram": 0.8,
                                     "frames_per_s_vs_datagram_next": 0.95, "relay_cpu_per_frame_vs_datagram_next": 1.05},
                            "slow_reader_ratio": 0.97}}
    return {"cases": [direct, case], "slow_reader": [slow], "summary": summary}


def check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--root", str(root)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(results()))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n\nNo figures here; tests wait 10 s at most.\n")
    (tmp_path / "docs" / "perf.md").write_text(
        "# Perf\n\n<!-- bench-report: adaptors -->\n<!-- /bench-report -->\n\n"
        "<!-- bench-report: endpoint-dgram -->\nstale\n<!-- /bench-report -->\n\n"
        "<!-- bench-report: port-open -->\n<!-- /bench-report -->\n\n"
        "<!-- bench-report: endpoints -->\n<!-- /bench-report -->\n\n"
        "<!-- bench-report: adaptor-ratios -->\n<!-- /bench-report -->\n\n"
        "<!-- bench-report: vm-paths -->\n<!-- /bench-report -->\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_rendered_docs_pass_and_show_the_results(tree: Path) -> None:
    r = check(tree)
    assert r.returncode == 0, r.stderr
    text = (tree / "docs" / "perf.md").read_text()
    assert "| `stream` | 500 k | 502 k (6.2) | 3000 k | 7.0 |" in text
    assert "| received, Mbit/s | 777 |" in text
    assert "p50 0.36 ms, p99 4.10 ms" in text
    assert "2026-12-06T23:40Z, commit 0123456789" in text and "`bench/results.json`" in text
    # Results without the relay CPU ratio render without its column.
    assert "| `stream` | 1.30 / 1.40 | 0.50 / 0.60 | 1.20 |\n" in text
    # Without endpoint cases in the run, the block says so.
    assert "Endpoint paths: not measured in this run" in text
    # The VM paths: every round, the median, failures shown as such.
    assert "| `direct-dgram` | 400 | 300 | 350 | 350 |" in text and "| `path-dgram` | 330 | 340 | failed | failed |" in text
    assert "datagram endpoint path / QEMU's direct `dgram` link (medians): -" in text


def test_endpoint_cases_render_with_their_ratios_and_the_slow_reader(tree: Path) -> None:
    data = results()
    data["adaptors"]["endpoints"] = endpoints()
    data["adaptors"]["kinds"] = {k: {"ratios": {**v["ratios"], "relay_cpu_vs_per_frame": {"64": 0.45, "1514": 0.5}}}
                                 for k, v in data["adaptors"]["kinds"].items()}
    (tree / "bench" / "results.json").write_text(json.dumps(data))
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tree)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (tree / "docs" / "perf.md").read_text()
    assert "| datagram endpoint | 1514 B | 123 k | 4.2 | 7 | 2 / 5 | 0 |" in text
    assert "| direct datagram socketpair | 1514 B | 456 k | - | 0 | 0 / 0 | 0 |" in text
    assert ("- datagram endpoint, 1514 B: frames/s vs the direct socketpair 0.27; vs the fd `datagram` relay: frames/s 1.10, "
            "relay CPU per frame 0.80; vs the fd `datagram_next` relay: frames/s 0.95, relay CPU per frame 1.05") in text
    assert "moved 0.97 of its rate alone (97 k against 100 k frames/s); 3000 frames were sent to the stopped client" in text
    assert "| `stream` | 1.30 / 1.40 | 0.50 / 0.60 | 1.20 | 0.45 / 0.50 |" in text
    assert check(tree).returncode == 0


def test_an_edited_block_a_stray_figure_and_a_loose_table_fail(tree: Path) -> None:
    doc = tree / "docs" / "perf.md"
    good = doc.read_text()
    doc.write_text(good.replace("| `stream` | 500 k", "| `stream` | 600 k"))
    r = check(tree)
    assert r.returncode == 1 and "docs/perf.md:3: block 'adaptors' differs from bench/results.json" in r.stderr, r.stderr
    # A figure in prose must be one the blocks show.
    doc.write_text(good + "\nThe stream path moves 500 k frames/s; the datagram path 999 k frames/s.\n")
    r = check(tree)
    assert r.returncode == 1 and "'999 k frames/s' is in no bench-report block" in r.stderr and "'500 k frames/s'" not in r.stderr, r.stderr
    (tree / "README.md").write_text("Port open: p50 9.6 ms.\n")
    doc.write_text(good)
    r = check(tree)
    assert r.returncode == 1 and "README.md:1: 'p50 9.6 ms' is in no bench-report block" in r.stderr, r.stderr
    (tree / "README.md").write_text("| Mbit/s | round 1 |\n|---|---|\n| dgram | 512 |\n")
    r = check(tree)
    assert r.returncode == 1 and "README.md:1: a table of measured figures outside a bench-report block" in r.stderr, r.stderr
    (tree / "README.md").write_text("<!-- bench-report: nonsense -->\n<!-- /bench-report -->\n")
    r = check(tree)
    assert r.returncode == 1 and "no table named 'nonsense'" in r.stderr, r.stderr


def test_the_repository_docs_quote_only_the_committed_results() -> None:
    r = check(REPO)
    assert r.returncode == 0, r.stderr


def test_the_stream_relay_block_compares_relay_cpu_with_the_per_frame_relay(tmp_path: Path) -> None:
    r = results()
    for c in r["adaptors"]["cases"]:
        c["relay_cpu_us_per_frame"] = {"per_frame": 12.0, "stream": 3.0}.get(c["path"], 1.0) + (c["frame_bytes"] > 64)
        c["adaptor_frames_per_batch"] = None if c["path"] == "per_frame" else 40.0
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(r))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "stream.md").write_text("# Stream\n\n<!-- bench-report: stream-relay -->\n<!-- /bench-report -->\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "docs" / "stream.md").read_text()
    assert "| per-frame relay | 12.0 | 13.0 | 1 / 1 |" in text
    assert "| `stream` | 3.0 | 4.0 | 40 / 40 |" in text
    assert "0.25 at 64 B, 0.31 at 1514 B" in text
    assert check(tmp_path).returncode == 0


def load_script():
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("bench_report", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bench_report", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_run_without_vm_backends_keeps_the_last_ones_dated_as_they_were(tmp_path: Path) -> None:
    br = load_script()
    old = {**results(), "date": "2026-12-01T10:00Z", "commit": "aaaaaaaaaaaa", "command": "scripts/bench-report --vm",
           "vm": {"seconds": 5, "mbit_per_s": {"tap_next": [700.0], "stream": [480.0]}}}
    previous = tmp_path / "results.json"
    previous.write_text(json.dumps(old))
    kept = br.kept_vm_backends(previous)
    assert kept["mbit_per_s"] == old["vm"]["mbit_per_s"]
    assert kept["measured"]["date"] == "2026-12-01T10:00Z" and kept["measured"]["command"] == "scripts/bench-report --vm"
    # Kept again by a later run: still the first run's date, not the middle one's.
    later = {**results(), "date": "2026-12-05T10:00Z", "vm": kept}
    previous.write_text(json.dumps(later))
    assert br.kept_vm_backends(previous)["measured"]["date"] == "2026-12-01T10:00Z"
    # Rendered beside a newer run, the block names the run that measured it.
    text = br.render_vm({**results(), "vm": kept}, ["tap_next", "stream"])
    assert "2026-12-01T10:00Z, commit aaaaaaaaaa" in text and "2026-12-06T23:40Z" not in text
    assert "| `tap_next` | 700 |" in text
    # Nothing to keep: no file, or no backends in it.
    assert br.kept_vm_backends(tmp_path / "missing.json") is None
    previous.write_text(json.dumps(results()))
    assert br.kept_vm_backends(previous) is None


def with_rounds(data: dict) -> dict:
    """``results()`` as a run with three rounds writes it: the cases keep
    their rounds, the ratios their per-round values, the slow reader its
    per-round ratios."""
    a = data["adaptors"]
    a["rounds"] = 3
    for c in a["cases"]:
        c["rounds"] = [dict(c)] * (3 if c["pairs"] == 1 else 1)
        c["relay_cpu_us_per_frame"] = {"per_frame": 12.0, "stream": 3.0}.get(c["path"], 1.0)
    per = {"64": [1.2, 1.3, 2.9], "1514": [1.4, 1.4, 1.5]}
    cpu = {"64": [0.25, 0.26, 0.6], "1514": [0.3, 0.31, 0.32]}
    a["kinds"] = {k: {"ratios": {"vs_per_frame": {"64": 1.3, "1514": 1.4}, "vs_per_frame_rounds": per,
                                 "vs_kernel": {"64": 0.5, "1514": 0.6}, "vs_kernel_rounds": {"64": [0.5] * 3, "1514": [0.6] * 3},
                                 "relay_cpu_vs_per_frame": {"64": 0.26, "1514": 0.31}, "relay_cpu_vs_per_frame_rounds": cpu,
                                 "scaling_4_vs_1": 1.2}}
                  for k in ("datagram", "datagram_next", "stream")}
    ep = endpoints()
    ep["rounds"] = 3
    for c in ep["cases"]:
        c["rounds"] = [dict(c)] * 3
    x = ep["summary"]["datagram"]["1514"]
    x.update({"frames_per_s_vs_direct_rounds": [0.27, 0.26, 0.3], "relay_cpu_per_frame_vs_datagram_rounds": [0.8, 1.31, 0.79],
              "frames_per_s_vs_datagram_rounds": [1.1, 1.0, 1.2], "frames_per_s_vs_datagram_next_rounds": [0.95] * 3,
              "relay_cpu_per_frame_vs_datagram_next_rounds": [1.05] * 3, "rounds": 3})
    slow = ep["slow_reader"][0]
    slow.update({"ratio_rounds": [0.97, 0.86, 0.98], "rounds": [dict(slow)] * 3})
    slow["stopped_reader"] = {"frames_sent_to_it": 9000}
    ep["summary"]["datagram"]["slow_reader_ratio_rounds"] = slow["ratio_rounds"]
    a["endpoints"] = ep
    return data


def test_results_with_rounds_render_medians_with_their_spread(tree: Path) -> None:
    (tree / "bench" / "results.json").write_text(json.dumps(with_rounds(results())))
    doc = tree / "docs" / "perf.md"
    doc.write_text(doc.read_text() + "\n<!-- bench-report: stream-relay -->\n<!-- /bench-report -->\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tree)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = doc.read_text()
    # The provenance says how many rounds and what a figure is over them.
    assert "3.0 s per case, 3 rounds back to back" in text and "the median of its per-round ratios" in text
    assert "Unix datagram queue 512, TAP io_uring on; 100 frames lost over all cases and rounds." in text
    # Ratios: medians with the range of the rounds.
    assert "| `stream` | 1.30 [1.20-2.90] / 1.40 [1.40-1.50] | 0.50 [0.50-0.50] / 0.60 [0.60-0.60] | 1.20 | 0.26 [0.25-0.60] / 0.31 [0.30-0.32] |" in text
    assert "Medians of the per-round ratios over 3 rounds" in text
    assert ("- datagram endpoint, 1514 B: frames/s vs the direct socketpair 0.27 [0.26-0.30]; vs the fd `datagram` relay: "
            "frames/s 1.10 [1.00-1.20], relay CPU per frame 0.80 [0.79-1.31]") in text
    assert ("moved 0.97 [0.86-0.98] of its rate alone, the median of 3 per-round ratios (medians 97 k against 100 k frames/s); "
            "9000 frames were sent to the stopped client over the rounds") in text
    assert "| datagram endpoint | 1514 B | 123 k | 4.2 | 7 | 2 / 5 | 0 |" in text
    # The stream relay's verdict is the median of its per-round ratios, not the ratio of the medians (0.25).
    assert "the median of 3 per-round ratios: 0.26 [0.25-0.60] at 64 B, 0.31 [0.30-0.32] at 1514 B." in text
    assert check(tree).returncode == 0


def test_results_from_before_rounds_render_as_one_round(tree: Path) -> None:
    """The results file from before rounds (no ``rounds`` keys anywhere)
    renders as it always did: one figure per ratio, no ranges."""
    data = results()
    data["adaptors"]["endpoints"] = endpoints()
    (tree / "bench" / "results.json").write_text(json.dumps(data))
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tree)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (tree / "docs" / "perf.md").read_text()
    assert "3.0 s per case, unix datagram queue 512, TAP io_uring on; 100 frames lost over all cases." in text
    br = load_script()
    for render in (br.render_endpoints, br.render_ratios, br.render_stream_relay, br.render_adaptors):
        assert "round" not in render(data) and "[" not in render(data), render
    assert "moved 0.97 of its rate alone (97 k against 100 k frames/s); 3000 frames were sent to the stopped client" in text
    assert check(tree).returncode == 0


def test_vm_paths_with_per_round_ratios_render_their_median_and_each_round(tree: Path) -> None:
    """The VM paths' verdict is the median of each round's path/direct
    ratio (the two ran back to back); the ratio of the medians stands
    beside it. Here they differ: 0.95 against 0.88."""
    data = results()
    data["vm_paths"] = {"seconds": 8, "rounds": 3,
                        "mbit_per_s": {"direct-stream": [815.0, 882.0, 909.0], "path-stream": [775.0, 845.0, 753.0]},
                        "median": {"direct-stream": 882.0, "path-stream": 775.0}, "ratios": {"stream": 0.951},
                        "ratios_rounds": {"stream": [0.951, 0.958, 0.828]}, "ratios_of_medians": {"stream": 0.879}}
    (tree / "bench" / "results.json").write_text(json.dumps(data))
    r = subprocess.run([sys.executable, str(SCRIPT), "--render", "--root", str(tree)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (tree / "docs" / "perf.md").read_text()
    assert ("- stream endpoint path / QEMU's direct `stream` link: 0.95, the median of each round's ratio (0.95, 0.96, 0.83); "
            "the ratio of the two medians is 0.88") in text
    assert check(tree).returncode == 0


def test_the_vm_benchmark_takes_the_median_of_each_rounds_ratio() -> None:
    """tests/vm/bench.py's summary: per kind each round's path/direct
    ratio, their median (one slow round of a side cannot decide it), and a
    failed round leaves no verdict."""
    import importlib.util

    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "vm")]
    spec = importlib.util.spec_from_file_location("vm_bench", REPO / "tests" / "vm" / "bench.py")
    assert spec is not None and spec.loader is not None
    vm_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vm_bench)
    s = vm_bench.summarise({"direct-stream": [815.0, 882.0, 909.0], "path-stream": [775.0, 845.0, 753.0],
                            "direct-dgram": [537.0, 617.0, 588.0], "path-dgram": [566.0, 572.0, None]})
    assert s["ratios_rounds"]["stream"] == [0.951, 0.958, 0.828]
    assert s["ratios"]["stream"] == 0.951 and s["ratios_of_medians"]["stream"] == 0.879
    assert s["ratios"]["dgram"] is None and s["ratios_rounds"]["dgram"][2] is None and s["ratios_of_medians"]["dgram"] is None
