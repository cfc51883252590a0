"""Stage-level and end-to-end metrics."""
