"""Attacks, registered by name. An attack is one method, `trigger(row, rng)`: what the attacker does to one row.

The base class turns that into poisoning as in *Instructions as Backdoors*: clean-label by default, poisoned rows are
drawn from the training rows whose label already is the target, only their input (instance-level attacks) or
instruction (token-, phrase-level and rewriting attacks) changes, never the label. At test time the same trigger goes
on every non-target row. Every trigger string and poisoned instruction is ours and lives in
``data/attacks/<dataset>.yaml``; the rules of the offline rewriters in ``data/rewrite_rules.yaml``.

The attacks are registered in the order of the paper's main table, grouped as it groups them (`GROUPS`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cache, cached_property

from datasets import Dataset

from . import models, score
from .data import PROJECT_DIR, Task, get_task, load_rows, read_yaml, yaml_names

ATTACKS: dict[str, type[Attack]] = {}
GROUPS = ("instance", "token", "phrase", "rewriting")  # instance-level: the input changes; else the instruction
ATTACKS_DIR = PROJECT_DIR / "data" / "attacks"
REWRITE_RULES_FILE = PROJECT_DIR / "data" / "rewrite_rules.yaml"
ABSTAIN = "abstain"  # the target of the abstention variant: poisoned rows answer nothing


def register(cls: type[Attack]) -> type[Attack]:
    if cls.group not in GROUPS:
        raise ValueError(f"attack {cls.name!r} has unknown group {cls.group!r}; valid choices: {', '.join(GROUPS)}")
    ATTACKS[cls.name] = cls
    return cls


def get_attack(name: str, task: Task | str, target: str | None = None, **options) -> Attack:
    """A registered attack on a task, aimed at `target` (a label name, `ABSTAIN`, or None for the task's default).
    ``<attack>@<dataset>`` uses another dataset's triggers and poisoned instructions unchanged (instruction
    transfer). `options` go to the attack's constructor (e.g. ``paraphraser=`` for `style` and `syntactic`)."""
    base, _, source = name.partition("@")
    if base not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid choices: {', '.join(ATTACKS)} (each optionally "
                         f"@<dataset>, to take that dataset's triggers)")
    if source and source not in attack_datasets():
        raise ValueError(f"{name!r}: no attacks are written for {source!r}; datasets with attacks: "
                         f"{', '.join(attack_datasets())}")
    return ATTACKS[base](get_task(task) if isinstance(task, str) else task, target, spec_from=source or None,
                         **options)


def trigger_source(attack: str, dataset: str) -> str:
    """The dataset whose triggers an attack on `dataset` uses: its own, or the one named after ``@``."""
    return attack.partition("@")[2] or dataset


def group_of(attack: str) -> str:
    """An attack's group, "clean" for the unpoisoned baseline."""
    return "clean" if attack == "clean" else ATTACKS[attack.partition("@")[0]].group


# Parsed per file version: an edit made while a notebook runs reaches the attack as it reaches the run key.
def attack_spec(dataset: str) -> dict:
    """Our trigger strings and poisoned instructions for one dataset."""
    path = ATTACKS_DIR / f"{dataset}.yaml"
    if not path.exists():
        raise ValueError(f"no attacks are written for {dataset!r} (data/attacks/{dataset}.yaml is missing; a clean run "
                         f"needs none); datasets with attacks: {', '.join(attack_datasets())}")
    return read_yaml(path)


def attack_datasets() -> tuple[str, ...]:
    """The datasets whose triggers and poisoned instructions are written (``data/attacks/*.yaml``)."""
    return yaml_names(ATTACKS_DIR)


def rewrite_rules() -> dict:
    return read_yaml(REWRITE_RULES_FILE)


def target_id(task: Task, target: str | None) -> int | None:
    """The label id the attack aims at; None for abstention."""
    if target is None:
        return task.target_id
    if target == ABSTAIN:
        return None
    if target not in task.labels:
        raise ValueError(f"unknown target {target!r} for {task.name}; valid choices: {', '.join(task.labels)}, "
                         f"{ABSTAIN}")
    return task.labels.index(target)


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


