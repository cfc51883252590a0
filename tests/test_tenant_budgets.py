"""Tenants and budgets that hold (issue 14, item 4): ``stagewise serve --tokens FILE``; each model call's
worst case reserved before it and settled after, in a store that processes share and restarts keep
(SQLite, Redis); failed calls charged their estimate. The concurrency test runs 20 requests at once
through two server processes sharing Redis, on a slow stand-in provider on loopback; the restart
tests use recorded RouterBench models."""

import concurrent.futures
import re
import time

import dspy
import httpx
import pytest

from stagewise.errors import ConfigError
from stagewise.models.catalog import ModelCatalog
from stagewise.models.lm import get_lm
from stagewise.models.usage import track_usage
from stagewise.programs import FanOut, MajorityVote, Stage
from stagewise.programs.run import guarding
from stagewise.runtime.budgets import Budget, BudgetExceeded, open_spend_store, tenant_scope, today
from stagewise.runtime.resilience import Resilience, StageFailed, StagePolicy
from stagewise.runtime.tenants import Tenant, match_token, read_tokens

from .conftest import ROUTERBENCH_TEST, require_service
from .test_readme_snippets import readme_block
from .test_resilience import build_answer
from .test_serve_limits import StandIn, at_once, export_recorded, export_slow, serve, stop


@pytest.fixture(scope="module")
def arc():
    from stagewise.data import OutcomeTable

    return OutcomeTable.load(ROUTERBENCH_TEST)


def worst_case(stage: Stage, prompt: str) -> float:
    """What the budget reserves for ``stage``'s call on ``prompt``: probed with a zero budget."""
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(budget=Budget(per_request_usd=0.0))):
        with pytest.raises(BudgetExceeded) as probe:
            stage(prompt=prompt)
    return probe.value.estimate_usd


# --- the tokens file --------------------------------------------------------------------------

def test_the_readme_tokens_file_reads_as_printed(tmp_path, monkeypatch):
    path = tmp_path / "tokens.toml"
    path.write_text(readme_block("[tenants.acme]", "toml"))
    monkeypatch.setenv("ACME_TOKEN", "acme-7d1e0b9c5a3f2468")
    acme, globex = read_tokens(path)
    assert (acme.name, acme.token, acme.daily_budget_usd, acme.rate) == ("acme", "acme-7d1e0b9c5a3f2468", 2.5, 120)
    assert (globex.name, globex.daily_budget_usd, globex.rate) == ("globex", None, None)
    assert "acme-7d1e" not in repr(acme)  # a tenant's repr never shows its token
    assert match_token([acme, globex], "globex-4f1c9a7e2b8d6035") is globex
    assert match_token([acme, globex], "globex-4f1c9a7e2b8d6036") is None and match_token([acme], "") is None


@pytest.mark.parametrize("text, named", [
    ("[tenants.acme\ntoken = 'x'", "is not valid TOML"),
    ("[other]\nx = 1", "unknown key 'other'"),
    ("title = 'no tenants'\n[tenants]\n", "unknown key 'title'"),
    ("[tenants]\n", "no [tenants.NAME] table"),
    ("[tenants.acme]\ndaily_budget_usd = 1.0", "tenants.acme: give exactly one of token and token_env"),
    ("[tenants.acme]\ntoken = 'short'", "tenants.acme: the token must be at least 8 characters"),
    ("[tenants.acme]\ntoken = 12345678", "tenants.acme.token must be a string"),
    ("[tenants.acme]\ntoken_env = 'STAGEWISE_TEST_UNSET_TOKEN'", "tenants.acme.token_env: $STAGEWISE_TEST_UNSET_TOKEN"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\ndaily_budget_usd = 'ten'",
     "tenants.acme.daily_budget_usd must be a number >= 0, got 'ten'"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\ndaily_budget_usd = -1", "tenants.acme.daily_budget_usd"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\nrate = 0", "tenants.acme.rate must be a whole number"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\nrate = 2.5", "tenants.acme.rate"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\nbudget = 3", "tenants.acme.budget: unknown key"),
    ("[tenants.acme]\ntoken = 'long-enough-token'\n[tenants.globex]\ntoken = 'long-enough-token'",
     "tenants.globex has the same token as tenants.acme"),
    ("[tenants.'a b']\ntoken = 'long-enough-token'", "tenants.a b: a tenant name is"),
    ("tenants = 3", "no [tenants.NAME] table"),
    ("[tenants]\nacme = 'x'", "tenants.acme must be a table"),
])
def test_a_malformed_tokens_file_is_a_config_error_naming_the_file_and_key(tmp_path, monkeypatch, text, named):
    monkeypatch.delenv("STAGEWISE_TEST_UNSET_TOKEN", raising=False)
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_tokens(path)
    message = str(caught.value)
    assert f"tokens file {str(path)!r}" in message and named in message, message
    assert "long-enough-token" not in message  # a token is never quoted


