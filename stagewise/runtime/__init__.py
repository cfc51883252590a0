"""Execution-time concerns: checkpointed runs and resume, the shared context store, tracing,
context diffs and replay, and the privacy policy that redacts what they keep."""

from stagewise.runtime.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CorruptCheckpointError,
    StoreConnectionError,
    UnknownRunError,
    open_checkpoints,
)
from stagewise.runtime.diff import diff_html, diff_text
from stagewise.runtime.privacy import Finding, PrivacyFilter, PrivacyPolicy, PrivacyScope, current_privacy, protecting
from stagewise.runtime.run_page import run_page
from stagewise.runtime.runs import RunReplayError, replay, resume, run
from stagewise.runtime.store import ContextRecorder, open_context_store, shared
from stagewise.runtime.tracing import Tracer, tracer_provider

__all__ = [
    "CheckpointError", "CheckpointStore", "ContextRecorder", "CorruptCheckpointError", "Finding", "PrivacyFilter",
    "PrivacyPolicy", "PrivacyScope", "RunReplayError", "StoreConnectionError", "Tracer", "UnknownRunError",
    "current_privacy", "diff_html", "diff_text", "open_checkpoints", "open_context_store", "protecting", "replay",
    "resume", "run", "run_page", "shared", "tracer_provider",
]