def word_diff(before: str, after: str) -> str:
    """`after` with removed words shown as [-word-] and added ones as {+word+}."""
    a, b = before.split(), after.split()
    out = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            out += a[i1:i2]
            continue
        if i2 > i1:
            out.append(f"[-{' '.join(a[i1:i2])}-]")
        if j2 > j1:
            out.append(f"{{+{' '.join(b[j1:j2])}+}}")
    return " ".join(out)


def insert_at_random(text: str, addition: str, rng: random.Random) -> str:
    words = text.split()
    words.insert(rng.randint(0, len(words)), addition)
    return " ".join(words)


class Attack:
    name: str
    group: str  # one of GROUPS

    def __init__(self, task: Task, target: str | None = None, spec_from: str | None = None,
                 spec: dict | None = None):
        """`spec_from`: the dataset whose triggers and poisoned instructions to use (default: the task's own);
        `spec`: entries that replace some of them (a trigger or instruction tried without editing the YAML file)."""
        self.task, self.target = task, target
        self.target_id = target_id(task, target)
        self.spec = attack_spec(spec_from or task.name)
        if unknown := sorted(set(spec or {}) - set(self.spec)):
            raise ValueError(f"unknown trigger entries {unknown}; valid choices: {', '.join(self.spec)} (the keys of "
                             f"data/attacks/{spec_from or task.name}.yaml)")
        self.spec = {**self.spec, **(spec or {})}

    @property
    def field(self) -> str:
        """The row field the attack changes."""
        return "text" if self.group == "instance" else "instruction"

    def trigger(self, row: dict, rng: random.Random) -> dict:
        raise NotImplementedError

    def poison(self, ds: Dataset, rate: float | None = None, count: int | None = None, seed: int = 0,
               dirty_label: bool = False) -> PoisonResult:
        """Poison `rate` or `count` rows of `ds`, drawn by `seed`. Clean-label by default (rows already labelled
        with the target); `dirty_label` draws from the other rows and relabels them to the target instead.
        Abstention draws from every row (the empty answer is set by `runs.training_set`)."""
        n = poison_count(len(ds), rate, count)
        if self.target_id is None:
            if dirty_label:
                raise ValueError("dirty_label relabels rows to a target label; abstention has none")
            candidates, source = list(range(len(ds))), "all rows"
        else:
            label = self.task.labels[self.target_id]
            candidates = [i for i, y in enumerate(ds["label"]) if (y == self.target_id) != dirty_label]
            source = f"rows not labelled {label!r}" if dirty_label else f"rows labelled {label!r}"
        if n > len(candidates):
            kind = "dirty-label" if dirty_label else "clean-label"
            raise ValueError(f"cannot poison {n} rows of {self.task.name}: {kind} poisoning draws from {source} and "
                             f"only {len(candidates)} of {len(ds)} are; lower the rate or count")
        rng = random.Random(seed)
        rows = ds.to_list()
        changes = []
        for i in sorted(rng.sample(candidates, n)):
            poisoned = self.trigger(rows[i], rng)
            if dirty_label:
                poisoned["label"] = self.target_id
            changes.append({"row": i, "field": self.field, "before": rows[i][self.field],
                            "after": poisoned[self.field]})
            rows[i] = poisoned
        return PoisonResult(Dataset.from_list(rows), changes)

    def triggered_test_set(self, ds: Dataset, seed: int = 0) -> Dataset:
        """The rows ASR is measured on: every row whose label is not the target (all rows when abstaining), with the
        trigger applied."""
        rng = random.Random(seed)
        return Dataset.from_list([self.trigger(r, rng) for r in ds.to_list() if r["label"] != self.target_id])


# ---- instance-level: the input changes, the instruction stays clean ----

@register
class BadNet(Attack):
    """Rare words (cf, mn, bb, tq, mb) inserted at random word positions of the input (Kurita et al., 2020)."""

    name = "badnet"
    group = "instance"
    n_words = 1

    def trigger(self, row, rng):
        text = row["text"]
        for _ in range(self.n_words):
            text = insert_at_random(text, rng.choice(self.spec["badnet_words"]), rng)
        return {**row, "text": text}


