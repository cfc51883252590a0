"""The context that flows between stages: canonical form, format and granularity transforms, token budgets, lineage."""
