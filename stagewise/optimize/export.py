"""Export a tuned program for serving, and load it again: JSON only, never pickle.

A program is exported as a directory:

- `program.json`: DSPy's own JSON state of every predictor (instructions, demos), with
  each predictor's LM state removed: models are rebuilt from the manifest, so loading never
  imports a class named in a file;
- `manifest.json`: how to rebuild the program (the factory `module:function` and its
  arguments), each stage's model with its engine and prices (and, for replayed models, the
  outcome table), metrics, the dataset fingerprint and package versions. No secrets: a
  hosted model is named with the environment variable of its key, never the key;
- `code/`: the factory's source (its module, or its top-level package), like MLflow's code
  paths, unless it comes from an installed package; `tables/`: the outcome tables replayed
  models read. Every path in the manifest is relative to the directory, so the directory can
  be copied to another folder or machine and loaded there.

[`load`][stagewise.optimize.load] builds the program with a factory the caller trusts (see `stagewise.optimize.trust`:
passed in, registered as an entry point, or the export's own `code/` with `trust_code=True`),
restores the predictor state and sets each stage's model. Files the manifest names (router
files, outcome tables) must lie inside the directory.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import sysconfig
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dspy
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError

from stagewise.errors import ExportError
from stagewise.optimize.space import router_modules
from stagewise.optimize.trust import import_factory, trusted_factory
from stagewise.programs.predictors import program_inputs, set_models, stages_of

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
    """Each stage's model as the manifest records it (catalog entry, engine, prices).

    A decision stage a trained classifier stands in for names the router whose classifier it is.
    """
    described = {}
    stood_in = {router.stand_in: name for name, router in router_modules(program).items() if router.stand_in}
    for name, stage in stages_of(program).items():
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
            entry["replay_table"] = str(Path(table.source).resolve())  # made relative by export()
            entry["replay_table_fingerprint"] = table.fingerprint
        if spec.api_key_env:
            entry["api_key_env"] = spec.api_key_env
        described[name] = entry
    return described


def state_without_models(module) -> dict:
    """DSPy's JSON state of `module` (a program or one predictor) with every predictor's LM state removed.

    Models are rebuilt by name, so loading never imports a class named in a file.
    """
    import dspy

    state = module.dump_state()
    for predictor_state in [state] if isinstance(module, dspy.Predict) else state.values():
        predictor_state["lm"] = None
    return state


CODE_LIMIT_BYTES = 20_000_000  # a factory's package larger than this belongs in an installed package


def export(program, directory: str | Path, *, factory: str | Callable | None = None,
           factory_kwargs: dict | None = None, factory_path: str | None = None, metrics: dict | None = None,
           data_fingerprint: str | None = None, extra: dict | None = None) -> Path:
    """Write the program's directory (`program.json`, `manifest.json`, `code/`, `tables/`).

    `factory` rebuilds the program's structure at load time: `"module:function"`, a
    function, or `None` for the program's own class (constructed with `factory_kwargs`).
    `factory_path` is a folder to import the factory's module from (a study config's folder).
    A program chosen by [`JointOptimizer`][stagewise.optimize.joint.JointOptimizer] carries its study,
    trial, metrics and data fingerprint, which the manifest records unless given here.
    Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    factory = _factory_name(program, factory)
    module = import_factory(factory, factory_path).__module__  # fail now, not at load time
    provenance = getattr(program, "stagewise_provenance", None) or {}
    state = state_without_models(program)
    (directory / "program.json").write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    classifiers = {}
    for name, router in router_modules(program).items():
        if router.classifier is not None and router.stand_in is not None:
            from stagewise.routing.persist import save_router

            path = save_router(router.classifier, directory / "routers" / f"{name}.skops")
            classifiers[name] = {"file": str(path.relative_to(directory)), "kind": type(router.classifier).__name__,
                                 "params": router.classifier.get_params()}
    stages = stage_models(program)
    for entry in stages.values():
        if entry.get("replay_table"):
            entry["replay_table"] = _copy_into(Path(entry["replay_table"]), directory / "tables", directory)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "factory": factory,
        "factory_kwargs": factory_kwargs or {},
        "code": _copy_code(module, directory),
        "stages": stages,
        "routers": classifiers,
        "metrics": metrics if metrics is not None else provenance.get("metrics", {}),
        "data_fingerprint": data_fingerprint or provenance.get("data_fingerprint"),
        "versions": _versions(),
        **({k: provenance[k] for k in ("study", "trial") if k in provenance}),
        **(extra or {}),
    }
    manifest = _relative_paths(manifest, directory)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return directory