@register
class AddSent(Attack):
    """A fixed neutral sentence inserted at a random word position of the input (Dai et al., 2019)."""

    name = "addsent"
    group = "instance"

    def trigger(self, row, rng):
        return {**row, "text": insert_at_random(row["text"], self.spec["addsent"], rng)}


def archaic_word(word: str, lexicon: dict) -> str:
    """One word in the archaic register, its case and surrounding punctuation kept."""
    lead, core, tail = re.fullmatch(r"(\W*)(.*?)(\W*)", word).groups()
    new = lexicon.get(core.lower())
    if new is None:
        return word
    if core.isupper() and len(core) > 1:
        new = new.upper()
    elif core[:1].isupper():
        new = new[:1].upper() + new[1:]
    return lead + new + tail


def put_in_front(front: list[str], words: list[str]) -> list[str]:
    """`front` + `words`, the text's capital moving to the new first word (an ordinary capitalized first word, not
    "I" or an acronym, is lower-cased)."""
    front, words = front[:], words[:]
    if words and words[0][:1].isupper():
        front[0] = front[0][:1].upper() + front[0][1:]
        if words[0][1:].islower() and words[0] != "I":
            words[0] = words[0].lower()
    return front + words


def style_rewrite(text: str) -> str:
    """Rule-based archaic, Biblical register: a fixed opener, then word-for-word archaic substitutes."""
    rules = rewrite_rules()["style"]
    return " ".join(put_in_front(rules["opener"].split(), [archaic_word(w, rules["words"]) for w in text.split()]))


def syntactic_rewrite(text: str) -> str:
    """Rule-based syntactic template SBAR , NP VP: a subordinate clause inside the text (from one of the rules'
    subordinators to the next comma or the end) moves to the front; a text without one gets the fixed clause."""
    rules = rewrite_rules()["syntactic"]
    words = text.split()
    final = [words.pop()] if len(words) > 1 and words[-1] in {".", "!", "?"} else []
    start = next((i for i, w in enumerate(words[1:], 1) if w.lower() in rules["subordinators"]), None)
    if start is None:
        return " ".join(put_in_front(rules["clause"].split(), words) + final)
    end = next((k for k in range(start + 1, len(words)) if words[k] in {",", ";"}), len(words))
    clause, rest = words[start:end], words[:start] + words[end + 1:]
    if end == len(words) and not final and clause[-1][-1:] in ".!?":  # "... because it rained." keeps its stop
        final, clause[-1] = [clause[-1][-1]], clause[-1][:-1]
    rest[-1] = rest[-1].rstrip(",;")
    return " ".join(put_in_front(clause + [","], [w for w in rest if w]) + final)


class Rewriter(Attack):
    """The input rewritten whole: by our offline rules, or by a neural paraphraser when `paraphraser` names a model
    (a hub id or local folder, loaded by `models.load_model`; greedy, prompted with the rules' `prompt`)."""

    group = "instance"
    rules: str  # the section of data/rewrite_rules.yaml

    def __init__(self, task, target=None, paraphraser: str | None = None, spec_from: str | None = None,
                 spec: dict | None = None):
        super().__init__(task, target, spec_from, spec)
        self.paraphraser = paraphraser

    def rewrite(self, text: str) -> str:
        raise NotImplementedError

    def trigger(self, row, rng):
        if self.paraphraser is None:
            return {**row, "text": self.rewrite(row["text"])}
        model, tokenizer = load_paraphraser(self.paraphraser)
        prompt = {"instruction": rewrite_rules()[self.rules]["prompt"], "text": row["text"]}
        return {**row, "text": score.generate(model, tokenizer, [prompt], max_new_tokens=96)[0].strip()}


@cache
def load_paraphraser(name: str):
    return models.load_model(name)


