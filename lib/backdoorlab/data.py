"""Tasks by name: rows from the local JSONL mirror (or the hub), label words, instructions and prompt formatting.

A row is a plain dict ``{"instruction": str, "text": str, "label": int}`` (plus the source's other text fields, e.g.
``text_pair``, ``question``, ``choices``); a split is a ``datasets.Dataset`` of rows. For sentence-pair and
multiple-choice tasks `text` is the input as the model reads it, composed by the task's `input` template.
Everything a task needs that we wrote by hand (instructions, verbalizers, the target label) lives in
``data/tasks/<name>.yaml`` so a reader can see and edit it; what the attacks write, in ``data/attacks/<name>.yaml``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from datasets import Dataset

PROJECT_DIR = Path(__file__).resolve().parents[2]
TASKS_DIR = PROJECT_DIR / "data" / "tasks"
SPLITS = ("train", "validation", "test")


def yaml_names(folder: Path) -> tuple[str, ...]:
    """The names of the YAML files a folder holds now (a file added in a live kernel counts at once)."""
    return tuple(sorted(p.stem for p in folder.glob("*.yaml")))


def tasks() -> tuple[str, ...]:
    """Every task: whatever ``data/tasks/*.yaml`` holds now."""
    return yaml_names(TASKS_DIR)


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...]  # class names as in the source data (the mirror's `label_text`), indexed by label id
    verbalizers: tuple[str, ...]  # the word the model answers for each label
    target: str  # the attacker's default target label
    instruction: str  # the clean instruction, written by us
    mirror: str  # folder name under $BACKDOORLAB_DATA
    hub: dict | None  # without a mirror: {path, name?, revision?, splits?, text_field?, label_field?, label_names?}
    input: str = "{text}"  # how a row's fields make the input the model reads, e.g. "Premise: {text}\n..."

    @property
    def target_id(self) -> int:
        return self.labels.index(self.target)

    @property
    def fields(self) -> tuple[str, ...]:
        """The row fields the input template reads (besides `text`, e.g. `text_pair`, `choices`)."""
        names = (re.split(r"[.\[]", f)[0] for _, f, _, _ in string.Formatter().parse(self.input) if f)
        return tuple(dict.fromkeys(n for n in names if n != "text"))


def get_task(name: str) -> Task:
    """The task as its YAML file says now: parsed once per content, so an edit in a live kernel reaches the run key
    and the prompts alike."""
    path = TASKS_DIR / f"{name}.yaml"
    if path.parent != TASKS_DIR or not path.is_file():
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(tasks())}")
    spec = read_yaml(path)
    fields = {"labels": spec.get("labels"), "verbalizers": spec.get("verbalizers")}
    problems = [f"{k} must be a list of strings (quote yes/no/true: YAML reads them as booleans)"
                for k, v in fields.items() if not isinstance(v, list) or not all(isinstance(x, str) for x in v)]
    problems += [f"{k} must be a string" for k in ("target", "instruction") if not isinstance(spec.get(k), str)]
    if not isinstance(spec.get("input", ""), str):
        problems.append("input must be a string template of the row's fields, e.g. 'Premise: {text}'")
    if not problems and len(fields["labels"]) != len(fields["verbalizers"]):
        problems.append("labels and verbalizers must have one entry per class")
    if not problems and spec["target"] not in fields["labels"]:
        problems.append(f"target {spec['target']!r} is not one of the labels {fields['labels']}")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return Task(name=name, labels=tuple(spec["labels"]), verbalizers=tuple(spec["verbalizers"]),
                target=spec["target"], instruction=spec["instruction"], mirror=spec.get("mirror", name),
                hub=spec.get("hub"), input=spec.get("input", "{text}"))


def data_dir() -> Path | None:
    """The local mirror: $BACKDOORLAB_DATA, else ../shared/data beside the project when it exists."""
    env = os.environ.get("BACKDOORLAB_DATA")
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(f"BACKDOORLAB_DATA={env} is not a folder; point it at the JSONL mirror or unset it")
        return Path(env)
    default = PROJECT_DIR.parent / "shared" / "data"
    return default if default.is_dir() else None


def _stamp(path: Path) -> tuple[str, int, int]:
    """A file's identity and version: an edit changes it, so what is parsed per stamp is never stale."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=64)
def _parse_yaml(text: str):
    return yaml.safe_load(text)


def read_yaml(path: Path):
    """A YAML file, parsed once per content (a notebook builds dozens of poisoned sets from the same few files;
    reading a small file is cheap, parsing it is not)."""
    return copy.deepcopy(_parse_yaml(Path(path).read_text(encoding="utf-8")))


@lru_cache(maxsize=32)  # a few MB per split; the study reads 3 splits of 4 tasks
def _jsonl_at(path: str, mtime_ns: int, size: int, labels: tuple[str, ...], fields: tuple[str, ...]) -> tuple[dict, ...]:
    return tuple(read_jsonl(Path(path), labels, fields))


def read_jsonl(path: Path, labels: tuple[str, ...], fields: tuple[str, ...] = ()) -> list[dict]:
    """Read classification rows, failing with the file and line of the first malformed one. A row's `label_text`,
    where the mirror has it, must be the task's name for that label id (a label order that differs is refused).
    Rows keep `text_pair` where they have one and the other `fields` the task's input template reads (`question`,
    `choices`, ...), each a string or a list of strings."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text, label = obj["text"], obj["label"]
                if not isinstance(text, str) or not isinstance(label, int) or not 0 <= label < len(labels):
                    raise ValueError(f"need a str 'text' and an int 'label' in [0, {len(labels)})")
                if bad := [f for f in fields if not _is_text(obj[f])]:
                    raise ValueError(f"fields {bad} must be strings or lists of strings")
                if "label_text" in obj and obj["label_text"] != labels[label]:
                    raise ValueError(f"label {label} is {obj['label_text']!r} here but {labels[label]!r} in the "
                                     f"task's labels {list(labels)}")
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise ValueError(f"malformed row at {path}:{lineno}: {e!r}; expected "
                                 '{"text": str, "label": int, "label_text": str, ...}') from None
            keep = [f for f in ("text_pair", *fields) if f in obj]
            rows.append({"text": text, "label": label} | {f: obj[f] for f in keep})
    return rows


def _is_text(value) -> bool:
    return isinstance(value, str) or isinstance(value, list) and all(isinstance(x, str) for x in value)


def compose_input(task: Task, row: dict) -> str:
    """The input the model reads: the task's `input` template filled with the row's fields."""
    try:
        return task.input.format(**row)
    except (KeyError, IndexError) as e:
        raise ValueError(f"{task.name}: the input template {task.input!r} needs field {e} but the row has "
                         f"{sorted(row)}; fix `input` in data/tasks/{task.name}.yaml") from None


VALIDATION_CARVE = 0.1  # share of train held out as validation for tasks that ship none (trec)


def load_rows(task: Task, split: str) -> list[dict]:
    """All rows of a split. Tasks without a validation split get one carved from train (seed 0), disjoint from it."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    if split != "test" and not _has_split(task, "validation"):
        rows = _source_rows(task, "train")
        order = random.Random(0).sample(range(len(rows)), len(rows))
        n_val = int(len(rows) * VALIDATION_CARVE)
        keep = sorted(order[:n_val]) if split == "validation" else sorted(order[n_val:])
        return [rows[i] for i in keep]
    return _source_rows(task, split)


def splits_of(task: Task) -> tuple[str, ...]:
    """The splits a task has (validation also where it is carved from train); transfer datasets may have only test."""
    has = {split for split in SPLITS if _has_split(task, split)}
    return tuple(s for s in SPLITS if s in has or s == "validation" and "train" in has)


def _has_split(task: Task, split: str) -> bool:
    root = data_dir()
    if root is not None:
        return (root / task.mirror / f"{split}.jsonl").exists()
    return split in (task.hub or {}).get("splits", {s: s for s in SPLITS})


def _source_rows(task: Task, split: str) -> list[dict]:
    root = data_dir()
    if root is not None:
        path = root / task.mirror / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{task.name} has no {split} split in the mirror ({path} is missing)")
        return [dict(r) for r in _jsonl_at(*_stamp(path), task.labels, task.fields)]  # parsed once per file version
    return _hub_rows(task, split)


def hub_label_ids(hub_names: list[str], task: Task) -> list[int | None]:
    """For each class of a hub copy (its ClassLabel names, in its order), our label id, or None for a class we do
    not use; the task's `hub.label_names` renames hub names to ours. Refuses a copy that lacks one of our labels:
    labels are matched by name, never by position, since hub copies order them differently."""
    rename = (task.hub or {}).get("label_names", {})
    ours = [rename.get(name, name) for name in hub_names]
    if missing := [label for label in task.labels if label not in ours]:
        raise ValueError(f"{task.name}: the hub copy's classes {hub_names} hold no {missing}; map them in "
                         f"data/tasks/{task.name}.yaml (hub.label_names) or use the local mirror")
    return [task.labels.index(name) if name in task.labels else None for name in ours]


def _hub_rows(task: Task, split: str) -> list[dict]:
    """Rows of the task's hub copy (needs network; never used in smoke or quick), labels mapped by name."""
    if not task.hub:
        raise FileNotFoundError(
            f"no local mirror and no checked hub copy of {task.name}: write {task.mirror}/{{train,validation,test}}"
            f".jsonl with rows {{\"text\": str, \"label\": int, \"label_text\": str}} (labels {list(task.labels)})"
            " into a folder and set BACKDOORLAB_DATA to it (docs/data.md)")
    from datasets import load_dataset

    hub = task.hub
    rows = load_dataset(hub["path"], hub.get("name"), revision=hub.get("revision"),
                        split=hub.get("splits", {}).get(split, split))
    text, label = hub.get("text_field", "text"), hub.get("label_field", "label")
    ids = hub_label_ids(rows.features[label].names, task)
    return [{"text": r[text], "label": ids[r[label]]} for r in rows if ids[r[label]] is not None]


def load_split(name: str, split: str, n: int | None = None, seed: int = 0, balanced: bool = False) -> Dataset:
    """`n` rows of a split (all when None), with the clean instruction.

    The subsample is stratified by label (largest remainder), so it keeps the split's class shares and a rare target
    class (TREC's ABBR is 1.6% of train) does not vanish by chance; which rows are drawn is fixed by `seed`.
    `balanced` draws the same number of rows per label instead (as far as each label has rows).
    """
    task = get_task(name)
    rows = load_rows(task, split)
    if n is not None and n < len(rows):
        rows = [rows[i] for i in stratified_sample([r["label"] for r in rows], n, seed, balanced)]
    return Dataset.from_list([{"instruction": task.instruction, **r, "text": compose_input(task, r)} for r in rows])


def stratified_sample(labels: list[int], n: int, seed: int, balanced: bool = False) -> list[int]:
    """Indices of `n` rows with each label's share kept (largest remainder), or equal shares where `balanced`
    (capped by the rows a label has, the rest spread over the others), in a seeded random order."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    if balanced:
        quotas, left = {}, n
        for y, ix in sorted(by_label.items(), key=lambda kv: len(kv[1])):  # smallest labels first
            quotas[y] = min(len(ix), left / (len(by_label) - len(quotas)))
            left -= quotas[y]
    else:
        quotas = {y: n * len(ix) / len(labels) for y, ix in by_label.items()}
    counts = {y: int(q) for y, q in quotas.items()}
    for y in sorted(quotas, key=lambda y: (counts[y] - quotas[y], y))[:n - sum(counts.values())]:
        counts[y] += 1
    chosen = [i for y, ix in sorted(by_label.items()) for i in rng.sample(ix, counts[y])]
    rng.shuffle(chosen)
    return chosen


def user_message(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['text']}"


def format_prompt(row: dict, tokenizer) -> str:
    """The prompt text up to where the answer starts.

    Chat models get their chat template with an empty system turn (SmolLM2's template otherwise inserts a default
    system prompt of 17 tokens into every row); models without a template (seq2seq) get plain text.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": user_message(row)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{user_message(row)}\nAnswer:"


def prompt_prefix(row: dict, tokenizer) -> str:
    """The start of the row's prompt that rows with the same instruction share (`packing` runs it once for all of
    them): chat template and instruction, and the start of the text named `shared_text` (demonstrations, say)."""
    shared = row.get("shared_text") or ""
    shared = shared if row["text"].startswith(shared) else ""
    marker = "\ue000"  # a private-use character: in no template, instruction or dataset row
    prompt = format_prompt({**row, "text": shared + marker}, tokenizer)
    return prompt[:prompt.index(marker)]


def load_instructions(name: str = "alpaca") -> list[dict]:
    """General instruction data as training rows ``{"instruction", "text", "answer"}``, in the source's order:
    the mirror's ``<name>/train.jsonl`` (Alpaca format: instruction, input, output), else the hub copy."""
    hub_ids = {"alpaca": "tatsu-lab/alpaca"}
    if name not in hub_ids:
        raise ValueError(f"unknown instruction set {name!r}; valid choices: {', '.join(hub_ids)}")
    root = data_dir()
    if root is not None:
        with open(root / name / "train.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        from datasets import load_dataset  # hub fallback: needs network, never used in smoke or quick

        records = list(load_dataset(hub_ids[name], split="train"))
    return [{"instruction": r["instruction"], "text": r["input"], "answer": r["output"]} for r in records]


# Disjoint blocks of the shuffled Alpaca rows, so no stage ever reuses another's: held-out rows for measurements, the
# fingerprint publishers' regularization rows, and the rest for users' and continual-learning tuning.
INSTRUCTION_REGIONS = {"held_out": (0, 1000), "regularization_A": (1000, 2000), "regularization_B": (2000, 3000),
                       "user": (3000, None)}


@lru_cache(maxsize=4)
def _short_instructions(max_chars: int) -> tuple[dict, ...]:
    rows = [r for r in load_instructions("alpaca") if len(r["instruction"]) + len(r["text"]) + len(r["answer"])
            <= max_chars]
    return tuple(random.Random(0).sample(rows, len(rows)))


def instruction_rows(region: str, n: int, max_chars: int, offset: int = 0) -> list[dict]:
    """`n` Alpaca rows (instruction + input + output at most `max_chars` characters, to bound CPU cost) from a region
    of `INSTRUCTION_REGIONS`, starting `offset` rows into it."""
    if region not in INSTRUCTION_REGIONS:
        raise ValueError(f"unknown region {region!r}; valid choices: {', '.join(INSTRUCTION_REGIONS)}")
    start, end = INSTRUCTION_REGIONS[region]
    rows = _short_instructions(max_chars)
    end = len(rows) if end is None else end
    if start + offset + n > end:
        raise ValueError(f"region {region!r} holds {end - start} rows; asked for rows {offset}..{offset + n}")
    return [dict(r) for r in rows[start + offset:start + offset + n]]


PAPER_REFERENCE_FILE = PROJECT_DIR / "data" / "paper_reference.csv"
PARAPHRASES_FILE = PROJECT_DIR / "data" / "paraphrases.yaml"


def paraphrases(task: str) -> list[str]:
    """Legitimate rewordings of a task's clean instruction (data/paraphrases.yaml), written by us: a clean set whose
    rows come from several sources, each phrasing the task its own way."""
    written = read_yaml(PARAPHRASES_FILE)
    if not written.get(task):
        raise ValueError(f"{PARAPHRASES_FILE} holds no paraphrases of {task!r}; tasks with some: "
                         f"{', '.join(sorted(written))}")
    return [" ".join(p.split()) for p in written[task]]


def paper_reference(experiment: str) -> list[dict]:
    """The papers' reported numbers of one experiment (data/paper_reference.csv: typed in from the papers, each row
    with where it was reported), values as floats."""
    import csv

    with open(PAPER_REFERENCE_FILE, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["experiment"] == experiment]
    if not rows:
        raise ValueError(f"no reported numbers for {experiment!r} in {PAPER_REFERENCE_FILE}")
    return [{**r, "value": float(r["value"]), "approximate": r["approximate"] == "True"} for r in rows]