def test_a_missing_tokens_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"tokens file {str(tmp_path / 'none.toml')!r} does not exist")):
        read_tokens(tmp_path / "none.toml")


# --- spend stores: the reservation is atomic --------------------------------------------------

@pytest.fixture(params=["memory", "sqlite", "redis"])
def spend_url(request, tmp_path):
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'spend.db'}"
    return require_service("redis")


def test_concurrent_reservations_never_pass_the_limit(spend_url):
    tenant = f"t{time.time_ns()}"
    stores = [open_spend_store(spend_url) for _ in range(2 if spend_url else 1)]  # two clients of one store
    accepted = []

    def reserve(i):
        if stores[i % len(stores)].reserve(tenant, "2026-12-03", 3, 20) is None:
            accepted.append(i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(reserve, range(40)))
    assert len(accepted) == 6 and stores[0].spent(tenant, "2026-12-03") == 18
    stores[-1].add(tenant, "2026-12-03", -4)  # a settlement below the estimate frees room
    assert stores[0].reserve(tenant, "2026-12-03", 3, 20) is None  # 17
    assert stores[1 % len(stores)].reserve(tenant, "2026-12-03", 3, 20) is None  # 20: the limit is reachable
    assert stores[0].reserve(tenant, "2026-12-03", 1, 20) == 20  # refused: the spend is returned
    assert stores[0].spent(tenant, "2026-12-04") == 0  # another day


def test_a_bad_spend_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"spend store URL 'postgresql://u:\*\*\*@h/db'"):
        open_spend_store("postgresql://u:secret@h/db")


# --- in process: failed calls, parallel branches ----------------------------------------------

def test_a_failed_call_is_charged_its_estimate_and_a_successful_one_its_cost(arc):
    stage = Stage("answer", "prompt -> answer", lm=get_lm("recorded/gpt-4-1106-preview", replay_table=arc))
    unknown = "a prompt the table never recorded"
    estimate = worst_case(stage, unknown)
    budget = Budget(per_tenant_day_usd=1.0)
    resilience = Resilience(budget=budget, default=StagePolicy("fail"))
    with dspy.context(adapter=dspy.JSONAdapter()), guarding(resilience), tenant_scope("acme"):
        with pytest.raises(StageFailed):
            stage(prompt=unknown)
        assert budget.tenant_spent("acme") == pytest.approx(estimate, abs=1e-9)  # the provider may bill it
        with track_usage() as ledger:
            stage(prompt=arc.prompts[0])
    assert ledger.total_cost > 0
    assert budget.tenant_spent("acme") == pytest.approx(estimate + ledger.total_cost, abs=2e-9)


def test_parallel_branches_of_one_request_reserve_against_one_budget(tmp_path):
    stand_in = StandIn(delay=1.0)
    catalog = ModelCatalog.load(stand_in.catalog(tmp_path))
    try:
        branches = {f"b{i}": Stage(f"b{i}", "prompt -> answer", lm=get_lm("slow", catalog=catalog, cache=False))
                    for i in range(4)}
        fan = FanOut("vote", branches, MajorityVote("answer"), max_workers=4)
        estimate = worst_case(branches["b0"], "q")
        budget = Budget(per_request_usd=2.5 * estimate)  # room for two calls at once, not four
        with dspy.context(adapter=dspy.JSONAdapter()), guarding(Resilience(budget=budget)):
            with pytest.raises(BudgetExceeded, match="request budget"):
                fan(prompt="q")
    finally:
        stand_in.close()
    assert len(stand_in.arrivals) == 2  # the other two branches were stopped before their calls


