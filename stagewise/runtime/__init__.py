"""Execution-time concerns: checkpointed runs and resume, the shared context store, tracing,
context diffs and replay, the privacy policy that redacts what they keep, resilience, budgets,
tenants and serving.

- runs: :func:`run`, :func:`resume` and :func:`replay` (:class:`RunReplayError`); the
  :class:`Checkpointer` observer they install;
- checkpoints: :class:`CheckpointStore`, :func:`open_checkpoints`; :class:`CheckpointError`,
  :class:`UnknownRunError`, :class:`CorruptCheckpointError`, :class:`StoreConnectionError`;
- the context store: :class:`ContextStore`, :func:`open_context_store`, :class:`ContextRecorder`
  and :func:`shared`;
- traces and diffs: :class:`Tracer`, :func:`tracer_provider`; :func:`diff_text`, :func:`diff_html`
  and :func:`run_page`;
- privacy: :class:`PrivacyPolicy`, :func:`protecting`, :func:`current_privacy`,
  :class:`PrivacyScope`, :class:`PrivacyFilter`, :class:`Finding`;
- resilience (install with ``stagewise.programs.guarding``): :class:`Resilience`, each stage's
  :class:`StagePolicy` and its :class:`FailureMode`, :class:`Breakers`, :class:`RateLimiter` with
  its :class:`Limit` and :class:`LimitPolicy`, :func:`deadline_scope`, :func:`is_retryable`;
  :class:`StageFailed`, :class:`RateLimited`, :class:`DeadlineExceeded`;
- budgets: :class:`Budget`, :class:`SpendStore`, :func:`open_spend_store`, :func:`tenant_scope`,
  :func:`current_tenant`; :class:`BudgetExceeded`;
- other observers: :class:`StageCache` and :class:`CostMonitor` (its :class:`CostAlert`);
- serving: :func:`create_app` (the ``stagewise serve`` app) and its callers, each a
  :class:`Tenant` (:func:`read_tokens` reads a tokens file).

The resilience names and :func:`create_app` are imported when first used (they load pybreaker,
tenacity and FastAPI), so ``import stagewise.runtime`` does not pay for them.
"""

from stagewise.runtime.budgets import (
    Budget,
    BudgetExceeded,
    SpendStore,
    current_tenant,
    open_spend_store,
    tenant_scope,
)
from stagewise.runtime.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    StoreConnectionError,
    UnknownRunError,
    open_checkpoints,
)
from stagewise.runtime.costs import CostAlert, CostMonitor
from stagewise.runtime.diff import diff_html, diff_text
from stagewise.runtime.privacy import Finding, PrivacyFilter, PrivacyPolicy, PrivacyScope, current_privacy, protecting
from stagewise.runtime.run_page import run_page
from stagewise.runtime.runs import Checkpointer, RunReplayError, replay, resume, run
from stagewise.runtime.stage_cache import StageCache
from stagewise.runtime.store import ContextRecorder, ContextStore, open_context_store, shared
from stagewise.runtime.tenants import Tenant, read_tokens
from stagewise.runtime.tracing import Tracer, tracer_provider

__all__ = [
    "Breakers", "Budget", "BudgetExceeded", "CheckpointError", "CheckpointStore", "Checkpointer", "ContextRecorder",
    "ContextStore", "CorruptCheckpointError", "CostAlert", "CostMonitor", "DeadlineExceeded", "FailureMode",
    "Finding", "Limit", "LimitPolicy", "PrivacyFilter", "PrivacyPolicy", "PrivacyScope", "RateLimited",
    "RateLimiter", "Resilience", "RunReplayError", "SpendStore", "StageCache", "StageFailed", "StagePolicy",
    "StoreConnectionError", "Tenant", "Tracer", "UnknownRunError", "create_app", "current_privacy",
    "current_tenant", "deadline_scope", "diff_html", "diff_text", "is_retryable", "open_checkpoints",
    "open_context_store", "open_spend_store", "protecting", "read_tokens", "replay", "resume", "run", "run_page",
    "shared", "tenant_scope", "tracer_provider",
]

_RESILIENCE = ("Breakers", "DeadlineExceeded", "FailureMode", "Limit", "LimitPolicy", "RateLimited", "RateLimiter",
               "Resilience", "StageFailed", "StagePolicy", "deadline_scope", "is_retryable")
_LAZY = {**{name: "stagewise.runtime.resilience" for name in _RESILIENCE}, "create_app": "stagewise.runtime.serve"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stagewise.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
