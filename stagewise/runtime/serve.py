"""An HTTP API over an exported program (FastAPI): `stagewise serve DIR`.

- `POST /v1/run`: a JSON object with the program's input fields (no others) -> its outputs,
  a per-stage trace summary (model, tokens, cost, latency) and the request's cost;
- `GET /v1/budget`: the caller's tenant, its spend today and its daily budget;
- `GET /healthz` (no token, no store: it answers while Redis is down); the OpenAPI schema at
  `/openapi.json` (and `/docs`).

Callers are tenants (`stagewise.runtime.tenants`): a bearer token names one, compared in
constant time; `token=None` and no `tenants` serves without authentication (`--no-auth`),
each client address then being its own tenant. Limits: bodies over `max_body` bytes are
refused; each tenant has a request rate (failed authentications are rate limited per client
address); at most `max_concurrency` requests run at once (503 `overloaded` with
`Retry-After`); a request still running after `timeout_s` is answered 504 and makes no
further model call (a call already on its way is abandoned, finished in the background and
charged). Each model call's worst case is reserved against the request's and the tenant's daily
budget before it is made (`stagewise.runtime.budgets`).

Every error is JSON, `{"error": {"code": ..., "message": ...}}`, with a stable code and a
message that never holds a secret or an exception's class name: `invalid_json` (400),
`invalid_request` (422), `body_too_large` (413), `unauthorized` (401), `not_found` (404),
`method_not_allowed` (405), `rate_limited` (429), `budget_exceeded` (402, with the partial
results), `upstream_failed` (503), `overloaded` (503), `store_unavailable` (503: Redis or the
spend store does not answer), `deadline_exceeded` (504), `internal_error` (500).
"""


import asyncio
import contextvars
import functools
import hashlib
import ipaddress
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import dspy
import redis
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import propagate
from pydantic import AfterValidator, ConfigDict, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from stagewise.errors import StagewiseError, StoreError
from stagewise.models.usage import track_usage
from stagewise.programs.plain import observed_call
from stagewise.programs.predictors import stages_of
from stagewise.programs.run import Observer, guarding, observing
from stagewise.redaction import redact, redacted_logger
from stagewise.runtime.budgets import Budget, describe_store, today
from stagewise.runtime.checkpoint import CheckpointStore, open_checkpoints
from stagewise.runtime.costs import CostMonitor
from stagewise.runtime.privacy import PrivacyPolicy, protecting
from stagewise.runtime.resilience import (
    BudgetExceeded,
    DeadlineExceeded,
    Limit,
    RateLimited,
    RateLimiter,
    Resilience,
    StageFailed,
    deadline_scope,
    tenant_scope,
)
from stagewise.runtime.runs import Checkpointer, jsonable, origin_of
from stagewise.runtime.stage_cache import StageCache
from stagewise.runtime.store import ContextRecorder, ContextStore, open_context_store
from stagewise.runtime.tenants import Tenant, match_token

__all__ = ["ApiError", "create_app", "exposure_warning"]

# The serve logger quotes endpoints and providers' messages: redacted however the app is made.
log = redacted_logger(__name__)
for _name in ("stagewise.runtime.resilience", "stagewise.runtime.costs", "stagewise.runtime.budgets"):
    redacted_logger(_name)

STORE_ERRORS = (StoreError, redis.RedisError)


