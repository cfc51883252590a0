"""Dataset loading and splitting."""
