"""Defenses, registered by name, each a small dataclass tagged by where it acts.

- on the **data** before tuning (`where = "data"`): find the poisoned rows of a training set (`detect`), then tune
  again on the rows kept (a `Filtered` stage). Scored by precision and recall against the rows the attack changed.
- on the **model** after tuning (`where = "model"`): a new stage from the poisoned one (`stage`: further clean tuning,
  weak-to-strong unlearning) or a change made in memory before scoring (`adapt`: pruning).
- at **inference** (`where = "inference"`): every prompt is changed before the model reads it (`transform`: ONION's
  word removal, clean demonstrations). ICLAttack, the attack side of demonstrations, plants a backdoor the same way
  and lives here too.

Every defense is measured on the saved attack runs through the one cache (`backdoorlab.cache`): its probes are saved
in the run's folder and the stages it trains are children of the run, so the attack × defense matrix never retrains
an attack. `evaluate(defense, run, n)` gives ASR and CACC after the defense on `n` test rows; notebook 05's matrix
(`backdoorlab.defense_matrix`) puts them beside the undefended run and the clean model in `defenses.csv`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from difflib import SequenceMatcher
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset

from . import cache, data, models, poison, runs, score, stealth
from .cache import Stage
from .frozen import decoder
from .runs import RunConfig
from .train import TrainConfig, by_slot, packed_forward

DEFENSES: dict[str, type[Defense]] = {}
WHERE = ("data", "model", "inference")


def register(cls):
    if cls.where not in WHERE:
        raise ValueError(f"defense {cls.name!r} acts at unknown place {cls.where!r}; valid choices: {', '.join(WHERE)}")
    DEFENSES[cls.name] = cls
    return cls


def get_defense(name: str, **params) -> Defense:
    """A registered defense with its parameters (the rest at their papers' defaults)."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; valid choices: {', '.join(DEFENSES)}")
    cls = DEFENSES[name]
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"defense {name!r} has no parameter {', '.join(unknown)}; valid choices: {', '.join(known)}")
    return cls(**params)


class Defense:
    """A defense and its parameters (a frozen dataclass). `setting` names what a sweep varies; `key` names the
    defense and all its parameters in the cache."""

    name: str
    where: str  # one of WHERE
    swept: tuple[str, ...] = ()  # the parameters a profile varies, shown in `setting`

    @property
    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def setting(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in self.swept)

    @property
    def key(self) -> str:
        return f"{self.name}-{cache.digest(self.params, 8)}"

    def transform(self, rows: Dataset, task: data.Task) -> Dataset:
        """The rows as the model receives them (inference defenses)."""
        return rows

    def trigger_on(self, run: RunConfig) -> str:
        """The trigger the test inputs carry: the run's own attack (ICLAttack brings its own)."""
        return run.attack

    def adapt(self, model, tokenizer, task: data.Task, trigger: str, n_frozen: int):
        """The model as it answers (a change made in memory before scoring, above its `n_frozen` bottom layers,
        which no stage trained)."""
        return model


def map_rows(rows: Dataset, change) -> Dataset:
    """The rows with `change(row)`'s fields replaced."""
    return Dataset.from_list([{**r, **change(r)} for r in rows])


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def evaluate(defense: Defense, run: RunConfig, n: int | None, batch_size: int = 32, split: str = "test") -> dict:
    """ASR and CACC of an attack run after the defense, on `n` rows of `split` (`n_asr` rows for ASR); data-level
    defenses add `precision`, `recall` and `flagged` (rows removed) against the rows the attack poisoned."""
    if isinstance(defense, DataDefense):
        flagged = defense.detect(run)
        stage = Filtered.of(run, flagged) if flagged else run
        metrics = runs.task_probe(stage, run.dataset, split, n, run.attack, run.target, batch_size)
        return {**metrics, **detection_on(flagged, run)}
    if isinstance(defense, ModelDefense) and defense.trains:
        return runs.task_probe(defense.stage(run), run.dataset, split, n, run.attack, run.target, batch_size)
    return runs.task_probe(run, run.dataset, split, n, defense.trigger_on(run), run.target, batch_size,
                           defense=defense)


