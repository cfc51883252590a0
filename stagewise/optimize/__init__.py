"""DSPy optimizers and the Optuna search over prompts, demos and per-stage models; Pareto front, tracking, export."""
