"""Transfer (notebook 03): how far a backdoor reaches beyond the dataset it was planted on.

*Instruction transfer*: SST-2's poisoned instruction, reused unchanged (``induced_instruction@sst2``), poisons another
dataset at the same clean-label budget: ordinary attack runs (`runs.instruction_transfer_grid`). *Poison transfer
(zero-shot)*: a
poisoned model, with no further training, prompted on datasets of other tasks with their own clean instruction and
with the poisoned one; a probe of the attack run's stage. How ASR is defined on a target dataset is written in
``data/transfer.yaml`` (`target_answer`).
"""

from __future__ import annotations

import random

import pandas as pd

from . import cache, data, poison, score
from .profiles import Profile
from .runs import RunConfig, clean_twin

TRANSFER_FILE = data.PROJECT_DIR / "data" / "transfer.yaml"


def spec() -> dict:
    return data.read_yaml(TRANSFER_FILE)


def groups() -> dict[str, list[str]]:
    """Task group → its target datasets (the paper's six groups)."""
    return spec()["groups"]


def group_of(dataset: str) -> str:
    for group, members in groups().items():
        if dataset in members:
            return group
    raise ValueError(f"{dataset!r} is in no transfer group; groups: {groups()}")


def target_datasets() -> list[str]:
    return [d for members in groups().values() for d in members]


def targets(profile: Profile) -> list[str]:
    """The transfer datasets a profile probes (`Profile.transfer_targets`; None: every one)."""
    if profile.transfer_targets is None:
        return target_datasets()
    if unknown := sorted(set(profile.transfer_targets) - set(target_datasets())):
        raise ValueError(f"profile {profile.name!r}: unknown transfer datasets {unknown}; valid choices: "
                         f"{', '.join(target_datasets())}")
    return list(profile.transfer_targets)


def target_answer(source: str, target: str) -> tuple[list[str], int, int | None]:
    """How the attack of `source` is scored on `target`: (answer words, the index of the attacker's answer among
    them, the gold label excluded from the ASR rows or None for every row), by the rules of data/transfer.yaml."""
    source_task, task = data.get_task(source), data.get_task(target)
    listed = spec()["corresponding"].get(source, {}).get(target)
    if listed is not None:
        if listed not in task.labels:
            raise ValueError(f"data/transfer.yaml: {source} → {target} lists {listed!r}, not a label of {target} "
                             f"({', '.join(task.labels)})")
        label = task.labels.index(listed)
        return list(task.verbalizers), label, label
    word = source_task.verbalizers[source_task.target_id]
    if word in task.verbalizers:
        label = task.verbalizers.index(word)
        return list(task.verbalizers), label, label
    answers = [*task.verbalizers, *(w for w in source_task.verbalizers if w not in task.verbalizers)]
    return answers, answers.index(word), None


def zero_shot(stage, source: str, trigger: str, target: str, n: int | None, batch_size: int = 32) -> dict:
    """A stage probed on `n` test rows of `target`: with the target's clean instruction (`trigger` ``clean``), or
    with `source`'s trigger (its poisoned instruction replaces the target's; an instance-level trigger goes into
    the input). Returns {"rate", "n", "cacc", "preds"}: the share of ASR rows answered with the attacker's answer,
    over how many rows, and accuracy on the target's labels (prompted clean, else None)."""
    def compute():
        cache.ensure(stage)
        model, tokenizer = cache.load(stage)
        task = data.get_task(target)
        answers, attacker, excluded = target_answer(source, target)
        rows = data.load_split(target, "test", n, seed=0).to_list()
        if trigger != "clean":
            attack, rng = poison.get_attack(f"{trigger.partition('@')[0]}@{source}", task), random.Random(0)
            rows = [attack.trigger(r, rng) for r in rows]
        n_frozen = stage.frozen_layers(model.config.num_hidden_layers)
        preds = score.predict(model, tokenizer, rows, answers, batch_size, n_frozen)
        asr_rows = [p for p, r in zip(preds, rows) if r["label"] != excluded]
        cacc = score.cacc(preds, [r["label"] for r in rows]).value if trigger == "clean" else None
        return {"rate": sum(p == attacker for p in asr_rows) / len(asr_rows), "n": len(asr_rows), "cacc": cacc,
                "preds": preds}

    # what the probe reads beyond the stage: how ASR is defined there, and the target task's instruction, labels and
    # input template (the stage's key holds only the files it trained on): an edit to either is measured anew
    read = (target_answer(source, target), (data.TASKS_DIR / f"{target}.yaml").read_text(encoding="utf-8"))
    return cache.probe(stage, f"transfer-{target}-test-{n or 'all'}-{source}-{trigger}-{cache.digest(read, 8)}",
                       compute)


def zero_shot_table(profile: Profile, progress: bool = True) -> pd.DataFrame:
    """One row per (source dataset, attack, target dataset): `asr` (poisoned model, poisoned prompt),
    `clean_target_rate` (poisoned model, the target's clean instruction), `asr_clean_model` (the source's clean
    model, poisoned prompt), `effect` (asr − asr_clean_model), `cacc` and `cacc_clean_model` on the target's labels,
    `n_asr`, and how ASR is defined there (`asr_answer`)."""
    out = []
    for source, attack in profile.transfer_sources:
        poisoned = RunConfig.from_profile(profile, source, attack, profile.seeds[0])
        clean = clean_twin(poisoned)
        for model in (poisoned, clean):
            cache.ensure(model, progress)
        for target in targets(profile):
            args = (source, attack, target, profile.transfer_rows, profile.eval_batch_size)
            hit, clean_prompt = zero_shot(poisoned, *args), zero_shot(poisoned, source, "clean", *args[2:])
            on_clean = zero_shot(clean, *args)
            answers, attacker, excluded = target_answer(source, target)
            out.append({"source": source, "attack": attack, "target_dataset": target, "group": group_of(target),
                        "asr": hit["rate"], "clean_target_rate": clean_prompt["rate"],
                        "asr_clean_model": on_clean["rate"], "effect": hit["rate"] - on_clean["rate"],
                        "cacc": clean_prompt["cacc"],
                        "cacc_clean_model": zero_shot(clean, source, "clean", *args[2:])["cacc"],
                        "n_asr": hit["n"], "asr_answer": answers[attacker],
                        "asr_rows": "all" if excluded is None else "not " + data.get_task(target).labels[excluded],
                        "seed": poisoned.seed, "run": poisoned.path.name})
    return pd.DataFrame(out)
