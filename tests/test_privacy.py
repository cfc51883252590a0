"""Personal data kept out (issue 15, item 4): the detectors, custom patterns, dropped and hashed fields,
the [privacy] config table, and a run whose card number and e-mail reach none of the checkpoint stores,
context stores (SQLite, PostgreSQL, Redis), spans or log records, while the model sees them and the
prediction is unchanged. Models are recorded (an outcome table written here) or scripted."""

import json
import logging
import uuid
from pathlib import Path

import dspy
import pandas as pd
import pytest

from stagewise.data import OutcomeTable
from stagewise.errors import ConfigError
from stagewise.models.lm import get_lm
from stagewise.programs import Chain, Stage
from stagewise.programs.run import observing
from stagewise.runtime import (
    ContextRecorder,
    PrivacyFilter,
    PrivacyPolicy,
    Tracer,
    open_checkpoints,
    open_context_store,
    protecting,
    run,
    tracer_provider,
)
from stagewise.runtime.privacy import iban_valid, luhn_valid

from .conftest import require_service

CARD, CARD_DIGITS, EMAIL = "4111 1111 1111 1111", "4111111111111111", "jane.doe@example.com"
SECRETS = (CARD, CARD_DIGITS, EMAIL)
ALL = PrivacyPolicy()


def redacted(text: str, policy: PrivacyPolicy = ALL) -> str:
    return policy.text(text)


# --- detectors -------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["jane.doe@example.com", "J.Smith+news@mail.example.co.uk",
                                     "o'brien@sub-domain.example.org", "jürgen@beispiel.de"])
def test_email_addresses_are_found(address):
    assert redacted(f"write to {address}, please") == "write to <EMAIL>, please"


@pytest.mark.parametrize("text", ["user@localhost", "@example.com", "a@b", "price 3@5 each", "name at example.com"])
def test_things_that_are_not_email_addresses_stay(text):
    assert redacted(text) == text


@pytest.mark.parametrize("number", ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
                                    "5555 5555 5555 4444", "2221 0000 0000 0009", "3782 822463 10005",
                                    "6011 1111 1111 1117", "4222222222222"])
def test_luhn_valid_card_numbers_are_found(number):
    assert luhn_valid(number.replace(" ", "").replace("-", ""))
    assert redacted(f"card {number} was charged") == "card <CREDIT_CARD> was charged"


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "4111111111111121", "5555 5555 5555 4445",
                                    "1234 5678 9012", "order 1234567890"])
def test_luhn_invalid_and_short_numbers_stay(number):
    assert not luhn_valid("".join(c for c in number if c.isdigit())) or len(number) < 13
    cards = PrivacyPolicy(detect=["credit_card"])  # a bare 10-digit number may be a phone number somewhere
    assert cards.text(f"card {number} was charged") == f"card {number} was charged"


def test_a_card_number_inside_a_longer_run_of_digit_groups_is_found():
    assert redacted("ref 12 4111 1111 1111 1111 ok") == "ref 12 <CREDIT_CARD> ok"
    assert redacted("cards 4111111111111111 and 5555555555554444.") == "cards <CREDIT_CARD> and <CREDIT_CARD>."


@pytest.mark.parametrize("number", ["+44 20 7946 0958", "+1 415-555-2671", "+33 1 42 68 53 00", "+49 30 901820",
                                    "+81 3-1234-5678", "+91 98765 43210", "0044 20 7946 0958", "+55 11 91234-5678",
                                    "(415) 555-2671", "020 7946 0958"])
def test_international_and_national_phone_numbers_are_found(number):
    assert redacted(f"call {number} today") == "call <PHONE> today"


@pytest.mark.parametrize("text", ["shipped on 2024-01-02 at 10:30", "order 123456", "in 2024 we sold 1,234.56",
                                  "version 3.11.7", "+12 items"])
def test_dates_times_and_short_numbers_are_not_phone_numbers(text):
    assert redacted(text) == text


def test_phone_numbers_of_regions_not_listed_are_found_only_in_international_form():
    policy = PrivacyPolicy(phone_regions=["GB"])
    assert policy.text("call (415) 555-2671") == "call (415) 555-2671"
    assert policy.text("call +1 415 555 2671") == "call <PHONE>"


