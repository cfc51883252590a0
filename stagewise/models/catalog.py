"""The model catalog: what each model is, what it costs, and how to reach it.

The catalog is declarative. A TOML file shipped with the package (`catalog.toml`
beside this module) lists the built-in models; a user file in the same format adds
models or replaces built-in entries. Each entry is validated into a [`ModelSpec`][stagewise.models.ModelSpec].

Prices, in US dollars per million tokens, come from one of four sources, recorded in
`ModelSpec.price_source`:

- `litellm`: hosted models are priced from litellm's bundled cost map (the JSON file
  inside the installed `litellm` package), never typed by hand. `litellm_key` names
  the entry; context window and maximum output default to the map's values.
- `notional`: local models have no bill, but a cost-quality trade-off needs a price.
  Their price is proportional to parameter count: `NOTIONAL_INPUT_PER_B` and
  `NOTIONAL_OUTPUT_PER_B` dollars per million tokens per billion parameters, in line
  with what hosted open-weight models of a given size cost.
- `explicit`: a user entry that states `input_price` and `output_price` (a private
  deployment the cost map does not know).
- `recorded`: replayed models whose outcome table records the cost of each call
  (RouterBench); the listed price is only used when a table records none.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stagewise.errors import ModelError
from stagewise.tomlfiles import read_toml

NOTIONAL_INPUT_PER_B = 0.05
NOTIONAL_OUTPUT_PER_B = 0.20

ContextFormat = Literal["xml", "markdown", "plain"]
LatencyClass = Literal["fast", "medium", "slow"]
EngineKind = Literal["llama_cpp", "litellm", "replay"]
PriceSource = Literal["litellm", "notional", "explicit", "recorded"]

USER_CATALOG_ENV = "STAGEWISE_CATALOG"
# Where hosted providers' keys live, for model strings used outside the catalog.
PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
}


class CatalogError(ModelError, ValueError):
    """A catalog file or entry is malformed; the message names the file, entry and field."""


class UnknownModelError(ModelError, KeyError):
    """A model name is not in the catalog; the message lists the close matches."""

    def __init__(self, name: str, known: list[str], detail: str = ""):
        self.name = name
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        detail = f" {detail}" if detail else ""
        super().__init__(f"unknown model {name!r}.{hint}{detail} Known models: {', '.join(sorted(known))}.")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


class ModelSpec(BaseModel):
    """One catalog entry. Frozen: specs are shared by every LM built from them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str = Field(description="Who serves the model: local, openai, anthropic, replay, ...")
    engine: EngineKind
    model: str = Field(
        description="llama_cpp: a weights id; litellm: the DSPy/litellm model string; "
        "replay: the model's column name in the outcome table."
    )
    api_base: str | None = None
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key (never the key)."
    )
    parameters_b: float | None = Field(default=None, gt=0, description="Billions of parameters.")
    litellm_key: str | None = None
    input_price: float | None = Field(default=None, ge=0, description="USD per million input tokens.")
    output_price: float | None = Field(default=None, ge=0, description="USD per million output tokens.")
    price_source: PriceSource | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output: int | None = Field(default=None, gt=0)
    context_format: ContextFormat = "markdown"
    tokenizer: str = Field(description="'llama.cpp' (the model's own) or a tiktoken encoding name.")
    latency_class: LatencyClass = "medium"

    @model_validator(mode="after")
    def _resolve_price_and_limits(self) -> ModelSpec:
        updates: dict = {}
        source = self.price_source
        if source is None:
            if self.input_price is not None or self.output_price is not None:
                source = "explicit"
            elif self.engine == "llama_cpp":
                source = "notional"
            elif self.engine == "replay":
                source = "recorded"
            else:
                source = "litellm"
            updates["price_source"] = source
        if source == "explicit" and (self.input_price is None or self.output_price is None):
            raise ValueError("an explicit price needs both input_price and output_price")
        if source == "notional":
            if self.parameters_b is None:
                raise ValueError("a notional price needs parameters_b (billions of parameters)")
            updates["input_price"] = round(self.parameters_b * NOTIONAL_INPUT_PER_B, 12)
            updates["output_price"] = round(self.parameters_b * NOTIONAL_OUTPUT_PER_B, 12)
        if source == "litellm" or (source == "recorded" and self.litellm_key):
            key = self.litellm_key or self.model.split("/", 1)[-1]
            entry = litellm_cost_map().get(key)
            if entry is None:
                close = difflib.get_close_matches(key, list(litellm_cost_map()), n=3, cutoff=0.6)
                hint = f" (close: {', '.join(close)})" if close else ""
                raise ValueError(f"litellm_key {key!r} is not in litellm's bundled cost map{hint}")
            if entry.get("input_cost_per_token") is None or entry.get("output_cost_per_token") is None:
                raise ValueError(f"litellm's cost map has no per-token price for {key!r}")
            updates["litellm_key"] = key
            updates["input_price"] = round(entry["input_cost_per_token"] * 1e6, 12)
            updates["output_price"] = round(entry["output_cost_per_token"] * 1e6, 12)
            if self.context_window is None and entry.get("max_input_tokens"):
                updates["context_window"] = int(entry["max_input_tokens"])
            if self.max_output is None and entry.get("max_output_tokens"):
                updates["max_output"] = int(entry["max_output_tokens"])
        for key, value in updates.items():  # frozen model: set once, during validation
            object.__setattr__(self, key, value)
        if self.context_window is None:
            raise ValueError("context_window is required (litellm's cost map has none for this model)")
        if self.max_output is None:
            raise ValueError("max_output is required (litellm's cost map has none for this model)")
        return self

    @property
    def catalog_price_source(self) -> PriceSource:
        """Where the listed price comes from (for a replayed model: its litellm entry, or explicit)."""
        if self.price_source == "recorded":
            return "litellm" if self.litellm_key else "explicit"
        return self.price_source

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Dollar cost of one call with these token counts at the catalog price."""
        if self.input_price is None or self.output_price is None:
            raise ValueError(f"model {self.name!r} has no catalog price (its cost is recorded per call)")
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


@cache
def litellm_cost_map() -> dict[str, dict]:
    """Litellm's bundled price map, read from the installed package without importing litellm."""
    spec = importlib.util.find_spec("litellm")  # locate, not import: importing litellm takes seconds
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("litellm is not installed; it is a dependency of stagewise: pip install stagewise")
    path = Path(spec.submodule_search_locations[0]) / "model_prices_and_context_window_backup.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _entries_from_toml(path: Path | resources.abc.Traversable, label: str) -> dict[str, dict]:
    data = read_toml(path, f"catalog file {label!s}", CatalogError)
    unknown = set(data) - {"models"}
    if unknown:
        raise CatalogError(f"catalog file {label!s}: unknown top-level key(s) {sorted(unknown)}; "
                           "expected [models.<name>]")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise CatalogError(f"catalog file {label!s}: 'models' must be a table of [models.<name>] entries")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise CatalogError(f"catalog file {label!s}, entry {name!r}: must be a table, got {type(entry).__name__}")
    return models


