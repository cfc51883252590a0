"""benchmarks/joint_vs_alternatives.py --quick: the four strategies on both pipelines, their figures recomputed.

The benchmark may miss its goal ((d)'s test hypervolume >= each of (a)-(c)'s) and exit 1: then its JSON
must say which goal and why. Any other exit, a missing strategy or pipeline, a hypervolume that does not
follow from the test points it reports, a budget not matched, or (b) differing from (a) on recorded
models (whose answers do not depend on demos) fails the test.
"""

import json
import subprocess
import sys
import time

import pytest

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "joint_vs_alternatives.py"
PIPELINES = ("homework", "math_intake")
STRATEGIES = {"a": "(a) one model everywhere", "b": "(b) DSPy alone", "c": "(c) model selection alone",
              "d": "(d) stagewise joint"}


def _hypervolume(points, ref_cost):
    """Recomputed independently: the area of the union of the boxes [cost, ref_cost] x [0, quality]."""
    points = [(q, c) for q, c in points if c < ref_cost and q > 0]
    cuts = sorted({c for _, c in points} | {ref_cost})
    area = 0.0
    for left, right in zip(cuts, cuts[1:]):
        height = max((q for q, c in points if c <= left), default=0.0)
        area += (right - left) * height
    return area / ref_cost


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    started = time.time()
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--results", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    return run, out, started, time.time() - started


@pytest.mark.local_model
def test_quick_run_prints_the_four_strategy_table_for_each_pipeline(quick_run):
    run, _, _, _ = quick_run
    assert run.returncode in (0, 1), f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr
    for title in ("homework (recorded API models", "math intake (local models"):
        assert run.stdout.count(title) >= 2, title  # the run header and the table's title
    for column in ("best test quality", "hypervolume", "selection calls", "$ / 1k at >= 95%"):
        assert column in run.stdout
    for name in STRATEGIES.values():
        assert run.stdout.count(name) >= 2 * len(PIPELINES), name  # a row per pipeline, in both tables


@pytest.mark.local_model
def test_quick_run_writes_every_strategys_figures_and_they_follow_from_its_test_points(quick_run):
    run, out, started, _ = quick_run
    result = json.loads((out / "joint_vs_alternatives.json").read_text())
    assert result["benchmark"] == "joint_vs_alternatives" and result["context"]["quick"] is True
    assert result["context"]["pipelines"] == list(PIPELINES)
    assert (out / "joint_vs_alternatives.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = result["figures"]
    for pipeline in PIPELINES:
        rows = figures[f"{pipeline}: strategies"]["value"]
        setup = figures[f"{pipeline}: setup"]["value"]
        assert set(rows) == set(STRATEGIES)
        budget, ref_cost = setup["budget_calls"], setup["reference_cost_per_1k"]
        every_cost = [p["test_cost_per_1k"] for row in rows.values() for p in row["test_front"]]
        assert ref_cost == pytest.approx(1.1 * max(every_cost))  # one reference point for the four
        best = max(p["test_quality"] for row in rows.values() for p in row["test_front"])
        for key, row in rows.items():
            assert row["strategy"] == STRATEGIES[key]
            points = [(p["test_quality"], p["test_cost_per_1k"]) for p in row["test_front"]]
            assert points and all(0 <= q <= 1 and c >= 0 for q, c in points)
            assert row["hypervolume"] == pytest.approx(_hypervolume(points, ref_cost), abs=1e-6)
            assert row["best_test_quality"] == pytest.approx(max(q for q, _ in points), abs=1e-6)
            reaching = [c for q, c in points if q >= 0.95 * best - 1e-12]
            assert row["cost_per_1k_at_95pct_of_best"] == (pytest.approx(min(reaching)) if reaching else None)
            assert row["selection_calls"] > 0 and row["test_calls"] > 0
            assert row["selection_requests"] >= row["selection_calls"]
        # the budget: (b)'s grid sets it, (c) and (d) spend it unless their space ran out, (a) is part of (b)
        assert rows["b"]["selection_calls"] == budget
        assert rows["a"]["selection_calls"] <= budget
        for key in ("c", "d"):
            assert rows[key]["selection_calls"] >= budget or rows[key]["space_exhausted"], (pipeline, key, rows[key])
        # the goals: (d) against each of (a)-(c), as the figures say
        for key in ("a", "b", "c"):
            goal = figures[f"{pipeline}: hypervolume (d) - ({key})"]
            assert goal["value"] == pytest.approx(rows["d"]["hypervolume"] - rows[key]["hypervolume"], abs=2e-6)
            assert goal["goal"] == ">= 0.0" and goal["met"] == (goal["value"] >= 0)
            if not goal["met"]:
                assert "missed: " in goal["note"] and len(goal["note"].split("missed: ")[1]) > 20
    missed = [k for k, f in figures.items() if f.get("met") is False]
    assert result["goals_met"] == (not missed)
    assert run.returncode == (1 if missed else 0)
    if missed:
        assert f"goal missed: {', '.join(missed)}" in run.stdout and "goal missed on" in run.stdout


@pytest.mark.local_model
def test_on_recorded_models_demos_change_nothing_so_dspy_alone_equals_one_model_everywhere(quick_run):
    _, out, _, _ = quick_run
    rows = json.loads((out / "joint_vs_alternatives.json").read_text())["figures"]["homework: strategies"]["value"]
    one_model = {p["config"]: (p["test_quality"], p["test_cost_per_1k"]) for p in rows["a"]["test_front"]}
    for point in rows["b"]["test_front"]:
        model = point["config"].split(" everywhere")[0] + " everywhere"
        assert (point["test_quality"], point["test_cost_per_1k"]) == pytest.approx(one_model[model])
