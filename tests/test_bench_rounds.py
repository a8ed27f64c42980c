"""``bench/load.py --rounds``: how several rounds become one table row.

The harness itself needs wrk and minutes of load; these tests check only the arithmetic
that turns rounds into the published figures, which a mistake would silently skew."""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("bench_load", os.path.join(ROOT, "bench", "load.py"))
load = importlib.util.module_from_spec(_spec)
sys.modules["bench_load"] = load  # its dataclasses look their module up
_spec.loader.exec_module(load)


def _rec(rps: float, p50: int) -> dict:
    return {"rps": rps, "p50_us": p50, "p99_us": p50 * 2, "errors": {}, "bytes_per_s": 0.0}


def test_median_round_is_kept_and_ratios_are_taken_round_by_round():
    rounds = [
        {"direct": {"s": _rec(100.0, 10)}, "gw": {"s": _rec(40.0, 30)}},
        {"direct": {"s": _rec(60.0, 11)}, "gw": {"s": _rec(30.0, 31)}},
        {"direct": {"s": _rec(80.0, 12)}, "gw": {"s": _rec(48.0, 32)}},
    ]
    out = load.combine_rounds(rounds)
    d, g = out["direct"]["s"], out["gw"]["s"]
    assert d["rps"] == 80.0 and d["p50_us"] == 12  # the median round, whole
    assert g["rps"] == 40.0 and g["p50_us"] == 30
    assert d["rps_rounds"] == [100.0, 60.0, 80.0]
    # Per round: 0.40, 0.50, 0.60.  The range exists only as per-round ratios.
    assert load._ratio_rounds(g, d) == [0.4, 0.5, 0.6]
    assert load._ratio(g, d) == 0.5
    assert load._ratio_cell(g, d) == "0.50 (0.40–0.60)"


def test_even_number_of_rounds_averages_the_middle_ratios():
    rounds = [{"direct": {"s": _rec(100.0, 1)}, "gw": {"s": _rec(r, 1)}} for r in (40.0, 50.0, 60.0, 70.0)]
    out = load.combine_rounds(rounds)
    assert abs(load._ratio(out["gw"]["s"], out["direct"]["s"]) - 0.55) < 1e-9


def test_one_round_is_the_plain_ratio_and_a_failed_round_fails_the_row():
    one = load.combine_rounds([{"direct": {"s": _rec(100.0, 1)}, "gw": {"s": _rec(45.0, 1)}}])
    assert "rps_rounds" not in one["gw"]["s"]
    assert load._ratio_cell(one["gw"]["s"], one["direct"]["s"]) == "0.45"
    failed = load.combine_rounds([
        {"direct": {"s": _rec(100.0, 1)}, "gw": {"s": _rec(45.0, 1)}},
        {"direct": {"s": _rec(100.0, 1)}, "gw": {"s": {"error": "gateway died"}}},
    ])  # fmt: skip
    assert failed["gw"]["s"] == {"error": "gateway died"}
    # A variant missing from a later round (it failed to start) is a failure too.
    missing = load.combine_rounds([
        {"direct": {"s": _rec(100.0, 1)}, "gw": {"s": _rec(45.0, 1)}},
        {"direct": {"s": _rec(100.0, 1)}},
    ])  # fmt: skip
    assert not load._ok(missing["gw"]["s"])
