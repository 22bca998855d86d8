"""The benchmark command runs end to end in its short mode (numbers are never checked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmnet_rs.bench import KINDS, PATHS, SIZES, summarise


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


@pytest.mark.slow
@pytest.mark.root
def test_quick_bench_produces_the_documented_json(tmp_path):
    png = tmp_path / "bench.png"
    r = subprocess.run([sys.executable, "-m", "vmnet_rs", "bench", "--quick", "--json", "--png", str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["mode"] == "quick"
    seen = {(c["path"], c["frame_bytes"], c["pairs"]) for c in result["cases"]}
    for path in PATHS:
        for size in SIZES:
            assert (path, size, 1) in seen
        for pairs in (2, 4):
            assert (path, 64, pairs) in seen
    for c in result["cases"]:
        for key in ("frames_per_s", "gbit_per_s", "sent", "received", "loss", "cpu_s", "relay_cpu_s", "generator_cpu_s", "sink_cpu_s"):
            assert key in c, key
        assert c["received"] <= c["sent"]
    for kind in KINDS:
        ratios = result["kinds"][kind]["ratios"]
        assert set(ratios["vs_per_frame"]) == {"64", "1514"}
        assert set(ratios["vs_kernel"]) == {"64", "1514"}
        assert "scaling_4_vs_1" in ratios
        assert set(result["kinds"][kind]["frames_per_s"]) == {"64", "1514"}
    ip = result["iperf3"]
    assert "skipped" in ip or all("gbit_per_s" in ip[k] for k in ["veth", *KINDS])
    if result.get("png") == str(png):
        assert png.stat().st_size > 0
    else:
        assert "matplotlib" in result["png"]