@pytest.mark.parametrize("iban", ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432",
                                  "DE89 3704 0044 0532 0130 00", "FR14 2004 1010 0505 0001 3M02 606",
                                  "NL91ABNA0417164300", "de89370400440532013000"])
def test_ibans_with_a_valid_checksum_are_found(iban):
    assert iban_valid(iban)
    assert redacted(f"pay to {iban}.") == "pay to <IBAN>."


@pytest.mark.parametrize("iban", ["GB82 WEST 1234 5698 7654 33", "DE89370400440532013001", "GB82 WEST 1234 5698 7654",
                                  "XX82WEST12345698765432"])
def test_ibans_with_a_bad_checksum_or_length_stay(iban):
    assert not iban_valid(iban)
    assert "<IBAN>" not in redacted(f"pay to {iban}.")


def test_an_iban_followed_by_capital_words_and_another_iban():
    text = "IBAN GB82 WEST 1234 5698 7654 32 AND DE89370400440532013000 OK"
    assert redacted(text) == "IBAN <IBAN> AND <IBAN> OK"


def test_detectors_can_be_turned_off_and_the_replacement_changed():
    policy = PrivacyPolicy(detect=["email"], replacement="[{entity} removed]")
    assert policy.text(f"{EMAIL} paid with {CARD}") == f"[EMAIL removed] paid with {CARD}"


def test_custom_patterns_replace_with_their_name():
    policy = PrivacyPolicy(detect=[], patterns={"ORDER_ID": r"ORD-\d{6}", "EMPLOYEE": r"\bE\d{5}\b"})
    assert policy.text("ORD-123456 for E12345, not ORD-12") == "<ORDER_ID> for <EMPLOYEE>, not ORD-12"


def test_dropped_and_hashed_fields_in_records():
    policy = PrivacyPolicy(drop=["ssn"], hash=["customer_id"], hash_key="k1")
    record = policy.record({"ssn": "078-05-1120", "customer_id": "C-991", "message": f"from {EMAIL}", "n": 3})
    assert record["ssn"] == "<DROPPED>" and record["message"] == "from <EMAIL>" and record["n"] == 3
    assert record["customer_id"].startswith("<HASH:") and len(record["customer_id"]) == len("<HASH:>") + 16
    again = policy.record({"customer_id": "C-991"})["customer_id"]
    other_key = PrivacyPolicy(hash=["customer_id"], hash_key="k2").record({"customer_id": "C-991"})["customer_id"]
    assert again == record["customer_id"] != other_key  # equal values join; another key, another hash
    assert policy.marker("customer_id", record["customer_id"]) == record["customer_id"]  # hashing is idempotent
    nested = policy.value({"demos": [{"ssn": "078-05-1120", "reply": f"mail {EMAIL}"}]})
    assert nested == {"demos": [{"ssn": "<DROPPED>", "reply": "mail <EMAIL>"}]}
    known = policy.sensitive({"customer_id": "C-991", "ssn": "078-05-1120"})
    assert policy.text("customer C-991, ssn 078-05-1120", known) == \
        f"customer {record['customer_id']}, ssn <DROPPED>"


def test_policy_arguments_are_checked():
    with pytest.raises(ConfigError, match="needs a key"):
        PrivacyPolicy(hash=["customer_id"])
    with pytest.raises(ConfigError, match=r"both dropped and hashed"):
        PrivacyPolicy(drop=["a"], hash=["a"], hash_key="k")
    with pytest.raises(ConfigError, match="unknown detector"):
        PrivacyPolicy(detect=["fax"])
    assert "k1" not in repr(PrivacyPolicy(hash=["a"], hash_key="k1"))


# --- the [privacy] table -------------------------------------------------------------------

