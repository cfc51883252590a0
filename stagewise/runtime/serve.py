"""An HTTP API over an exported program (FastAPI): ``stagewise serve DIR``.

- ``POST /v1/run``: a JSON object with the program's input fields (no others) -> its outputs,
  a per-stage trace summary (model, tokens, cost, latency) and the request's cost;
- ``GET /healthz``; the OpenAPI schema at ``/openapi.json`` (and ``/docs``).

A bearer token is required (the value of an environment variable, ``STAGEWISE_SERVE_TOKEN`` by
default) unless the app is made with ``token=None`` for local use (``--no-auth``). Bodies over
``max_body`` bytes are refused, and each token has a request rate limit. Every error is JSON,
``{"error": {"code": ..., "message": ...}}``, with a stable code:
``invalid_json``, ``invalid_request`` (422), ``body_too_large`` (413), ``unauthorized`` (401),
``rate_limited`` (429), ``budget_exceeded`` (402, with the partial results), ``upstream_failed``
(503), ``internal_error`` (500).
"""



import hashlib
import hmac
import inspect
import logging
import time
from pathlib import Path
from typing import Any

import dspy
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, create_model
from starlette.concurrency import run_in_threadpool

from stagewise.errors import StagewiseError
from stagewise.models.usage import track_usage
from stagewise.programs.predictors import stages_of
from stagewise.programs.run import guarding, observing
from stagewise.runtime.costs import CostMonitor
from stagewise.runtime.resilience import (
    BudgetExceeded,
    Limit,
    RateLimited,
    RateLimiter,
    Resilience,
    StageFailed,
    tenant_scope,
)
from stagewise.runtime.runs import jsonable
from stagewise.runtime.stage_cache import StageCache

log = logging.getLogger(__name__)


class ApiError(StagewiseError):
    """An HTTP error answer: status, stable code and message (JSON), raised inside a request."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def input_fields(program, manifest: dict) -> list[str]:
    """The request fields: the manifest's evaluation inputs, else the ``input.*`` sections the stages read."""
    evaluation = manifest.get("evaluation") or {}
    if evaluation.get("inputs"):
        return list(evaluation["inputs"])
    from stagewise.programs import Pipeline

    if not isinstance(program, Pipeline):  # a plain DSPy module: the named parameters of its forward
        parameters = inspect.signature(program.forward).parameters.values()
        return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    fields = []
    for stage in program.stages().values():
        for field, patterns in stage.inputs.items():
            for pattern in patterns:
                name = pattern.removeprefix("input.") if pattern.startswith("input.") else (
                    field if pattern == f"*.{field}" else None)
                if name and name not in fields and not any(
                        name in other.signature.output_fields for other in program.stages().values()):
                    fields.append(name)
    return fields


def _stages_used(prediction, ledger) -> list[dict]:
    """Per stage: model, tokens, cost, latency (and notes); from a stagewise program's trace, else from
    the usage records of the request (a plain DSPy program: its predictors' calls, by stage name)."""
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


def create_app(directory: str | Path, *, token: str | None, max_body: int = 64 * 1024,
               requests_per_minute: int = 60, resilience: Resilience | None = None,
               monitor: CostMonitor | None = None, redis_url: str | None = None, factory=None,
               trust_code: bool = False) -> FastAPI:
    """The app; ``redis_url`` shares the per-token rate limit among every server process using it.

    The program is loaded with :func:`stagewise.load` (``factory`` and ``trust_code`` as there).
    """
    from stagewise.optimize.export import load, read_manifest

    directory = Path(directory)
    manifest = read_manifest(directory)
    program = load(directory, factory=factory, trust_code=trust_code)
    fields = input_fields(program, manifest)
    Inputs = create_model("RunRequest", __config__=ConfigDict(extra="forbid"),  # noqa: N806
                          **{name: (str, ...) for name in fields})
    resilience = resilience or Resilience()
    monitor = monitor or CostMonitor(manifest.get("factory", "program"))
    cache = StageCache()
    limiter = RateLimiter({"*": Limit(requests=requests_per_minute)}, policy="shed", redis_url=redis_url)
    adapter = dspy.JSONAdapter()

    app = FastAPI(title="stagewise program", version=manifest.get("format", "1"),
                  description=f"The exported program {manifest.get('factory')} ({', '.join(stages_of(program))})")
    app.state.program, app.state.monitor, app.state.cache = program, monitor, cache

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if token is not None:
                given = request.headers.get("authorization", "")
                if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
                    return _error(401, "unauthorized", "a valid bearer token is required")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > max_body):
                return _error(413, "body_too_large", f"the body is over {max_body} bytes")
            body = b""
            async for chunk in request.stream():  # a chunked body has no length: count as it arrives
                body += chunk
                if len(body) > max_body:
                    return _error(413, "body_too_large", f"the body is over {max_body} bytes")
            request._body = body  # Starlette's cache of the body, for the endpoint to read
            who = hashlib.sha256((request.headers.get("authorization") or request.client.host or "").encode())
            try:
                limiter.acquire(f"serve:{who.hexdigest()[:16]}")
            except RateLimited:
                return _error(429, "rate_limited", f"over {requests_per_minute} requests per minute")
        return await call_next(request)

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
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request failed")
        return _error(500, "internal_error", f"{type(exc).__name__}: the request failed")

    def execute(inputs: dict, tenant: str) -> dict:
        started = time.perf_counter()
        try:
            with dspy.context(adapter=adapter), guarding(resilience), observing(cache, monitor), \
                    tenant_scope(tenant), track_usage() as ledger:
                prediction = program(**inputs)
        except BudgetExceeded as exc:
            raise ApiError(402, "budget_exceeded", str(exc), partial=exc.partial) from None
        except StageFailed as exc:
            log.warning("request failed: %s", exc)  # the providers' messages stay in the log
            raise ApiError(503, "upstream_failed", f"stage {exc.stage!r} failed on every model it may use") from None
        except RateLimited:
            raise ApiError(503, "upstream_failed", "the model provider's rate limit is reached; retry later") from None
        finally:
            if resilience.budget is not None:  # whatever happened, what was spent counts against the tenant
                resilience.budget.charge(tenant, ledger.total_cost)
        stages = _stages_used(prediction, ledger)
        return {
            "outputs": {key: jsonable(prediction[key]) for key in prediction.keys()},
            "stages": stages,
            "cost_usd": sum(s["cost_usd"] for s in stages),
            "model_time_s": sum(s["latency_s"] for s in stages),
            "latency_s": time.perf_counter() - started,
            "degraded": list(getattr(prediction, "degraded", [])),
        }

    @app.post("/v1/run", responses={400: {}, 401: {}, 402: {}, 413: {}, 422: {}, 429: {}, 503: {}})
    async def run_program(body: Inputs, request: Request) -> dict:  # type: ignore[valid-type]
        # The tenant is the credential (or the client's address without one), never a header the client sets.
        credential = request.headers.get("authorization") or (request.client.host if request.client else "")
        tenant = hashlib.sha256(credential.encode()).hexdigest()[:12]
        return await run_in_threadpool(execute, body.model_dump(), tenant)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "program": manifest.get("factory"), "stages": list(stages_of(program)),
                "inputs": fields}

    return app