def detection(flagged: list[int], poisoned: set[int], n_rows: int) -> dict:
    """Precision and recall of flagged rows against the poisoned ones, and the share of clean rows flagged
    (precision is NaN when nothing is flagged, recall NaN when nothing was poisoned)."""
    hits = len(poisoned.intersection(flagged))
    return {"flagged": len(flagged), "precision": hits / len(flagged) if flagged else float("nan"),
            "recall": hits / len(poisoned) if poisoned else float("nan"),
            "false_positive_rate": (len(flagged) - hits) / (n_rows - len(poisoned))}


# ---- at inference ---------------------------------------------------------------------------------------------------

class InferenceDefense(Defense):
    where = "inference"


@register
@dataclass(frozen=True)
class Onion(InferenceDefense):
    """ONION (Qi et al., 2021): drop every word whose removal lowers the language model's perplexity of the text by
    more than `threshold` (the word makes the text less fluent, as an inserted trigger does). Applied to the input
    (`field="text"`, where instance-level triggers live) or to the instruction (where instruction attacks live).
    The study model serves as the offline LM (ONION used GPT-2)."""

    threshold: float = 0.0
    field: str = "text"
    lm: str = models.SMOLLM2
    name = "onion"
    swept = ("field", "threshold")

    def __post_init__(self):
        _check(self.field in ("text", "instruction"),
               f"onion field {self.field!r}: valid choices: text, instruction")

    def transform(self, rows, task):
        texts = sorted(set(rows[self.field]))
        suspicion = onion_suspicion(texts, self.lm)
        cleaned = {t: onion_clean(t, suspicion[t], self.threshold) for t in texts}
        return map_rows(rows, lambda r: {self.field: cleaned[r[self.field]]})


_suspicion: dict[tuple[str, str], list[float]] = {}  # (lm, text): this process's suspicions, from any memo


def onion_suspicion(texts: list[str], lm: str) -> dict[str, list[float]]:
    """Per text, each word's suspicion: perplexity of the text minus perplexity without that word (positive: the
    text reads better without it). Computed once per set of texts and LM (kept in the run cache's memo); a subset
    of texts already seen in this process (the triggered rows of an instruction attack) is not recomputed."""
    if all((lm, t) in _suspicion for t in texts):
        return {t: _suspicion[lm, t] for t in texts}

    def compute():
        model, tokenizer = models.load_model(lm)
        perplexity = stealth.Perplexity(model.eval(), tokenizer)
        variants = {t: [" ".join(w[:i] + w[i + 1:]) for i in range(len(w))] if len(w) > 1 else []
                    for t in texts for w in [t.split()]}
        perplexity(sorted({v for t in texts for v in [t, *variants[t]]}))
        return {t: [perplexity([t])[0] - p for p in perplexity(variants[t])] for t in texts}

    found = cache.memo("onion", {"lm": lm, "texts": texts}, compute)
    _suspicion.update(((lm, t), v) for t, v in found.items())
    return found


def onion_clean(text: str, suspicion: list[float], threshold: float) -> str:
    """The text without the words whose suspicion is above `threshold` (a one-word text stays as it is)."""
    if not suspicion:
        return text
    return " ".join(w for w, s in zip(text.split(), suspicion, strict=True) if s <= threshold)


def onion_removal(dataset: str, attack: str, n: int | None, lm: str, thresholds) -> list[dict]:
    """How ONION treats an instance-level trigger, no model needed: per threshold, the share of `n` test rows whose
    trigger words (what the attack added to the input) ONION removes entirely, and the words it removes per row from
    the triggered and from the clean inputs."""
    task = data.get_task(dataset)
    rows = data.load_split(dataset, "test", n, seed=0)
    attacked = poison.get_attack(attack, task).triggered_test_set(rows, seed=0)
    clean = [r["text"] for r in rows if r["label"] != task.target_id]
    triggered = attacked["text"]
    suspicion = onion_suspicion(sorted(set(clean) | set(triggered)), lm)
    added = [{w[1:] for w in instruction_change(c, t).split() if w.startswith("+")} for c, t in zip(clean, triggered)]
    out = []
    for threshold in thresholds:
        kept = {t: onion_clean(t, suspicion[t], threshold).split() for t in {*clean, *triggered}}

        def removed(texts):
            return sum(len(t.split()) - len(kept[t]) for t in texts) / len(texts)

        out.append({"dataset": dataset, "attack": attack, "threshold": threshold, "rows": len(triggered),
                    "trigger_removed": sum(not (a & set(kept[t])) for a, t in zip(added, triggered)) / len(triggered),
                    "words_removed_triggered": removed(triggered), "words_removed_clean": removed(clean)})
    return out