def test_from_config_reads_a_privacy_table():
    policy = PrivacyPolicy.from_config({"detect": ["email", "credit_card"], "patterns": {"ORDER_ID": "ORD-\\d+"},
                                        "drop": ["ssn"], "hash": ["customer_id"], "hash_key_env": "MY_KEY"},
                                       environ={"MY_KEY": "secret"})
    assert policy.text(f"ORD-77 {EMAIL} +44 20 7946 0958") == "<ORDER_ID> <EMAIL> +44 20 7946 0958"
    assert policy.record({"ssn": "1"})["ssn"] == "<DROPPED>"


@pytest.mark.parametrize("table, message", [
    ({"detekt": ["email"]}, r"\[privacy\]: unknown key\(s\) \['detekt'\]"),
    ({"detect": ["email", "fax"]}, r"\[privacy\] detect: unknown detector\(s\) \['fax'\]"),
    ({"detect": "email"}, r"\[privacy\] detect: expected a list"),
    ({"patterns": {"ORDER": "ORD-(\\d+"}}, r"\[privacy\] patterns.ORDER: not a regular expression"),
    ({"patterns": {"ANY": ".*"}}, r"\[privacy\] patterns.ANY: '\.\*' matches the empty string"),
    ({"patterns": {"bad name": "x"}}, r"patterns.bad name: a pattern's name is a word"),
    ({"hash": ["customer_id"]}, r"\[privacy\] hash: hashing \['customer_id'\] needs a secret key in the "
                                r"environment variable \$STAGEWISE_PRIVACY_KEY"),
    ({"phone_regions": ["US", "XY"]}, r"\[privacy\] phone_regions: unknown phone region\(s\) \['XY'\]"),
    ({"replacement": "<{kind}>"}, r"\[privacy\]: replacement '<\{kind\}>' is not a format"),
    ({"drop": ["a"], "hash": ["a"], "hash_key_env": "K"}, r"\[privacy\]: field\(s\) \['a'\] are both"),
])
def test_from_config_errors_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        PrivacyPolicy.from_config(table, environ={"K": "k"})


def test_a_policy_from_a_command_line_option(tmp_path):
    assert PrivacyPolicy.from_option("all").detect == ("email", "credit_card", "phone", "iban")
    assert PrivacyPolicy.from_option("email, iban").detect == ("email", "iban")
    with pytest.raises(ConfigError, match=r"--redact 'fax': expected 'all', detectors"):
        PrivacyPolicy.from_option("fax")
    file = tmp_path / "privacy.toml"
    file.write_text('[privacy]\ndetect = ["email"]\nhash = ["customer_id"]\nhash_key_env = "K"\n')
    policy = PrivacyPolicy.from_option(str(file), environ={"K": "k"})
    assert policy.detect == ("email",) and policy.hash == {"customer_id"}
    with pytest.raises(ConfigError, match=r"privacy file .*privacy.toml': \[privacy\] hash: hashing"):
        PrivacyPolicy.from_option(str(file), environ={})
    file.write_text("[other]\n")
    with pytest.raises(ConfigError, match="has no \\[privacy\\] table"):
        PrivacyPolicy.from_option(str(file))


STUDY = """
[program]
factory = "tests.test_resilience:build_answer"

[data]
outcomes = "{outcomes}"

[metrics]
end_to_end = {{ output = "answer", metric = "recorded_correctness" }}

[search.stages.answer]
models = ["recorded/mistral-7b-chat"]
{privacy}
"""