def _validate(name: str, entry: dict, label: str) -> ModelSpec:
    try:
        return ModelSpec(name=name, **entry)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(entry)"
            got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"field {field!r}: {message}{got}")
        raise CatalogError(f"catalog file {label!s}, entry {name!r}: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class ModelCatalog:
    """The built-in models plus any user file, by name."""

    specs: dict[str, ModelSpec]

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> ModelCatalog:
        """Built-in catalog, extended by `user_file` (or the `STAGEWISE_CATALOG` file)."""
        builtin = resources.files("stagewise.models").joinpath("catalog.toml")
        builtin_label = "stagewise/models/catalog.toml"
        raw = {name: (entry, builtin_label) for name, entry in _entries_from_toml(builtin, builtin_label).items()}
        user_file = user_file or os.environ.get(USER_CATALOG_ENV) or None
        if user_file is not None:
            path = Path(user_file)
            raw.update({name: (entry, str(path)) for name, entry in _entries_from_toml(path, str(path)).items()})
        return cls({name: _validate(name, entry, label) for name, (entry, label) in raw.items()})

    def __getitem__(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownModelError(name, list(self.specs)) from None

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self):
        return iter(self.specs.values())

    def __len__(self) -> int:
        return len(self.specs)

    def resolve(self, name: str) -> ModelSpec:
        """A catalog entry by name, or a spec for a model string DSPy accepts (`openai/gpt-4o`).

        A model string outside the catalog is priced from litellm's bundled cost map; one that
        the map does not know either needs a user catalog entry (an explicit price).
        """
        if name in self.specs or "/" not in name:
            return self[name]
        provider, _, model = name.partition("/")
        cost_map = litellm_cost_map()
        candidates = [name, model] + ([f"ollama/{model}"] if provider == "ollama_chat" else [])
        key = next((k for k in candidates if k in cost_map), None)
        if key is None:
            close = difflib.get_close_matches(model, list(cost_map), n=3, cutoff=0.6)
            hint = f" Close entries in litellm's cost map: {', '.join(close)}." if close else ""
            raise UnknownModelError(name, list(self.specs), f"It is not in litellm's cost map either.{hint} "
                                    "Add it to a user catalog file with an explicit price.")
        tokenizer = "o200k_base" if provider == "openai" and model.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o")) \
            else "cl100k_base"
        return ModelSpec(name=name, provider=provider, engine="litellm", model=name, litellm_key=key,
                         api_key_env=PROVIDER_KEY_ENV.get(provider), tokenizer=tokenizer)

    def price_of(self, name: str, input_tokens: int, output_tokens: int) -> float:
        """The USD cost of a call to model `name` with these token counts."""
        return self[name].cost(input_tokens, output_tokens)

    def by_recorded_name(self, engine_model: str) -> ModelSpec | None:
        """The replay entry whose table column is `engine_model`, if any."""
        return next((s for s in self.specs.values() if s.engine == "replay" and s.model == engine_model), None)


@cache
def default_catalog() -> ModelCatalog:
    """The catalog as configured by the environment, loaded once per process."""
    return ModelCatalog.load()
