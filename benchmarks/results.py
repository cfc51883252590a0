"""Where every benchmark records what it measured: ``benchmarks/results/NAME.json``.

Each script builds a :class:`Results`, adds its figures with :meth:`Results.figure` (a value,
optionally a goal such as ``("<=", 1.05)``), and ends with :meth:`Results.finish`, which writes
the JSON and exits non-zero when any goal was missed. ``python benchmarks/results.py`` prints one
table of every result file (``make bench`` ends with it) and exits non-zero when any goal of any
of them was missed or a result is missing.

    {"benchmark": "fanout", "written": "2026-11-29T18:00:00+00:00", "goals_met": true,
     "figures": {"fanout_over_slowest": {"value": 1.02, "goal": "<= 1.2", "met": true}, ...}}
"""

from __future__ import annotations

import datetime as _dt
import json
import operator
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("engine_overhead", "fanout", "optimize_rerun", "routing", "checkpoint_overhead", "serve_load",
              "scaleout", "joint_vs_alternatives", "faults")
_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


class Results:
    """The figures of one benchmark run and whether each met its goal."""

    def __init__(self, name: str, **context) -> None:
        self.name = name
        self.context = context
        self.figures: dict[str, dict] = {}

    def figure(self, key: str, value, goal: tuple[str, float] | None = None, note: str = "") -> bool:
        """Record ``value`` under ``key``; with a goal (``(">=", 0.7)``), whether it was met."""
        entry: dict = {"value": value}
        if goal is not None:
            op, target = goal
            entry["goal"] = f"{op} {target}"
            entry["met"] = bool(value is not None and _COMPARE[op](value, target))
        if note:
            entry["note"] = note
        self.figures[key] = entry
        return entry.get("met", True)

    @property
    def goals_met(self) -> bool:
        return all(f.get("met", True) for f in self.figures.values())

    def write(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps({
            "benchmark": self.name, "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "context": self.context, "goals_met": self.goals_met, "figures": self.figures,
        }, indent=2, default=str) + "\n")
        return path

    def finish(self) -> None:
        """Write the JSON, say where, and exit 1 if a goal was missed."""
        path = self.write()
        missed = [key for key, f in self.figures.items() if not f.get("met", True)]
        print(f"wrote {path}" + (f"; goal missed: {', '.join(missed)}" if missed else "; every goal met"))
        if missed:
            sys.exit(1)


def summary(names: tuple[str, ...] = BENCHMARKS) -> bool:
    """Print one table of every benchmark's goals; False when one is missing or missed a goal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"benchmarks ({RESULTS})")
    for column in ("benchmark", "figure", "value", "goal", "met", "written"):
        table.add_column(column)
    ok = True
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            table.add_row(name, "-", "-", "-", "[red]no result[/red]", "-")
            ok = False
            continue
        result = json.loads(path.read_text())
        for key, f in result["figures"].items():
            if "goal" not in f:
                continue
            met = f["met"]
            ok &= met
            value = f["value"]
            table.add_row(name, key, f"{value:.4g}" if isinstance(value, float) else str(value), f["goal"],
                          "[green]yes[/green]" if met else "[red]NO[/red]", result["written"])
    Console(width=160).print(table)
    return ok


if __name__ == "__main__":
    sys.exit(0 if summary() else 1)