def test_the_study_config_takes_a_privacy_table(tmp_path):
    from stagewise.optimize.config import load_config

    from .conftest import ROUTERBENCH_TEST

    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(outcomes=ROUTERBENCH_TEST.as_posix(), privacy=""))
    assert load_config(config).privacy is None
    config.write_text(STUDY.format(outcomes=ROUTERBENCH_TEST.as_posix(), privacy="""
[privacy]
detect = ["email", "iban"]
drop = ["ssn"]
[privacy.patterns]
TICKET = "T-\\\\d{4}"
"""))
    study = load_config(config)
    policy = study.privacy
    assert policy.detect == ("email", "iban") and policy.text("T-1234 jane@example.com") == "<TICKET> <EMAIL>"
    assert study.optimizer(tmp_path / "out").privacy is policy  # what the optimizer logs to MLflow
    config.write_text(STUDY.format(outcomes=ROUTERBENCH_TEST.as_posix(), privacy='[privacy]\ndetect = ["fax"]\n'))
    with pytest.raises(ConfigError, match=r"study.toml'.*\[privacy\] detect\[0\]"):
        load_config(config)
    config.write_text(STUDY.format(outcomes=ROUTERBENCH_TEST.as_posix(), privacy='[privacy]\nsalt = "x"\n'))
    with pytest.raises(ConfigError, match=r"\[privacy\] has unknown key\(s\) \['salt'\] \(keys: detect, "):
        load_config(config)
    config.write_text(STUDY.format(outcomes=ROUTERBENCH_TEST.as_posix(),
                                   privacy='[privacy.patterns]\nBAD = "(unclosed"\n'))
    with pytest.raises(ConfigError, match=r"study.toml': \[privacy\] patterns.BAD: not a regular expression"):
        load_config(config)


# --- a run: nothing kept anywhere, the same prediction -------------------------------------

PROMPT = f"My card {CARD} was charged twice. Please write to {EMAIL} about it."
RESPONSE = f"We have blocked card {CARD} and will write to {EMAIL} today."
MODEL = "recorded/mixtral-8x7b-chat"
log = logging.getLogger("tests.privacy")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """An outcome table holding one recorded answer to a prompt with a card number and an e-mail."""
    path = tmp_path_factory.mktemp("outcomes") / "pii.csv"
    column = "mistralai/mixtral-8x7b-chat"
    pd.DataFrame({"prompt": [repr([PROMPT])], column: ["1.0"], f"{column}|model_response": [repr([RESPONSE])],
                  f"{column}|total_cost": ["0.0002"]}).to_csv(path, index=False)
    return OutcomeTable.load(path)


class Echo(dspy.Module):
    """A scripted stage that logs what it got (as a careless program might) before answering."""

    def __init__(self):
        super().__init__()
        self.inner = dspy.Predict("answer -> summary")

    seen: list[str] = []

    def forward(self, answer):
        self.seen.append(answer)
        log.warning("summarising %s", answer)
        return self.inner(answer=answer)


def program(table):
    summary = dspy.utils.DummyLM([{"summary": f"Card {CARD} blocked; reply sent to {EMAIL}."}] * 4,
                                 adapter=dspy.JSONAdapter())
    return Chain("desk", [Stage("answer", "prompt -> answer", lm=get_lm(MODEL, replay_table=table)),
                          Stage("summary", Echo(), lm=summary)])


