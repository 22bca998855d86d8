"""The benchmark command runs end to end in its short mode (numbers are never checked)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from brokerproc import wait_until

from vmnet_rs import bench as bench_mod
from vmnet_rs.bench import KINDS, PAIRS, PATHS, SIZES, summarise
from vmnet_rs.bench_endpoints import ENDPOINT_PATHS


def test_summary_ratios_come_from_the_raw_figures():
    cases = []
    for path, fps in (("kernel", 400), ("per_frame", 100), ("stream", 300), ("datagram", 50), ("datagram_next", 200)):
        for size in SIZES:
            cases.append({"path": path, "frame_bytes": size, "pairs": 1, "frames_per_s": fps})
        for pairs in (2, 4):
            cases.append({"path": path, "frame_bytes": 64, "pairs": pairs, "frames_per_s": fps * pairs // 4})
    s = summarise(cases)
    assert s["stream"]["ratios"]["vs_per_frame"] == {"64": 3.0, "1514": 3.0}
    assert s["stream"]["ratios"]["vs_kernel"]["64"] == 0.75
    assert s["datagram_next"]["ratios"]["scaling_4_vs_1"] == 1.0
    assert "vs_kernel" not in s["kernel"]["ratios"]
    # No relay CPU figures in these cases: no ratio of them.
    assert s["stream"]["ratios"]["relay_cpu_vs_per_frame"] == {"64": None, "1514": None}


@pytest.mark.slow
@pytest.mark.root
def test_quick_bench_produces_the_documented_json(tmp_path):
    png = tmp_path / "bench.png"
    r = subprocess.run([sys.executable, "-m", "vmnet_rs", "bench", "--quick", "--json", "--png", str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["mode"] == "quick" and result["rounds"] == 1
    seen = {(c["path"], c["frame_bytes"], c["pairs"]) for c in result["cases"]}
    for path in PATHS:
        for size in SIZES:
            assert (path, size, 1) in seen
        for pairs in (2, 4):
            assert (path, 64, pairs) in seen
    for c in result["cases"]:
        for key in ("frames_per_s", "gbit_per_s", "sent", "received", "loss", "cpu_s", "relay_cpu_s", "generator_cpu_s", "sink_cpu_s"):
            assert key in c, key
        # Every case really moved frames: a path that delivers nothing fails.
        assert 0 < c["received"] <= c["sent"], c
        assert c["frames_per_s"] > 0, c
    for kind in KINDS:
        ratios = result["kinds"][kind]["ratios"]
        assert set(ratios["relay_cpu_vs_per_frame"]) == {"64", "1514"}
        assert set(ratios["vs_per_frame"]) == {"64", "1514"}
        assert set(ratios["vs_kernel"]) == {"64", "1514"}
        assert "scaling_4_vs_1" in ratios
        assert set(result["kinds"][kind]["frames_per_s"]) == {"64", "1514"}
    assert {c["path"] for c in result["endpoints"]["cases"]} == set(ENDPOINT_PATHS)
    ip = result["iperf3"]
    # scripts/install-deps installs iperf3: the TCP comparison runs.
    assert "skipped" not in ip, ip
    assert all(ip[k]["gbit_per_s"] > 0 for k in ["veth", *KINDS]), ip
    assert result["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"vmnet-rs bench: chart written to {png}" in r.stderr


def fake_result() -> dict:
    cases = []
    for k, path in enumerate(PATHS):
        for size in SIZES:
            cases.append({"path": path, "frame_bytes": size, "pairs": 1, "frames_per_s": 100_000 * (k + 1), "cpu_us_per_frame": 2.0 + k})
        for pairs in PAIRS[1:]:
            cases.append({"path": path, "frame_bytes": 64, "pairs": pairs, "frames_per_s": 100_000 * (k + 1) * pairs, "cpu_us_per_frame": 2.0 + k})
    return {"mode": "quick", "seconds_per_case": 0.3, "machine": {"cpus": 2, "kernel": "6.1"}, "cases": cases}


def test_png_without_matplotlib_fails_before_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from vmnet_rs.cli import cli

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError

    def must_not_run(*a, **k):
        raise AssertionError("the benchmark ran before the matplotlib check")

    monkeypatch.setattr(bench_mod, "run", must_not_run)
    r = CliRunner().invoke(cli, ["bench", "--quick", "--png", "chart.png"])
    assert r.exit_code == 1
    assert "--png needs matplotlib, which is not installed: pip install 'vmnet-rs[bench]' (or leave out --png)" in r.output


def test_chart_one_colour_per_path_labelled_axes_from_zero_and_cpu_panel(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'vmnet-rs[bench]')")
    from matplotlib.colors import to_hex

    fig = bench_mod.chart_figure(fake_result())
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["64-byte frames, 1 pair", "1514-byte frames, 1 pair",
                                             "64-byte frames, all pairs together", "CPU per delivered frame, 1 pair"]
    for a in axes:
        assert a.get_xlabel() and a.get_ylabel()
        assert a.get_ylim()[0] == 0
    assert axes[3].get_ylabel() == "CPU time per frame (µs)"
    colours = {p: bench_mod.COLOURS[p] for p in PATHS}
    assert len(set(colours.values())) == len(PATHS)
    for a in (axes[0], axes[1]):
        assert [to_hex(b.get_facecolor()) for b in a.patches] == [colours[p] for p in PATHS]
    assert {line.get_label(): to_hex(line.get_color()) for line in axes[2].get_lines()} == colours
    assert [to_hex(b.get_facecolor()) for b in axes[3].patches] == [colours[p] for p in PATHS] * len(SIZES)
    # Frames/s as measured, in thousands.
    assert [b.get_height() for b in axes[0].patches] == [100.0 * (k + 1) for k in range(len(PATHS))]
    out = bench_mod.chart(fake_result(), str(tmp_path / "c.png"))
    assert out == str(tmp_path / "c.png") and (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.root
def test_endpoint_paths_run_on_a_real_bridge_and_account_for_every_frame() -> None:
    """The endpoint cases alone, short, in two rounds: every case moves
    frames in every round, loss is sent minus received beside the drops
    status counted, and the slow reader case measures both rates in each
    round. Numbers are never judged."""
    r = subprocess.run([sys.executable, "-m", "vmnet_rs", "bench", "--quick", "--json", "--no-iperf", "--sizes", "1514",
                        "--paths", ",".join(ENDPOINT_PATHS), "--rounds", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["cases"] == []
    ep = result["endpoints"]
    assert result["rounds"] == 2 and ep["rounds"] == 2
    assert [(c["path"], c["frame_bytes"]) for c in ep["cases"]] == [(p, 1514) for p in ENDPOINT_PATHS]
    for c in ep["cases"]:
        assert len(c["rounds"]) == 2, c
        for x in c["rounds"]:
            assert 0 < x["received"] <= x["sent"] and x["frames_per_s"] > 0, x
            assert x["lost"] == x["sent"] - x["received"], x
            assert set(x["counted_drops"]) == {"relay_and_endpoint", "tap_queue"}, x
            assert x["uncounted"] == max(0, x["lost"] - sum(x["counted_drops"].values())), x
            if c["path"].startswith("endpoint_"):
                assert x["broker_cpu_s"] > 0 and x["relay_cpu_us_per_frame"] > 0, x
            else:
                assert x["broker_cpu_s"] == 0, x
        # The totals are the rounds' sums.
        assert (c["sent"], c["lost"], c["uncounted"]) == tuple(sum(x[k] for x in c["rounds"]) for k in ("sent", "lost", "uncounted")), c
    assert [s["kind"] for s in ep["slow_reader"]] == ["datagram", "stream"]
    for s in ep["slow_reader"]:
        assert len(s["rounds"]) == 2 and s["ratio_rounds"] == [x["ratio"] for x in s["rounds"]], s
        for x in s["rounds"]:
            assert x["alone"]["frames_per_s"] > 0 and x["beside_stopped_reader"]["frames_per_s"] > 0, x
            assert x["stopped_reader"]["frames_sent_to_it"] > 0, x
            assert x["ratio"] == round(x["beside_stopped_reader"]["frames_per_s"] / x["alone"]["frames_per_s"], 3)
    summary = ep["summary"]
    assert set(summary) == {"datagram", "stream"}
    assert "frames_per_s_vs_direct" in summary["datagram"]["1514"] and "slow_reader_ratio" in summary["stream"]
    # Without the adaptor cases in the run there is no fd relay to compare with.
    assert summary["datagram"]["1514"]["relay_cpu_per_frame_vs_datagram_next"] is None
    assert any(line.startswith("endpoint datagram 1514 B: frames/s vs direct datagram link") for line in bench_mod.endpoint_table(ep))


def bench_namespaces() -> set:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("vmrs-bench-")}


@pytest.mark.slow
@pytest.mark.root
def test_a_stopped_bench_deletes_the_namespaces_it_made():
    before = bench_namespaces()
    proc = subprocess.Popen([sys.executable, "-m", "vmnet_rs", "bench", "--quick", "--json", "--no-iperf", "--no-slow-reader"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        made = wait_until("the bench to make a namespace", lambda: (proc.poll() is not None) or bench_namespaces() - before, timeout=60)
        assert proc.poll() is None and made, "the bench ended before it made a namespace"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert bench_namespaces() - before == set()
