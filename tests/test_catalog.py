"""The model catalog: built-in entries, litellm prices, notional local prices, user files, errors."""

import pytest

from stagewise.models.catalog import (
    NOTIONAL_INPUT_PER_B,
    NOTIONAL_OUTPUT_PER_B,
    CatalogError,
    ModelCatalog,
    UnknownModelError,
    litellm_cost_map,
)


@pytest.fixture(scope="module")
def catalog():
    return ModelCatalog.load()


def test_every_entry_has_the_documented_fields(catalog):
    assert len(catalog) >= 10
    for spec in catalog:
        assert spec.context_format in ("xml", "markdown", "plain")
        assert spec.latency_class in ("fast", "medium", "slow")
        assert spec.context_window > 0 and spec.max_output > 0
        assert spec.tokenizer


def test_hosted_prices_come_from_litellms_bundled_map(catalog):
    cost_map = litellm_cost_map()
    hosted = [s for s in catalog if s.engine == "litellm"]
    assert hosted
    for spec in hosted:
        entry = cost_map[spec.litellm_key]
        assert spec.price_source == "litellm"
        assert spec.input_price == pytest.approx(entry["input_cost_per_token"] * 1e6)
        assert spec.output_price == pytest.approx(entry["output_cost_per_token"] * 1e6)
        assert spec.context_window == entry["max_input_tokens"]


def test_local_models_have_a_notional_price_proportional_to_size(catalog):
    small, larger = catalog["smollm2-135m"], catalog["gemma3-270m"]
    assert small.price_source == larger.price_source == "notional"
    assert small.input_price == pytest.approx(0.135 * NOTIONAL_INPUT_PER_B)
    assert small.output_price == pytest.approx(0.135 * NOTIONAL_OUTPUT_PER_B)
    assert larger.input_price / small.input_price == pytest.approx(0.27 / 0.135)


def test_cost_is_tokens_times_price(catalog):
    spec = catalog["gpt-4o-mini"]  # $0.15 / $0.60 per million tokens
    assert spec.cost(1_000_000, 0) == pytest.approx(spec.input_price)
    assert spec.cost(2_000, 500) == pytest.approx((2_000 * 0.15 + 500 * 0.60) / 1e6)


def test_unknown_model_lists_close_matches(catalog):
    with pytest.raises(UnknownModelError) as info:
        catalog["smollm2"]
    assert "smollm2-135m" in info.value.suggestions
    assert "Did you mean: smollm2-135m" in str(info.value)