def _stores(kind, tmp_path):
    """(checkpoint store URL, context store URL) for a backend."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/runs.db", f"sqlite:///{tmp_path}/context.db"
    if kind == "postgres":
        url = require_service("postgres")
        return url, url
    return f"sqlite:///{tmp_path}/runs.db", require_service("redis") + "?ttl=600"


def _traced_run(table, kind, tmp_path, policy, run_id):
    checkpoints_url, context_url = _stores(kind, tmp_path)
    provider, exporter = tracer_provider("memory")
    context = open_context_store(context_url)
    try:
        with dspy.context(adapter=dspy.JSONAdapter()), \
                observing(Tracer(provider, capture_content=True), ContextRecorder(context)):
            prediction = run(program(table), {"prompt": PROMPT}, store=checkpoints_url, run_id=run_id, privacy=policy)
        checkpoints = open_checkpoints(checkpoints_url)
        kept = {"checkpoint": json.dumps(checkpoints.load(run_id)),
                "context": json.dumps(context.entries(run_id)),
                "spans": json.dumps([json.loads(s.to_json()) for s in exporter.get_finished_spans()])}
        checkpoints.close()
    finally:
        context.close()
    return prediction, kept


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_a_card_number_and_an_email_reach_no_store_span_or_log(kind, table, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    plain, plain_kept = _traced_run(table, kind, tmp_path, None, f"plain-{uuid.uuid4().hex[:8]}")
    assert all(CARD in text and EMAIL in text for text in plain_kept.values())  # without the policy: everywhere
    assert EMAIL in caplog.text
    caplog.clear()

    run_id = f"private-{uuid.uuid4().hex[:8]}"
    private, kept = _traced_run(table, kind, tmp_path, ALL, run_id)
    # The model saw the original prompt (a recorded model answers only the prompt it recorded), the next
    # stage the original answer, and the caller gets the original prediction.
    assert RESPONSE in Echo.seen[-1] and Echo.seen[-1] == Echo.seen[-2]
    assert private.toDict() == plain.toDict() == {"summary": f"Card {CARD} blocked; reply sent to {EMAIL}."}
    for where, text in kept.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} kept in the {where}"
        assert "<CREDIT_CARD>" in text and "<EMAIL>" in text, where  # redacted, not lost
    spans = json.loads(kept["spans"])
    call = next(s for s in spans if s["name"] == f"chat {MODEL}")
    assert "<CREDIT_CARD>" in call["attributes"]["gen_ai.input.messages"]
    assert "<EMAIL>" in call["attributes"]["gen_ai.output.messages"]
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "summarising" in logged and all(secret not in logged for secret in SECRETS)
    if kind == "sqlite":  # the bytes on disk too, write-ahead log included
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("*.db*"))
        assert EMAIL.encode() in raw  # the run without the policy
        checkpoints = open_checkpoints(f"sqlite:///{tmp_path}/runs.db")
        assert CARD not in json.dumps(checkpoints.load(run_id))


def test_a_failed_run_keeps_no_personal_data_in_its_error(tmp_path):
    class Refuse(dspy.Module):
        def __init__(self):
            super().__init__()
            self.inner = dspy.Predict("message -> reply")

        def forward(self, message):
            raise ValueError(f"cannot handle {message!r}")

    provider, exporter = tracer_provider("memory")
    store = open_checkpoints(f"sqlite:///{tmp_path}/runs.db")
    with observing(Tracer(provider)), pytest.raises(ValueError, match="4111"):  # the caller's error is intact
        run(Stage("refuse", Refuse(), lm=dspy.utils.DummyLM([{}])), {"message": f"card {CARD}, {EMAIL}"},
            store=store, run_id="failed", privacy=ALL)
    record = store.load("failed")
    assert record["status"] == "failed" and "<CREDIT_CARD>" in record["error"]["message"]
    spans = json.dumps([json.loads(s.to_json()) for s in exporter.get_finished_spans()])
    assert "cannot handle" in spans and all(secret not in spans for secret in SECRETS)
    assert all(secret not in json.dumps(record) for secret in SECRETS)


def test_resume_and_replay_under_a_policy_keep_the_record_redacted():
    from stagewise.runtime import replay, resume

    class FailsOnce(dspy.utils.DummyLM):
        calls = 0

        def forward(self, *args, **kwargs):
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise ConnectionError(f"provider down while sending {EMAIL}")
            return super().forward(*args, **kwargs)

    chain = Chain("c", [Stage("a", "message -> topic"), Stage("b", "topic -> reply")]).set_models({
        "a": dspy.utils.DummyLM([{"topic": f"card {CARD}"}] * 3, adapter=dspy.JSONAdapter()),
        "b": FailsOnce([{"reply": f"mail sent to {EMAIL}"}] * 3, adapter=dspy.JSONAdapter())})
    store = open_checkpoints("memory://resume-private")
    with dspy.context(adapter=dspy.JSONAdapter()):
        with pytest.raises(ConnectionError):
            run(chain, {"message": f"card {CARD} from {EMAIL}"}, store=store, run_id="r", privacy=ALL)
        failed = store.load("r")
        assert failed["status"] == "failed" and failed["error"]["message"] == "provider down while sending <EMAIL>"
        prediction = resume("r", store=store, program=chain, privacy=ALL)
        assert prediction.reply == f"mail sent to {EMAIL}"
        _, replayed, new = replay("r", "b", store=store, program=chain, privacy=ALL)
    assert replayed.reply == f"mail sent to {EMAIL}"
    for record in (store.load("r"), new):
        assert record["status"] == "completed" and record["outputs"] == {"reply": "mail sent to <EMAIL>"}
        assert all(secret not in json.dumps(record) for secret in SECRETS)


def test_dropped_and_hashed_fields_are_replaced_wherever_the_run_quotes_them(tmp_path):
    policy = PrivacyPolicy(drop=["ssn"], hash=["customer"], hash_key="k")
    chain = Chain("c", [Stage("a", "message, ssn, customer -> reply")]).set_models(
        {"a": dspy.utils.DummyLM([{"reply": "customer C-77123 with ssn 078-05-1120 is verified"}] * 2,
                                 adapter=dspy.JSONAdapter())})
    context = open_context_store(f"sqlite:///{tmp_path}/context.db")
    with dspy.context(adapter=dspy.JSONAdapter()), observing(ContextRecorder(context)):
        prediction = run(chain, {"message": "verify me", "ssn": "078-05-1120", "customer": "C-77123"},
                         store="memory://fields", run_id="fields", privacy=policy)
    assert prediction.reply == "customer C-77123 with ssn 078-05-1120 is verified"
    record = open_checkpoints("memory://fields").load("fields")
    kept = json.dumps(record) + json.dumps(context.entries("fields"))
    assert "078-05-1120" not in kept and "C-77123" not in kept
    assert record["inputs"]["ssn"] == "<DROPPED>" and record["inputs"]["customer"].startswith("<HASH:")
    assert record["outputs"]["reply"] == f"customer {record['inputs']['customer']} with ssn <DROPPED> is verified"


def test_log_records_made_under_a_policy_and_through_a_filter_are_redacted(caplog):
    caplog.set_level(logging.INFO)
    with protecting(ALL):
        log.info("ticket from %s", EMAIL)
        try:
            raise RuntimeError(f"card {CARD}")
        except RuntimeError:
            log.exception("failed")
    log.info("outside %s", EMAIL)  # no policy here: the handler's filter would be needed
    assert "ticket from <EMAIL>" in caplog.text and "card <CREDIT_CARD>" in caplog.text
    assert caplog.records[-1].getMessage() == f"outside {EMAIL}"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "paid with %s", (CARD,), None)
    PrivacyFilter(ALL).filter(record)
    assert record.getMessage() == "paid with <CREDIT_CARD>"


def test_mlflow_artifacts_are_logged_as_redacted_copies(tmp_path, monkeypatch):
    import mlflow

    from stagewise.optimize.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    state = tmp_path / "program.json"
    state.write_text(json.dumps({"answer.predict": {"demos": [{"prompt": PROMPT, "answer": RESPONSE}]}}))
    tracker = Tracker("private", uri=f"sqlite:///{tmp_path}/mlflow.db", privacy=ALL)
    with tracker.study("private", {"note": f"owner {EMAIL}"}):
        tracker.trial(0, {"model": MODEL}, {"quality": 1.0}, "complete", [state])
    tracker.artifacts([state])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("private").experiment_id])
    assert len(runs) == 2
    for logged in runs:
        folder = client.download_artifacts(logged.info.run_id, "", str(tmp_path / logged.info.run_id))
        text = "".join(p.read_text() for p in Path(folder).rglob("*.json"))
        assert "<CREDIT_CARD>" in text and all(secret not in text for secret in SECRETS)
        assert all(secret not in json.dumps(logged.data.params) for secret in SECRETS)
    assert EMAIL in state.read_text()  # the file on disk (the program) is unchanged


# --- against presidio's recognizers ----------------------------------------------------------

CORPUS = [
    f"Hello, my card {CARD} was charged twice; write to {EMAIL} or call +44 20 7946 0958.",
    "Visa 4012-8888-8888-1881, Mastercard 5105 1051 0510 5100, Amex 371449635398431, and 4111 1111 1111 1112.",
    "Refund to IBAN GB82 WEST 1234 5698 7654 32 or DE89 3704 0044 0532 0130 00, not GB82 WEST 1234 5698 7654 33.",
    "Mail j.smith+orders@mail.example.co.uk, cc o'brien@example.org; support at example dot com.",
    "Call +1 415-555-2671, +33 1 42 68 53 00 or +91 98765 43210 between 9:00 and 17:30 on 2024-05-06.",
    "Order 123456 shipped; tracking ORD-2024-0001, version 3.11.7, total 1,234.56 EUR.",
]


def test_every_entity_presidios_recognizers_find_is_redacted():
    """presidio-analyzer's pattern recognizers (its NLP engine is not used: it needs a spaCy model) as a
    reference: whatever e-mail, card, IBAN or phone they find in the corpus, the policy replaces too."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
    )

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # its default fetches the suffix list

    class OfflineEmail(EmailRecognizer):
        def validate_result(self, pattern_text):
            return offline(pattern_text).fqdn != ""

    recognizers = [(OfflineEmail(), "EMAIL_ADDRESS"), (CreditCardRecognizer(), "CREDIT_CARD"),
                   (IbanRecognizer(), "IBAN_CODE"), (PhoneRecognizer(), "PHONE_NUMBER")]
    found, markers = 0, 0
    for text in CORPUS:
        kept = redacted(text)
        markers += kept.count("<")
        for recognizer, entity in recognizers:
            for result in recognizer.analyze(text, [entity]):
                if result.score < 0.4 and entity != "PHONE_NUMBER":
                    continue  # a pattern match its own validation rejected
                found += 1
                value = text[result.start:result.end]
                assert value not in kept, f"presidio's {entity} {value!r} is kept in {kept!r}"
    assert found == markers == 13  # and nothing they leave (dates, times, versions, order codes) is replaced


