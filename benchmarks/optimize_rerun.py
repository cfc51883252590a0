"""A rerun of the same study with warm caches, against the first run, side by side.

Runs ``stagewise optimize`` twice on a small Banking77 study on the local models, in fresh
processes, with a fresh DSPy response cache and output directory: the first run compiles
every stage and calls the models; the rerun (same config and seed, a new study name so every
trial is evaluated again) finds the compiled stages in ``OUT/compiled`` and the model answers
in DSPy's cache. Prints both times and their ratio (goal <= 0.20).

    python benchmarks/optimize_rerun.py [--trials 2] [--limit 40]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import Results

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--limit", type=int, default=40, help="rows of the Banking77 subset to use")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="stagewise-rerun-"))
    config = scratch / "study.toml"
    source = (ROOT / "examples" / "banking" / "study.toml").read_text()
    data = (ROOT / "examples" / "banking" / "banking77_subset.csv").resolve()
    source = re.sub(r"^\[baseline\]\n(?:[^\[\n][^\n]*\n)*", "", source, flags=re.M)  # time the search alone
    config.write_text(source.replace('path = "banking77_subset.csv"', f'path = "{data}"\nlimit = {args.limit}'))
    env = {**os.environ, "DSPY_CACHEDIR": str(scratch / "dspy-cache"), "PYTHONPATH": str(ROOT / "examples" / "banking"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    times = {}
    for label, study in (("first run (cold caches)", "rerun-a"), ("rerun (warm caches)", "rerun-b")):
        command = [sys.executable, "-m", "stagewise.cli", "optimize", str(config), "--trials", str(args.trials),
                   "--out", str(scratch / "out"), "--study", study]
        print(f"{label}: {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=scratch, env=env, check=True, stdout=subprocess.DEVNULL)
        times[label] = time.perf_counter() - start
        print(f"  {times[label]:.1f} s", flush=True)
    first, rerun = times.values()
    print(f"rerun / first run = {rerun / first:.3f} (goal <= 0.20); scratch folder {scratch}")
    results = Results("optimize_rerun", trials=args.trials, limit=args.limit)
    results.figure("first run s", first)
    results.figure("rerun s", rerun)
    results.figure("rerun / first run", rerun / first, goal=("<=", 0.20))
    results.finish()


if __name__ == "__main__":
    main()
