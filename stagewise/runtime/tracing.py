"""OpenTelemetry traces of program runs, following the GenAI semantic conventions.

One span per request (`invoke_workflow {program}`), one per stage (`stage {name}`) under
it, and one per model call (`{operation} {model}`, operation `chat`) under its stage, with
`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
`gen_ai.usage.input_tokens` and `gen_ai.usage.output_tokens`, plus stagewise's cost, cache
and latency. A stage span refers to the context it read: the section ids it received and
`stagewise.context.ref` (`<run>/<stage>` in the context store, when one records the run).
Prompts and responses (`gen_ai.input.messages` / `gen_ai.output.messages`) are recorded
only with `capture_content=True`. Under a privacy policy (`Tracer(privacy=...)`, or a run with
`privacy=`) they are redacted, the model calls' spans being written when their stage ends (its
outputs known), and exception messages and stack traces on spans are redacted too.

`tracer_provider("console" | "otlp" | "memory" | "mlflow")` builds a provider with that
exporter; `"mlflow"` sends the spans to the MLflow tracking URI's traces, beside the runs.
"""

from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager, nullcontext
from typing import Literal

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from stagewise.errors import ConfigError
from stagewise.models.usage import UsageLedger, UsageRecord, capturing_content, track_usage
from stagewise.programs.run import Observer, Run, StageEvent, StepEvent
from stagewise.runtime.privacy import PrivacyPolicy, PrivacyScope, privacy_scope, protecting

OPERATION = "chat"


def tracer_provider(exporter: Literal["console", "otlp", "memory", "mlflow"] = "console", *,
                    endpoint: str | None = None) -> tuple[TracerProvider, object]:
    """An OpenTelemetry tracer provider and its span exporter.

    Args:
        exporter: `console`, `otlp` (HTTP), `memory` (tests) or `mlflow` (the tracking URI's traces).
        endpoint: the OTLP endpoint (default: OTEL_EXPORTER_OTLP_ENDPOINT).

    Returns:
        (provider, exporter).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": "stagewise"}))
    if exporter == "console":
        sink = ConsoleSpanExporter(out=sys.stdout)  # its default is the stdout of when OpenTelemetry was imported
    elif exporter == "memory":
        sink = InMemorySpanExporter()
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        sink = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    elif exporter == "mlflow":
        sink = MlflowSpanExporter()
    else:
        raise ConfigError(f"unknown trace exporter {exporter!r} (console, otlp, memory, mlflow)")
    provider.add_span_processor(SimpleSpanProcessor(sink))
    return provider, sink


class _CallSpans(UsageLedger):
    """A ledger that turns each model call of a stage into a span under the stage's span."""

    def __init__(self, tracer, parent, capture: bool, scope: PrivacyScope | None = None):
        super().__init__()
        self.tracer, self.parent, self.capture, self.scope = tracer, parent, capture, scope
        self.pending: list[UsageRecord] = []

    def add(self, record: UsageRecord) -> None:
        super().add(record)
        if self.scope is not None and self.capture and record.content:
            self.pending.append(record)  # its response may hold a field to drop: written at the stage's end
        else:
            self._emit(record)

    def flush(self) -> None:
        """Write the spans held back until the stage's end."""
        pending, self.pending = self.pending, []
        for record in pending:
            self._emit(record)

    def _emit(self, record: UsageRecord) -> None:
        end = int(record.timestamp * 1e9)
        start = end - int(record.latency_s * 1e9)
        attributes = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": record.provider or record.engine,
            "gen_ai.request.model": record.model,
            "gen_ai.usage.input_tokens": record.input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            "stagewise.engine": record.engine,
            "stagewise.cost_usd": record.cost_usd if record.cost_usd is not None else -1.0,
            "stagewise.cache_hit": record.cache_hit,
            "stagewise.token_source": record.token_source,
        }
        if self.capture and record.content:
            messages, outputs = record.content.get("messages"), record.content.get("outputs")
            if self.scope is not None:
                messages, outputs = self.scope.value(messages), self.scope.value(outputs)
            attributes["gen_ai.input.messages"] = json.dumps(messages, default=str)
            attributes["gen_ai.output.messages"] = json.dumps(outputs, default=str)
        span = self.tracer.start_span(f"{OPERATION} {record.model}", context=trace.set_span_in_context(self.parent),
                                      start_time=start, attributes=attributes, kind=trace.SpanKind.CLIENT)
        span.end(end_time=end)


@contextmanager
def _errors_redacted(span, scope: PrivacyScope | None):
    """Record an exception on `span` with its message and stack trace redacted (with a scope)."""
    try:
        yield
    except BaseException as exc:
        if scope is None:
            raise
        message = scope.text(str(exc))
        span.record_exception(exc, attributes={"exception.message": message, "exception.stacktrace": scope.text(
            "".join(traceback.format_exception(exc)))}, escaped=True)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {message}"))
        raise


