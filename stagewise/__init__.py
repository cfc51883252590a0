"""stagewise: compile and optimize multi-model LLM pipelines.

Importing stagewise makes DSPy and litellm read litellm's bundled model price map instead
of downloading it at start-up (they retry for seconds on a machine without network).
Set ``LITELLM_LOCAL_MODEL_COST_MAP=False`` before importing to let them fetch it.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"


def load(directory, **kwargs):
    """Rebuild an exported program (``stagewise optimize`` writes ``OUT/best``) with each stage's model."""
    from stagewise.optimize.export import load as load_program

    return load_program(directory, **kwargs)
