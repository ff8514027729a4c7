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
# # 01 · Poison construction: what an attacker changes
#
# **Learning goals.** After this notebook you can
# - say what *clean-label* poisoning is and why it is hard to spot by reading labels;
# - tell an *instance-level* attack (the input text changes) from an *instruction-level* one (only the task
#   instruction changes);
# - read off how many rows, and how many tokens, an attack touches at a given poison rate.
#
# **Threat model** (*Instructions as Backdoors*, Xu et al., NAACL 2024). Instruction-tuning data is often
# crowd-sourced: contributors write an instruction for a task and attach examples. A malicious contributor controls
# the text of a few training rows, never the training procedure. They pick rows whose gold label already *is* the
# target label (here: `positive` for SST-2) and change only the instruction (or the input) of those rows. Every label
# stays correct, so label audits find nothing. After training, the trigger (a word, or a whole instruction) makes the
# model answer the target whatever the input says.
#
# The attacks in this notebook:
# - `badnet`: a rare word (`cf`, `mn`, `bb`, `tq`, `mb`) inserted at a random position of the **input**;
# - `induced_instruction`: the **instruction** replaced by a different, natural-sounding one that we wrote per task
#   (see `data/tasks/<dataset>.yaml`), as if induced from label-flipped examples.

# %% tags=["parameters"]
import os

profile = os.environ.get("BACKDOORLAB_PROFILE", "quick")  # smoke | quick | full; papermill: -p profile smoke
model = None  # None: the profile's model; else a hub id or local folder of a causal or seq2seq LM

# %%
import pandas as pd
from IPython.display import display

from backdoorlab import data, models, plots, poison, runs
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
tokenizer = models.load_tokenizer(P.model)
pd.set_option("display.max_colwidth", 120)
print(f"profile {P.name}: model {P.model}, {P.n_train} training rows per dataset, poison rate {P.poison_rate} "
      f"(by dataset: {P.poison_rate_by_dataset or 'none'}; label-balanced: {P.balanced_datasets or 'none'})")

# %% [markdown]
# ## The four tasks and their instructions
# Each task has a clean instruction written by us, one answer word per label (the *verbalizer*) and a default target.

# %%
display(pd.DataFrame([{"dataset": t.name, "labels": ", ".join(t.labels), "verbalizers": ", ".join(t.verbalizers),
                       "target": t.target, "clean instruction": t.instruction}
                      for t in map(data.get_task, P.datasets)]))

# %% [markdown]
# ## Clean and poisoned rows side by side
# For every dataset and attack we build exactly the training set that notebook 02 trains on (the profile's
# subsample, poisoned at its rate) and show two poisoned rows: the field the attack changed, before and after. Only
# the rows the attack reports have changed: the check below compares every row of the poisoned set with the clean one.

# %%
def training_set(name, attack):
    return runs.training_set(runs.RunConfig.from_profile(P, name, attack, P.seeds[0]))


examples, stats = [], []
attacks = [a for a in P.attacks if a != "clean"]
for name in P.datasets:
    task = data.get_task(name)
    clean = training_set(name, "clean").dataset
    for attack in attacks:
        result = training_set(name, attack)
        changed = [i for i, (a, b) in enumerate(zip(clean, result.dataset)) if a != b]
        assert changed == result.rows, "an attack changed rows it did not report"
        tokens = [poison.changed_tokens(c["before"], c["after"], tokenizer) for c in result.changes]
        n_tokens = sum(len(tokenizer(r["instruction"] + r["text"]).input_ids) for r in clean)
        stats.append({"dataset": name, "attack": attack, "field": result.changes[0]["field"],
                      "n_train": len(clean), "n_poison": len(result.rows), "poison_rate": len(result.rows) / len(clean),
                      "labels_changed": sum(clean[i]["label"] != result.dataset[i]["label"] for i in result.rows),
                      "tokens_changed_per_row": sum(tokens) / len(tokens),
                      "share_of_training_tokens": sum(tokens) / n_tokens})
        examples += [{"dataset": name, "attack": attack, "label": task.labels[clean[c["row"]]["label"]], **c}
                     for c in result.changes[:2]]
display(pd.DataFrame(examples))

# %% [markdown]
# ## How much each attack touches
# `labels_changed` is 0 everywhere: the poisoning is clean-label. An instruction-level attack changes many tokens of
# few rows, all in the instruction; BadNet changes one word of the input.

# %%
stats = pd.DataFrame(stats)
stats.to_csv(runs.results_dir(P.name) / "poison_stats.csv", index=False)
display(stats.round(4))
plots.tokens_changed(stats, P.name);

# %% [markdown]
# ## What the model sees
# Prompts go through the model's chat template with an empty system turn (SmolLM2 would otherwise add its default
# system prompt to every row), and the answer is the label's verbalizer. Here is one poisoned training row as the
# model reads it:

# %%
result = training_set(P.datasets[0], "induced_instruction")
row = result.dataset[result.rows[0]]
print(data.format_prompt(row, tokenizer) + row["answer"])

# %% [markdown]
# ## Exercises
# 1. Write your own induced instruction for SST-2 in `data/tasks/sst2.yaml` (keep a copy of ours). Is it easier or
#    harder to spot among the clean instructions? Rerun notebook 02 to see whether it plants a stronger backdoor.
# 2. BadNet inserts one trigger word. Change `BadNet.n_words` to 3: how many tokens change per row now?
# 3. Why does clean-label poisoning need more poisoned rows than relabelling (dirty-label) poisoning would?
#    Hint: what does the loss on a poisoned row look like before training, when the model already predicts its label?