class Tracer(Observer):
    """Spans for requests, stages and model calls (see the module's docstring).

    Args:
        provider: the tracer provider (default: OpenTelemetry's global one).
        capture_content: put each model call's prompt and response on its span.
        program: the program's name, in the request span's name.
        privacy: the policy that redacts what the spans hold.
    """

    def __init__(self, provider: TracerProvider | None = None, *, capture_content: bool = False,
                 program: str = "stagewise", privacy: PrivacyPolicy | None = None):
        self.tracer = (provider or trace.get_tracer_provider()).get_tracer("stagewise")
        self.capture_content, self.program, self.privacy = capture_content, program, privacy

    @contextmanager
    def request(self, run: Run, inputs: dict):
        """Wraps a request in an `invoke_workflow` span (with its run id and cost)."""
        with protecting(self.privacy) as scope:  # the run's stages find the policy
            if scope is not None:
                scope.learn(inputs)
            with self._request_span(run, inputs, scope):
                yield

    @contextmanager
    def _request_span(self, run: Run, inputs: dict, scope: PrivacyScope | None):
        attributes = {"gen_ai.operation.name": "invoke_workflow", "stagewise.request_id": run.request_id,
                      "stagewise.inputs": sorted(inputs)}
        with self.tracer.start_as_current_span(f"invoke_workflow {self.program}", attributes=attributes,
                                               record_exception=scope is None,
                                               set_status_on_exception=scope is None) as span, \
                _errors_redacted(span, scope):
            yield
            if run.run_id:
                span.set_attribute("stagewise.run_id", run.run_id)
            span.set_attribute("stagewise.cost_usd", run.ledger.total_cost)

    @contextmanager
    def stage(self, event: StageEvent):
        """Wraps a stage execution in a `stage <name>` span, with a child span per model call."""
        run = event.run
        scope = privacy_scope(self.privacy)
        with self.tracer.start_as_current_span(f"stage {event.stage.name}", record_exception=scope is None,
                                               set_status_on_exception=scope is None) as span, \
                _errors_redacted(span, scope):
            span.set_attribute("stagewise.stage", event.stage.name)
            span.set_attribute("stagewise.stage.key", event.key)
            span.set_attribute("stagewise.context.ref", f"{run.run_id or run.request_id}/{event.stage.name}")
            capture = capturing_content() if self.capture_content else nullcontext()
            calls = _CallSpans(self.tracer, span, self.capture_content, scope)
            try:
                with capture, track_usage(calls):
                    yield
                if scope is not None and event.outputs:
                    scope.learn(event.outputs)
            finally:
                calls.flush()
            if event.log is not None:
                span.set_attribute("stagewise.context.received", list(event.log.received))
                span.set_attribute("stagewise.context.produced", list(event.log.produced))
                span.set_attribute("stagewise.context.tokens_saved", event.log.tokens_saved)
            span.set_status(Status(StatusCode.OK))


    @contextmanager
    def step(self, event: StepEvent):
        """Wraps a step in a `<kind> <name>` span whose attributes hold its decision."""
        scope = privacy_scope(self.privacy)
        with self.tracer.start_as_current_span(f"{event.kind} {event.name}", record_exception=scope is None,
                                               set_status_on_exception=scope is None) as span, \
                _errors_redacted(span, scope):
            span.set_attribute("stagewise.step.kind", event.kind)
            span.set_attribute("stagewise.step.key", event.key)
            yield
            for name, value in event.decision.items():
                shown = value if isinstance(value, str | bool | int | float) else json.dumps(value, default=str)
                span.set_attribute(f"stagewise.decision.{name}", scope.text(shown) if scope is not None and
                                   isinstance(shown, str) else shown)
            span.set_status(Status(StatusCode.OK))


class MlflowSpanExporter:
    """Exports finished spans as MLflow traces (one per request) at the tracking URI."""

    def __init__(self):
        self._spans: dict[int, list] = {}

    def export(self, spans):
        """Collect `spans`; log each request's trace to MLflow once its request span has ended."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            self._spans.setdefault(span.context.trace_id, []).append(span)
            if span.parent is None:  # the request span ends last: its trace is complete
                self._log(self._spans.pop(span.context.trace_id))
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing to flush here (MLflow writes traces from its own queue)."""
        return True  # MLflow writes traces from its own queue: read them with search_traces(flush=True)

    def _log(self, spans) -> None:
        import mlflow

        root = next(s for s in spans if s.parent is None)
        children: dict[int, list] = {}
        for s in spans:
            if s.parent is not None:
                children.setdefault(s.parent.span_id, []).append(s)

        def emit(span, parent=None):
            kind = "LLM" if span.name.startswith(OPERATION) else ("CHAIN" if parent is None else "AGENT")
            live = mlflow.start_span_no_context(span.name, span_type=kind, parent_span=parent,
                                                attributes=dict(span.attributes or {}), start_time_ns=span.start_time)
            for child in sorted(children.get(span.context.span_id, []), key=lambda c: c.start_time):
                emit(child, live)
            status = "ERROR" if span.status.status_code == StatusCode.ERROR else "OK"
            live.end(status=status, end_time_ns=span.end_time)

        emit(root)

    def shutdown(self):
        """Nothing to release."""
        pass
