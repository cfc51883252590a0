"""`stagewise serve`: an exported program over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from stagewise.cli.options import TRUST_CODE_HELP, console, pairs
from stagewise.redaction import redact

__all__ = ["serve"]


def serve(
    directory: Path = typer.Argument(..., help="An exported program (stagewise optimize's OUT/best)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, help="Port."),
    token_env: str = typer.Option("STAGEWISE_SERVE_TOKEN", help="Environment variable holding the bearer token."),
    tokens: Path | None = typer.Option(None, "--tokens", help="TOML file of tenants: [tenants.NAME] with token "
                                                               "(or token_env), daily_budget_usd, rate."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without a token (local use only): each client "
                                                          "address is its own tenant."),
    max_body: int = typer.Option(64 * 1024, help="Largest request body, in bytes."),
    rate: int = typer.Option(60, help="Requests per minute per tenant (a tokens file may set its own)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds a request may run: then 504, and no "
                                                                 "further model call is made for it."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency",
                                               help="Requests running at once; more are answered 503 with "
                                                    "Retry-After."),
    budget: float | None = typer.Option(None, help="Cost budget per request, in USD."),
    daily_budget: float | None = typer.Option(None, "--daily-budget",
                                              help="Cost budget per tenant per UTC day, in USD (a tokens file "
                                                   "may set its own)."),
    spend: str | None = typer.Option(None, "--spend", help="Where tenants' daily spend is kept: sqlite:///PATH or "
                                                           "redis://... (default: the --redis URL, else "
                                                           "sqlite:///stagewise-spend.db)."),
    fallback: list[str] = typer.Option(None, help="STAGE=MODEL[,MODEL]: fall back to these models (repeatable)."),
    redis: str | None = typer.Option(None, help="Redis URL: share rate limits, circuit breakers and tenants' "
                                                "spend among server processes."),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
    runs: str | None = typer.Option(None, "--runs", help="Record every request as a run in this checkpoint store, "
                                                         "sqlite:///PATH or postgresql://... (default: "
                                                         "sqlite:///DIRECTORY/runs.db; 'off': record nothing). "
                                                         "The response's X-Stagewise-Run header names the run."),
    trace: str | None = typer.Option(None, "--trace", help="Export each request's spans: console, otlp "
                                                           "($OTEL_EXPORTER_OTLP_ENDPOINT) or mlflow "
                                                           "($MLFLOW_TRACKING_URI); a traceparent header makes "
                                                           "them part of the caller's trace."),
    trace_content: bool = typer.Option(False, "--trace-content", help="Put prompts and responses in the spans "
                                                                      "(redacted by --redact)."),
    context_store: str | None = typer.Option(None, "--context-store", help="Mirror every section a request's "
                                                                           "stages add into this context store: "
                                                                           "sqlite:///PATH, redis://...?ttl=S or "
                                                                           "postgresql://..."),
    redact_spec: str | None = typer.Option(None, "--redact", help="Keep personal data out of runs, the context store, "
                                                             "spans and logs: 'all', detectors (email,credit_card,"
                                                             "phone,iban) or a TOML file with a [privacy] table. "
                                                             "Responses are unchanged."),
) -> None:
    """Serve an exported program over HTTP: POST /v1/run, GET /v1/budget, GET /healthz, OpenAPI at /openapi.json."""
    import uvicorn

    from stagewise.errors import ConfigError
    from stagewise.runtime.budgets import Budget
    from stagewise.runtime.resilience import Breakers, Resilience, StagePolicy
    from stagewise.runtime.serve import create_app, exposure_warning, log
    from stagewise.runtime.tenants import read_tokens

    tenants = read_tokens(tokens) if tokens is not None else []
    token = None if no_auth else os.environ.get(token_env)
    if no_auth and tenants:
        raise ConfigError("--no-auth and --tokens: choose one")
    if not no_auth and not token and not tenants:
        raise ConfigError(f"set the bearer token in ${token_env}, pass --tokens FILE, or pass --no-auth for local use")
    policies = {stage: StagePolicy("fallback", tuple(m.strip() for m in models.split(",")))
                for stage, models in pairs(fallback, "--fallback", "STAGE=MODEL[,MODEL]").items()}
    daily = daily_budget is not None or any(t.daily_budget_usd is not None for t in tenants)
    spending = None
    if budget is not None or daily:
        spending = Budget(per_request_usd=budget, per_tenant_day_usd=daily_budget,
                          tenant_day_usd={t.name: t.daily_budget_usd for t in tenants
                                          if t.daily_budget_usd is not None},
                          store=(spend or redis or "sqlite:///stagewise-spend.db") if daily else None)
    resilience = Resilience(policies=policies, budget=spending, breakers=Breakers(redis_url=redis))
    runs_url = None if runs == "off" else (runs or f"sqlite:///{directory.resolve() / 'runs.db'}")
    privacy = None
    if redact_spec:
        from stagewise.runtime.privacy import PrivacyPolicy

        privacy = PrivacyPolicy.from_option(redact_spec)
    tracer = None
    if trace:
        from stagewise.runtime.tracing import Tracer, tracer_provider

        tracer = Tracer(tracer_provider(trace)[0], program=str(directory), capture_content=trace_content,
                        privacy=privacy)
    app_ = create_app(directory, token=token, tenants=tenants, max_body=max_body, requests_per_minute=rate,
                      resilience=resilience, redis_url=redis, trust_code=trust_code, timeout_s=timeout,
                      max_concurrency=max_concurrency, runs=runs_url, tracer=tracer, privacy=privacy,
                      context_store=context_store)
    warning = exposure_warning(host, authenticated=bool(token or tenants))
    if warning:
        log.warning(warning)
    console.print(f"serving {directory} at http://{host}:{port} (POST /v1/run, GET /healthz, /docs)"
                  + ("" if token or tenants else " without authentication")
                  + (f"; runs recorded in {redact(runs_url)} (stagewise runs list --store ...)" if runs_url else ""))
    uvicorn.run(app_, host=host, port=port, log_level="warning")