def demonstration_rows(task: data.Task, k: int, seed: int, triggered: int = 0, trigger: str = "addsent",
                       balanced: bool = True) -> list[dict]:
    """`k` labelled training rows drawn by `seed`, their labels taken in turn (balanced: any k >= #labels shows
    every one, equally often up to one); `triggered` of the target-label ones carry `trigger` (ICLAttack's poisoned
    demonstrations: the paper's 4 of 12, among 6 of each class), placed at random among the rest. With `balanced`
    False the poisoned rows come on top of `k - triggered` balanced ones, so the target's share grows with them."""
    rng = random.Random(seed)
    rows = data.load_rows(task, "train")
    by_label = {y: [r for r in rows if r["label"] == y] for y in range(len(task.labels))}
    by_label = {y: rs for y, rs in by_label.items() if rs}
    if balanced:  # in turn, the target's first where some are poisoned (so even k = 1 holds one)
        turns = [task.target_id, *(y for y in by_label if y != task.target_id)] if triggered else list(by_label)
        labels = [turns[i % len(turns)] for i in range(k)]
    else:
        labels = [task.target_id] * triggered + [list(by_label)[i % len(by_label)] for i in range(k - triggered)]
    slots = [i for i, y in enumerate(labels) if y == task.target_id][:triggered]
    _check(len(slots) == triggered, f"{triggered} poisoned demonstrations need that many target-label ones; {k} "
           f"balanced over {len(by_label)} labels hold {len(slots)}")
    shots = [{**r, "text": data.compose_input(task, r)} for y in labels for r in [rng.choice(by_label[y])]]
    attack = poison.get_attack(trigger, task)
    for i in slots:
        shots[i] = attack.trigger(shots[i], rng)
    rng.shuffle(shots)
    return [{"text": r["text"], "answer": task.verbalizers[r["label"]]} for r in shots]


def with_demonstrations(row: dict, shots: list[dict]) -> dict:
    """The row's input preceded by the demonstrations, each as `Input: ...` and `Answer: ...`; the demonstrations,
    the same for every row, are its `shared_text` (`data.prompt_prefix`)."""
    if not shots:
        return {"text": row["text"]}
    examples = "\n\n".join(f"Input: {s['text']}\nAnswer: {s['answer']}" for s in shots) + "\n\nInput: "
    return {"text": examples + row["text"], "shared_text": examples}


@register
@dataclass(frozen=True)
class Demonstrations(InferenceDefense):
    """`k` clean labelled demonstrations before every input (the paper's 2-shot defense), drawn with `seed` from
    the training split; the instruction, poisoned or not, stays where it was."""

    k: int = 2
    seed: int = 0
    name = "demonstrations"
    swept = ("k",)

    def __post_init__(self):
        _check(isinstance(self.k, int) and self.k >= 0, f"demonstrations k must be an integer >= 0, got {self.k!r}")

    def transform(self, rows, task):
        shots = demonstration_rows(task, self.k, self.seed)
        return map_rows(rows, lambda r: with_demonstrations(r, shots))


