"""Load on `stagewise serve`: concurrent requests for a bounded time against an exported program.

The program is one stage on SmolLM2 (local llama.cpp, DSPy's cache off so every request runs the
model), exported and served by ``stagewise serve`` on loopback. One client, then ``--clients``
threads, post requests for half of ``--seconds`` each. Prints throughput, p50/p99 latency seen by
the clients, and the serving overhead: client latency minus the model time the server reports
for the same request, over that model time (HTTP, validation and the program's bookkeeping; with
several clients, also the queueing for the one local model).

Recording served traffic, side by side: a second server of the same export with ``--runs off``;
``--recorded`` requests alternate between the two (one at a time, the same messages), and the
recording overhead is the difference of their median (latency - model time), over the median
model time. Goal: <= 5 % (the checkpoint benchmark's goal, measured through serve).

    python benchmarks/serve_load.py [--clients 4] [--seconds 30] [--recorded 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ["My card has not arrived.", "Why was I charged twice?", "How do I change my PIN?",
            "Is my top-up still pending?", "Can I get a refund for this payment?"]


def build():
    """The served program (``benchmarks.serve_load:build``)."""
    from stagewise.programs import Stage

    return Stage("reply", "message -> reply")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--recorded", type=int, default=20, help="requests to each server in the recording check")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # results.py; the served module must not need it
    from results import Results

    import stagewise  # noqa: F401
    from stagewise.models import get_lm
    from stagewise.optimize import export

    folder = Path(tempfile.mkdtemp(prefix="stagewise-serve-"))
    program = build()
    program.set_models({"reply": get_lm("smollm2-135m", cache=False, max_tokens=32)})
    export(program, folder / "best", factory="benchmarks.serve_load:build", factory_path=str(ROOT))

    def start(*options: str) -> tuple[subprocess.Popen, str]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = folder / f"serve-{port}.log"
        # each server its own empty DSPy cache: the recording check sends both servers the same message,
        # and a shared cache would answer the second one for free
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "DSPY_CACHEDIR": str(folder / f"cache-{port}")}
        server = subprocess.Popen([str(Path(sys.executable).with_name("stagewise")), "serve", str(folder / "best"),
                                   "--port", str(port), "--no-auth", "--trust-code", "--rate", "100000", *options],
                                  env=environment, stdout=subprocess.DEVNULL,
                                  stderr=open(log, "w"))
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                return server, f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise SystemExit(log.read_text()[-2000:]) from None
                time.sleep(0.3)

    server, base = start()  # records every request (runs.db next to the program), as serve does by default
    def phase(clients: int, seconds: float) -> dict:
        latencies, model_times, failures = [], [], []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client(number: int) -> None:
            with httpx.Client(timeout=120) as http:
                i = number
                while time.monotonic() < stop_at:
                    start = time.perf_counter()
                    message = f"{MESSAGES[i % len(MESSAGES)]} (ticket {clients}-{i})"  # distinct: no cache hits
                    response = http.post(f"{base}/v1/run", json={"message": message})
                    elapsed = time.perf_counter() - start
                    with lock:
                        if response.status_code == 200:
                            latencies.append(elapsed)
                            model_times.append(response.json()["model_time_s"])
                        else:
                            failures.append(response.status_code)
                    i += clients

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ordered = sorted(latencies)
        return {"clients": clients, "ok": len(latencies), "failed": len(failures),
                "throughput": len(latencies) / (time.monotonic() - started),
                "p50": statistics.median(ordered), "p99": ordered[int(round(0.99 * (len(ordered) - 1)))],
                "overhead": (statistics.mean(latencies) - statistics.mean(model_times)) / statistics.mean(model_times)}

    def recording_overhead(unrecorded: str) -> dict:
        """Alternate requests between the recording server and ``unrecorded``; medians of each."""
        extra = {base: [], unrecorded: []}
        model_times = []
        with httpx.Client(timeout=120) as http:
            for i in range(args.recorded):
                message = f"{MESSAGES[i % len(MESSAGES)]} (recorded check {i})"
                for target in ((base, unrecorded) if i % 2 else (unrecorded, base)):
                    start_ = time.perf_counter()
                    body = http.post(f"{target}/v1/run", json={"message": message}).json()
                    extra[target].append(time.perf_counter() - start_ - body["model_time_s"])
                    model_times.append(body["model_time_s"])
        model = statistics.median(model_times)
        recorded, unrecorded_ = statistics.median(extra[base]), statistics.median(extra[unrecorded])
        return {"recorded_extra_s": recorded, "unrecorded_extra_s": unrecorded_, "model_s": model,
                "overhead": (recorded - unrecorded_) / model}

    plain = None
    try:
        httpx.post(f"{base}/v1/run", json={"message": "warm-up"}, timeout=120)  # loads the model once
        results = [phase(1, args.seconds / 2), phase(args.clients, args.seconds / 2)]
        plain, plain_base = start("--runs", "off")
        httpx.post(f"{plain_base}/v1/run", json={"message": "warm-up"}, timeout=120)
        recording = recording_overhead(plain_base)
    finally:
        for process in (server, plain):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    table = Table(title=f"stagewise serve on loopback, SmolLM2, {args.seconds / 2:.0f} s per row")
    for column in ("clients", "ok / failed", "requests/s", "p50 s", "p99 s", "(latency - model time) / model time"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r["clients"]), f"{r['ok']} / {r['failed']}", f"{r['throughput']:.2f}", f"{r['p50']:.2f}",
                      f"{r['p99']:.2f}", f"{r['overhead']:.1%}")
    Console().print(table)
    print(f"serving overhead over the model time (1 client): {results[0]['overhead']:.1%} (goal <= 5%); with "
          f"{args.clients} clients the requests queue for the one local model")
    figures = Results("serve_load", clients=args.clients, seconds=args.seconds)
    figures.figure("requests failed", sum(r["failed"] for r in results), goal=("<=", 0))
    figures.figure("(latency - model time) / model time, 1 client", results[0]["overhead"], goal=("<=", 0.05))
    figures.figure(f"requests/s with {args.clients} clients / 1 client",
                   results[1]["throughput"] / results[0]["throughput"])
    print(f"recording served runs (SQLite next to the program): median extra time "
          f"{1000 * recording['recorded_extra_s']:.1f} ms against {1000 * recording['unrecorded_extra_s']:.1f} ms "
          f"with --runs off, over a median model time of {recording['model_s']:.2f} s: {recording['overhead']:.2%} "
          "(goal <= 5%)")
    figures.figure("recording overhead / model time (--runs sqlite vs off)", recording["overhead"], goal=("<=", 0.05))
    figures.finish()


if __name__ == "__main__":
    main()
