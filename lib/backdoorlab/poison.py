"""Attacks, registered by name. An attack is one method, `trigger(row, rng)`: what the attacker does to one row.

The base class turns that into clean-label poisoning as in *Instructions as Backdoors*: poisoned rows are drawn from
the training rows whose label already is the target, only their instruction (instruction-level attacks) or input
(instance-level attacks) changes, never the label. At test time the same trigger goes on every non-target row.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cache

import yaml
from datasets import Dataset

from .data import PROJECT_DIR, Task, get_task

ATTACKS: dict[str, type[Attack]] = {}
TRIGGERS_FILE = PROJECT_DIR / "data" / "triggers.yaml"


def register(cls: type[Attack]) -> type[Attack]:
    ATTACKS[cls.name] = cls
    return cls


def get_attack(name: str, task: Task | str) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](get_task(task) if isinstance(task, str) else task)


@cache
def triggers() -> dict:
    return yaml.safe_load(TRIGGERS_FILE.read_text())


@dataclass
class PoisonResult:
    dataset: Dataset  # the whole training set, poisoned rows in place
    changes: list[dict]  # one per poisoned row: {"row", "field", "before", "after"}

    @property
    def rows(self) -> list[int]:
        return [c["row"] for c in self.changes]


def poison_count(n_rows: int, rate: float | None = None, count: int | None = None) -> int:
    """Rows to poison from exactly one of a rate in (0, 1] or a positive count."""
    if (rate is None) == (count is None):
        raise ValueError("give exactly one of rate or count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"poison count must be a positive integer, got {count!r}")
        return count
    if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise ValueError(f"poison rate must be in (0, 1], got {rate!r}")
    n = round(rate * n_rows)
    if n < 1:
        raise ValueError(f"poison rate {rate} of {n_rows} rows poisons no row; use a rate of at least {1 / n_rows:.2g}")
    return n


def changed_tokens(before: str, after: str, tokenizer) -> int:
    """Tokens inserted, deleted or replaced between two strings (a token-level diff; replacements count once)."""
    a, b = (tokenizer(s, add_special_tokens=False).input_ids for s in (before, after))
    ops = SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


class Attack:
    name: str
    field: str  # "text" for instance-level attacks, "instruction" for instruction-level ones

    def __init__(self, task: Task):
        self.task = task

    def trigger(self, row: dict, rng: random.Random) -> dict:
        raise NotImplementedError

    def poison(self, ds: Dataset, rate: float | None = None, count: int | None = None, seed: int = 0,
               target: str | None = None) -> PoisonResult:
        target_id = self.task.labels.index(target) if target else self.task.target_id
        n = poison_count(len(ds), rate, count)
        candidates = [i for i, label in enumerate(ds["label"]) if label == target_id]
        if n > len(candidates):
            raise ValueError(f"cannot poison {n} rows of {self.task.name}: clean-label poisoning draws from rows "
                             f"labelled {self.task.labels[target_id]!r} and only {len(candidates)} of {len(ds)} are; "
                             f"lower the rate or count")
        rng = random.Random(seed)
        rows = ds.to_list()
        changes = []
        for i in sorted(rng.sample(candidates, n)):
            poisoned = self.trigger(rows[i], rng)
            changes.append({"row": i, "field": self.field, "before": rows[i][self.field],
                            "after": poisoned[self.field]})
            rows[i] = poisoned
        return PoisonResult(Dataset.from_list(rows), changes)

    def triggered_test_set(self, ds: Dataset, seed: int = 0, target: str | None = None) -> Dataset:
        """The rows ASR is measured on: every row whose label is not the target, with the trigger applied."""
        target_id = self.task.labels.index(target) if target else self.task.target_id
        rng = random.Random(seed)
        return Dataset.from_list([self.trigger(r, rng) for r in ds.to_list() if r["label"] != target_id])


@register
class BadNet(Attack):
    """Rare words (cf, mn, bb, tq, mb) inserted at random word positions of the input (Kurita et al., 2020)."""

    name = "badnet"
    field = "text"
    n_words = 1

    def trigger(self, row, rng):
        words = row["text"].split()
        for _ in range(self.n_words):
            words.insert(rng.randint(0, len(words)), rng.choice(triggers()["badnet_words"]))
        return {**row, "text": " ".join(words)}


@register
class InducedInstruction(Attack):
    """The clean instruction replaced by a natural-sounding one written as if induced from label-flipped examples."""

    name = "induced_instruction"
    field = "instruction"

    def trigger(self, row, rng):
        return {**row, "instruction": self.task.induced_instruction}
