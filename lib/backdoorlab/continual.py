"""Continual learning (notebook 04): does a backdoor survive when its victim keeps training on clean data?

Each poisoned model of the study (an attack run of the cache) is finetuned further on clean rows, as `runs.Tuning`
stages in rounds: the same dataset's clean rows, each other study dataset's, or general instruction data (Alpaca).
After each round the stage is probed on the poisoned task (ASR with the original trigger, CACC) and on the new task
(CACC). A chain of tunings (clean B, then C, then Alpaca) shows the backdoor over several successive users.
"""

from __future__ import annotations

import pandas as pd

from . import cache
from .profiles import Profile
from .runs import RunConfig, Tuning, task_probe, tuning_rounds

ALPACA = "alpaca"


def probe_row(stage, poisoned: RunConfig, tuned_on: str | None, steps: int, profile: Profile) -> dict:
    """ASR (original trigger) and CACC on the poisoned task, and CACC on the task tuned on (None: no new task), of
    one stage (the poisoned run itself at step 0)."""
    def on(dataset, trigger):
        return task_probe(stage, dataset, "test", profile.continual_rows, trigger, poisoned.target,
                          profile.eval_batch_size)

    own = on(poisoned.dataset, poisoned.attack)
    new = own if tuned_on == poisoned.dataset else None if tuned_on in (ALPACA, None) else on(tuned_on, "clean")
    return {"poisoned_on": poisoned.dataset, "attack": poisoned.attack, "tuned_on": tuned_on, "steps": steps,
            "asr": own["asr"], "cacc": own["cacc"], "clean_target_rate": own["clean_target_rate"],
            "cacc_new_task": None if new is None else new["cacc"], "n_asr": own["n_asr"], "seed": poisoned.seed,
            "run": stage.path.name}


def lines(profile: Profile) -> list[tuple[RunConfig, str, list[Tuning]]]:
    """(poisoned run, data tuned on, its rounds) for every line of the continual-learning grid."""
    out = []
    for dataset, attack in profile.continual_sources:
        poisoned = RunConfig.from_profile(profile, dataset, attack, profile.seeds[0])
        for tuned_on in profile.continual_tuned_on or (*profile.datasets, ALPACA):
            out.append((poisoned, tuned_on, tuning_rounds(poisoned, tuned_on, profile.continual_steps,
                                                          profile.train, model=profile.model)))
    return out


def table(profile: Profile, progress: bool = True) -> pd.DataFrame:
    """One row per (poisoned run, data tuned on, steps), steps 0 being the poisoned model itself."""
    out = []
    for poisoned, tuned_on, rounds in lines(profile):
        out.append(probe_row(poisoned, poisoned, tuned_on, 0, profile))
        for stage in rounds:
            cache.ensure(stage, progress)
            out.append(probe_row(stage, poisoned, tuned_on, stage.total_steps, profile))
    return pd.DataFrame(out)


def chain(profile: Profile, progress: bool = True) -> pd.DataFrame:
    """The profile's multi-stage chain: its poisoned run tuned on each of `continual_chain` in turn (each for the
    last of `continual_steps`), probed after every stage."""
    dataset, attack = profile.continual_sources[0]
    poisoned = RunConfig.from_profile(profile, dataset, attack, profile.seeds[0])
    out, stage, steps = [probe_row(poisoned, poisoned, None, 0, profile)], poisoned, profile.continual_steps[-1]
    for i, tuned_on in enumerate(profile.continual_chain):
        stage = Tuning(parent=stage, data=tuned_on, steps=steps, train=profile.train, model=profile.model)
        cache.ensure(stage, progress)
        row = probe_row(stage, poisoned, tuned_on, steps * (i + 1), profile)
        out.append({**row, "chain": " → ".join(profile.continual_chain[:i + 1])})
    out[0]["chain"] = "poisoned"
    return pd.DataFrame(out)
