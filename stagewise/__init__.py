"""stagewise: compile and optimize multi-model LLM pipelines.

The public API (each name is also documented where it lives):

```python
opt = stagewise.JointOptimizer(metric=..., models={"*": [...]}, ...)   # the search
best = opt.compile(program, trainset=train, valset=dev)                # any dspy.Module
stagewise.evaluate(best, testset, metric=..., stage_metrics=...)      # the stage-level report
stagewise.export(best, "out/best")                                     # JSON, no pickle
program = stagewise.load("out/best")                                   # ready to serve
```

Errors derive from [`stagewise.StagewiseError`][stagewise.StagewiseError] (see `stagewise.errors`), in the
branches [`ConfigError`][stagewise.ConfigError] (and [`SearchSpaceError`][stagewise.SearchSpaceError]),
[`DataError`][stagewise.DataError], [`ModelError`][stagewise.ModelError], [`ProgramError`][stagewise.ProgramError],
[`BudgetError`][stagewise.BudgetError], [`StoreError`][stagewise.StoreError] and [`ExportError`][stagewise.ExportError].

The rest of the public API is by package, each listing its names in `__all__`:
[`stagewise.programs`][stagewise.programs] (stages and the programs built of them),
[`stagewise.signatures`][stagewise.signatures], [`stagewise.context`][stagewise.context],
[`stagewise.models`][stagewise.models], [`stagewise.data`][stagewise.data], [`stagewise.metrics`][stagewise.metrics],
[`stagewise.optimize`][stagewise.optimize], [`stagewise.routing`][stagewise.routing] and
[`stagewise.runtime`][stagewise.runtime] (runs, stores, tracing, privacy, resilience, budgets, serving). Anything not in
a package's `__all__` is internal.

Importing stagewise makes DSPy and litellm read litellm's bundled model price map instead
of downloading it at start-up (they retry for seconds on a machine without network).
Set `LITELLM_LOCAL_MODEL_COST_MAP=False` before importing to let them fetch it. The rest
of the API is imported when first used, so `import stagewise` stays fast.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from stagewise.errors import (  # noqa: E402  (after the price-map default, which must come first)
    BudgetError,
    ConfigError,
    DataError,
    ExportError,
    ModelError,
    ProgramError,
    SearchSpaceError,
    StagewiseError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetError", "ConfigError", "DataError", "ExportError", "JointOptimizer", "ModelError", "ProgramError",
    "SearchSpaceError", "StagewiseError", "StoreError", "evaluate", "export", "load",
]

_LAZY = {"JointOptimizer": ("stagewise.optimize.joint", "JointOptimizer")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'stagewise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def load(directory, **kwargs):
    """Rebuild an exported program (`stagewise optimize` writes `OUT/best`) with each stage's model.

    Keyword arguments go to [`stagewise.optimize.export.load`][stagewise.optimize.export.load] (`catalog=`).

    Raises:
        ExportError: `directory` is not an exported program, or its files cannot be loaded.

    Examples:
        >>> import stagewise
        >>> stagewise.load("no/such/dir")
        Traceback (most recent call last):
        ...
        stagewise.errors.ExportError: 'no/such/dir/manifest.json' does not exist: not an exported stagewise program
    """
    from stagewise.optimize.export import load as load_program

    return load_program(directory, **kwargs)


def export(program, directory, **kwargs):
    """Write `program` to `directory` for serving: `program.json`, `manifest.json`, its code.

    Keyword arguments go to [`stagewise.optimize.export.export`][stagewise.optimize.export.export] (`factory=`,
    `factory_kwargs=`, `metrics=`...).

    Returns:
        (Path): the directory.

    Raises:
        ExportError: a stage has no stagewise model; the factory is defined in a script, a notebook or a
            function, or cannot be imported; or the manifest would hold an absolute path outside the directory.

    Examples:
        A one-stage program on a recorded model (it replays an outcome table, offline), exported to a
        temporary folder and loaded back. The program's class, `Stage`, is rebuilt with `factory_kwargs`;
        `load` imports it because the caller passes it (`factory=`):

        >>> import shutil
        >>> import tempfile
        >>> import dspy
        >>> import stagewise
        >>> from stagewise.data import OutcomeTable
        >>> from stagewise.models import get_lm
        >>> from stagewise.programs import Stage
        >>> table = OutcomeTable.load("data/routerbench/arc_challenge_test.csv")
        >>> program = Stage("answer", "prompt -> answer",
        ...                 lm=get_lm("recorded/gpt-4-1106-preview", replay_table=table))
        >>> directory = stagewise.export(program, tempfile.mkdtemp(),
        ...                              factory_kwargs={"name": "answer", "step": "prompt -> answer"})
        >>> sorted(path.name for path in directory.iterdir())  # the replayed table is copied into tables/
        ['manifest.json', 'program.json', 'tables']
        >>> loaded = stagewise.load(directory, factory=Stage)
        >>> loaded.lm.spec.name
        'recorded/gpt-4-1106-preview'
        >>> with dspy.context(adapter=dspy.JSONAdapter()):
        ...     loaded(prompt=table.prompts[0]).answer
        'A'
        >>> shutil.rmtree(directory)
    """
    from stagewise.optimize.export import export as export_program

    return export_program(program, directory, **kwargs)


def evaluate(program, examples, *, metric=None, stage_metrics=None, progress: bool = True):
    """The stage-level and end-to-end report of `program` on labeled `examples`.

    Args:
        program (dspy.Module): a stagewise program or a plain DSPy program.
        examples (Iterable[dspy.Example]): examples with their inputs marked (`with_inputs`) and their labels.
        metric (Callable | EndToEnd | None): a DSPy metric `metric(example, prediction, trace=None)` (or an
            [`EndToEnd`][stagewise.metrics.EndToEnd]); None scores no end-to-end quality.
        stage_metrics (list | dict | None): per-stage metrics, in any form `JointOptimizer` accepts.
        progress: show a progress bar.

    Returns:
        (EvaluationReport): the report (`.table()`, `.summary()`; see
            [`EvaluationReport`][stagewise.metrics.EvaluationReport]).

    Examples:
        A one-stage program on a recorded model (it replays an outcome table, offline), scored on
        three ARC-Challenge questions by whether its answer is the right letter:

        >>> import dspy
        >>> import stagewise
        >>> from stagewise.data import OutcomeTable
        >>> from stagewise.models import get_lm
        >>> from stagewise.programs import Stage
        >>> table = OutcomeTable.load("data/routerbench/arc_challenge_test.csv")
        >>> program = Stage("answer", "prompt -> answer",
        ...                 lm=get_lm("recorded/gpt-4-1106-preview", replay_table=table))
        >>> examples = [dspy.Example(prompt=prompt, answer=letter).with_inputs("prompt")
        ...             for prompt, letter in zip(table.prompts[:3], ["A", "D", "D"])]
        >>> def right_letter(example, prediction, trace=None):
        ...     return prediction.answer.strip()[:1] == example.answer
        >>> report = stagewise.evaluate(program, examples, metric=right_letter, progress=False)
        >>> summary = report.summary()
        >>> summary["examples"], summary["end_to_end"], round(summary["cost_per_1k_requests_usd"], 2)
        (3, 1.0, 5.06)
    """
    import dspy

    from stagewise.metrics.report import as_end_to_end, as_stage_metrics
    from stagewise.metrics.report import evaluate as run_evaluation

    with dspy.context(adapter=dspy.settings.adapter or dspy.JSONAdapter()):
        return run_evaluation(program, list(examples), stage_metrics=as_stage_metrics(stage_metrics),
                              end_to_end=as_end_to_end(metric) if metric is not None else None, progress=progress)
