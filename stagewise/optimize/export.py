"""Export a tuned program for serving, and load it again: JSON only, never pickle.

A program is exported as a directory:

- ``program.json``: DSPy's own JSON state of every predictor (instructions, demos), with
  each predictor's LM state removed: models are rebuilt from the manifest, so loading never
  imports a class named in a file;
- ``manifest.json``: how to rebuild the program (the factory ``module:function`` and its
  arguments), each stage's model with its engine and prices (and, for replayed models, the
  outcome table), metrics, the dataset fingerprint and package versions. No secrets: a
  hosted model is named with the environment variable of its key, never the key.

:func:`load` imports the factory named in the manifest, builds the program, restores the
predictor state and sets each stage's model.
"""

from __future__ import annotations

from stagewise.errors import ExportError
import importlib
import json
import platform
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from stagewise.optimize.space import router_modules

MANIFEST_FORMAT = "stagewise-program/1"
PACKAGES = ("stagewise", "dspy", "litellm", "llama-cpp-python", "optuna", "mlflow", "scikit-learn", "skops")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def stage_models(program) -> dict[str, dict[str, Any]]:
    """Each stage's model as the manifest records it (catalog entry, engine, prices); a decision
    stage a trained classifier stands in for names the router whose classifier it is."""
    described = {}
    stood_in = {router.stand_in: name for name, router in router_modules(program).items() if router.stand_in}
    for name, stage in program.stages().items():
        if name in stood_in:
            described[name] = {"decided_by": f"the trained classifier of router {stood_in[name]!r}"}
            continue
        lm = stage.lm
        spec = getattr(lm, "spec", None)
        if spec is None:
            raise ExportError(f"stage {name!r} has no stagewise model (set one with set_models before exporting)")
        entry = {"model": spec.name, "engine": spec.engine, "provider": spec.provider,
                 "input_price_per_mtok": spec.input_price, "output_price_per_mtok": spec.output_price,
                 "price_source": spec.price_source, "max_tokens": (lm.kwargs or {}).get("max_tokens")}
        table = getattr(getattr(lm, "engine", None), "table", None)
        if table is not None:
            entry["replay_table"] = str(Path(table.source).resolve())
            entry["replay_table_fingerprint"] = table.fingerprint
        if spec.api_key_env:
            entry["api_key_env"] = spec.api_key_env
        described[name] = entry
    return described


def state_without_models(module) -> dict:
    """DSPy's JSON state of ``module`` (a program or one predictor) with every predictor's LM
    state removed: models are rebuilt by name, so loading never imports a class named in a file."""
    import dspy

    state = module.dump_state()
    for predictor_state in [state] if isinstance(module, dspy.Predict) else state.values():
        predictor_state["lm"] = None
    return state


def export(program, directory: str | Path, *, factory: str, factory_kwargs: dict | None = None,
           factory_path: str | None = None, metrics: dict | None = None, data_fingerprint: str | None = None,
           extra: dict | None = None) -> Path:
    """Write ``program.json`` and ``manifest.json`` into ``directory``; returns the directory.

    ``factory_path`` is a folder to import the factory's module from (a config's folder).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    import_factory(factory, factory_path)  # fail now, not at load time, if the factory cannot be imported
    state = state_without_models(program)
    (directory / "program.json").write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    classifiers = {}
    for name, router in router_modules(program).items():
        if router.classifier is not None and router.stand_in is not None:
            from stagewise.routing.persist import save_router

            path = save_router(router.classifier, directory / "routers" / f"{name}.skops")
            classifiers[name] = {"file": str(path.relative_to(directory)), "kind": type(router.classifier).__name__,
                                 "params": router.classifier.get_params()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "factory": factory,
        "factory_kwargs": factory_kwargs or {},
        "factory_path": str(Path(factory_path).resolve()) if factory_path else None,
        "stages": stage_models(program),
        "routers": classifiers,
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        "versions": _versions(),
        **(extra or {}),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return directory


def import_factory(path: str, folder: str | None = None):
    """The callable named ``module:function`` (importing from ``folder`` too, when given)."""
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ExportError(f"factory {path!r} must be 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"factory {path!r} cannot be imported: {exc}") from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{str(path)!r} does not exist: not an exported stagewise program") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{str(path)!r} is not valid JSON: {exc}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{str(path)!r}: field 'format' is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for field in ("factory", "stages"):
        if field not in manifest:
            raise ExportError(f"{str(path)!r}: field {field!r} is missing")
    return manifest


def load(directory: str | Path, *, catalog=None):
    """Rebuild an exported program with each stage's model, ready to serve."""
    from stagewise.models.lm import get_lm
    from stagewise.models.replay import OutcomeTable

    directory = Path(directory)
    manifest = read_manifest(directory)
    program = import_factory(manifest["factory"], manifest.get("factory_path"))(**manifest.get("factory_kwargs", {}))
    program_path = directory / "program.json"
    try:
        state = json.loads(program_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{str(program_path)!r} does not exist") from None
    program.load_state(state)
    tables: dict[str, OutcomeTable] = {}
    models = {}
    found = router_modules(program)
    for name, entry in manifest.get("routers", {}).items():
        from stagewise.routing.persist import RouterFileError, load_router

        if name not in found:
            raise ExportError(f"manifest: the program has no router {name!r} for classifier {entry.get('file')!r}")
        try:
            found[name].use_classifier(load_router(directory / entry["file"]))
        except RouterFileError as exc:
            raise ExportError(f"router {name!r}: {exc}") from None
    for stage, entry in manifest["stages"].items():
        if "decided_by" in entry:
            continue
        options: dict[str, Any] = {"catalog": catalog}
        if entry.get("max_tokens"):
            options["max_tokens"] = entry["max_tokens"]
        if entry.get("replay_table"):
            source = entry["replay_table"]
            tables.setdefault(source, OutcomeTable.load(source))
            if tables[source].fingerprint != entry.get("replay_table_fingerprint", tables[source].fingerprint):
                raise ExportError(f"stage {stage!r}: outcome table {source!r} changed since the program was exported")
            options["replay_table"] = tables[source]
        models[stage] = get_lm(entry["model"], **options)
    program.set_models(models)
    program.stagewise_origin = {"export": str(directory.resolve())}  # checkpointed runs can rebuild it
    return program