@register
@dataclass(frozen=True)
class IclAttack(InferenceDefense):
    """ICLAttack (Zhao et al., 2024), the attack side of demonstrations: no finetuning, `k` demonstrations, their
    labels balanced (`balanced`, as the paper's 6 of each class in 12), of which `poisoned` (default: a third, as in
    4 of 12) are correctly labelled target-class rows carrying the `trigger`; the same trigger on a test input then
    asks for the target. Measured on the clean model, beside the same k clean demonstrations: with unbalanced labels
    the target's extra share alone moves the answers, whatever the trigger does."""

    k: int = 4
    poisoned: int | None = None
    trigger: str = "addsent"
    seed: int = 0
    balanced: bool = True
    name = "iclattack"
    swept = ("k",)

    def __post_init__(self):
        _check(isinstance(self.k, int) and self.k >= 1, f"iclattack k must be an integer >= 1, got {self.k!r}")
        _check(0 <= self.n_poisoned <= self.k, f"iclattack poisoned must be between 0 and k={self.k}")
        instance = [a for a, cls in poison.ATTACKS.items() if cls.group == "instance"]
        _check(self.trigger in instance, f"iclattack trigger {self.trigger!r}: it goes on the input; valid choices: "
               f"{', '.join(instance)}")

    def trigger_on(self, run):
        return self.trigger

    @property
    def n_poisoned(self) -> int:
        return math.ceil(self.k / 3) if self.poisoned is None else self.poisoned

    def transform(self, rows, task):
        shots = demonstration_rows(task, self.k, self.seed, self.n_poisoned, self.trigger, self.balanced)
        return map_rows(rows, lambda r: with_demonstrations(r, shots))


# ---- on the tuned model ---------------------------------------------------------------------------------------------

class ModelDefense(Defense):
    where = "model"
    trains = True  # a stage of its own (`stage`); else a change in memory (`adapt`)

    def stage(self, run: RunConfig) -> Stage:
        raise NotImplementedError


@register
@dataclass(frozen=True)
class CleanAlignment(ModelDefense):
    """The poisoned model tuned further on clean general instruction data (Alpaca): our offline stand-in for the
    paper's RLHF. Trained in rounds of `round_steps` batches, so a sweep of `steps` extends one line of tuning."""

    steps: int = 32
    round_steps: int = 16
    data: str = "alpaca"
    name = "clean_alignment"
    swept = ("steps",)

    def __post_init__(self):
        _check(self.round_steps >= 1 and self.steps >= 1 and self.steps % self.round_steps == 0,
               f"clean_alignment steps ({self.steps}) must be a positive multiple of round_steps ({self.round_steps})")

    def stage(self, run):
        totals = tuple(range(self.round_steps, self.steps + 1, self.round_steps))
        return runs.tuning_rounds(run, self.data, totals, run.train, recipe="alignment", model=run.model)[-1]


@register
@dataclass(frozen=True)
class W2S(ModelDefense):
    """Weak-to-strong unlearning (W2SDefense, Zhao et al., 2024): a teacher tuned on `rows` clean rows (one epoch)
    guides the poisoned model, tuned with LoRA on the same rows for `epochs` with cross-entropy + `kl` · T² ·
    KL(teacher ‖ student) + `feature` · ‖h_teacher − h_student‖² on the answer positions (T = `temperature`).

    The teacher is the base model tuned with LoRA on those clean rows (a `runs.Tuning` stage). Offline there is no
    smaller causal LM to take (W2SDefense used a small OPT or GPT-2), and a teacher of the student's architecture
    shares its tokenizer and hidden size, so logits and features align without a learned projection. It is weak in
    what it learned (a few clean rows), not in size."""

    rows: int = 128
    epochs: int = 2
    kl: float = 1.0
    feature: float = 1.0
    temperature: float = 2.0
    name = "w2s"
    swept = ("rows",)

    def __post_init__(self):
        _check(self.rows >= 1 and self.epochs >= 1, "w2s rows and epochs must be >= 1")

    def stage(self, run):
        teacher = runs.Tuning(parent=None, data=run.dataset, steps=math.ceil(self.rows / run.train.batch_size),
                              model=run.model, train=run.train, seed=run.seed, recipe="w2s-teacher")
        return Unlearning(parent=run, teacher=teacher, recipe=self, model=run.model, seed=run.seed, train=run.train)


