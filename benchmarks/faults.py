"""Faults under load: what `stagewise serve` loses, overspends and lets through when things break.

Every provider here is an OpenAI-compatible stand-in on loopback, each in its own process (this file
run as ``faults.py provider PORT LOG``): it answers at once with fixed token usage and appends the
time of every request it sees to LOG, so the figures are counted where a provider would count them.

1. The primary killed under load: `stagewise serve --fallback answer=backup` in front of two
   providers; ``--clients`` clients send requests for ``--seconds``; halfway the primary's process
   is killed (SIGKILL). Figure: requests not answered 200 (goal 0), and how many the backup answered.
2. Budget overshoot under concurrency: two `stagewise serve` processes sharing Redis (spend kept
   in Redis), one tenant whose daily budget is worth five calls; twenty requests at once, split
   over both. Figure: what the provider billed (its calls at their cost) minus the budget, when
   positive (goal 0).
3. A provider's rate limit: two processes, each calling the provider as fast as it can through
   one `RateLimiter` of ``LIMIT`` requests per ``WINDOW`` seconds shared in Redis. Figure: the most
   requests the provider saw in any window of that length (goal <= the limit).

Writes benchmarks/results/faults.json and exits 1 when a goal is missed. Needs Redis
(``eval "$(bash tests/services.sh)"`` starts one; or set REDIS_URL).

    python benchmarks/faults.py [--clients 8] [--seconds 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS, COMPLETION_TOKENS = 40, 8  # what every stand-in call bills
PRICE_IN, PRICE_OUT = 1.0, 2.0  # USD per million tokens, in the catalog below
COST = (PROMPT_TOKENS * PRICE_IN + COMPLETION_TOKENS * PRICE_OUT) / 1e6
LIMIT, WINDOW = 6, 2.0


def build():
    """The served program (``benchmarks.faults:build``): one stage."""
    from stagewise.programs import Stage

    return Stage("answer", "question -> answer")


# --- the stand-in provider, in its own process ----------------------------------------------------

def provider(port: int, log: Path, name: str) -> None:
    """Serve chat completions on ``port`` until killed, logging each request's arrival time to ``log``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock, open(log, "a") as out:
                out.write(f"{time.time()}\n")
            body = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": name,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": json.dumps({"answer": name})}}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                          "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(url: str, process: subprocess.Popen, log: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{url} did not start" + (f":\n{log.read_text()[-2000:]}" if log else "")) from None
            time.sleep(0.2)


class Lab:
    """Providers, a catalog naming them, the exported program and the servers, in one folder."""

    def __init__(self, folder: Path):
        self.folder, self.processes = folder, []
        self.providers: dict[str, tuple[subprocess.Popen, Path]] = {}

    def provider(self, name: str) -> None:
        port, log = _port(), self.folder / f"{name}.arrivals"
        log.write_text("")
        process = subprocess.Popen([sys.executable, __file__, "provider", str(port), str(log), name])
        self.processes.append(process)
        self.providers[name] = (process, log)
        _wait(f"http://127.0.0.1:{port}/", process)
        with open(self.folder / "models.toml", "a") as catalog:
            catalog.write(f'\n[models.{name}]\nprovider = "{name}"\nengine = "litellm"\nmodel = "openai/{name}"\n'
                          f'api_base = "http://127.0.0.1:{port}/v1"\ninput_price = {PRICE_IN}\n'
                          f'output_price = {PRICE_OUT}\ncontext_window = 4096\nmax_output = 16\n'
                          'tokenizer = "cl100k_base"\n')

    def arrivals(self, name: str) -> list[float]:
        return sorted(float(line) for line in self.providers[name][1].read_text().split())

    def export(self, model: str) -> Path:
        from stagewise.models import ModelCatalog, get_lm
        from stagewise.optimize import export

        program = build()
        program.set_models({"answer": get_lm(model, catalog=ModelCatalog.load(self.folder / "models.toml"),
                                             cache=False, max_tokens=16)})
        return export(program, self.folder / "best", factory="benchmarks.faults:build", factory_path=str(ROOT))

    def serve(self, *options: str) -> str:
        port, log = _port(), self.folder / f"serve-{len(self.processes)}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STAGEWISE_CATALOG": str(self.folder / "models.toml"),
               "OPENAI_API_KEY": "stand-in", "STAGEWISE_SERVE_TOKEN": "faults-token-1234"}
        command = [str(Path(sys.executable).with_name("stagewise")), "serve", str(self.folder / "best"),
                   "--port", str(port), "--trust-code", *options]
        process = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        _wait(f"http://127.0.0.1:{port}/healthz", process, log)
        return f"http://127.0.0.1:{port}"

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


AUTH = {"Authorization": "Bearer faults-token-1234"}


def primary_killed(clients: int, seconds: float) -> dict:
    import httpx

    lab = Lab(Path(tempfile.mkdtemp(prefix="stagewise-faults-")))
    try:
        lab.provider("primary")
        lab.provider("backup")
        lab.export("primary")
        base = lab.serve("--fallback", "answer=backup", "--rate", "1000000")
        stop_at = time.monotonic() + seconds
        answers: list[tuple[int, str]] = []
        lock = threading.Lock()

        def client(number: int) -> None:
            with httpx.Client(timeout=60) as http:
                sent = 0
                while time.monotonic() < stop_at:
                    response = http.post(f"{base}/v1/run", json={"question": f"client {number} request {sent}"},
                                         headers=AUTH)
                    sent += 1
                    answer = response.json().get("outputs", {}).get("answer") if response.status_code == 200 else ""
                    with lock:
                        answers.append((response.status_code, answer))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(seconds / 2)
        killed_after = len(answers)
        os.kill(lab.providers["primary"][0].pid, signal.SIGKILL)
        for thread in threads:
            thread.join()
    finally:
        lab.close()
    lost = sum(1 for code, _ in answers if code != 200)
    by = {name: sum(1 for code, answer in answers if code == 200 and answer == name) for name in ("primary", "backup")}
    return {"requests": len(answers), "lost": lost, "answered_by_primary": by["primary"],
            "answered_by_backup": by["backup"], "requests_before_the_kill": killed_after}