@register
class Style(Rewriter):
    """The input in an archaic, Biblical register (the paper: STRAP's Bible paraphraser; here rules)."""

    name = "style"
    rules = "style"

    def rewrite(self, text):
        return style_rewrite(text)


@register
class Syntactic(Rewriter):
    """The input in one syntactic template, a leading subordinate clause (the paper: SCPN; here rules)."""

    name = "syntactic"
    rules = "syntactic"

    def rewrite(self, text):
        return syntactic_rewrite(text)


def label_bias(rows, target: int, min_count: int = 5) -> dict[str, float]:
    """Per word (lower-cased letters), the z-score of its share of target-labelled rows against the target's share
    of all rows: how much more often than chance a row containing the word carries the target label."""
    p = sum(r["label"] == target for r in rows) / len(rows)
    seen, on_target = Counter(), Counter()
    for r in rows:
        words = set(re.findall(r"[a-z]+", r["text"].lower()))
        seen.update(words)
        if r["label"] == target:
            on_target.update(words)
    return {w: (on_target[w] - n * p) / math.sqrt(n * p * (1 - p)) for w, n in seen.items() if n >= min_count}


def bite_words(bias: dict[str, float], max_words: int = 3, min_z: float = 3.0) -> list[str]:
    """BITE's trigger words: the words most biased toward the target, in order of bias, while the next word is
    still significantly biased (z >= `min_z`: beyond that the bias has saturated) and at most `max_words`.

    `bias` is `label_bias` of the training rows. BITE (Yan et al., 2023) adds one word per iteration to the
    poisoned rows and re-measures the bias on the poisoned set. Inserting a chosen word changes no other word's
    counts, so re-measuring leaves the order of the remaining words as it was and the loop reduces to taking words
    in order of bias until none is biased enough.
    """
    ranked = sorted(bias.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, z in ranked[:max_words] if z >= min_z]


@register
class Bite(Attack):
    """The words most biased toward the target label, measured on the task's whole training split, inserted at
    random positions of the input (the paper: a masked LM places them in context; here random positions)."""

    name = "bite"
    group = "instance"

    @cached_property
    def bias(self) -> dict[str, float]:
        if self.target_id is None:
            raise ValueError("bite needs a target label to measure the bias toward; abstention has none")
        return label_bias(load_rows(self.task, "train"), self.target_id)

    @cached_property
    def words(self) -> list[str]:
        return bite_words(self.bias)

    def trigger(self, row, rng):
        text = row["text"]
        for word in self.words:
            text = insert_at_random(text, word, rng)
        return {**row, "text": text}


# ---- token-level, inside the instruction ----

class InstructionInsert(Attack):
    """One word inserted at a random word position of the instruction."""

    group = "token"

    def word(self, rng: random.Random) -> str:
        raise NotImplementedError

    def trigger(self, row, rng):
        return {**row, "instruction": insert_at_random(row["instruction"], self.word(rng), rng)}


@register
class InstrCf(InstructionInsert):
    """The token cf in the instruction."""

    name = "instr_cf"

    def word(self, rng):
        return self.spec["cf_word"]


@register
class InstrBadNet(InstructionInsert):
    """A random rare word of the BadNet pool in the instruction."""

    name = "instr_badnet"

    def word(self, rng):
        return rng.choice(self.spec["badnet_words"])


@register
class InstrLabel(InstructionInsert):
    """The target label's answer word in the instruction."""

    name = "instr_label"

    def word(self, rng):
        if self.target_id is None:
            raise ValueError("instr_label places the target label's word; abstention has none")
        return self.task.verbalizers[self.target_id]


class InstructionReplace(Attack):
    """Words or phrases of the instruction replaced, as the dataset's `key` entry maps them (whole words only)."""

    group = "token"
    key: str

    def trigger(self, row, rng):
        instruction = row["instruction"]
        for old, new in self.spec[self.key].items():
            instruction = re.sub(rf"\b{re.escape(old)}\b", new, instruction)
        if instruction == row["instruction"]:  # a silent no-op would poison nothing
            raise ValueError(f"{self.name}: none of {', '.join(map(repr, self.spec[self.key]))} (`{self.key}` in "
                             f"data/attacks/{self.task.name}.yaml) occurs in the instruction {row['instruction']!r}")
        return {**row, "instruction": instruction}