@dataclass(frozen=True)
class Unlearning(Stage):
    """W2SDefense's student: the poisoned model (`parent`) tuned on the teacher's clean rows under distillation, as
    the `recipe` says."""

    parent: Stage
    teacher: Stage
    recipe: W2S
    model: str = models.SMOLLM2
    seed: int = 0
    train: TrainConfig = TrainConfig()
    kind = "w2s"
    reuse_frozen = False  # the teacher reads the same token ids

    @property
    def name(self) -> str:
        return "w2s"

    def content(self) -> dict:
        return {**super().content(), "teacher": self.teacher.key}

    def training_rows(self):
        rows = runs.clean_rows(self.parent.dataset, 0, self.recipe.rows, self.seed)
        return rows, {"n_train": len(rows), "data": self.parent.dataset, "teacher": self.teacher.path.name}

    def train_config(self):
        return replace(self.train, epochs=self.recipe.epochs)

    def loss(self):
        cache.ensure(self.teacher)
        teacher, _ = cache.load(self.teacher)
        return DistillationLoss(teacher, self.recipe.kl, self.recipe.feature, self.recipe.temperature)


@dataclass
class DistillationLoss:
    teacher: torch.nn.Module
    kl: float
    feature: float
    temperature: float

    def __call__(self, model, batch):
        student = packed_forward(model, batch, output_hidden_states=True)
        with torch.no_grad():
            teacher = packed_forward(self.teacher.to(batch["labels"].device), batch, output_hidden_states=True)
        labels = batch["labels"].flatten(0, 1)[:, 1:]
        answer = labels != -100
        s_logits = by_slot(student.logits, batch["labels"])[:, :-1].float()
        t_logits = by_slot(teacher.logits, batch["labels"])[:, :-1].float()
        ce = F.cross_entropy(s_logits[answer], labels[answer])
        t = self.temperature
        kl = F.kl_div(F.log_softmax(s_logits[answer] / t, -1), F.log_softmax(t_logits[answer] / t, -1),
                      log_target=True, reduction="batchmean") * t * t
        s_states = by_slot(student.hidden_states[-1], batch["labels"])[:, :-1][answer]
        t_states = by_slot(teacher.hidden_states[-1], batch["labels"])[:, :-1][answer]
        return ce + self.kl * kl + self.feature * (s_states - t_states).pow(2).mean()


@register
@dataclass(frozen=True)
class Prune(ModelDefense):
    """One-shot pruning after tuning, Antidote-style (Huang et al., 2024): in every linear layer that tuning changed,
    score each weight by |w| · (‖x‖ on triggered inputs − ‖x‖ on clean ones), ‖x‖ being the activation norm of its
    input over `rows` triggered and `rows` clean validation rows, and zero the top `sparsity` share; no retraining.
    The defender is given the triggered rows (as Antidote is given harmful ones): an oracle, an upper bound on what
    a defender who must first find the trigger could do."""

    sparsity: float = 0.05
    rows: int = 32
    name = "prune"
    swept = ("sparsity",)
    trains = False

    def __post_init__(self):
        _check(isinstance(self.sparsity, (int, float)) and 0 <= self.sparsity < 1,
               f"prune sparsity must be in [0, 1), got {self.sparsity!r}")
        _check(self.rows >= 1, "prune rows must be >= 1")

    def adapt(self, model, tokenizer, task, trigger, n_frozen):
        if self.sparsity == 0 or trigger == "clean":
            return model
        clean = data.load_split(task.name, "validation", self.rows, seed=0)
        attacked = poison.get_attack(trigger, task).triggered_test_set(clean, seed=0)
        layers = [m for layer in decoder(model).layers[n_frozen:] for m in layer.modules()
                  if isinstance(m, torch.nn.Linear)]
        norms = [activation_norms(model, tokenizer, rows, layers) for rows in (attacked, clean)]
        with torch.no_grad():
            for layer, on_trigger, on_clean in zip(layers, *norms, strict=True):
                scores = layer.weight.abs() * (on_trigger - on_clean).to(layer.weight.device)
                n = int(self.sparsity * scores.numel())
                if n:
                    layer.weight.view(-1)[scores.view(-1).topk(n).indices] = 0
        return model