def test_the_readme_blocks_run_as_printed(tmp_path, monkeypatch):
    import tomllib

    from .test_readme_snippets import readme_block

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STAGEWISE_PRIVACY_KEY", "readme-key")
    program = Chain("c", [Stage("a", "message -> reply")]).set_models(
        {"a": dspy.utils.DummyLM([{"reply": "done"}], adapter=dspy.JSONAdapter())})
    namespace = {"program": program}
    with dspy.context(adapter=dspy.JSONAdapter()):
        exec(readme_block("PrivacyPolicy(patterns="), namespace)
    record = open_checkpoints("sqlite:///runs.db").load(namespace["prediction"].run_id)
    assert record["inputs"]["message"] == "Card <CREDIT_CARD>, mail <EMAIL>"
    policy = PrivacyPolicy.from_config(tomllib.loads(readme_block("[privacy]", "toml"))["privacy"])
    assert policy.text("ORD-123456 from jane@example.com") == "<ORDER_ID> from <EMAIL>"
    assert policy.record({"ssn": "078-05-1120"}) == {"ssn": "<DROPPED>"}


def test_fan_out_branches_write_and_log_under_the_runs_policy(tmp_path, caplog):
    from stagewise.programs import FanOut, MajorityVote
    from stagewise.runtime import shared

    caplog.set_level(logging.INFO)
    store = open_context_store(f"sqlite:///{tmp_path}/context.db")

    class Note(dspy.Module):  # each branch, in its own thread, writes the shared state and logs
        def __init__(self, name):
            super().__init__()
            self.name = name
            self.inner = dspy.Predict("message -> answer")

        def forward(self, message):
            shared(store).append("both", "note", "seen", f"{self.name} saw {message}")
            log.info("branch %s got %s", self.name, message)
            return self.inner(message=message)

    branches = {name: Stage(name, Note(name), lm=dspy.utils.DummyLM([{"answer": "cards"}], adapter=dspy.JSONAdapter()))
                for name in ("left", "right")}
    fan = FanOut("both", branches, MajorityVote("answer"))
    with dspy.context(adapter=dspy.JSONAdapter()), observing(ContextRecorder(store)):
        run(fan, {"message": f"lost card {CARD}, mail {EMAIL}"}, store="memory://fan", run_id="fan-private",
            privacy=ALL)
    seen = store.values("fan-private", "both", "note", "seen")
    assert sorted(seen) == [f"{name} saw lost card <CREDIT_CARD>, mail <EMAIL>" for name in ("left", "right")]
    branch_logs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("branch ")]
    assert len(branch_logs) == 2 and all(secret not in m for m in branch_logs for secret in SECRETS)
