"""experiments/stats.py and the roofline check: intervals against known t values, verdicts that
judge both directions alike, diverged runs kept out of every comparison, and a bound that is
never contradicted by what is printed beside it."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from stats import Arm, arm, best_lr, cell, interval, t_cdf, t_quantile, verdict  # noqa: E402

# Two-sided 95% Student t quantiles (t_{0.975, df}) as printed in statistics tables.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], abs=1e-3)
    assert t_cdf(t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def test_t_approaches_the_normal_and_rejects_nonsense():
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)
    assert t_quantile(0.95, 2) == pytest.approx(2.920, abs=1e-3)  # one-sided 95%, df 2
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_interval_of_three_values():
    i = interval([1.0, 2.0, 3.0])  # mean 2, sd 1: half-width t_{.975,2} / sqrt(3)
    half = 4.302653 / math.sqrt(3)
    assert (i.mean, i.n) == (2.0, 3)
    assert i.low == pytest.approx(2 - half, abs=1e-5) and i.high == pytest.approx(
        2 + half, abs=1e-5
    )
    one = interval([5.0])
    assert one.mean == 5.0 and one.low == -math.inf and one.high == math.inf


def record(seed: int, ppl: float | None, status: str = "ok", **extra) -> dict:
    evals = {"valid": {"ppl": ppl}, "test": {"ppl": ppl}} if ppl is not None else None
    return {"seed": seed, "status": status, "eval": evals, "info": {}, **extra}


def test_verdicts_are_the_same_rule_in_both_directions():
    better = Arm("A", {1: 100.0, 2: 110.0, 3: 105.0})
    worse = Arm("B", {1: 120.0, 2: 131.0, 3: 124.0})
    assert verdict(better, worse).endswith(": holds.")
    assert verdict(worse, better).endswith(": the opposite (A < B).")
    # the same gaps, but one seed reversed: its interval includes 0 whichever way it is asked
    noisy = Arm("C", {1: 120.0, 2: 80.0, 3: 124.0})
    assert verdict(better, noisy).endswith(": not separated.")
    assert verdict(noisy, better).endswith(": not separated.")
    # "3/3 seeds better" is not enough when the paired gaps scatter widely
    scattered = Arm("D", {1: 100.5, 2: 150.0, 3: 105.2})
    assert verdict(better, scattered).endswith(": not separated.")


def test_parity_claims_and_single_seeds():
    a, b = Arm("ReLU", {1: 320.0, 2: 330.0, 3: 335.0}), Arm("GTU", {1: 390.0, 2: 410.0, 3: 390.0})
    assert verdict(a, b, parity=True).endswith(": no: ReLU < GTU.")
    same = Arm("GTU", {1: 321.0, 2: 329.0, 3: 336.0})
    assert verdict(a, same, parity=True).endswith("consistent (not separated).")
    assert "one seed" in verdict(Arm("A", {1: 1.0}), Arm("B", {1: 2.0}))


def test_a_diverged_run_is_never_a_number():
    ok = arm("both", [record(s, 450.0 + s) for s in (1, 2, 3)])
    cause = {"update": 7, "cause": "training diverged: 5 updates in a row had a NaN/inf loss"}
    diverged = arm(
        "unclipped",
        [record(1, None, "diverged", diverged=cause)]
        + [record(s, None, "diverged", done={"updates": 0}) for s in (2, 3)],
    )
    assert diverged.values == {} and set(diverged.diverged) == {1, 2, 3}
    assert "after update 7" in diverged.diverged[1] and "NaN/inf" in diverged.diverged[1]
    assert "cause not recorded" in diverged.diverged[2]
    for text in (verdict(ok, diverged), verdict(diverged, ok)):
        assert "not comparable: unclipped diverged in 3/3 seeds" in text
        assert "holds" not in text and "opposite" not in text
    partly = arm("mixed", [record(1, 400.0), record(2, None, "diverged"), record(3, 410.0)])
    assert "diverged in 1/3 seeds" in verdict(ok, partly)
    assert cell([record(1, 400.0), record(2, None, "diverged")]) == "400.0; diverged 1/2"
    assert cell([record(1, None, "diverged")]) == "diverged (1/1)"


def test_the_sweep_choice_ignores_diverged_runs_and_breaks_ties_low():
    def run(lr, ppl, status="ok"):
        return {**record(1, ppl, status), "info": {"lr": lr}}

    assert best_lr([run(0.1, 300.0), run(0.3, 250.0), run(1.0, None, "diverged")]) == 0.3
    assert best_lr([run(0.3, 250.0), run(0.1, 250.0)]) == 0.1
    assert best_lr([run(2.0, None, "diverged")]) == 2.0 and best_lr([]) is None


# --- the roofline: a bound is a bound, or it is flagged ---------------------------------------


@pytest.fixture(scope="module")
def roofline():
    spec = importlib.util.spec_from_file_location(
        "bench_roofline", ROOT / "benchmarks" / "bench_roofline.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_measured_ratio_above_the_ceiling(roofline):
    Row = roofline.Row
    lstm = Row("lstm-2048", "lstm", 0.00711, 0.01463, 0.02645)
    fine = Row("gcnn-8b", "gcnn", 0.0060, None, 0.0132)
    (line,) = roofline.pair_lines([fine, lstm])
    measured = float(line.split("measured ratio ")[1].split("x")[0])
    ceiling = float(line.split("at most ")[1].split("x")[0])
    assert measured <= ceiling
    # an old record: the GCNN measured below its "bound" (peaks underestimated)
    broken = Row("gcnn-8b", "gcnn", 0.01497, None, 0.0132)
    assert not broken.valid and "below its bound" in roofline.of_bound(broken)
    (line,) = roofline.pair_lines([broken, lstm])
    assert "at most" not in line and "no ceiling" in line and "13.20 ms is below" in line


def test_roofline_tables_read_back(roofline):
    text = "\n".join(
        [
            "fp32, 1 thread(s), 30-token sentences; measured peaks: 106 GFLOP/s (large GEMM)",
            "",
            roofline.HEADER,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            "| gcnn-8b | 1.46 | 189 | 13.79 | 4.71 | 14.97 | – | 13.20 | 0.9x |",
            "| lstm-2048 | 0.72 | 70 | 6.83 | 1.75 | 7.11 | 14.63 | 26.45 | 3.7x |",
        ]
    )
    g, lstm = roofline.parse_rows(text)
    assert (g.name, g.family, lstm.family) == ("gcnn-8b", "gcnn", "lstm")
    assert g.bound == pytest.approx(0.01497) and g.measured == pytest.approx(0.0132)
    assert lstm.recurrence == pytest.approx(0.01463) and not g.valid and lstm.valid


def test_the_peak_is_the_best_of_every_shape_measured(roofline, monkeypatch):
    """The bound divides by the highest rate any product reached, the models' own shapes
    included: a shape that outruns the large GEMMs sets the peak. (Timing replaced by a fixed
    second per call, so the rate is the shape's FLOPs.)"""
    import torch

    from gcnn.models import build_model

    monkeypatch.setattr(roofline, "best_seconds", lambda fn, repeats=10: 1.0)
    large = max(2 * m * k * n for m, k, n in roofline.LARGE_GEMMS) / 1e9
    peak, where = roofline.peak_gflops(torch.float32)
    assert peak == pytest.approx(large) and where.startswith("large GEMM")
    own = (1024, 4096, 4096)  # more FLOPs per call than any large GEMM: a faster "rate"
    peak, where = roofline.peak_gflops(torch.float32, [own])
    assert (
        peak == pytest.approx(2 * 1024 * 4096 * 4096 / 1e9)
        and where == "model shape 1024x4096x4096"
    )

    tiny = {"embed_dim": 8, "blocks": [{"layers": [[3, 16]], "repeat": 1}], "cutoffs": [20]}
    shapes = roofline.gemm_shapes(build_model("gcnn-small", 50, **tiny), length=5)
    assert (5, 3 * 16, 2 * 16) in shapes  # the gated convolution over its unfolded windows
    assert (5, 8, 16) in shapes  # the embedding's projection to the first width


def test_the_budget_curve_finds_where_the_default_meets_its_goal():
    # recipe_probes.budget_curve: mean and interval per budget, over whichever seeds ran, and
    # the crossing of the goal with log-perplexity linear in the updates between two budgets
    from recipe_probes import BUDGETS, GOAL, budget_curve

    small, large = sorted(BUDGETS)[:2]

    def runs(name, values):
        names = [name, *(f"{name}-s{seed}" for seed in range(2, 2 + len(values) - 1))]
        return {n: {"test_ppl": v} for n, v in zip(names, values, strict=True)}

    probes = runs(BUDGETS[small], [150.0, 152.0, 148.0]) | runs(BUDGETS[large], [130.0])
    curve = budget_curve(probes)
    first, second = curve["rows"]
    assert (first["updates"], first["seeds"], first["mean"]) == (small, 3, 150.0)
    assert first["low"] < 150.0 < first["high"]
    assert (second["seeds"], second["low"], second["high"]) == (1, None, None)  # one seed
    t = math.log(150 / GOAL) / math.log(150 / 130)
    assert curve["meets_goal_from_updates"] == round(small + t * (large - small))
    # every budget above the goal: no crossing claimed
    assert budget_curve(runs(BUDGETS[small], [141.0]))["meets_goal_from_updates"] is None
