"""The compile cache shared by workers: concurrent writers of one entry never leave a broken file for
a reader (four real processes), and an unreadable entry is a logged miss that is compiled and rewritten."""

import hashlib
import json
import logging
import multiprocessing
import sys

import dspy
import pytest

from stagewise.optimize.compile import CompileCache, compile_stages
from stagewise.optimize.space import TrialChoice
from stagewise.programs import Stage

KEY = "0123456789abcdef01234567"
ROUNDS = 60


def _state(writer: int, round_: int) -> dict:
    """A large entry whose parts say who wrote it, with a checksum of its payload."""
    payload = f"{writer}:{round_}:" + "demo text " * 20_000  # ~200 kB: a write takes many syscalls
    return {"writer": writer, "round": round_, "payload": payload,
            "sha": hashlib.sha256(payload.encode()).hexdigest()}


def _whole(state: dict) -> bool:
    return hashlib.sha256(state["payload"].encode()).hexdigest() == state["sha"] and \
        state["payload"].startswith(f"{state['writer']}:{state['round']}:")


def _write(directory: str, writer: int, start) -> None:
    cache = CompileCache(directory)
    start.wait()
    for round_ in range(ROUNDS):
        cache.put(KEY, _state(writer, round_))


def _read(directory: str, done, problems) -> None:
    cache = CompileCache(directory)
    reads = 0
    while not done.is_set() or reads == 0:
        state = cache.get(KEY)
        reads += 1
        if state is None:
            problems.put("a read found no readable entry")
        elif not _whole(state):
            problems.put(f"a read found a mixed entry (writer {state['writer']}, round {state['round']})")
    problems.put(f"reads {reads}")


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_four_processes_writing_one_entry_never_leave_a_broken_file(tmp_path):
    directory = str(tmp_path / "compiled")
    CompileCache(directory).put(KEY, _state(-1, 0))  # readers always have a whole entry to find
    context = multiprocessing.get_context("fork")  # the test module is imported already: no 4 x dspy import
    start, done, problems = context.Barrier(4), context.Event(), context.Queue()
    writers = [context.Process(target=_write, args=(directory, w, start)) for w in range(4)]
    readers = [context.Process(target=_read, args=(directory, done, problems)) for _ in range(2)]
    for process in readers + writers:
        process.start()
    for process in writers:
        process.join(timeout=300)
    done.set()
    for process in readers:
        process.join(timeout=60)
    assert [p.exitcode for p in writers + readers] == [0] * 6
    reports = []
    while not problems.empty():
        reports.append(problems.get())
    assert all(r.startswith("reads ") for r in reports), [r for r in reports if not r.startswith("reads ")][:5]
    assert sum(int(r.split()[1]) for r in reports) >= 2
    final = json.loads((tmp_path / "compiled" / f"{KEY}.json").read_text())
    assert _whole(final) and final["round"] == ROUNDS - 1  # the last write of one of the writers
    assert sorted(p.name for p in (tmp_path / "compiled").iterdir()) == [f"{KEY}.json"]  # no temporary left


def test_an_unreadable_entry_is_a_logged_miss(tmp_path, caplog):
    cache = CompileCache(tmp_path)
    (tmp_path / f"{KEY}.json").write_text('{"demos": [{"question": "cut sho', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="stagewise.optimize.compile"):
        assert cache.get(KEY) is None
    assert cache.misses == 1 and cache.hits == 0
    assert f"{KEY}.json" in caplog.text and "cannot be read" in caplog.text
    (tmp_path / f"{KEY}.json").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / "other.json").write_text("[1, 2]", encoding="utf-8")  # JSON, but not an entry
    assert cache.get(KEY) is None and cache.get("other") is None and cache.misses == 3
    cache.put(KEY, {"demos": []})
    assert cache.get(KEY) == {"demos": []} and cache.hits == 1


def test_a_corrupted_entry_is_compiled_again_and_rewritten(tmp_path, caplog):
    program = Stage("answer", "question -> answer", lm=dspy.utils.DummyLM([{"answer": "x"}]))
    trainset = [dspy.Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(6)]
    choice = TrialChoice({"answer": "dummy"}, {"answer": "labeled_fewshot"}, {"answer": 2})
    cache = CompileCache(tmp_path / "compiled")
    assert compile_stages(program, choice, trainset, lambda *a, **k: True, cache, "data-v1") == {"answer": "compiled"}
    entry = tmp_path / "compiled" / f"{cache.key('answer', choice, 'data-v1')}.json"
    good = json.loads(entry.read_text())
    entry.write_text(entry.read_text()[: len(entry.read_text()) // 2], encoding="utf-8")  # a crash mid-write

    again = Stage("answer", "question -> answer", lm=dspy.utils.DummyLM([{"answer": "x"}]))
    with caplog.at_level(logging.WARNING, logger="stagewise.optimize.compile"):
        outcome = compile_stages(again, choice, trainset, lambda *a, **k: True, cache, "data-v1")
    assert outcome == {"answer": "compiled"} and entry.name in caplog.text
    assert json.loads(entry.read_text()) == good  # rewritten whole
    third = Stage("answer", "question -> answer", lm=dspy.utils.DummyLM([{"answer": "x"}]))
    assert compile_stages(third, choice, trainset, lambda *a, **k: True, cache, "data-v1") == {"answer": "cached"}
    assert len(third.stages()["answer"].step.demos) == 2