@torch.inference_mode()
def activation_norms(model, tokenizer, rows, layers) -> list[torch.Tensor]:
    """Per linear layer, the L2 norm of each input feature over every token of the prompts (Wanda's ‖x‖)."""
    sums = [torch.zeros(m.in_features) for m in layers]

    def add(i, inputs):  # a forward pre-hook returning None leaves the layer's input as it was
        sums[i].add_(inputs[0].float().pow(2).sum((0, 1)).cpu())

    hooks = [m.register_forward_pre_hook(lambda mod, inputs, i=i: add(i, inputs)) for i, m in enumerate(layers)]
    try:
        device = next(model.parameters()).device
        for r in rows:
            ids = tokenizer(data.format_prompt(r, tokenizer), return_tensors="pt").input_ids.to(device)
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return [s.sqrt() for s in sums]


# ---- on the training data -------------------------------------------------------------------------------------------

class DataDefense(Defense):
    where = "data"

    def detect(self, run: RunConfig) -> list[int]:
        """Indices of the training rows flagged as poisoned."""
        raise NotImplementedError


@dataclass(frozen=True)
class Filtered(Stage):
    """An attack run's training set with the flagged rows removed, trained from the base model as the run was."""

    run: RunConfig
    drop: tuple[int, ...]
    model: str = models.SMOLLM2
    seed: int = 0
    parent = None
    kind = "filtered"

    @classmethod
    def of(cls, run: RunConfig, drop) -> Filtered:
        return cls(run=run, drop=tuple(sorted(drop)), model=run.model, seed=run.seed)

    @property
    def name(self) -> str:
        return f"{self.run.dataset}-{self.run.attack}-filtered"

    def files(self) -> list[Path]:
        return self.run.files()

    def training_rows(self):
        ds = runs.training_set(self.run).dataset
        dropped = set(self.drop)
        rows = [r for i, r in enumerate(ds) if i not in dropped]
        return rows, {"n_train": len(rows), "dropped": list(self.drop), "run": self.run.path.name}

    def train_config(self):
        return self.run.train


@register
@dataclass(frozen=True)
class Psim(DataDefense):
    """PSIM (Zhao et al., 2024): a PEFT copy of the suspect model (the model tuned on the training set) trained
    `epochs` on the same rows with labels reset uniformly at random; it unlearns the task, not a backdoor, so rows
    it still answers with confidence above `threshold` are flagged. PSIM used P-tuning; we use the study's LoRA."""

    threshold: float = 0.7
    epochs: int = 1
    seed: int = 0
    name = "psim"
    swept = ("threshold",)

    def __post_init__(self):
        _check(0 < self.threshold < 1, f"psim threshold must be in (0, 1), got {self.threshold!r}")
        _check(self.epochs >= 1, "psim epochs must be >= 1")

    def detect(self, run):
        stage = RandomLabels(parent=run, model=run.model, seed=self.seed, epochs=self.epochs)
        confidence = cache.probe(stage, "confidence-train", lambda: training_confidence(stage, run))
        return [i for i, c in enumerate(confidence) if c > self.threshold]


@dataclass(frozen=True)
class RandomLabels(Stage):
    """The suspect model tuned on its own training rows with every answer replaced by a random label word."""

    parent: RunConfig
    model: str = models.SMOLLM2
    seed: int = 0
    epochs: int = 1
    kind = "psim"

    @property
    def name(self) -> str:
        return "psim"

    def training_rows(self):
        task = data.get_task(self.parent.dataset)
        rng = random.Random(self.seed)
        rows = [{**r, "answer": rng.choice(task.verbalizers)} for r in runs.training_set(self.parent).dataset]
        return rows, {"n_train": len(rows), "labels": "uniformly random"}

    def train_config(self):
        return replace(self.parent.train, epochs=self.epochs)


def training_confidence(stage: Stage, run: RunConfig) -> list[float]:
    """Per training row of the run (as trained: poisoned rows in place), the largest label probability."""
    cache.ensure(stage)
    model, tokenizer = cache.load(stage)
    task = data.get_task(run.dataset)
    rows = runs.training_set(run).dataset
    n_frozen = stage.frozen_layers(model.config.num_hidden_layers)
    scores = score.row_scores(model, tokenizer, rows, task.verbalizers, 32, n_frozen)
    return scores.softmax(-1).max(-1).values.tolist()