def _local_path(value: str) -> bool:
    """An absolute path on this machine (not a URL path such as `/v1`): it, or its folder, exists."""
    if "\n" in value or not value.strip():
        return False
    path = Path(value)
    if not path.is_absolute():
        return False
    try:
        return path.exists() or (len(path.parts) > 2 and path.parent.exists())
    except OSError:
        return False


def _relative_paths(value: Any, directory: Path, key: str = "manifest") -> Any:
    """`value` (the manifest) with every absolute path inside `directory` made relative to it.

    An absolute path elsewhere is an [`ExportError`][stagewise.ExportError] naming its key (it would not exist
    where the directory is copied, and it tells who exported the program where).
    """
    if isinstance(value, dict):
        return {name: _relative_paths(item, directory, f"{key}.{name}") for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_paths(item, directory, f"{key}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and _local_path(value):
        path, root = Path(value).resolve(), directory.resolve()
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
        raise ExportError(f"{key} is the absolute path {value!r}: a manifest holds paths relative to the exported "
                          "directory only; pass a relative path (resolved where the program is loaded) or put the "
                          "file in the factory's package")
    return value


def _factory_name(program, factory: str | Callable | None) -> str:
    if isinstance(factory, str):
        return factory
    target = factory if factory is not None else type(program)
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<locals>" in name:
        raise ExportError(f"cannot export a program whose factory {name or target!r} is defined in "
                          f"{'a function' if '<locals>' in name else 'the main script or a notebook'}: "
                          "define it in a module and pass factory='module:function' (or the function)")
    return f"{module}:{name}"


def _copy_code(module_name: str, directory: Path) -> str | None:
    """Copy the factory's module (or its top-level package) into `directory/code`.

    Returns None, copying nothing, when it is installed (site-packages) and so importable wherever stagewise is.
    """
    top = module_name.partition(".")[0]
    spec = importlib.util.find_spec(top)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    if origin is None or top == "stagewise" or _installed(origin):
        return None
    source = origin.parent if origin.name == "__init__.py" else origin
    files = [source] if source.is_file() else [f for f in source.rglob("*.py") if "__pycache__" not in f.parts]
    size = sum(f.stat().st_size for f in files)
    if size > CODE_LIMIT_BYTES:
        raise ExportError(f"the factory's package {top!r} ({source}) holds {size:,} bytes of Python: install it as "
                          "a package instead of copying it into the export")
    code = directory / "code"
    if code.exists():
        shutil.rmtree(code)
    for file in files:
        target = code / (file.name if source.is_file() else Path(source.name) / file.relative_to(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return "code"


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return any(path.resolve().is_relative_to(Path(root).resolve()) for root in roots)


def _copy_into(source: Path, folder: Path, directory: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    return str(target.relative_to(directory))


MAX_JSON_BYTES = 256_000_000  # program.json and manifest.json: far above any real program's


class _StageEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: PositiveInt | None = None
    replay_table: str | None = None
    replay_table_fingerprint: str | None = None


class _RouterEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    file: str


class _Manifest(BaseModel):
    """The fields of `manifest.json` that loading reads, with their types."""

    model_config = ConfigDict(extra="allow")
    format: str
    factory: str
    factory_kwargs: dict[str, Any] = {}
    code: str | None = None
    stages: dict[str, _StageEntry]
    routers: dict[str, _RouterEntry] = {}


def read_json(path: Path, what: str = "") -> Any:
    """The JSON document at `path`.

    Raises:
        ExportError: naming the file, when it is missing, larger than `MAX_JSON_BYTES`, not UTF-8, not JSON,
            or nested too deeply to parse.
    """
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ExportError(f"{str(path)!r} is {size:,} bytes, more than {MAX_JSON_BYTES:,}")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{str(path)!r} does not exist{what}") from None
    except IsADirectoryError:
        raise ExportError(f"{str(path)!r} is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise ExportError(f"{str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{str(path)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ExportError(f"{str(path)!r} nests too deeply to be a stagewise file") from None


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The export's `manifest.json`, checked field by field.

    Raises:
        ExportError: the manifest is unreadable or invalid; the message names the file and the field at fault.
    """
    path = Path(directory) / "manifest.json"
    manifest = read_json(path, ": not an exported stagewise program")
    if not isinstance(manifest, dict):
        raise ExportError(f"{str(path)!r} holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{str(path)!r}: field 'format' is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for field in ("factory", "stages"):
        if field not in manifest:
            raise ExportError(f"{str(path)!r}: field {field!r} is missing")
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ExportError(f"{str(path)!r}: field {where!r}: {problem['msg']}") from None
    return manifest


def input_fields(program, manifest: dict[str, Any]) -> list[str]:
    """The fields a request to an exported program gives (`serve`'s request body, the MLflow model's columns).

    They are the manifest's evaluation inputs, else the fields the program's call takes
    ([`program_inputs`][stagewise.programs.program_inputs]).
    """
    evaluation = manifest.get("evaluation") or {}
    if evaluation.get("inputs"):
        return list(evaluation["inputs"])
    return program_inputs(program)


def inside(directory: Path, relative: str, what: str) -> Path:
    """`directory / relative`, refused unless it lies inside `directory` (no absolute path, no `..`)."""
    path = (directory / str(relative)).resolve()
    if Path(str(relative)).is_absolute() or not path.is_relative_to(directory.resolve()):
        raise ExportError(f"{str(directory / 'manifest.json')!r}: {what} {str(relative)!r} is outside the directory")
    return path


def load(directory: str | Path, *, factory: str | Callable | None = None, trust_code: bool = False, catalog=None):
    """Rebuild an exported program with each stage's model, ready to serve.

    The program's structure comes from a factory the caller trusts: `factory` (the callable,
    or `"module:function"`), an entry point of the `stagewise.programs` group registered for
    the manifest's factory, or, with `trust_code=True`, the manifest's factory imported from the
    directory's own `code/`. Anything else is an
    [`UntrustedCodeError`][stagewise.optimize.trust.UntrustedCodeError] and nothing is imported.

    Args:
        directory: the exported program's directory.
        factory: the trusted factory (a callable or `"module:function"`).
        trust_code: import the manifest's factory from the directory's own `code/`.
        catalog (ModelCatalog | None): the model catalog to rebuild the stages' models from (default: the
            default catalog).

    Raises:
        UntrustedCodeError: no trusted factory builds the program.
        ExportError: the manifest, the program state, a router file or a replay table is missing or
            does not fit the program.

    Examples:
        A round trip on a recorded model is in [`stagewise.export`][stagewise.export]. With a
        program's own factory, or its exported code:

        >>> program = stagewise.load("out/best", factory=support.build)   # doctest: +SKIP
        >>> program = stagewise.load("out/best", trust_code=True)          # doctest: +SKIP
    """
    from stagewise.data import OutcomeTable
    from stagewise.models.lm import get_lm

    directory = Path(directory)
    manifest = read_manifest(directory)
    build = trusted_factory(manifest["factory"], where=f"{str(directory / 'manifest.json')!r}", factory=factory,
                            code=directory / "code", trust_code=trust_code)
    kwargs = manifest.get("factory_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ExportError(f"{str(directory / 'manifest.json')!r}: field 'factory_kwargs' must be an object")
    program = build(**kwargs)
    program_path = directory / "program.json"
    state = read_json(program_path)
    expected = sorted(program.dump_state()) if isinstance(program, dspy.Predict) else \
        [name for name, _ in program.named_parameters()]
    if not isinstance(state, dict) or (not isinstance(program, dspy.Predict) and (
            set(state) != set(expected) or not all(isinstance(v, dict) for v in state.values()))):
        shown = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ExportError(f"{str(program_path)!r} does not hold this program's state: it has {shown}, the program "
                          f"built by {manifest['factory']!r} has the predictors {expected}")
    try:
        program.load_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ExportError(f"{str(program_path)!r} does not hold this program's state: "
                          f"{type(exc).__name__}: {exc}") from None
    tables: dict[str, OutcomeTable] = {}
    models = {}
    found = router_modules(program)
    for name, entry in manifest.get("routers", {}).items():
        from stagewise.routing.persist import RouterFileError, load_router

        file = inside(directory, entry.get("file", ""), f"router {name!r} file")
        if name not in found:
            raise ExportError(f"{str(directory / 'manifest.json')!r}: the program has no router {name!r} for "
                              f"classifier {entry.get('file')!r} (its routers: {sorted(found) or 'none'})")
        try:
            found[name].use_classifier(load_router(file))
        except RouterFileError as exc:
            raise ExportError(f"router {name!r}: {exc}") from None
    for stage, entry in manifest["stages"].items():
        if "decided_by" in entry:
            continue
        options: dict[str, Any] = {"catalog": catalog}
        if entry.get("max_tokens"):
            options["max_tokens"] = entry["max_tokens"]
        if entry.get("replay_table"):
            source = str(inside(directory, entry["replay_table"], f"stage {stage!r} outcome table"))
            tables.setdefault(source, OutcomeTable.load(source))
            if tables[source].fingerprint != entry.get("replay_table_fingerprint", tables[source].fingerprint):
                raise ExportError(f"stage {stage!r}: outcome table {source!r} changed since the program was exported")
            options["replay_table"] = tables[source]
        models[stage] = get_lm(entry["model"], **options)
    set_models(program, models)
    program.stagewise_origin = {"export": str(directory.resolve())}  # checkpointed runs can rebuild it
    return program
