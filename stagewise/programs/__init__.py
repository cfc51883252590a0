"""DSPy modules that compose stages: chain, fan-out, router, hierarchy, cascade."""
