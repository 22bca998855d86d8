"""`vmnet-rs bench --rounds`: cases merged over rounds, ratios as medians of
per-round ratios, and the order a round runs its cases in. Synthetic
rounds, no root, nothing measured."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, List

import pytest

from vmnet_rs import bench as bench_mod
from vmnet_rs.bench import SIZES, summarise
from vmnet_rs.bench_endpoints import endpoint_summary
from vmnet_rs.bench_rounds import merge_rounds, merge_slow_reader, paired_ratio


def fd_case(path: str, size: int, fps: int, relay_us: float, sent: int = 1000, received: int = 1000, pairs: int = 1) -> Dict[str, Any]:
    return {"path": path, "frame_bytes": size, "pairs": pairs, "window_s": 3.0, "frames_per_s": fps, "gbit_per_s": 0.5,
            "sent": sent, "received": received, "loss": round(1 - received / sent, 4), "adaptor_drops": 0,
            "adaptors_ran_throughout": True, "cpu_cores": 1.5, "cpu_us_per_frame": relay_us + 2, "relay_cpu_us_per_frame": relay_us}


def ep_case(path: str, size: int, fps: int, relay_us: float, sent: int = 1000, received: int = 1000,
            counted: int = 0) -> Dict[str, Any]:
    lost = sent - received
    return {"path": path, "frame_bytes": size, "pairs": 1, "frames_per_s": fps, "gbit_per_s": 0.5, "sent": sent,
            "received": received, "loss": round(lost / sent, 4), "lost": lost,
            "counted_drops": {"relay_and_endpoint": counted, "tap_queue": 0}, "uncounted": max(0, lost - counted),
            "cpu_us_per_frame": relay_us + 2, "relay_cpu_us_per_frame": relay_us}


def test_a_merged_case_keeps_its_rounds_medians_the_figures_and_sums_the_counts() -> None:
    rounds = [fd_case("stream", 64, 300, 3.0), fd_case("stream", 64, 100, 9.0, sent=2000, received=1990),
              fd_case("stream", 64, 310, 3.5)]
    c = merge_rounds(rounds)
    assert c["rounds"] == rounds
    assert (c["path"], c["frame_bytes"], c["pairs"]) == ("stream", 64, 1)
    assert c["frames_per_s"] == 300 and c["relay_cpu_us_per_frame"] == 3.5
    # A loss in one round shows in the total: summed lost over summed sent.
    assert (c["sent"], c["received"]) == (4000, 3990)
    assert c["loss"] == round(10 / 4000, 4) and c["loss"] > 0
    assert c["adaptors_ran_throughout"] is True
    assert merge_rounds([*rounds[:2], {**rounds[2], "adaptors_ran_throughout": False}])["adaptors_ran_throughout"] is False
    with pytest.raises(ValueError):
        merge_rounds([])


def test_endpoint_losses_and_uncounted_frames_of_any_round_show_in_the_total() -> None:
    c = merge_rounds([ep_case("endpoint_datagram", 64, 100, 9.0),
                      ep_case("endpoint_datagram", 64, 100, 9.0, sent=1000, received=990, counted=4),
                      ep_case("endpoint_datagram", 64, 100, 9.0)])
    assert (c["lost"], c["uncounted"], c["counted_drops"]) == (10, 6, {"relay_and_endpoint": 4, "tap_queue": 0})
    assert c["loss"] == round(10 / 3000, 4)


def test_a_ratio_is_the_median_of_the_per_round_ratios() -> None:
    # Round 2 is noisy: the endpoint's relay CPU doubles in it (load hit it
    # alone). The per-round ratios are 1.0, 2.0, 1.1: the median is 1.1.
    a = merge_rounds([ep_case("endpoint_datagram", 64, 100, 10.0), ep_case("endpoint_datagram", 64, 100, 20.0),
                      ep_case("endpoint_datagram", 64, 100, 11.0)])
    b = merge_rounds([fd_case("datagram", 64, 100, 10.0), fd_case("datagram", 64, 100, 10.0), fd_case("datagram", 64, 100, 10.0)])
    assert paired_ratio(a, b, "relay_cpu_us_per_frame") == (1.1, [1.0, 2.0, 1.1])
    # Pairing is by round: the same figures in another round order give other ratios.
    b2 = merge_rounds([fd_case("datagram", 64, 100, 10.0), fd_case("datagram", 64, 100, 20.0), fd_case("datagram", 64, 100, 10.0)])
    assert paired_ratio(a, b2, "relay_cpu_us_per_frame") == (1.0, [1.0, 1.0, 1.1])
    # Records without rounds (results from before them) are one round.
    assert paired_ratio({"x": 3.0}, {"x": 2.0}, "x") == (1.5, [1.5])
    assert paired_ratio({"x": 3.0}, {}, "x") == (None, [])


def rounds_of_cases(per_round: List[Dict[str, float]]) -> List[Dict[str, Any]]:
    """1-pair cases of every path and size over len(per_round) rounds; the
    dicts give frames/s per path in each round (relay CPU is its inverse)."""
    cases = []
    for size in SIZES:
        for path in per_round[0]:
            cases.append(merge_rounds([fd_case(path, size, int(r[path]), round(1e3 / r[path], 3)) for r in per_round]))
    for pairs in (2, 4):
        for path in per_round[0]:
            cases.append(merge_rounds([fd_case(path, 64, int(per_round[0][path]) * pairs, 1.0, pairs=pairs)]))
    return cases


def test_summary_ratios_are_medians_of_rounds_and_one_high_round_does_not_decide() -> None:
    normal = {"kernel": 400, "per_frame": 100, "datagram": 50, "datagram_next": 200, "stream": 300}
    # In round 2 the stream relay ran while the machine was quiet and the
    # per-frame relay's run was hit: stream looks 6x.
    odd = {**normal, "per_frame": 50}
    s = summarise(rounds_of_cases([normal, odd, {**normal, "stream": 310}]))
    r = s["stream"]["ratios"]
    assert r["vs_per_frame_rounds"]["64"] == [3.0, 6.0, 3.1]
    assert r["vs_per_frame"]["64"] == 3.1
    # The frames/s shown are the medians of the cases.
    assert s["stream"]["frames_per_s"]["64"] == 300
    assert r["relay_cpu_vs_per_frame_rounds"]["1514"] == [0.333, 0.167, 0.323]
    assert r["relay_cpu_vs_per_frame"]["1514"] == 0.323
    assert r["vs_kernel"]["64"] == 0.75
    # The 4-pair case ran once: its rate over the 1-pair median.
    assert s["datagram_next"]["ratios"]["scaling_4_vs_1"] == 4.0


def test_endpoint_summary_takes_each_ratio_per_round() -> None:
    ep_rounds = [ep_case("endpoint_datagram", 64, 100, 10.0), ep_case("endpoint_datagram", 64, 100, 15.0, sent=1000, received=995),
                 ep_case("endpoint_datagram", 64, 100, 9.0)]
    direct = [ep_case("direct_datagram", 64, 500, 0.0)] * 3
    fd = merge_rounds([fd_case("datagram", 64, 110, 10.0), fd_case("datagram", 64, 120, 10.0), fd_case("datagram", 64, 100, 10.0)])
    slow = merge_slow_reader([
        {"kind": "datagram", "frame_bytes": 1514, "ratio": r, "alone": ep_case("endpoint_datagram", 1514, 100, 5.0),
         "beside_stopped_reader": ep_case("endpoint_datagram", 1514, int(100 * r), 5.0),
         "stopped_reader": {"frames_sent_to_it": 1000, "host_to_vm": {}}} for r in (0.95, 0.5, 0.92)])
    endpoints = {"cases": [merge_rounds(direct), merge_rounds(ep_rounds)], "slow_reader": [slow]}
    s = endpoint_summary(endpoints, [fd], [64])["datagram"]
    x = s["64"]
    assert x["rounds"] == 3
    assert x["relay_cpu_per_frame_vs_datagram_rounds"] == [1.0, 1.5, 0.9]
    assert x["relay_cpu_per_frame_vs_datagram"] == 1.0
    assert x["frames_per_s_vs_datagram"] == 0.909 and x["frames_per_s_vs_direct"] == 0.2
    # No datagram_next case in the run: no ratio, no rounds of it.
    assert x["relay_cpu_per_frame_vs_datagram_next"] is None and x["relay_cpu_per_frame_vs_datagram_next_rounds"] == []
    assert x["loss"] == round(5 / 3000, 4) and x["uncounted"] == 5
    # The slow reader: the median of its per-round ratios, not the bad round.
    assert s["slow_reader_ratio"] == 0.92 and s["slow_reader_ratio_rounds"] == [0.95, 0.5, 0.92]
    assert slow["stopped_reader"]["frames_sent_to_it"] == 3000
    assert slow["alone"]["frames_per_s"] == 100 and len(slow["alone"]["rounds"]) == 3
    lines = bench_mod.endpoint_table({**endpoints, "summary": endpoint_summary(endpoints, [fd], [64])})
    assert any("vs fd datagram 0.91 [0.83-1.00] (relay CPU/frame 1.00 [0.90-1.50])" in line for line in lines), lines
    assert any("0.92 [0.50-0.95]x (median of 3 rounds)" in line for line in lines), lines


class FakeBench(bench_mod.Bench):
    """A Bench whose cases record the order they ran in."""

    def __init__(self, calls: List[Any]) -> None:
        super().__init__(1.0, iperf_seconds=1, dgram_qlen=512)
        self.calls = calls

    def switch(self) -> Any:
        class Ns:
            def close(self) -> None:
                pass
        return Ns(), 512

    def run_case(self, ns: Any, path: str, size: int, pairs: int) -> Dict[str, Any]:
        self.calls.append((path, size, pairs))
        return fd_case(path, size, 100 + len(self.calls), 1.0, pairs=pairs)


def test_each_round_runs_the_paired_cases_back_to_back_and_the_scaling_cases_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []

    class FakeEndpoints:
        def case(self, path: str, size: int) -> Dict[str, Any]:
            calls.append((path, size, 1))
            return ep_case(path, size, 100 + len(calls), 2.0)

        def slow_reader(self, kind: str, size: int) -> Dict[str, Any]:
            calls.append(("slow_" + kind, size, 1))
            return {"kind": kind, "frame_bytes": size, "ratio": 0.9, "alone": ep_case(f"endpoint_{kind}", size, 100, 1.0),
                    "beside_stopped_reader": ep_case(f"endpoint_{kind}", size, 90, 1.0),
                    "stopped_reader": {"frames_sent_to_it": 10, "host_to_vm": None}}

    @contextmanager
    def fake_endpoint_bench(*_a: Any) -> Any:
        yield FakeEndpoints()

    monkeypatch.setattr(bench_mod, "endpoint_bench", fake_endpoint_bench)
    fd_paths = ["kernel", "per_frame", "datagram", "stream"]
    ep_paths = ["direct_datagram", "endpoint_datagram", "endpoint_stream"]
    cases, endpoints, qlen = FakeBench(calls).rounds(fd_paths, ep_paths, [64, 1514], [1, 4], 3, slow=True)
    one_round = [(p, size, 1) for size in (64, 1514)
                 for p in ("per_frame", "stream", "endpoint_stream", "direct_datagram", "endpoint_datagram", "datagram", "kernel")]
    one_round += [("slow_datagram", 1514, 1), ("slow_stream", 1514, 1)]
    assert calls == one_round * 3 + [(p, 64, 4) for p in fd_paths]
    # Cases come out in the order asked for, each with its three rounds;
    # the 4-pair cases with one.
    assert [(c["path"], c["frame_bytes"], c["pairs"], len(c["rounds"])) for c in cases] == \
        [(p, size, 1, 3) for size in (64, 1514) for p in fd_paths] + [(p, 64, 4, 1) for p in fd_paths]
    assert [(c["path"], c["frame_bytes"]) for c in endpoints["cases"]] == [(p, size) for size in (64, 1514) for p in ep_paths]
    assert endpoints["rounds"] == 3 and qlen == 512
    assert [(s["kind"], len(s["rounds"])) for s in endpoints["slow_reader"]] == [("datagram", 3), ("stream", 3)]
    # Each round's figures are kept in order: round n of a case is its n-th run.
    stream64 = next(c for c in cases if c["path"] == "stream" and c["frame_bytes"] == 64)
    assert [r["frames_per_s"] for r in stream64["rounds"]] == [102 + 16 * n for n in range(3)]


def test_no_slow_reader_and_no_one_pair_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    cases, endpoints, _ = FakeBench(calls).rounds(["stream"], [], [64], [2], 2, slow=True)
    assert calls == [("stream", 64, 2)]
    assert [(c["pairs"], len(c["rounds"])) for c in cases] == [(2, 1)]
    assert "skipped" in endpoints


def test_the_table_shows_rounds_medians_and_spread() -> None:
    normal = {"kernel": 400, "per_frame": 100, "datagram": 50, "datagram_next": 200, "stream": 300}
    cases = rounds_of_cases([normal, {**normal, "per_frame": 50}, {**normal, "stream": 310}])
    result = {"mode": "full", "seconds_per_case": 3.0, "rounds": 3, "machine": {"cpus": 2, "kernel": "6.1"},
              "settings": {"unix_max_dgram_qlen": 512, "tap_io_uring": True}, "cases": cases,
              "kinds": {k: v for k, v in summarise(cases).items() if k in bench_mod.KINDS},
              "endpoints": {"skipped": "not asked for (--paths)"}, "iperf3": {"skipped": "not asked for (--no-iperf)"}}
    text = bench_mod.table(result)
    assert "3 s per case, 3 rounds" in text or "3.0 s per case, 3 rounds" in text
    assert "the multi-pair scaling cases and iperf3 run once" in text
    line = next(x for x in text.splitlines() if x.startswith("stream") and "frames/s vs per_frame" in x)
    assert "3.10 [3.00-6.00]" in line, line
    row = next(x for x in text.splitlines() if x.startswith("per_frame") and " 64 " in x)
    # per_frame at 64 B: 100, 50, 100 frames/s: median 100, spread 50 %.
    assert row.split()[3:6] == ["3", "100", "50%"], row


def test_rounds_must_be_positive() -> None:
    from click.testing import CliRunner

    from vmnet_rs.cli import cli

    r = CliRunner().invoke(cli, ["bench", "--rounds", "0"])
    assert r.exit_code == 2 and "--rounds" in r.output
