"""Execution-time concerns: what happens around a program while it serves requests.

That is checkpointed runs and resume, the shared context store, tracing, context diffs and
replay, the privacy policy that redacts what they keep, resilience, budgets, tenants and serving.

- runs: [`run`][stagewise.runtime.run], [`resume`][stagewise.runtime.resume] and [`replay`][stagewise.runtime.replay]
([`RunReplayError`][stagewise.runtime.RunReplayError]); the
  [`Checkpointer`][stagewise.runtime.Checkpointer] observer they install;
- checkpoints: [`CheckpointStore`][stagewise.runtime.CheckpointStore],
[`open_checkpoints`][stagewise.runtime.open_checkpoints]; [`CheckpointError`][stagewise.runtime.CheckpointError],
  [`UnknownRunError`][stagewise.runtime.UnknownRunError],
  [`CorruptCheckpointError`][stagewise.runtime.CorruptCheckpointError],
  [`StoreConnectionError`][stagewise.runtime.StoreConnectionError];
- the context store: [`ContextStore`][stagewise.runtime.ContextStore],
[`open_context_store`][stagewise.runtime.open_context_store], [`ContextRecorder`][stagewise.runtime.ContextRecorder]
  and [`shared`][stagewise.runtime.shared];
- traces and diffs: [`Tracer`][stagewise.runtime.Tracer], [`tracer_provider`][stagewise.runtime.tracer_provider];
[`diff_text`][stagewise.runtime.diff_text], [`diff_html`][stagewise.runtime.diff_html]
  and `run_page`;
- privacy: [`PrivacyPolicy`][stagewise.runtime.PrivacyPolicy], [`protecting`][stagewise.runtime.protecting],
[`current_privacy`][stagewise.runtime.current_privacy],
  [`PrivacyScope`][stagewise.runtime.PrivacyScope], [`PrivacyFilter`][stagewise.runtime.PrivacyFilter],
  [`Finding`][stagewise.runtime.Finding];
- resilience (install with `stagewise.programs.guarding`): `Resilience`, each stage's
  `StagePolicy` and its `FailureMode`, `Breakers`, `RateLimiter` with
  its `Limit` and `LimitPolicy`, `deadline_scope`, `is_retryable`;
  `StageFailed`, `RateLimited`, `DeadlineExceeded`;
- budgets: [`Budget`][stagewise.runtime.Budget], [`SpendStore`][stagewise.runtime.SpendStore],
[`open_spend_store`][stagewise.runtime.open_spend_store], [`tenant_scope`][stagewise.runtime.tenant_scope],
  [`current_tenant`][stagewise.runtime.current_tenant]; [`BudgetExceeded`][stagewise.runtime.BudgetExceeded];
- other observers: [`StageCache`][stagewise.runtime.StageCache] and [`CostMonitor`][stagewise.runtime.CostMonitor] (its
[`CostAlert`][stagewise.runtime.CostAlert]);
- serving: `create_app` (the `stagewise serve` app) and its callers, each a
  [`Tenant`][stagewise.runtime.Tenant] ([`read_tokens`][stagewise.runtime.read_tokens] reads a tokens file).

The resilience names and `create_app` are imported when first used (they load pybreaker,
tenacity and FastAPI), so `import stagewise.runtime` does not pay for them.
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