def test_user_file_adds_and_replaces_entries(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text(
        """
[models.my-server]
provider = "openai-compatible"
engine = "litellm"
model = "openai/my-model"
api_base = "http://127.0.0.1:9999/v1"
input_price = 0.5
output_price = 1.5
context_window = 4096
max_output = 512
tokenizer = "cl100k_base"

[models.gpt-4o-mini]
provider = "openai"
engine = "litellm"
model = "openai/gpt-4o-mini"
context_format = "xml"
tokenizer = "o200k_base"
"""
    )
    catalog = ModelCatalog.load(user)
    assert catalog["my-server"].price_source == "explicit"
    assert catalog.price_of("my-server", 1000, 1000) == pytest.approx(2.0e-3)
    assert catalog["gpt-4o-mini"].context_format == "xml"
    assert "smollm2-135m" in catalog


@pytest.mark.parametrize(
    "entry, field",
    [
        ('provider = "x"\nengine = "llama_cpp"\nmodel = "m"\ncontext_window = 1\nmax_output = 1\n'
         'tokenizer = "llama.cpp"\nparameters_b = 1\ncontext_format = "html"', "context_format"),
        ('provider = "x"\nengine = "litellm"\nmodel = "openai/m"\ncontext_window = 1\nmax_output = 1\n'
         'tokenizer = "t"\nlitellm_key = "no-such-model"', "no-such-model"),
        ('provider = "x"\nengine = "llama_cpp"\nmodel = "m"\ncontext_window = 1\nmax_output = 1\n'
         'tokenizer = "llama.cpp"', "parameters_b"),
        ('provider = "x"\nengine = "llama_cpp"\nmodel = "m"\ncontext_window = "big"\nmax_output = 1\n'
         'tokenizer = "llama.cpp"\nparameters_b = 1', "context_window"),
        ('provider = "x"\nengine = "litellm"\nmodel = "openai/gpt-4o"\ntokenizer = "t"\ncolour = "red"', "colour"),
        ('engine = "litellm"\nmodel = "openai/gpt-4o"\ntokenizer = "t"', "provider"),
    ],
)
def test_malformed_user_catalog_names_file_entry_and_field(tmp_path, entry, field):
    user = tmp_path / "bad.toml"
    user.write_text(f"[models.broken]\n{entry}\n")
    with pytest.raises(CatalogError) as info:
        ModelCatalog.load(user)
    message = str(info.value)
    assert str(user) in message and "'broken'" in message and field in message


def test_unreadable_user_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        ModelCatalog.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x\nprovider=")
    with pytest.raises(CatalogError, match="not valid TOML"):
        ModelCatalog.load(bad)
    top = tmp_path / "top.toml"
    top.write_text("[model.x]\nprovider='a'\n")
    with pytest.raises(CatalogError, match="unknown top-level"):
        ModelCatalog.load(top)


def test_model_strings_outside_the_catalog_are_priced_from_litellm(catalog):
    spec = catalog.resolve("anthropic/claude-sonnet-4-5")
    assert spec.engine == "litellm" and spec.price_source == "litellm"
    assert spec.input_price == pytest.approx(litellm_cost_map()["claude-sonnet-4-5"]["input_cost_per_token"] * 1e6)
    assert spec.api_key_env == "ANTHROPIC_API_KEY"
    local = catalog.resolve("ollama_chat/llama3.1")
    assert local.input_price == 0 and local.api_key_env is None
    assert catalog.resolve("smollm2-135m") is catalog["smollm2-135m"]


def test_unknown_model_string_says_how_to_add_it(catalog):
    with pytest.raises(UnknownModelError) as info:
        catalog.resolve("openai/gpt-4o-mimi")
    message = str(info.value)
    assert "explicit price" in message and "gpt-4o-mini" in message


USER_CATALOG = """
[models.my-smollm]
provider = "local"
engine = "llama_cpp"
model = "smollm2-135m-instruct"
parameters_b = 0.135
input_price = 1.0
output_price = 2.0
context_window = 2048
max_output = 64
context_format = "plain"
tokenizer = "llama.cpp"

[models.gpt-4o-mini]
provider = "openai"
engine = "litellm"
model = "openai/gpt-4o-mini"
context_format = "xml"
tokenizer = "o200k_base"
"""


@pytest.fixture()
def process_catalog():
    """The process reads its catalog once (default_catalog): read again, as in a process started anew."""
    from stagewise.models.catalog import default_catalog

    default_catalog.cache_clear()
    yield
    default_catalog.cache_clear()  # the next test reads the catalog without this test's variable


def test_the_stagewise_catalog_variable_names_a_user_catalog(tmp_path, monkeypatch, process_catalog):
    """README: set STAGEWISE_CATALOG=models.toml and every part of stagewise sees its entries."""
    import dspy

    from stagewise.models.lm import get_lm
    from stagewise.models.usage import track_usage

    user = tmp_path / "models.toml"
    user.write_text(USER_CATALOG)
    monkeypatch.setenv("STAGEWISE_CATALOG", str(user))
    catalog = ModelCatalog.load()
    assert catalog["my-smollm"].price_source == "explicit" and catalog["gpt-4o-mini"].context_format == "xml"
    assert "smollm2-135m" in catalog  # added to the built-in catalog, not instead of it
    # A model by the user's name, on the real local engine, priced at the user's prices.
    lm = get_lm("my-smollm", cache=False, max_tokens=16)
    with track_usage() as ledger:
        lm("Say hello.")
    [record] = ledger.records
    assert record.model == "my-smollm" and record.engine == "llama_cpp" and record.output_tokens > 0
    assert record.cost_usd == pytest.approx((record.input_tokens * 1.0 + record.output_tokens * 2.0) / 1e6)
    assert lm.spec.context_window == 2048 and isinstance(lm, dspy.LM)
    # The command reads it too: `stagewise models` lists the user's entry, at its explicit price.
    from typer.testing import CliRunner

    from stagewise.cli import app

    listed = CliRunner().invoke(app, ["models"])
    assert listed.exit_code == 0, listed.output
    [row] = [line for line in listed.output.splitlines() if "my-smollm" in line]
    assert "explicit" in row and "llama_cpp" in row
    monkeypatch.setenv("STAGEWISE_CATALOG", str(tmp_path / "missing.toml"))
    with pytest.raises(CatalogError, match="missing.toml"):
        ModelCatalog.load()
