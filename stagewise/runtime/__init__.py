"""Execution-time concerns: checkpoints, stores, tracing, resilience."""