class ApiError(StagewiseError):
    """An HTTP error answer: status, stable code and message (JSON), raised inside a request."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": redact(message), **extra}}, status_code=status,
                        headers=headers)


def exposure_warning(host: str, authenticated: bool) -> str | None:
    """A warning when a server without authentication binds an address beyond loopback, else None."""
    if authenticated:
        return None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"serving without authentication on {host}: anyone who can reach this address can run the program "
            "and spend its budget (--no-auth is meant for 127.0.0.1)")


def _valid_unicode(text: str) -> str:
    if any("\ud800" <= c <= "\udfff" for c in text):  # JSON's "\ud800" escape: no provider can receive it
        raise ValueError("the text holds a lone surrogate (U+D800-U+DFFF), which is not valid Unicode")
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _stages_used(prediction, ledger) -> list[dict]:
    """Per stage: model, tokens, cost, latency (and notes).

    They come from a stagewise program's trace, else from the usage records of the request (a plain
    DSPy program: its predictors' calls, by stage name).
    """
    trace = getattr(prediction, "trace", None)
    if trace is not None:
        return [{"stage": s.stage, "model": s.model, "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                 "cost_usd": s.cost_usd, "latency_s": s.latency_s, "notes": list(s.notes)} for s in trace.stages]
    used: dict[str, dict] = {}
    for r in ledger.records:
        entry = used.setdefault(r.stage or "(no stage)", {"stage": r.stage or "(no stage)", "model": r.model,
                                                          "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
                                                          "latency_s": 0.0, "notes": []})
        entry["input_tokens"] += r.input_tokens
        entry["output_tokens"] += r.output_tokens
        entry["cost_usd"] += r.cost_usd or 0.0
        entry["latency_s"] += r.latency_s
    return list(used.values())


def create_app(directory: str | Path, *, token: str | None = None, tenants: list[Tenant] | None = None,
               max_body: int = 64 * 1024, requests_per_minute: int = 60, resilience: Resilience | None = None,
               monitor: CostMonitor | None = None, redis_url: str | None = None, factory=None,
               trust_code: bool = False, timeout_s: float | None = None, max_concurrency: int | None = None,
               auth_failures_per_minute: int = 10, runs: str | CheckpointStore | None = None,
               tracer: Observer | None = None, privacy: PrivacyPolicy | None = None,
               context_store: str | ContextStore | None = None) -> FastAPI:
    """The app serving the exported program in `directory` (see the module for its endpoints and limits).

    `token` (one tenant, named by its hashed credential) and `tenants` (from a tokens file) are
    the accepted bearer tokens; neither: no authentication, each client address its own tenant.
    A tenant's `daily_budget_usd` is added to `resilience.budget` (a [`Budget`][stagewise.runtime.Budget] in process
    memory is made when there is none). `redis_url` shares the rate limits among every server
    process using it. `timeout_s`: each request's deadline; `max_concurrency`: requests running
    at once (each in its own worker thread, held until its last model call has returned). The
    program is loaded with [`stagewise.load`][stagewise.load] (`factory` and `trust_code` as there).

    `runs` (a checkpoint store or its URL) records every request as a run, checkpointed after
    every stage; its id comes back in the `X-Stagewise-Run` header and the body's `run_id`, so
    `stagewise diff`, `replay` and `runs show` find it. `tracer` (a
    [`Tracer`][stagewise.runtime.tracing.Tracer]) exports each request's spans, as children of the
    caller's trace when the request carries a W3C `traceparent` header. `context_store` (a
    context store or its URL) mirrors every section a request's stages add. `privacy` (a
    [`PrivacyPolicy`][stagewise.runtime.privacy.PrivacyPolicy]) redacts what is kept of each request: the
    run, the context store, spans and log records; the program and the caller see the original text.
    """
    from stagewise.errors import ConfigError
    from stagewise.optimize.export import input_fields, load, read_manifest

    for name, value in [("timeout_s (--timeout)", timeout_s), ("max_concurrency (--max-concurrency)", max_concurrency),
                        ("requests_per_minute (--rate)", requests_per_minute),
                        ("auth_failures_per_minute", auth_failures_per_minute), ("max_body (--max-body)", max_body)]:
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise ConfigError(f"serve {name} must be > 0, got {value!r}")
    directory = Path(directory)
    manifest = read_manifest(directory)
    program = load(directory, factory=factory, trust_code=trust_code)
    store = open_checkpoints(runs) if isinstance(runs, str) else runs
    mirror = open_context_store(context_store) if isinstance(context_store, str) else context_store
    origin = origin_of(program)
    fields = input_fields(program, manifest)
    Inputs = create_model("RunRequest", __config__=ConfigDict(extra="forbid"),  # noqa: N806
                          **{name: (Text, ...) for name in fields})
    resilience = resilience or Resilience()
    accepted = list(tenants or []) + ([Tenant(_hashed(f"Bearer {token}"), token)] if token else [])
    authenticated = bool(accepted)
    budgets = {t.name: t.daily_budget_usd for t in accepted if t.daily_budget_usd is not None}
    if budgets:
        if resilience.budget is None:
            resilience.budget = Budget()
            log.warning("tenant budgets are kept in process memory: a restart forgets what was spent")
        for name, value in budgets.items():
            resilience.budget.tenant_day_usd.setdefault(name, value)
    monitor = monitor or CostMonitor(manifest.get("factory", "program"))
    cache = StageCache()
    limiter = RateLimiter({"*": Limit(requests=requests_per_minute),
                           **{f"serve:{t.name}": Limit(requests=t.rate) for t in accepted if t.rate}},
                          policy="shed", redis_url=redis_url)
    failures = RateLimiter({"*": Limit(requests=auth_failures_per_minute)}, policy="shed", redis_url=redis_url)
    retry_after = {"Retry-After": str(math.ceil(limiter.window_s))}
    workers = ThreadPoolExecutor(max_workers=max_concurrency or 32, thread_name_prefix="stagewise-request")
    running = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
    adapter = dspy.JSONAdapter()

    app = FastAPI(title="stagewise program", version=manifest.get("format", "1"),
                  description=f"The exported program {manifest.get('factory')} ({', '.join(stages_of(program))})")
    app.state.program, app.state.monitor, app.state.cache = program, monitor, cache
    app.state.resilience, app.state.limiter, app.state.runs = resilience, limiter, store

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > max_body):
                return _error(413, "body_too_large", f"the body is over {max_body} bytes")
            body = b""
            async for chunk in request.stream():  # a chunked body has no length: count as it arrives
                body += chunk
                if len(body) > max_body:
                    return _error(413, "body_too_large", f"the body is over {max_body} bytes")
            request._body = body  # Starlette's cache of the body, for the endpoint to read
        return await call_next(request)

    def store_down(exc: BaseException) -> ApiError:
        log.warning("a store is not answering: %s", exc)
        return ApiError(503, "store_unavailable", "a store the server depends on (Redis or the spend store) is not "
                        "answering; retry later", headers=retry_after)

    def authenticate(request: Request) -> Tenant:
        """The caller's tenant (a route dependency).

        A plain function, so FastAPI runs it, and its Redis calls, in a worker thread.
        """
        address = request.client.host if request.client else "unknown"
        try:
            if not authenticated:  # the address, never a header the client sets
                tenant = Tenant(f"client-{_hashed(address)}")
            else:
                if failures.blocked(f"auth:{address}"):
                    raise ApiError(429, "rate_limited", "too many failed authentications from this address; "
                                   "retry later", headers=retry_after)
                given = request.headers.get("authorization", "")
                tenant = match_token(accepted, given[7:]) if given.startswith("Bearer ") else None
                if tenant is None:
                    try:
                        failures.acquire(f"auth:{address}")
                    except RateLimited:
                        pass
                    raise ApiError(401, "unauthorized", "a valid bearer token is required")
            limiter.acquire(f"serve:{tenant.name}")
        except RateLimited:
            rate = limiter.limits.get(f"serve:{tenant.name}", limiter.limits["*"]).requests
            raise ApiError(429, "rate_limited", f"over {rate} requests per minute", headers=retry_after) from None
        except STORE_ERRORS as exc:
            raise store_down(exc) from None
        return tenant

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _error(400, "invalid_json", "the body is not valid JSON")
        detail = [{"field": ".".join(str(x) for x in p.get("loc", ())[1:]), "problem": p.get("msg")}
                  for p in problems]
        return _error(422, "invalid_request", f"the body must be an object with the fields {fields}", detail=detail)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return _error(404, "not_found", "no such endpoint (see /openapi.json)", exc.headers)
        if exc.status_code == 405:
            return _error(405, "method_not_allowed", f"{request.method} is not allowed here", exc.headers)
        return _error(exc.status_code, "http_error", str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, "internal_error", "the request failed; the server's log says why")

    def execute(inputs: dict, tenant: str, deadline: float | None, run_id: str | None, carrier: dict) -> dict:
        started = time.perf_counter()
        recording = [] if store is None else [Checkpointer(store, run_id, program=program, origin=origin,
                                                           privacy=privacy)]
        recording += [] if mirror is None else [ContextRecorder(mirror, privacy=privacy)]
        traced = [] if tracer is None else [tracer]
        parent = otel_context.attach(propagate.extract(carrier)) if tracer is not None else None
        try:
            with dspy.context(adapter=adapter), protecting(privacy), guarding(resilience), \
                    observing(*recording, cache, monitor, *traced), tenant_scope(tenant), deadline_scope(deadline), \
                    track_usage() as ledger:
                prediction = observed_call(program, inputs)
        except BudgetExceeded as exc:
            raise ApiError(402, "budget_exceeded", str(exc), partial=exc.partial) from None
        except DeadlineExceeded:
            raise ApiError(504, "deadline_exceeded", f"the request ran longer than {timeout_s:g} s") from None
        except StageFailed as exc:
            log.warning("request failed: %s", exc)  # the providers' messages stay in the log
            raise ApiError(503, "upstream_failed", f"stage {exc.stage!r} failed on every model it may use") from None
        except RateLimited:
            raise ApiError(503, "upstream_failed", "the model provider's rate limit is reached; retry later") from None
        except STORE_ERRORS as exc:
            raise store_down(exc) from None
        finally:
            if parent is not None:
                otel_context.detach(parent)
        stages = _stages_used(prediction, ledger)
        return {
            "run_id": run_id,
            "outputs": {key: jsonable(prediction[key]) for key in prediction.keys()},
            "stages": stages,
            "cost_usd": sum(s["cost_usd"] for s in stages),
            "model_time_s": sum(s["latency_s"] for s in stages),
            "latency_s": time.perf_counter() - started,
            "degraded": list(getattr(prediction, "degraded", [])),
        }

    def finished(future: asyncio.Future) -> None:
        if running is not None:
            running.release()
        if not future.cancelled():
            future.exception()  # an abandoned request's error was answered already (504)

    @app.post("/v1/run", responses={400: {}, 401: {}, 402: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}})
    async def run_program(body: Inputs, request: Request, response: Response,  # type: ignore[valid-type]
                          tenant: Tenant = Depends(authenticate)) -> dict:
        if running is not None and not running.acquire(blocking=False):
            raise ApiError(503, "overloaded", f"{max_concurrency} requests are running; retry later",
                           headers={"Retry-After": "1"})
        run_id = uuid.uuid4().hex[:16] if store is not None else None
        if run_id is not None:
            response.headers["X-Stagewise-Run"] = run_id
        try:
            return await _run(body.model_dump(), tenant, run_id, dict(request.headers))
        except ApiError as exc:
            if run_id is not None:  # a failed request is a failed run: its id leads to what happened
                exc.headers = {**(exc.headers or {}), "X-Stagewise-Run": run_id}
                exc.extra["run_id"] = run_id
            raise

    async def _run(inputs: dict, tenant: Tenant, run_id: str | None, carrier: dict) -> dict:
        deadline = time.monotonic() + timeout_s if timeout_s else None
        call = functools.partial(contextvars.copy_context().run, execute, inputs, tenant.name, deadline, run_id,
                                 carrier)
        future = asyncio.get_running_loop().run_in_executor(workers, call)
        future.add_done_callback(finished)
        if timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            # The thread cannot be stopped: it makes no further model call (the deadline), and the call on
            # its way is abandoned; when it returns it settles its reservation, so it is charged.
            log.warning("request of tenant %r passed its %g s deadline; its model call in flight is abandoned",
                        tenant.name, timeout_s)
            raise ApiError(504, "deadline_exceeded", f"the request ran longer than {timeout_s:g} s") from None

    @app.get("/v1/budget", responses={401: {}, 429: {}, 503: {}})
    def budget(tenant: Tenant = Depends(authenticate)) -> dict:
        """The caller's tenant, what it spent today (UTC; with calls in flight at their worst case) and its budget."""
        ledger = resilience.budget
        try:
            spent = ledger.tenant_spent(tenant.name) if ledger is not None else 0.0
        except STORE_ERRORS as exc:
            raise store_down(exc) from None
        return {"tenant": tenant.name, "day": today(), "spent_usd": spent,
                "daily_budget_usd": ledger.tenant_limit(tenant.name) if ledger is not None else None,
                "store": describe_store(ledger.store) if ledger is not None else None}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "program": manifest.get("factory"), "stages": list(stages_of(program)),
                "inputs": fields}

    return app