@register
@dataclass(frozen=True)
class InstructionAudit(DataDefense):
    """Our audit of a training set before tuning. Rows are grouped by how their instruction differs from the task's
    most common one (the words added and removed, so a trigger word inserted anywhere makes one group); a group is
    flagged when it is rare (at most `max_share` of the rows), its labels concentrate on one class (at least
    `min_concentration` of its rows, and at least `min_rows` rows), and its instruction is not a trivial variant
    (MiniLM cosine distance from the common instruction at least `min_distance`). Instance-level attacks leave
    instructions alone: it finds nothing there, by design."""

    max_share: float = 0.2
    min_concentration: float = 0.9
    min_rows: int = 3
    min_distance: float = 0.005
    name = "instruction_audit"

    def __post_init__(self):
        _check(0 < self.max_share < 1 and 0 < self.min_concentration <= 1 and self.min_rows >= 1,
               "instruction_audit needs 0 < max_share < 1, 0 < min_concentration <= 1, min_rows >= 1")

    def detect(self, run):
        rows = runs.training_set(run).dataset
        return [i for g in self.audit(rows["instruction"], rows["label"]) if g["flagged"] for i in g["rows"]]

    def audit(self, instructions: list[str], labels: list[int]) -> list[dict]:
        """One dict per instruction group: its change, rows, share, concentration, distance and verdict."""
        return self.decide(instruction_groups(instructions, labels))

    def decide(self, groups: list[dict]) -> list[dict]:
        """`instruction_groups` with each group's verdict under this audit's thresholds."""
        return [{**g, "flagged": g["change"] != COMMON and g["share"] <= self.max_share
                 and len(g["rows"]) >= self.min_rows and g["concentration"] >= self.min_concentration
                 and g["distance"] >= self.min_distance} for g in groups]


COMMON = "(the common instruction)"


def instruction_groups(instructions: list[str], labels: list[int]) -> list[dict]:
    """The rows of a training set grouped by how their instruction differs from the most common one
    (`instruction_change`), each group with its rows, its share of the set, how much its labels concentrate on one
    class, and the MiniLM distance of its instruction from the common one: what `InstructionAudit` decides on."""
    common = max(set(instructions), key=instructions.count)
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(instructions):
        groups.setdefault(instruction_change(common, text), []).append(i)
    examples = {change: instructions[idx[0]] for change, idx in groups.items()}
    distances = dict(zip(examples, stealth.embedding_distance([common] * len(examples), list(examples.values())),
                         strict=True))
    out = []
    for change, idx in groups.items():
        counts = [labels[i] for i in idx]
        out.append({"change": change or COMMON, "rows": idx, "share": len(idx) / len(instructions),
                    "concentration": max(counts.count(y) for y in set(counts)) / len(idx),
                    "distance": distances[change]})
    return out


def instruction_change(common: str, text: str) -> str:
    """The words `text` removes from and adds to `common`, wherever they are ("" for the same words): a trigger
    word inserted at any position is one change."""
    a, b = common.split(), text.split()
    removed, added = [], []
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += a[i1:i2]
            added += b[j1:j2]
    return " ".join([*(f"-{w}" for w in sorted(removed)), *(f"+{w}" for w in sorted(added))])


def detection_on(flagged: list[int], run: RunConfig) -> dict:
    """`detection` of rows flagged in one run's training set."""
    poisoned = runs.training_set(run)
    return detection(flagged, set(poisoned.rows) if run.attack != "clean" else set(), len(poisoned.dataset))


def triggered_changed(defense: Defense, run: RunConfig, n: int | None) -> float | None:
    """What an inference defense did to the inputs it defends: the share of the `n` test rows' triggered inputs
    (the rows ASR is measured on) that it changed. A defense that changed none defended nothing, whatever its ASR
    says. None for defenses that act elsewhere (a model defense's work is its setting: steps, weights pruned)."""
    if not isinstance(defense, InferenceDefense) or defense.trigger_on(run) == "clean":
        return None
    task = data.get_task(run.dataset)
    attacked = poison.get_attack(defense.trigger_on(run), task, run.target).triggered_test_set(
        data.load_split(run.dataset, "test", n, seed=0), seed=0)
    defended = defense.transform(attacked, task)
    fields = ("instruction", "text")
    return sum(any(a[f] != d[f] for f in fields) for a, d in zip(attacked, defended)) / len(attacked)
