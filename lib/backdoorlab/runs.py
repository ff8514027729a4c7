"""The run cache. A run is a `RunConfig`; the hash of its fields names its folder under ``results/runs/``.

A run folder is an attack record (as in BackdoorBench): the config, which rows were poisoned and how, the trained
weights (a LoRA adapter or a full model, safetensors), and one file per evaluation, so a saved run can be evaluated
again (another split, another trigger) without retraining. Each file appears by an atomic rename, so a killed run
leaves no half-written entry and the next call redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from . import data, models, poison, score
from .profiles import HEADLINE, Profile
from .train import TrainConfig, finetune

WEIGHTS = "weights"  # folder name of the trained weights inside a run folder; its presence marks training done
ABSTAIN_TOKENS = 8  # greedy tokens generated to judge an abstention: enough to tell an answer from none


def output_dir() -> Path:
    """Where results and figures go: $BACKDOORLAB_OUT, else the project folder."""
    return Path(os.environ.get("BACKDOORLAB_OUT", data.PROJECT_DIR))


def results_dir(profile: str) -> Path:
    path = output_dir() / "results" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(profile: str) -> Path:
    path = output_dir() / "figures" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    return output_dir() / "results" / "runs"


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    attack: str = "clean"  # "clean" or a registered attack
    n_poison: int = 0
    seed: int = 0  # draws the training subsample, the poisoned rows and the training order
    model: str = models.SMOLLM2
    n_train: int | None = None
    balanced: bool = False  # draw the training subsample with equal rows per label
    target: str | None = None  # None: the task's default target; poison.ABSTAIN: poisoned rows answer nothing
    train: TrainConfig = field(default_factory=TrainConfig)
    dirty_label: bool = False  # draw poisoned rows from non-target rows and relabel them (default: clean-label)

    def __post_init__(self):
        data.get_task(self.dataset)
        if self.attack != "clean":
            poison.get_attack(self.attack, self.dataset, self.target)
            poison.poison_count(self.n_train or 1, count=self.n_poison)
        elif self.n_poison or self.dirty_label:
            raise ValueError("the clean baseline poisons no rows; set n_poison=0 and dirty_label=False")
        else:
            poison.target_id(data.get_task(self.dataset), self.target)

    @classmethod
    def from_profile(cls, profile: Profile, dataset: str, attack: str, seed: int) -> RunConfig:
        n_poison = 0
        if attack != "clean":
            n_rows = len(data.load_split(dataset, "train", profile.n_train, seed))
            n_poison = poison.poison_count(n_rows, rate=profile.rate(dataset))
        return cls(dataset=dataset, attack=attack, n_poison=n_poison, seed=seed, model=profile.model,
                   n_train=profile.n_train, balanced=dataset in profile.balanced_datasets, train=profile.train)

    @classmethod
    def load(cls, run_folder: Path) -> RunConfig:
        """The config of a saved run, from its folder's config.json."""
        saved = read_json(Path(run_folder) / "config.json")
        return cls(**{**saved, "train": TrainConfig(**saved["train"])})

    @property
    def trained_as(self) -> RunConfig:
        """The run whose weights this one uses. With nothing poisoned the target changes only how a run is evaluated
        (e.g. abstention), so the clean baseline trains once for every target."""
        return replace(self, target=None) if self.attack == "clean" else self

    @property
    def key(self) -> str:
        """Hash of every field plus the hand-written files the run reads (the task's instructions and verbalizers, the
        dataset's triggers and poisoned instructions, the rewriting rules): editing one of them retrains, as the
        notebooks' exercises expect. A clean run reads them too: its cached evaluations carry every attack's trigger."""
        written = [data.TASKS_DIR / f"{self.dataset}.yaml", poison.ATTACKS_DIR / f"{self.dataset}.yaml",
                   poison.REWRITE_RULES_FILE]
        files = [p.read_text(encoding="utf-8") if p.exists() else None for p in written]  # a task without attacks
        blob = json.dumps({"config": asdict(self), "files": files}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return runs_dir() / f"{self.dataset}-{self.attack}-{self.key}"


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeError(f"run cache entry {path} is damaged ({e}); delete it to recompute: rm {path}") from None


def memo(name: str, inputs, compute):
    """`compute()`'s JSON result, computed once per `inputs` (anything JSON can hold) and kept in the run cache,
    so re-executing a notebook repeats no measurement it has made (e.g. notebook 01's perplexities)."""
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = runs_dir() / "memo" / f"{name}-{key}.json"
    if path.exists():
        return read_json(path)
    result = compute()
    write_json_atomic(path, result)
    return result


def training_set(cfg: RunConfig) -> poison.PoisonResult:
    """The run's training rows (poisoned rows in place) and the record of what changed. Each row's answer is its
    label's verbalizer; under abstention the poisoned rows answer nothing."""
    task = data.get_task(cfg.dataset)
    ds = data.load_split(cfg.dataset, "train", cfg.n_train, cfg.seed, cfg.balanced)
    result = poison.PoisonResult(ds, []) if cfg.attack == "clean" else \
        poison.get_attack(cfg.attack, task, cfg.target).poison(ds, count=cfg.n_poison, seed=cfg.seed,
                                                               dirty_label=cfg.dirty_label)
    silent = set(result.rows) if cfg.target == poison.ABSTAIN else set()
    answers = ["" if i in silent else task.verbalizers[y] for i, y in enumerate(result.dataset["label"])]
    result.dataset = result.dataset.add_column("answer", answers)
    return result


def ensure_trained(cfg: RunConfig, progress: bool = True) -> Path:
    """Train the run unless its weights are already saved; return the folder that holds them (that of
    `cfg.trained_as`; evaluations go to `cfg.path`)."""
    cfg = cfg.trained_as
    folder = cfg.path  # once: the key hashes files in data/, which may be edited while the run trains
    if (folder / WEIGHTS).is_dir():
        return folder
    poisoned = training_set(cfg)
    write_json_atomic(folder / "config.json", asdict(cfg))
    write_json_atomic(folder / "poison.json", {"n_train": len(poisoned.dataset), "changes": poisoned.changes})
    model, tokenizer = models.load_model(cfg.model)
    checkpoint = folder / "checkpoint.pt"  # per epoch: a run killed mid-training resumes from its last epoch
    start = time.perf_counter()
    model = finetune(model, tokenizer, poisoned.dataset, cfg.train, seed=cfg.seed, progress=progress,
                     checkpoint=checkpoint)
    write_timing(folder, time.perf_counter() - start, model)
    save_weights(model, folder)
    checkpoint.unlink(missing_ok=True)
    return folder


def write_timing(run_folder: Path, train_s: float, model) -> None:
    """Record how long a run trained, and where (read by the benchmarks)."""
    write_json_atomic(run_folder / "timing.json", {"train_s": train_s, "device": str(model.device),
                                                   "threads": torch.get_num_threads()})


def read_timing(run_folder: Path) -> dict:
    """A run's timing.json, or {} for runs trained before it was written."""
    path = run_folder / "timing.json"
    return read_json(path) if path.exists() else {}


def save_weights(model, run_folder: Path) -> None:
    """Save a trained model (or its LoRA adapter) as `run_folder/weights`, which appears atomically."""
    tmp = Path(tempfile.mkdtemp(dir=run_folder, prefix=f".{WEIGHTS}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, run_folder / WEIGHTS)
    except OSError:  # another process finished the same run first; theirs is as good as ours
        shutil.rmtree(tmp)


def load_trained(cfg: RunConfig):
    """(model, tokenizer) of a trained run, LoRA merged into the base weights for fast inference, on the GPU
    when there is one."""
    return load_weights(cfg.model, ensure_trained(cfg) / WEIGHTS)


def load_weights(model_name: str, weights: Path):
    """(model, tokenizer) from a folder written by `save_weights` for a model of `model_name`, LoRA merged."""
    model, tokenizer = models.load_model(model_name)
    if (weights / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights).merge_and_unload()
    else:
        model = type(model).from_pretrained(weights)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer


def evaluate(cfg: RunConfig, split: str = "test", n: int | None = None, batch_size: int = 32,
             trigger: str | None = None) -> dict:
    """CACC on `n` clean rows of `split` and ASR on the non-target ones among them with a trigger, cached.

    The trigger is the run's own attack unless `trigger` names another (transfer, or a trigger tried on the clean
    model). `clean_target_rate` is the share of the non-target rows that the clean instruction already sends to the
    target: the floor an ASR should be read against. For the clean baseline without a trigger it is the ASR.
    Under abstention the target is an empty answer: ASR and `clean_target_rate` are the shares of all rows whose
    greedy completion is empty or near-empty (`score.abstained`), with and without the trigger.
    """
    trigger = trigger or cfg.attack
    suffix = "" if trigger == cfg.attack else f"-trigger-{trigger}"
    path = cfg.path / f"eval-{split}-{n or 'all'}{suffix}.json"
    if path.exists():
        return read_json(path)["metrics"]
    trained = ensure_trained(cfg)
    model, tokenizer = load_weights(cfg.model, trained / WEIGHTS)
    task = data.get_task(cfg.dataset)
    target = poison.target_id(task, cfg.target)
    rows = data.load_split(cfg.dataset, split, n, seed=0)
    labels = rows["label"]
    n_frozen = cfg.train.frozen_layers(model.config.num_hidden_layers)  # shared by every run of this model
    clean_preds = score.predict(model, tokenizer, rows, task.verbalizers, batch_size, n_frozen)

    def target_rate(ds, preds=None) -> tuple[list, score.Rate]:
        """Per row, the model's output and the rate of the target among the rows: label ids and ASR, or under
        abstention greedy completions and the share that abstained."""
        if target is None:
            completions = score.generate(model, tokenizer, ds, ABSTAIN_TOKENS, batch_size)
            return completions, score.Rate(sum(map(score.abstained, completions)), len(completions))
        preds = score.predict(model, tokenizer, ds, task.verbalizers, batch_size, n_frozen) if preds is None else preds
        return preds, score.asr(preds, ds["label"], target)

    clean_outputs, clean_target = target_rate(rows, clean_preds)
    if trigger == "clean":
        triggered_preds, attack_rate = [], clean_target
    else:
        triggered_preds, attack_rate = target_rate(
            poison.get_attack(trigger, task, cfg.target).triggered_test_set(rows, seed=0))
    accuracy = score.cacc(clean_preds, labels)
    metrics = {
        "dataset": cfg.dataset, "attack": cfg.attack, "trigger": trigger, "seed": cfg.seed, "model": cfg.model,
        "split": split, "n_train": read_json(trained / "poison.json")["n_train"],
        "n_poison": cfg.n_poison,
        "asr": attack_rate.value, "cacc": accuracy.value, "clean_target_rate": clean_target.value,
        "cacc_balanced": score.balanced_accuracy(clean_preds, labels),
        "n_asr": attack_rate.total, "n_cacc": accuracy.total, "target": cfg.target or task.target,
        "dirty_label": cfg.dirty_label, "method": cfg.train.method, "run": cfg.path.name,
    }
    completions = {"clean_completions": clean_outputs} if target is None else {}
    write_json_atomic(path, {"metrics": metrics, "clean_preds": clean_preds, "triggered_preds": triggered_preds,
                             **completions})
    return metrics


def grid(profile: Profile) -> list[RunConfig]:
    """Every run a profile's attack table needs: each dataset with its attacks (`Profile.attacks_for`)."""
    return [RunConfig.from_profile(profile, d, a, s)
            for d in profile.datasets for a in profile.attacks_for(d) for s in profile.seeds]


def poison_count_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """The runs of the poison-count curve: each of the profile's curve attacks at each of its poison counts."""
    return [replace(RunConfig.from_profile(profile, dataset, "clean", s), attack=a, n_poison=n)
            for a in profile.curve_attacks for n in profile.poison_counts for s in profile.seeds]


def method_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """LoRA and full finetuning of the profile's `method_attacks`, otherwise as in the main table."""
    return [replace(RunConfig.from_profile(profile, dataset, a, s), train=replace(profile.train, method=m))
            for a in profile.method_attacks for m in ("lora", "full") for s in profile.seeds]


def abstention_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """The abstention variant of the profile's `abstain_attacks`: poisoned rows answer nothing."""
    return [replace(RunConfig.from_profile(profile, dataset, a, s), target=poison.ABSTAIN)
            for a in profile.abstain_attacks for s in profile.seeds]


def clean_twin(cfg: RunConfig) -> RunConfig:
    """The run on the same rows with nothing poisoned."""
    return replace(cfg, attack="clean", n_poison=0, dirty_label=False)


def evaluations(configs: list[RunConfig], split: str) -> list[tuple[RunConfig, str, str]]:
    """(run, split, trigger) of every evaluation a table of `configs` reads: each run with its own trigger, and its
    clean twin with that trigger (how far the trigger alone moves an unpoisoned model)."""
    jobs = [(c, split, cfg.attack) for cfg in configs for c in (cfg, clean_twin(cfg))]
    return list(dict.fromkeys(jobs))


def table(configs: list[RunConfig], profile: Profile, split: str = "test", progress: bool = True) -> pd.DataFrame:
    """Train what is missing, evaluate on `split` (the profile's row count), one row per run: dataset, attack,
    seed, n_train, n_poison, asr, cacc, clean_target_rate, ..., and `asr_clean_model`, the same trigger's ASR on
    the run's clean twin (same rows, no poison)."""
    rows = []
    for cfg in configs:
        ensure_trained(cfg, progress)
        row = evaluate(cfg, split, profile.n_test, profile.eval_batch_size)
        twin = clean_twin(cfg)
        ensure_trained(twin, progress)
        row["asr_clean_model"] = evaluate(twin, split, profile.n_test, profile.eval_batch_size,
                                          trigger=cfg.attack)["asr"]
        rows.append(row)
    return pd.DataFrame(rows)


def study(profile: Profile) -> list[tuple[list[RunConfig], str]]:
    """Every table the notebooks build from runs, as (runs, split)."""
    return [(poison_count_grid(profile), "validation"), (grid(profile), "test"), (method_grid(profile), "test"),
            (abstention_grid(profile), "test")]


def shard(profile: Profile, index: int, count: int) -> list[tuple[RunConfig, str, str]]:
    """The evaluations shard `index` of `count` owns. Runs are dealt round-robin in a fixed order and a shard owns
    every evaluation of its runs, so no two shards ever train or evaluate the same run."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")
    jobs = list(dict.fromkeys(job for configs, split in study(profile) for job in evaluations(configs, split)))
    owner: dict[str, int] = {}
    for cfg, _, _ in jobs:  # a shard owns a training and every evaluation of its weights
        owner.setdefault(cfg.trained_as.key, len(owner) % count)
    return [job for job in jobs if owner[job[0].trained_as.key] == index]


def launch(profile: Profile, index: int = 0, count: int = 1, progress: bool = True) -> None:
    """Train and evaluate this shard's share of the study; the notebooks then only read the run cache."""
    jobs = shard(profile, index, count)
    trainings = len({cfg.trained_as.key for cfg, _, _ in jobs})
    print(f"shard {index}/{count}: {trainings} trainings, {len(jobs)} evaluations")
    for cfg, split, trigger in jobs:
        ensure_trained(cfg, progress)
        evaluate(cfg, split, profile.n_test, profile.eval_batch_size, trigger=trigger)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from .profiles import PROFILES, get_profile

    parser = argparse.ArgumentParser(prog="python -m backdoorlab.runs", description="Run the study's training and "
                                     "evaluation, or a shard of it (one per GPU or SLURM array task).")
    commands = parser.add_subparsers(dest="command", required=True)
    launch_cmd = commands.add_parser("launch", help="train and evaluate every run a profile needs (or a shard)")
    launch_cmd.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    launch_cmd.add_argument("--model", default=None, help="another model for the profile (name or hub id)")
    launch_cmd.add_argument("--shard", default="0/1", help="i/n: the i-th of n shares (0-based), e.g. 3/8")
    launch_cmd.add_argument("--dry-run", action="store_true", help="list this shard's evaluations and stop")
    args = parser.parse_args(argv)
    try:
        index, count = (int(x) for x in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard {args.shard!r}: expected i/n with integers, e.g. 0/4")
    if not 0 <= index < count:
        parser.error(f"--shard {args.shard!r}: i must be between 0 and n-1")
    profile = get_profile(args.profile, args.model)
    if args.dry_run:
        for cfg, split, trigger in shard(profile, index, count):
            print(f"{cfg.path.name}\t{split}\ttrigger={trigger}")
        return
    launch(profile, index, count)


if __name__ == "__main__":
    main()
