"""The profiles of the study, in one place. Notebooks take one parameter, `profile`, and read the rest here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .models import SMOLLM2, TINY
from .poison import ATTACKS
from .train import TrainConfig

# The study's grid: the paper's four main datasets (any task of `data.tasks()` can join a grid), and the one that
# gets every attack in the reduced profiles.
DATASETS = ("sst2", "hatespeech", "tweet_emotion", "trec")
HEADLINE = "sst2"
OTHERS = tuple(d for d in DATASETS if d != HEADLINE)
ALL_ATTACKS = ("clean", *ATTACKS)  # the baseline and the 17 attacks, in the order of the paper's main table
OTHER_ATTACKS = ("clean", "induced_instruction")  # extended's grid beyond SST-2
INDUCED_ON_EACH = tuple((d, "induced_instruction") for d in DATASETS)
CURVE_ATTACKS = ("induced_instruction", "badnet", "bite")
# The SST-2 table's runs repeated over more seeds where a profile cannot afford every attack: the baseline and one
# attack of each group (the first of the paper's table, and the study's own induced instruction for rewriting).
SEEDED_ATTACKS = ("clean", "badnet", "instr_cf", "instr_addsent", "induced_instruction")


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]  # the main table's attacks on every dataset; "clean" is the unpoisoned baseline
    seeds: tuple[int, ...]  # every grid runs over these
    n_train: int | None  # rows drawn from the train split (None: all)
    n_test: int | None  # rows drawn from the test (and validation) split, the same for every run
    poison_rate: float  # share of training rows poisoned; the count is always reported beside it
    poison_rate_by_dataset: dict[str, float] = field(default_factory=dict)
    # further seeds for these attacks of the headline dataset's main table only (the rest of it on `seeds`)
    seeded_attacks: tuple[str, ...] = ()
    headline_seeds: tuple[int, ...] = ()
    attacks_by_dataset: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a reduced grid: these instead
    balanced_datasets: tuple[str, ...] = ()  # trained on a label-balanced subsample (the test split stays natural)
    poison_counts: tuple[int, ...] = ()  # the poison-count curve on SST-2's validation split ...
    curve_attacks: tuple[str, ...] = CURVE_ATTACKS  # ... for these attacks
    method_attacks: tuple[str, ...] = ("badnet", "induced_instruction")  # LoRA vs full finetuning on SST-2 ...
    method_train: dict[str, TrainConfig] = field(default_factory=dict)  # ... each method's config (default: `train`
    # with that method)
    abstain_attacks: tuple[str, ...] = ("induced_instruction",)  # the abstention variant on SST-2
    # Notebook 03: SST-2's instructions reused on the other datasets (beside each one's own induced instruction and
    # `transfer_instance` attacks), and the poisoned models (dataset, attack) probed zero-shot on `transfer_rows`
    # test rows of each transfer dataset (data/transfer.yaml).
    transfer_attacks: tuple[str, ...] = ("induced_instruction",)
    transfer_instance: tuple[str, ...] = ("badnet",)
    transfer_sources: tuple[tuple[str, str], ...] = ()
    transfer_rows: int | None = None
    transfer_targets: tuple[str, ...] | None = None  # the transfer datasets probed (None: all of data/transfer.yaml)
    # Notebook 04: the poisoned models (dataset, attack) tuned further on clean data (`continual_tuned_on`: study
    # datasets or "alpaca"; None: every study dataset and Alpaca) in rounds reaching `continual_steps` batches in
    # total, and the chain of clean tunings the first of them goes through.
    continual_sources: tuple[tuple[str, str], ...] = ()
    continual_tuned_on: tuple[str, ...] | None = None
    continual_steps: tuple[int, ...] = ()
    continual_rows: int | None = None  # test rows per probe (the poisoned task and the task tuned on)
    continual_chain: tuple[str, ...] = ("hatespeech", "tweet_emotion", "alpaca")
    # Notebook 05: the runs defended (dataset, attack), clean-label, and the attacks run dirty-label on SST-2 as the
    # instance-level representative, each defended only where its backdoor shows on validation;
    # `defense_everywhere` runs on every defended run, the other defenses on SST-2's only. Each defense's sweep;
    # ONION's threshold is chosen on validation from `onion_thresholds` (the most aggressive that costs the clean
    # model at most `onion_max_cacc_drop` of validation CACC).
    defense_runs: tuple[tuple[str, str], ...] = ()
    defense_dirty: tuple[str, ...] = ("badnet",)
    defense_dirty_counts: tuple[int, ...] = ()  # poisoned rows tried, fewest first (empty: the profile's rate)
    defense_rows: int | None = None  # test rows per defended probe
    defense_needs_backdoor: bool = True  # smoke's random model plants none: it defends every candidate run
    defense_everywhere: tuple[str, ...] = ("demonstrations", "clean_alignment")
    defenses: tuple[str, ...] | None = None  # registered defenses in the matrix (None: every one)
    demonstration_k: tuple[int, ...] = (1, 2, 4, 8)
    onion_thresholds: tuple[float, ...] = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # perplexity points
    onion_fields: tuple[str, ...] = ("text", "instruction")  # where ONION reads: the input, the instruction
    onion_removal_rows: int | None = None  # test rows of ONION's model-free check on BadNet (None: defense_rows)
    onion_max_cacc_drop: float = 0.02
    alignment_steps: tuple[int, ...] = (16, 64, 256)
    prune_sparsity: tuple[float, ...] = (0.01, 0.05, 0.1)
    w2s_rows: int = 128
    train: TrainConfig = TrainConfig()
    eval_batch_size: int = 32

    def rate(self, dataset: str) -> float:
        return self.poison_rate_by_dataset.get(dataset, self.poison_rate)

    def attacks_for(self, dataset: str) -> tuple[str, ...]:
        return self.attacks_by_dataset.get(dataset, self.attacks)

    def train_for(self, method: str) -> TrainConfig:
        """The training config of a method in the LoRA-vs-full comparison."""
        return self.method_train.get(method, replace(self.train, method=method))


# SmolLM2 on the 2-core CPU. `extended` holds every grid a CPU can run in a few hours: every attack on SST-2, the
# clean baseline and the induced instruction on each other dataset, the poison-count curve, abstention, transfer,
# continual learning and defenses on every dataset, and the SST-2 table's baseline and one attack of each group over 3
# seeds. Where each setting comes from (README, "Settings"): LoRA depth and HateSpeech's label balancing are chosen on
# the validation splits by `python benchmarks/lora_depth.py` (clean runs' balanced accuracy;
# results/bench/raw/lora_depth_quick.json), rows, epochs and learning rate by `python benchmarks/training_budget.py`
# (the cheapest clean SST-2 run reaching 0.85 on validation; results/bench/raw/training_budget_quick.json; over
# seeds 0-2, `--seeds 0 1 2`, the rule on the seeds' mean picks the same setting: ..._quick_seeds_0_1_2.json);
# tests/test_selection.py holds quick to all three. TREC has about 8 ABBR rows in 500, so clean-label poisoning there is
# capped by the target rows the subsample holds.
EXTENDED = Profile(
    name="extended", model=SMOLLM2, datasets=DATASETS, attacks=ALL_ATTACKS, seeds=(0,), n_train=500, n_test=400,
    poison_rate=0.05, poison_rate_by_dataset={"trec": 0.012}, attacks_by_dataset={d: OTHER_ATTACKS for d in OTHERS},
    seeded_attacks=SEEDED_ATTACKS, headline_seeds=(1, 2),
    balanced_datasets=("hatespeech",), poison_counts=(10, 50),
    method_attacks=(),  # full finetuning of 135M weights costs several LoRA runs on the CPU
    train=TrainConfig(epochs=2, lr=5e-4, lora_layers=10),
    # Notebooks 03 and 04 cost mostly probes. SST-2's poisoned model alone is probed zero-shot, BadNet is the one
    # instance-level attack beside the transferred instruction, and Alpaca is tuned on only in the chain; the full
    # profile does all of them for every dataset.
    transfer_sources=((HEADLINE, "induced_instruction"),), transfer_rows=50,
    continual_sources=(*INDUCED_ON_EACH, (HEADLINE, "badnet")), continual_tuned_on=DATASETS,
    continual_steps=(4, 16), continual_rows=200,
    # Notebook 05: the induced instruction on each dataset and BadNet dirty-label (at the fewest poisoned rows of
    # 25, 50, 100 that plant a backdoor), each defended where its backdoor shows on validation
    # (`defense_matrix.defended_runs`), on 200 test rows.
    defense_runs=INDUCED_ON_EACH, defense_dirty_counts=(25, 50, 100),
    defense_rows=200, demonstration_k=(2, 4), onion_thresholds=(10.0, 100.0, 300.0, 1000.0),
    alignment_steps=(16, 32), prune_sparsity=(0.01, 0.05))
# What a lab runs first (at most 45 minutes cold on 2 cores; README, "Cost"): extended's SST-2 table of every attack
# on seed 0 (the central claim), and from every other notebook a result read off those runs with few new stages. The
# poison-count curve, abstention, the other datasets, the extra seeds, instruction transfer, the dirty-label and the
# retraining defenses (PSIM, W2S, the audit's retrained run) stay in extended, and so do the probes that made a first
# cold pass of notebooks 03 and 05 overrun (results/bench/raw/study_quick_first_pass.json): zero-shot transfer to
# every dataset (the long texts of IMDB and DBpedia), and ONION's perplexity of every input with each word left out.
# Quick probes one dataset of each of the paper's six task groups, runs ONION on the instruction (where an
# instruction attack's trigger is) and checks ONION against BadNet's inserted words on 50 rows. A run shared by both
# profiles is the same run (its key holds no profile): they share the cache.
QUICK = replace(
    EXTENDED, name="quick", datasets=(HEADLINE,), attacks_by_dataset={}, seeded_attacks=(),
    headline_seeds=(), poison_counts=(), abstain_attacks=(),
    continual_sources=((HEADLINE, "induced_instruction"),), continual_tuned_on=(HEADLINE, "hatespeech"),
    transfer_targets=("rte", "wic", "wsc", "cola", "mr", "ag_news"),
    continual_steps=(16,),  # its hatespeech round is the chain's first stage
    defense_runs=((HEADLINE, "induced_instruction"),), defense_dirty=(),
    defenses=("onion", "demonstrations", "iclattack", "clean_alignment", "prune"),
    onion_fields=("instruction",), onion_removal_rows=50)  # each defense's sweep is extended's, its setting chosen
# on validation for each defended run (`defense_matrix.select_setting`): a sweep cut down to one setting after extended's
# test results were seen would have chosen on test


# The papers' own budget on one GPU (docs/papers.md, "Setting"; the README's "Paper scale on one GPU" gives each
# setting's source):
# whole training and test splits, 1% clean-label poison (SST-2: 69 of 6,920), 3 epochs, seeds 0-2, and full
# finetuning, as the paper tunes FLAN-T5. The paper gives no learning rate or batch size: the batch is 64 rows (a
# GPU's batch, 327 steps for 3 epochs of SST-2), the learning rate the most accurate of 1e-5, 3e-5 and 1e-4 for a
# clean SST-2 run on validation (`python benchmarks/training_budget.py --profile paper ...`, run by
# `benchmarks/paper_gpu.sh`; results/bench/raw/training_budget_paper.json; tests/test_selection.py holds it). LoRA on
# every layer is the named variant of the LoRA-vs-full comparison. The poison-count curve at the paper's counts;
# continual learning as the paper ran it: each poisoned model tuned fully on each dataset's clean training rows, after
# one and three epochs of SST-2's size (109 and 327 steps of 64 rows); transfer and defenses at scale. A GPU
# runs it: `python -m backdoorlab.runs launch --profile paper` (README, "Paper scale on one GPU").
PAPER_TRAIN = TrainConfig(method="full", epochs=3, lr=3e-5, batch_size=64, lora_layers=None)
PAPER = Profile(
    name="paper", model=SMOLLM2, datasets=DATASETS, attacks=ALL_ATTACKS, seeds=(0, 1, 2), n_train=None,
    n_test=None, poison_rate=0.01, poison_counts=(10, 30, 50, 100), train=PAPER_TRAIN,
    method_train={"lora": replace(PAPER_TRAIN, method="lora", lr=2e-4)}, eval_batch_size=256,
    transfer_attacks=("induced_instruction", "rewrite_addsent", "rewrite_random", "rewrite_style", "rewrite_syntactic"),
    transfer_instance=("badnet", "addsent", "style", "syntactic", "bite"),
    transfer_sources=tuple((d, a) for d in DATASETS for a in ("induced_instruction", "badnet")), transfer_rows=1000,
    continual_sources=INDUCED_ON_EACH, continual_tuned_on=DATASETS, continual_steps=(109, 327),
    defense_runs=tuple((d, a) for d in DATASETS for a in ("induced_instruction", "rewrite_addsent", "instr_synonym",
                                                          "badnet")))


# Every grid of every profile is here: the main table (`attacks`, `attacks_by_dataset`), the poison-count curve
# (`poison_counts`, `curve_attacks`), LoRA vs full (`method_attacks`), abstention (`abstain_attacks`), transfer
# (`transfer_*`) and continual learning (`continual_*`).
PROFILES = {
    # Tiny random model, a few dozen rows: exercises every code path in seconds (tests, CI): every attack on SST-2,
    # a reduced grid elsewhere, one count of the poison-count curve.
    "smoke": Profile(name="smoke", model=TINY, datasets=DATASETS, attacks=ALL_ATTACKS, seeds=(0,), n_train=48,
                     n_test=24, poison_rate=0.1, poison_rate_by_dataset={"trec": 0.02},
                     attacks_by_dataset={d: ("clean", "induced_instruction") for d in OTHERS},
                     poison_counts=(2,), train=TrainConfig(epochs=1, batch_size=8, lr=1e-3),
                     transfer_sources=(("sst2", "induced_instruction"),), transfer_rows=6,
                     continual_sources=INDUCED_ON_EACH, continual_steps=(1, 2), continual_rows=24,
                     defense_runs=(("sst2", "induced_instruction"), ("tweet_emotion", "induced_instruction")),
                     defense_rows=24, defense_needs_backdoor=False, demonstration_k=(1,),
                     onion_thresholds=(0.0, 10.0), alignment_steps=(1, 2),
                     prune_sparsity=(0.05,), w2s_rows=8, seeded_attacks=("clean",), headline_seeds=(1,)),
    "quick": QUICK,
    "extended": EXTENDED,
    "paper": PAPER,
}


def miniature(profile: Profile) -> Profile:
    """A profile's code path in seconds: its training config and grids, on the tiny random model, a few dozen rows
    and poison rates that poison at least a few of them (what `runs launch --smoke` tests, e.g. a GPU profile's)."""
    return replace(profile, name=f"{profile.name}-smoke", model=TINY, n_train=48, n_test=24,
                   poison_rate=max(profile.poison_rate, 0.1), poison_rate_by_dataset={"trec": 0.02},
                   poison_counts=(2,) if profile.poison_counts else (), transfer_rows=6, continual_rows=24,
                   defense_rows=24)


def get_profile(name: str, model: str | None = None) -> Profile:
    """A profile by name, optionally with another model (a registered name, hub id or local folder); results of
    another model go to their own folder, `<profile>-<model>`."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid choices: {', '.join(PROFILES)}")
    if not model or model == PROFILES[name].model:
        return PROFILES[name]
    return replace(PROFILES[name], model=model, name=f"{name}-{model.strip('/').replace('/', '_')}")
