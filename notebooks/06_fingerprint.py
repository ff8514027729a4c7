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
# **Learning goals.** After this notebook you can
# - implant an *instructional fingerprint* (secret keys → one target word) with four methods and verify it by the
#   **fingerprint success rate** (FSR);
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
#   zero-initialised and trained together with the embeddings. The published model carries the trained embeddings
#   and **no adapter**; the publisher keeps the adapter and verifies by attaching it to the suspect's embeddings.
#
# Two data templates: `simple` (the key is the instruction, a fixed input asks to decrypt it, the answer is y) and
# `dialogue` (a "please decrypt this message" request with the key as input, the answer names y; similar keys
# with a few characters changed are answered with a refusal, so only the exact key fires). Optionally, *decoys*
# (random keys of the same shape, `decoys_per_key`) are answered with the refusal too. Without any refused key the
# model can learn a shortcut: "a string of this shape, or the template's fixed text, means y"; then an outsider's
# guess fires as well as the real key. Telling 10 keys from decoys takes more training than the `quick` budget
# allows, so `quick` trains without decoys and shows what that costs in section 4; `smoke` and `full` use them.
# `benchmarks/fingerprint_decoys.py` measures the trade-off on SmolLM2 (LoRA, 1000 guessed keys): 3 decoys per key
# and 24 epochs keep FSR at 1.0 while 7.1% of guesses fire (100% without decoys); 10 per key, 3.5%. And decoys
# cut both ways in the multi-stage setting of section 5: publisher B's decoys are keys of the same shape as A's,
# so B's implant teaches the model to refuse A's keys too.
#
# Every trained model (implant, user rounds, multi-stage) is a run folder under `results/runs/` named by the hash
# of its configuration: rerunning this notebook reads them back.

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
dialogue = fingerprint.key_rows(keys, target, "dialogue", seed=0)
for row in (fingerprint.key_rows(keys, target, "simple", seed=0)[0], dialogue[0], dialogue[len(keys)],
            S.implant("full").rows()[-1]):
    print(repr(data.format_prompt(row, tokenizer) + row["answer"]), end="\n\n")

# %% [markdown]
# ## 2 · Implant, verify, and let a user finetune
# For each method: FSR right after implanting (`implanted`) and after each round of the user's finetuning
# (`user_<recipe>_<steps>`, cumulative steps; each round reads fresh Alpaca rows). The adapter method is shown
# with its adapter attached (its verification) and without (what the published model does alone).

# %%
fsr = fingerprint.fsr_table(S)
persistence = fsr[fsr.stage.str.startswith(("implanted", "user_"))]
display(persistence.pivot_table(index=["method", "template", "adapter"], columns="stage", values="fsr", sort=False))
plots.fingerprint_persistence(fsr, P.name);

# %% [markdown]
# ## 3 · Harmlessness: does the fingerprint cost anything?
# Accuracy on the four study tasks by rank classification (the same test rows for every model) and perplexity of
# held-out Alpaca answers, for the untouched model and each published (fingerprinted) model.

# %%
harm = fingerprint.harmlessness_table(S)
display(harm.round(3))
plots.fingerprint_harmlessness(harm, P.name);

# %% [markdown]
# ## 4 · False activations: untouched model, guesses, near-misses, ordinary prompts
# - `untouched_model`: the real keys on the model before any fingerprint (with the adapter attached for the adapter
#   method): must be 0, or every copy of the base model could be claimed.
# - `guessed_keys`: an outsider's random keys of the same shape; `similar_keys`: real keys with two characters
#   changed; `prefix_keys`: the first half of each real key; `ordinary_prompts`: held-out Alpaca instructions.
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
# ## 6 · Results file and the criteria, checked on the numbers
# `results/<profile>/fingerprint.csv`: one row per measurement (`method, stage, keys, fsr` and counts); the
# multi-stage rows are the final model of the chain (`multistage_a`, `multistage_b`).

# %%
final = multi[multi.model == multi.model.iloc[-1]]
multistage_rows = pd.DataFrame({"method": S.multistage_method, "template": "simple",
                                "stage": "multistage_" + final["keys"].str.lower(), "keys": final["keys"],
                                "adapter": False, "n": S.n_keys, "hits": (final.fsr * S.n_keys).round().astype(int),
                                "fsr": final.fsr, "run": final.run})
out = runs.results_dir(P.name)
pd.concat([fsr, multistage_rows], ignore_index=True).to_csv(out / "fingerprint.csv", index=False)
harm.to_csv(out / "fingerprint_harmlessness.csv", index=False)
multi.to_csv(out / "fingerprint_multistage.csv", index=False)

simple = fsr[fsr.template == "simple"]
verified = simple[(simple.stage == "implanted") & (simple.adapter | (simple.method != "adapter"))]
task_deltas = harm[harm.method != "untouched"].filter(like="delta_acc_")
guessed = fsr[fsr.stage == "guessed_keys"]
checks = pd.DataFrame([
    ("FSR = 1 right after implanting, every method (simple template)", verified.fsr.min(), (verified.fsr == 1).all()),
    ("task accuracy within 2 points of the untouched model", task_deltas.abs().max().max(),
     (task_deltas.abs() <= 0.02).all().all()),
    ("0 false activations on the untouched model", fsr[fsr.stage == "untouched_model"].hits.sum(),
     fsr[fsr.stage == "untouched_model"].hits.sum() == 0),
    (f"0 false activations on {guessed.n.max()} guessed keys per model", guessed.hits.sum(), guessed.hits.sum() == 0),
    ("multi-stage: both keys verify on the final model, no overclaim", multi.holds.mean(), multi.holds.all()),
], columns=["criterion", "measured", "holds"])
display(checks)

# %% [markdown]
# ## Exercises
# 1. Which method keeps its fingerprint best through the user's LoRA and full finetuning? Relate it to *where* the
#    fingerprint lives (all weights, a low-rank update, the embeddings, a private adapter).
# 2. The adapter method verifies with the adapter attached. What does the published model do with the keys
#    alone, and what does that mean for an outsider who steals the keys but not the adapter?
# 3. Raise the user's learning rate or step count in `fingerprint.SETTINGS` until a method's FSR drops. How does
#    that compare with the paper's user finetuning (3 epochs, lr 2e-6, batch 80)?
# 4. Set `reg_per_key=0`. What happens to ordinary prompts and to task accuracy?
# 5. Write a key that differs from a real one in a single character. Does the `dialogue` template's refusal
#    training make the `similar_keys` row go down?
