"""Deterministic train/dev/test splits of examples, optionally stratified by a label.

Split sizes come from the fractions by largest-remainder rounding, so they always add up
to the number of examples, and a stratified split has exactly the sizes of the plain one:
each label's rows are shared out in proportion, with the leftover rows placed so that
the totals still match. A split whose fraction is above zero but that would get no
example is an error, never a silently empty list.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from stagewise.data.loading import DataError
from stagewise.errors import ConfigError

SPLIT_NAMES = ("train", "dev", "test")


@dataclass(frozen=True)
class Splits:
    """Three disjoint lists of the same `dspy.Example` objects that were split (not copies).

    `settings`: how [`split`][stagewise.data.split] made them (`train`, `dev`, `test`, `seed`,
    `stratify_by`), so a study can name the setting in which two splits differ.
    """

    train: list[dspy.Example]
    dev: list[dspy.Example]
    test: list[dspy.Example]
    settings: dict[str, Any] | None = field(default=None, compare=False)

    def sizes(self) -> dict[str, int]:
        """The number of examples of each split, `{"train": ..., "dev": ..., "test": ...}`."""
        return {"train": len(self.train), "dev": len(self.dev), "test": len(self.test)}


def split(
    examples: Sequence[dspy.Example],
    *,
    train: float,
    dev: float,
    test: float,
    seed: int,
    stratify_by: str | None = None,
) -> Splits:
    """Shuffle `examples` with `seed` and cut them into train, dev and test.

    The same examples in the same order and the same seed always give the same splits;
    the input sequence is not modified. Fractions must each lie in [0, 1] and sum to 1
    (within 1e-9). A zero fraction gives an empty split.

    With `stratify_by` (a field every example has), each label value keeps about its
    share in every split: a label with `n` rows gets at least `floor(n * train)` of
    them in train. Label values are compared by `repr` for grouping.

    Args:
        examples: the examples to split.
        train: the share of examples for training.
        dev: the share for development (selection).
        test: the share for the final test.
        seed: the shuffle's seed.
        stratify_by: a field whose values keep their share in every split.

    Raises:
        ConfigError: a fraction is outside [0, 1] or the three do not sum to 1 (it is a `ValueError`).
        DataError: there are no examples, a nonzero fraction rounds to no example (the message names the
            split and the sizes), or an example lacks the `stratify_by` field.

    Examples:
        >>> import dspy
        >>> from stagewise.data import split
        >>> examples = [dspy.Example(text=f"question {i}").with_inputs("text") for i in range(10)]
        >>> splits = split(examples, train=0.6, dev=0.2, test=0.2, seed=0)
        >>> splits.sizes()
        {'train': 6, 'dev': 2, 'test': 2}
        >>> splits == split(examples, train=0.6, dev=0.2, test=0.2, seed=0)
        True
    """
    fractions = {"train": train, "dev": dev, "test": test}
    _check_fractions(fractions)
    pool = list(examples)
    if not pool:
        raise DataError("no examples to split")
    targets = _allocate(len(pool), fractions)
    for name in SPLIT_NAMES:
        if fractions[name] > 0 and targets[name] == 0:
            raise DataError(_empty_message(name, fractions, targets, len(pool)))

    settings = {**fractions, "seed": seed, "stratify_by": stratify_by}
    rng = random.Random(seed)
    if stratify_by is None:
        rng.shuffle(pool)
        cut_train, cut_dev = targets["train"], targets["train"] + targets["dev"]
        return Splits(pool[:cut_train], pool[cut_train:cut_dev], pool[cut_dev:], settings)

    groups = _groups(pool, stratify_by)
    counts = _allocate_stratified({label: len(rows) for label, rows in groups.items()}, fractions, targets)
    parts: dict[str, list[dspy.Example]] = {name: [] for name in SPLIT_NAMES}
    for label, rows in groups.items():
        rng.shuffle(rows)
        start = 0
        for name in SPLIT_NAMES:
            parts[name].extend(rows[start:start + counts[label][name]])
            start += counts[label][name]
    for name in SPLIT_NAMES:
        rng.shuffle(parts[name])  # otherwise each split would be ordered label by label
    return Splits(parts["train"], parts["dev"], parts["test"], settings)


def split_fingerprint(splits: Splits) -> str:
    """sha256 hex of the three splits' contents, order and input fields.

    Equal for splits holding equal examples in the same order, whatever objects they are.
    """
    payload = {name: [_example_record(e) for e in getattr(splits, name)] for name in SPLIT_NAMES}
    text = json.dumps(payload, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _example_record(example: dspy.Example) -> dict[str, Any]:
    try:
        inputs = sorted(example.inputs().keys())
    except ValueError:  # an Example without `with_inputs`
        inputs = None
    return {"fields": dict(example.items()), "inputs": inputs}


def _check_fractions(fractions: dict[str, float]) -> None:
    shown = ", ".join(f"{name}={value!r}" for name, value in fractions.items())
    for name, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ConfigError(f"split fraction {name}={value!r} must be a number in [0, 1] ({shown})")
    total = math.fsum(fractions.values())
    if abs(total - 1) > 1e-9:
        raise ConfigError(f"split fractions {shown} sum to {total!r}, not 1")


def _allocate(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of `n * fraction`; ties go to the earlier split."""
    quotas = {name: n * fractions[name] for name in SPLIT_NAMES}
    sizes = {name: math.floor(q) for name, q in quotas.items()}
    # Rounded so that float noise (0.1 * 5 = 0.5000000000000001) does not decide a tie.
    order = sorted(SPLIT_NAMES, key=lambda name: (-round(quotas[name] - sizes[name], 9), SPLIT_NAMES.index(name)))
    for name in order[: n - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def _allocate_stratified(
    label_sizes: dict[str, int], fractions: dict[str, float], targets: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Per label and split, a count near `label size * fraction` whose split totals are `targets`.

    Each cell starts at the floor of its quota; the rows left over go first to the cells
    with the largest fractional quota while their split still needs rows, then to any
    split still short (only possible when those cells' splits were already full).
    """
    counts = {label: {name: math.floor(size * fractions[name]) for name in SPLIT_NAMES}
              for label, size in label_sizes.items()}
    left = {label: size - sum(counts[label].values()) for label, size in label_sizes.items()}
    need = {name: targets[name] - sum(c[name] for c in counts.values()) for name in SPLIT_NAMES}
    labels = list(label_sizes)
    cells = sorted(((label, name) for label in labels for name in SPLIT_NAMES if fractions[name] > 0),
                   key=lambda cell: (-round(label_sizes[cell[0]] * fractions[cell[1]] % 1, 9),
                                     labels.index(cell[0]), SPLIT_NAMES.index(cell[1])))
    for label, name in cells:
        if left[label] > 0 and need[name] > 0:
            counts[label][name] += 1
            left[label] -= 1
            need[name] -= 1
    for label in labels:
        for name in SPLIT_NAMES:
            extra = min(left[label], need[name])
            counts[label][name] += extra
            left[label] -= extra
            need[name] -= extra
    return counts


def _groups(pool: list[dspy.Example], field: str) -> dict[str, list[dspy.Example]]:
    """Examples by the `repr` of their label, labels in sorted order (independent of input order)."""
    groups: dict[str, list[dspy.Example]] = {}
    for position, example in enumerate(pool):
        if field not in example:
            raise DataError(f"cannot stratify by {field!r}: example {position} has no such field "
                            f"(its fields: {list(example.keys())})")
        groups.setdefault(repr(example[field]), []).append(example)
    return {label: groups[label] for label in sorted(groups)}


def _empty_message(name: str, fractions: dict[str, float], sizes: dict[str, int], n: int) -> str:
    shown = ", ".join(f"{s}={sizes[s]}" for s in SPLIT_NAMES)
    return (f"split {name!r} would be empty: fraction {fractions[name]!r} of {n} examples rounds to 0 "
            f"(sizes {shown}); use more examples or a larger {name} fraction")