# --- two server processes sharing Redis: 20 requests at once ----------------------------------

def test_twenty_concurrent_requests_through_two_servers_spend_at_most_the_tenant_budget(tmp_path):
    redis_url = require_service("redis")
    stand_in = StandIn(delay=1.5, completion_tokens=16)
    catalog_path = stand_in.catalog(tmp_path, max_output=16)
    export_slow(tmp_path, catalog_path)
    catalog = ModelCatalog.load(catalog_path)
    prompts = [f"question {i}" for i in range(10, 30)]  # one token count for all: one worst case
    stage = Stage("answer", "prompt -> answer", lm=get_lm("slow", catalog=catalog, cache=False))
    worst = {worst_case(stage, p) for p in prompts}
    assert len(worst) == 1
    [estimate] = worst
    # The stand-in bills just under the worst case: six calls cost more than five worst cases, so at
    # most five can ever be paid for, whatever the timing; twenty would overshoot fivefold.
    stand_in.prompt_tokens = int(estimate * 1e6) - 16 * 2 - 1  # at 1 USD/Mtok in, 2 out
    cost = (stand_in.prompt_tokens * 1.0 + 16 * 2.0) / 1e6
    budget = 5 * estimate  # worth five calls
    assert 6 * cost > budget and cost <= estimate
    tenant = f"acme{time.time_ns()}"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tenants.{tenant}]\ntoken = "acme-token-{tenant}"\ndaily_budget_usd = {budget!r}\n')
    env = {"STAGEWISE_CATALOG": str(catalog_path)}
    servers = [serve(tmp_path, "--tokens", str(tokens), "--redis", redis_url, env=env) for _ in range(2)]
    auth = {"Authorization": f"Bearer acme-token-{tenant}"}
    try:
        answers = at_once([lambda i=i: httpx.post(f"{servers[i % 2][1]}/v1/run", json={"prompt": prompts[i]},
                                                  headers=auth, timeout=60) for i in range(20)])
        seen = [httpx.get(f"{base}/v1/budget", headers=auth, timeout=10).json() for _, base, _ in servers]
    finally:
        for process, _, _ in servers:
            stop(process)
        stand_in.close()
    logs = "".join(log.read_text() for _, _, log in servers)
    codes = [a.status_code for a in answers]
    warnings = [line for line in logs.splitlines() if "WARNING" in line or "ERROR" in line or "not answering" in line]
    assert set(codes) == {200, 402}, ([a.text for a in answers if a.status_code not in (200, 402)], warnings)
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in answers if a.status_code == 402)
    spent = sum(a.json()["cost_usd"] for a in answers if a.status_code == 200)
    assert spent == pytest.approx(codes.count(200) * cost)
    assert len(stand_in.arrivals) == codes.count(200)  # every call made was answered and charged
    assert spent <= budget + 1e-12 and codes.count(200) <= 5  # at most five calls' worth, across both processes
    assert codes.count(200) >= 1
    assert seen[0] == seen[1] and seen[0]["spent_usd"] == pytest.approx(spent, abs=1e-9)  # one ledger, in Redis
    assert seen[0]["daily_budget_usd"] == pytest.approx(budget) and seen[0]["day"] == today()
    assert seen[0]["store"].startswith("Redis redis://")


# --- a restart remembers the day's spend -------------------------------------------------------

