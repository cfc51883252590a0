"""Models: the catalog, the engines (local llama.cpp, providers, replay) and usage accounting.

[`Engine`][stagewise.models.Engine] declares what an in-process model engine must do (see `stagewise.models.engine`).
"""

from stagewise.models.catalog import CatalogError, ModelCatalog, ModelSpec, UnknownModelError, default_catalog
from stagewise.models.engine import Engine
from stagewise.models.usage import UsageLedger, UsageRecord, request_scope, stage_scope, track_usage

__all__ = [
    "CatalogError",
    "Engine",
    "ModelCatalog",
    "ModelSpec",
    "UnknownModelError",
    "UsageLedger",
    "UsageRecord",
    "default_catalog",
    "get_lm",
    "request_scope",
    "stage_scope",
    "track_usage",
]


def get_lm(*args, **kwargs):
    """Build a `StagewiseLM` for a catalog model (see `stagewise.models.lm.get_lm`).

    Examples:
        A recorded model replays an outcome table, so it answers offline:

        >>> from stagewise.data import OutcomeTable
        >>> from stagewise.models import default_catalog, get_lm
        >>> default_catalog()["recorded/gpt-4-1106-preview"].context_format
        'markdown'
        >>> table = OutcomeTable.load("data/routerbench/arc_challenge_test.csv")
        >>> lm = get_lm("recorded/gpt-4-1106-preview", replay_table=table)
        >>> lm.model.startswith("replay/recorded/gpt-4-1106-preview")
        True
    """
    from stagewise.models.lm import get_lm as build  # imports DSPy: keep `import stagewise.models` light

    return build(*args, **kwargs)
