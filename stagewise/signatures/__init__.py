"""Typed DSPy signatures for stage roles."""