@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_restarted_server_remembers_what_the_tenant_spent(tmp_path, arc, store):
    model = "recorded/gpt-4-1106-preview"
    stage = Stage("answer", "prompt -> answer", lm=get_lm(model, replay_table=arc))
    worst = {p: worst_case(stage, p) for p in arc.prompts[:4]}
    cheapest, other = sorted(worst, key=worst.get)[:2]
    recorded = arc.outcome(cheapest, "gpt-4-1106-preview").cost_usd
    export_recorded(tmp_path, arc, model)
    tenant = f"acme{time.time_ns()}"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[tenants.{tenant}]\ntoken = "acme-token-{tenant}"\n'
                      f'daily_budget_usd = {worst[cheapest] + recorded / 2!r}\n')  # room for one request
    options = ["--tokens", str(tokens)] + (["--spend", f"sqlite:///{tmp_path / 'spend.db'}"] if store == "sqlite"
                                           else ["--redis", require_service("redis")])
    auth = {"Authorization": f"Bearer acme-token-{tenant}"}
    process, base, log = serve(tmp_path, *options)
    try:
        first = httpx.post(f"{base}/v1/run", json={"prompt": cheapest}, headers=auth, timeout=60)
        assert first.status_code == 200, first.text + log.read_text()
        before = httpx.get(f"{base}/v1/budget", headers=auth, timeout=10).json()
    finally:
        stop(process)
    assert before["spent_usd"] == pytest.approx(recorded, abs=1e-9)
    process, base, log = serve(tmp_path, *options)  # a new process: only the store remembers
    try:
        after = httpx.get(f"{base}/v1/budget", headers=auth, timeout=10).json()
        second = httpx.post(f"{base}/v1/run", json={"prompt": other}, headers=auth, timeout=60)
    finally:
        stop(process)
    assert after == before
    assert second.status_code == 402, second.text + log.read_text()
    error = second.json()["error"]
    assert error["code"] == "budget_exceeded" and f"tenant {tenant!r} daily budget" in error["message"]
    spent = re.search(r"spent \$([\d.]+) today", error["message"])
    assert spent and float(spent[1]) == pytest.approx(recorded, abs=1e-9), error["message"]


def test_tenants_are_named_by_the_file_and_keep_their_own_rates(tmp_path, arc):
    from fastapi.testclient import TestClient

    from stagewise.runtime.serve import create_app

    export_recorded(tmp_path, arc)
    tenants = [Tenant("acme", "acme-token-123", None, 2), Tenant("globex", "globex-token-123", 0.5, None)]
    app = create_app(tmp_path / "best", tenants=tenants, requests_per_minute=50, factory=build_answer)
    client = TestClient(app)
    acme, globex = ({"Authorization": f"Bearer {t.token}"} for t in tenants)
    assert [client.post("/v1/run", json={}, headers=acme).status_code for _ in range(3)] == [422, 422, 429]
    assert client.post("/v1/run", json={}, headers=globex).status_code == 422  # its own window
    seen = client.get("/v1/budget", headers=globex).json()
    assert (seen["tenant"], seen["daily_budget_usd"], seen["spent_usd"]) == ("globex", 0.5, 0.0)
    assert seen["store"] == "process memory"  # create_app alone, with no Budget store: said in the log too


def test_serve_options_are_in_help_and_readme_and_a_bad_tokens_file_stops_it(tmp_path):
    from typer.testing import CliRunner

    from stagewise.cli import app

    from .documentation import doc_text

    runner = CliRunner()
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "250"}, prog_name="stagewise").output
    readme = doc_text()
    for option in ("--tokens", "--timeout", "--max-concurrency", "--daily-budget", "--spend", "--redis", "--rate",
                   "--max-body", "--no-auth", "--budget"):
        assert option in shown and re.search(rf"(?<![\w-]){option}\b", readme), option
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("[tenants.acme]\ntoken = 'long-enough-token'\nrate = 'fast'\n")
    result = runner.invoke(app, ["serve", str(tmp_path), "--tokens", str(tokens)])
    assert result.exit_code == 2
    assert f"tokens file {str(tokens)!r}: tenants.acme.rate must be a whole number" in " ".join(result.output.split())
    tokens.write_text("[tenants.acme]\ntoken = 'long-enough-token'\n")
    result = runner.invoke(app, ["serve", str(tmp_path), "--tokens", str(tokens), "--no-auth"])
    assert result.exit_code == 2 and "--no-auth and --tokens" in result.output
