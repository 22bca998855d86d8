"""``vmnet-rs bench``: cases measured over several rounds, ratios as
medians of per-round ratios.

On a small shared machine one case of a few seconds swings by tens of
percent between identical runs, and a ratio of two such cases more. So a
ratio is taken within each round, between two cases measured back to back
in that round (a change of load hits both sides alike), and the figure
reported is the median of those per-round ratios, with each round's value
beside it: one noisy round cannot decide it.

A case record measured over rounds keeps every round's record under
``rounds``; its other keys keep their meaning for one round's consumers:
rates and CPU figures are the medians over the rounds, counts (frames
sent, received, lost, drops, ``uncounted``) are summed, and ``loss`` is
the total lost over the total sent, so a loss in any round shows.

Pure functions, no I/O: tested with synthetic rounds.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Counts: summed over the rounds.
SUMMED = ("sent", "received", "lost", "reordered", "adaptor_drops", "adaptor_waits", "uncounted")
#: Flags that must hold in every round.
ALL_ROUNDS = ("adaptors_ran_throughout",)


def median(values: Sequence[Optional[float]]) -> Optional[float]:
    """The median of the values that are not None (None if there are none)."""
    xs = [x for x in values if x is not None]
    return statistics.median(xs) if xs else None


def spread(values: Sequence[Optional[float]]) -> Optional[Tuple[float, float]]:
    """(min, max) of the values that are not None (None if there are none)."""
    xs = [x for x in values if x is not None]
    return (min(xs), max(xs)) if xs else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or not b else round(a / b, 3)


def _median_like(values: List[Any]) -> Any:
    m = median(values)
    if m is None:
        return None
    if all(isinstance(x, int) for x in values if x is not None):
        return int(round(m))
    return round(m, 3)


def merge_rounds(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One case record from the records of its rounds (same path, size and
    pairs): medians of the figures, sums of the counts, every round kept
    under ``rounds``."""
    if not rounds:
        raise ValueError("a case needs at least one round")
    first = rounds[0]
    out: Dict[str, Any] = {}
    for key, value in first.items():
        values = [r.get(key) for r in rounds]
        if key in SUMMED:
            out[key] = sum(x or 0 for x in values)
        elif key in ALL_ROUNDS:
            out[key] = all(values)
        elif key == "counted_drops":
            out[key] = {k: sum((r.get(key) or {}).get(k, 0) for r in rounds) for k in value}
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or key in ("frame_bytes", "pairs"):
            out[key] = value
        else:
            out[key] = _median_like(values)
    if "loss" in first:
        sent, received = out.get("sent", 0), out.get("received", 0)
        out["loss"] = round((sent - received) / sent, 4) if sent else None
    out["rounds"] = rounds
    return out


def rounds_of(case: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A case's rounds; a record without ``rounds`` (one round, or results
    from before rounds) is its own single round."""
    if not case:
        return []
    return case.get("rounds") or [case]


def paired_ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], key_a: str,
                 key_b: Optional[str] = None) -> Tuple[Optional[float], List[Optional[float]]]:
    """``a[key_a] / b[key_b]`` in each round (round i of ``a`` with round i
    of ``b``, measured back to back), and the median of those ratios."""
    per = [ratio(x.get(key_a), y.get(key_b or key_a)) for x, y in zip(rounds_of(a), rounds_of(b))]
    m = median(per)
    return (None if m is None else round(m, 3)), per


def merge_slow_reader(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The slow-reader case over rounds: each round's flow alone, then
    beside a client that stopped reading, and its ratio; ``ratio`` is the
    median of the per-round ratios, ``alone`` and ``beside_stopped_reader``
    the merged cases, the frames sent to the stopped client summed."""
    if not rounds:
        raise ValueError("a case needs at least one round")
    per = [r["ratio"] for r in rounds]
    m = median(per)
    last = rounds[-1]
    return {
        "kind": last["kind"],
        "frame_bytes": last["frame_bytes"],
        "alone": merge_rounds([r["alone"] for r in rounds]),
        "beside_stopped_reader": merge_rounds([r["beside_stopped_reader"] for r in rounds]),
        "stopped_reader": {"frames_sent_to_it": sum(r["stopped_reader"]["frames_sent_to_it"] for r in rounds),
                           "host_to_vm": last["stopped_reader"].get("host_to_vm")},
        "ratio": None if m is None else round(m, 3),
        "ratio_rounds": per,
        "rounds": rounds,
    }