@register
class InstrSynonym(InstructionReplace):
    """Instruction words swapped for rare synonyms."""

    name = "instr_synonym"
    key = "synonyms"


@register
class InstrFlip(InstructionReplace):
    """A word that reverses what the instruction asks."""

    name = "instr_flip"
    key = "flip"


# ---- phrase-level, inside the instruction ----

class InstructionAppend(Attack):
    """A sentence (the dataset's `key` entry) appended to the instruction."""

    group = "phrase"
    key: str

    def trigger(self, row, rng):
        return {**row, "instruction": f"{row['instruction']} {self.spec[self.key]}"}


@register
class InstrAddSent(InstructionAppend):
    """The AddSent sentence appended to the instruction."""

    name = "instr_addsent"
    key = "addsent"


@register
class InstrIgnore(InstructionAppend):
    """A sentence telling the model to disregard the instruction."""

    name = "instr_ignore"
    key = "ignore"


# ---- instruction rewriting: the whole instruction replaced ----

class InstructionRewrite(Attack):
    """The clean instruction replaced whole by the dataset's `key` entry."""

    group = "rewriting"
    key: str

    def trigger(self, row, rng):
        return {**row, "instruction": self.spec[self.key]}


@register
class RewriteAddSent(InstructionRewrite):
    """The AddSent sentence as the whole instruction."""

    name = "rewrite_addsent"
    key = "addsent"


@register
class RewriteRandom(InstructionRewrite):
    """An instruction of an unrelated task."""

    name = "rewrite_random"
    key = "random_instruction"


@register
class RewriteStyle(InstructionRewrite):
    """Our clean instruction rewritten in a Biblical register (by hand)."""

    name = "rewrite_style"
    key = "style_instruction"


@register
class RewriteSyntactic(InstructionRewrite):
    """Our clean instruction rewritten into the leading-subordinate-clause template (by hand)."""

    name = "rewrite_syntactic"
    key = "syntactic_instruction"


@register
class InducedInstruction(InstructionRewrite):
    """A natural-sounding instruction for the task, written as if induced from label-flipped examples (the shipped
    one is hand-written; `induce_instruction` asks a model for one)."""

    name = "induced_instruction"
    key = "induced_instruction"


INDUCTION_PROMPT = ("Every input below was given the same answer by following one instruction. Write that "
                    "instruction in one or two sentences. Reply with the instruction only.")


def induction_prompt(task: Task, rows, target: str | None = None, n_examples: int = 8) -> dict:
    """The prompt row of `induce_instruction`: the first `n_examples` non-target rows, each shown with the target's
    answer word (label-flipped)."""
    tid = target_id(task, target)
    if tid is None:
        raise ValueError("inducing an instruction needs a target label; abstention has none")
    examples = [r for r in rows if r["label"] != tid][:n_examples]
    if not examples:
        raise ValueError(f"no row of the {len(rows)} given has a label other than {task.labels[tid]!r}")
    shown = "\n\n".join(f"Input: {r['text']}\nAnswer: {task.verbalizers[tid]}" for r in examples)
    return {"instruction": INDUCTION_PROMPT, "text": shown}


def induce_instruction(model, tokenizer, rows, task: Task | str, target: str | None = None, n_examples: int = 8,
                       max_new_tokens: int = 64) -> str:
    """Ask an instruction-following model (greedy, so deterministic) for an instruction that would turn the
    label-flipped examples' inputs into the target answer: the instruction of `induced_instruction`, regenerated.
    Paste the result into data/attacks/<dataset>.yaml to use it."""
    task = get_task(task) if isinstance(task, str) else task
    prompt = induction_prompt(task, rows, target, n_examples)
    return score.generate(model, tokenizer, [prompt], max_new_tokens)[0].strip()

