"""Load on `stagewise serve`: concurrent requests for a bounded time against an exported program.

The program is one stage on SmolLM2 (local llama.cpp, DSPy's cache off so every request runs the
model), exported and served by ``stagewise serve`` on loopback. One client, then ``--clients``
threads, post requests for half of ``--seconds`` each. Prints throughput, p50/p99 latency seen by
the clients, and the serving overhead: client latency minus the model time the server reports
for the same request, over that model time (HTTP, validation and the program's bookkeeping; with
several clients, also the queueing for the one local model).

    python benchmarks/serve_load.py [--clients 4] [--seconds 30]
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
from results import Results
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
    args = parser.parse_args()
    import stagewise  # noqa: F401
    from stagewise.models.lm import get_lm
    from stagewise.optimize.export import export

    folder = Path(tempfile.mkdtemp(prefix="stagewise-serve-"))
    program = build()
    program.set_models({"reply": get_lm("smollm2-135m", cache=False, max_tokens=32)})
    export(program, folder / "best", factory="benchmarks.serve_load:build", factory_path=str(ROOT))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("stagewise")), "serve", str(folder / "best"),
                               "--port", str(port), "--no-auth", "--trust-code", "--rate", "100000"],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=open(folder / "serve.log", "w"))
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if server.poll() is not None:
                raise SystemExit((folder / "serve.log").read_text()[-2000:]) from None
            time.sleep(0.3)
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

    try:
        httpx.post(f"{base}/v1/run", json={"message": "warm-up"}, timeout=120)  # loads the model once
        results = [phase(1, args.seconds / 2), phase(args.clients, args.seconds / 2)]
    finally:
        server.terminate()
        server.wait(timeout=30)
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
    figures.finish()


if __name__ == "__main__":
    main()
