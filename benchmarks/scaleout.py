"""Trials per minute with 1, 2 and 4 worker processes sharing one study, measured in one run.

The replay example (ARC-Challenge, 11 recorded models; its train table, so a trial scores 408
dev questions) is searched with the grid sampler (each configuration once, 11 trials) by N
``stagewise worker`` processes started together on one shared storage: PostgreSQL when
``STAGEWISE_TEST_POSTGRES_URL`` is set (as ``make test`` sets it), else a journal file. Each
worker logs to its own MLflow SQLite file (SQLite serializes writers; a real deployment uses an
MLflow server). Throughput is counted from the trials' own start and end times in the storage
(process start-up is not a trial). On 2 cores, 2 workers should
give at least 1.6 times the single worker's rate.

    python benchmarks/scaleout.py [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna
from results import Results
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
ARC = ROOT / "examples" / "arc_routing"
STAGEWISE = str(Path(sys.executable).with_name("stagewise"))
GRID = 11


def storage_url(scratch: Path, label: str) -> str:
    base = os.environ.get("STAGEWISE_TEST_POSTGRES_URL")
    if not base:
        return f"journal://{scratch / f'{label}.journal'}"
    import psycopg

    name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return base.rsplit("/", 1)[0] + "/" + name


def create_study(config: Path, url: str, folder: Path) -> None:
    """The study, as ``stagewise optimize`` creates it (its config signature and trial budget)."""
    sys.path.insert(0, str(folder))
    from stagewise.data import split
    from stagewise.optimize import Study, load_config

    cfg = load_config(config, study="bench")
    cfg.settings.storage = url
    splits = split(cfg.examples, train=cfg.split["train"], dev=cfg.split["dev"], test=cfg.split["test"],
                   seed=cfg.split["seed"])
    Study(cfg.build, splits, cfg.space, cfg.end_to_end, settings=cfg.settings, out_dir=folder / "out",
          data_fingerprint=cfg.data_fingerprint, lm_options=cfg.lm_options).open()


def measure(workers: int, scratch: Path) -> tuple[float, int, float]:
    from stagewise.optimize.storage import open_storage

    folder = scratch / f"w{workers}"
    folder.mkdir()
    config = folder / "study.toml"
    config.write_text((ARC / "study.toml").read_text()
                      .replace("trials = 16", f'trials = {GRID}\nsampler = "grid"')
                      .replace('outcomes = "../../data', f'outcomes = "{ROOT}/data')
                      .replace("arc_challenge_test.csv", "arc_challenge_train.csv"))
    (folder / "arc_pipeline.py").write_text((ARC / "arc_pipeline.py").read_text())
    url = storage_url(scratch, f"w{workers}")
    create_study(config, url, folder)
    processes = []
    for number in range(workers):  # all start together; each pulls trials until the budget is spent
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow-{number}.db",
               "DSPY_CACHEDIR": str(folder / "dspy-cache"), "PYTHONPATH": str(ROOT)}
        processes.append(subprocess.Popen([STAGEWISE, "worker", str(config), "--storage", url, "--study", "bench",
                                           "--out", str(folder / "out")], env=env, cwd=folder,
                                          stdout=subprocess.DEVNULL, stderr=open(folder / f"worker{number}.log", "w")))
    for process in processes:
        if process.wait(timeout=1800) != 0:
            raise SystemExit((folder / "worker0.log").read_text()[-2000:])
    storage = open_storage(url)
    study = optuna.load_study(study_name="bench", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.datetime_complete]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done) / span * 60, len({t.user_attrs.get("worker") for t in done}), span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="stagewise-scaleout-"))
    results = {}
    for workers in args.workers:
        console.print(f"{workers} worker process(es) ...")
        results[workers] = measure(workers, scratch)
    base = results[args.workers[0]][0]
    storage = "PostgreSQL" if os.environ.get("STAGEWISE_TEST_POSTGRES_URL") else "journal file"
    table = Table(title=f"replay example, {GRID} grid trials, {storage}, {os.cpu_count()} cores")
    for column in ("processes", "trials/min", f"ratio to {args.workers[0]}", "processes that ran trials",
                   "seconds of trials"):
        table.add_column(column, justify="right")
    for workers, (rate, active, span) in results.items():
        table.add_row(str(workers), f"{rate:.1f}", f"{rate / base:.2f}", str(active), f"{span:.1f}")
    console.print(table)
    figures = Results("scaleout", workers=args.workers, storage=storage, grid=GRID, cores=os.cpu_count())
    for workers, (rate, _, _) in results.items():
        figures.figure(f"{workers} worker(s): trials/min", rate)
    if 2 in results and 1 in results:
        console.print(f"2 workers / 1 worker = {results[2][0] / results[1][0]:.2f} (goal >= 1.6 on 2 cores)")
        figures.figure("2 workers / 1 worker", results[2][0] / results[1][0], goal=(">=", 1.6))
    figures.finish()


if __name__ == "__main__":
    main()