def budget_overshoot(redis_url: str) -> dict:
    import httpx

    lab = Lab(Path(tempfile.mkdtemp(prefix="stagewise-faults-")))
    try:
        lab.provider("billing")
        lab.export("billing")
        tenant = f"t{time.time_ns()}"
        budget = 5 * COST  # five calls at what the provider bills (the server reserves each call's worst case)
        tokens = lab.folder / "tokens.toml"
        tokens.write_text(f'[tenants.{tenant}]\ntoken = "faults-token-{tenant}"\ndaily_budget_usd = {budget!r}\n'
                          "rate = 100000\n")
        servers = [lab.serve("--tokens", str(tokens), "--redis", redis_url) for _ in range(2)]
        auth = {"Authorization": f"Bearer faults-token-{tenant}"}
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda i: httpx.post(f"{servers[i % 2]}/v1/run", json={"question": f"q{i}"},
                                                       headers=auth, timeout=60).status_code, range(20)))
        billed = len(lab.arrivals("billing")) * COST
    finally:
        lab.close()
    return {"requests": 20, "answered": codes.count(200), "refused_402": codes.count(402),
            "other": len(codes) - codes.count(200) - codes.count(402), "budget_usd": budget, "billed_usd": billed,
            "overshoot_usd": max(0.0, billed - budget)}


LIMITED = """
import sys, dspy
import stagewise
from stagewise.models import ModelCatalog, get_lm
from stagewise.programs import Stage, guarding
from stagewise.runtime import Limit, RateLimiter, Resilience
limiter = RateLimiter({{"limited": Limit(requests={limit})}}, window_s={window}, redis_url=sys.argv[2])
stage = Stage("s", "question -> answer", lm=get_lm("limited", catalog=ModelCatalog.load(sys.argv[1]), cache=False))
with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(limiter=limiter)):
    for i in range({calls}):
        stage(question=f"{{sys.argv[3]}}-{{i}}")
"""


def rate_limit(redis_url: str, calls: int) -> dict:
    import redis

    redis.Redis.from_url(redis_url).delete("stagewise:ratelimit:limited")
    lab = Lab(Path(tempfile.mkdtemp(prefix="stagewise-faults-")))
    try:
        lab.provider("limited")
        script = LIMITED.format(limit=LIMIT, window=WINDOW, calls=calls)
        env = {**os.environ, "OPENAI_API_KEY": "stand-in"}
        callers = [subprocess.Popen([sys.executable, "-c", script, str(lab.folder / "models.toml"), redis_url,
                                     f"p{n}"], env=env, cwd=ROOT) for n in range(2)]
        failed = [c.wait(timeout=600) for c in callers]
        arrivals = lab.arrivals("limited")
    finally:
        lab.close()
    busiest = max((sum(1 for t in arrivals if start <= t < start + WINDOW) for start in arrivals), default=0)
    return {"calls": len(arrivals), "callers_failed": sum(1 for code in failed if code), "limit": LIMIT,
            "window_s": WINDOW, "most_in_any_window": busiest}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "provider":
        provider(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=15, help="calls per rate-limited process")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import Results
    from rich.console import Console
    from rich.table import Table

    redis_url = os.environ.get("STAGEWISE_TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if not redis_url:
        raise SystemExit("faults.py needs Redis: eval \"$(bash tests/services.sh)\" starts one "
                         "(STAGEWISE_TEST_REDIS_URL), or set REDIS_URL")
    results = Results("faults", clients=args.clients, seconds=args.seconds, limit=LIMIT, window_s=WINDOW)
    killed = primary_killed(args.clients, args.seconds)
    spent = budget_overshoot(redis_url)
    limited = rate_limit(redis_url, args.calls)
    results.figure("lost_with_primary_killed", killed["lost"], ("<=", 0),
                   note=f"of {killed['requests']}; backup answered {killed['answered_by_backup']}")
    results.figure("answered_by_backup", killed["answered_by_backup"], (">=", 1),
                   note="the fallback did take over after the kill")
    results.figure("budget_overshoot_usd", spent["overshoot_usd"], ("<=", 0.0),
                   note=f"billed ${spent['billed_usd']:.8f} of ${spent['budget_usd']:.8f}; "
                        f"{spent['answered']} answered")
    results.figure("rate_limit_most_in_window", limited["most_in_any_window"], ("<=", LIMIT),
                   note=f"{limited['calls']} calls, limit {LIMIT} per {WINDOW} s")
    table = Table(title="stagewise serve under faults (providers: stand-ins on loopback, each its own process)")
    for column in ("fault", "figure", "goal", "detail"):
        table.add_column(column)
    table.add_row("primary killed under load", f"{killed['lost']} lost", "0",
                  f"{killed['requests']} requests, {killed['answered_by_primary']} by the primary, "
                  f"{killed['answered_by_backup']} by the backup")
    table.add_row("20 concurrent requests, 2 servers", f"${spent['overshoot_usd']:.8f} over", "$0",
                  f"budget worth 5 calls: {spent['answered']} answered, {spent['refused_402']} refused (402), "
                  f"{spent['other']} other")
    table.add_row("provider rate limit, 2 processes", f"{limited['most_in_any_window']} in a window",
                  f"<= {LIMIT}", f"{limited['calls']} calls, window {WINDOW} s")
    Console().print(table)
    results.finish()


if __name__ == "__main__":
    main()
