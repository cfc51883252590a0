"""Stage results cached by (stage, model, inputs, compiled program version).

A request that is retried after a failure does not repeat the stages that already succeeded:
[`StageCache`][stagewise.runtime.StageCache] restores a stage's outputs and context sections when the same stage, on the
same model, with the same compiled state (instructions, demos), is given the same inputs. The
cache is in-process and bounded (least recently used entries go first).
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from contextlib import contextmanager

from stagewise.programs.run import Observer, StageEvent, StageRun


def _version(stage) -> str:
    state = stage.step.dump_state()
    for predictor_state in state.values() if isinstance(state, dict) and "demos" not in state else [state]:
        if isinstance(predictor_state, dict):
            predictor_state.pop("lm", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache(Observer):
    """Restores a stage's outputs and sections when the same stage is given the same inputs again.

    The same stage means the same name, model and compiled state (see the module). At most
    `max_entries` are kept, least recently used first out. `hits` and `misses` count lookups.

    Args:
        max_entries: the most results kept.
    """

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[str, tuple[dict, list]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def key(self, event: StageEvent) -> str:
        """The cache key of a stage execution: stage, model, compiled state and inputs, hashed."""
        stage, run = event.stage, event.run
        inputs = {field: [s.content for s in run.context.select(patterns, stage=stage.name)]
                  for field, patterns in stage.inputs.items()}
        spec = getattr(stage.lm, "spec", None)
        model = spec.name if spec is not None else getattr(stage.lm, "model", None)
        content = json.dumps([stage.name, model, _version(stage), inputs], sort_keys=True, default=str)
        return hashlib.sha256(content.encode()).hexdigest()

    def restore(self, event: StageEvent) -> dict | None:
        """The cached outputs of this stage execution, its sections added to the run, or None (a miss)."""
        key = self.key(event)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                event.cache_key = key
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        outputs, sections = found
        for section in sections:
            event.run.context.add(section)
        event.run.log(StageRun(event.stage.name, None, [], [s.id for s in sections], ["cached stage result"]))
        return dict(outputs)

    @contextmanager
    def stage(self, event: StageEvent):
        """Wraps a stage execution; after a miss, caches its result unless it was skipped or a fallback answered."""
        yield
        key = getattr(event, "cache_key", None)
        if key is None or event.stage.name in event.run.degraded:
            return
        lm = event.stage.lm
        own = getattr(getattr(lm, "spec", None), "name", None) or getattr(lm, "model", None)
        if event.log is not None and event.log.model != own:
            return  # answered by a fallback model: not a result of the model the key names
        with self._lock:
            self._entries[key] = (dict(event.outputs or {}), list(event.added))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
