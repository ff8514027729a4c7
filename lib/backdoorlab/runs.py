"""The run cache. A run is a `RunConfig`; the hash of its fields names its folder under ``results/runs/``.

A run folder is an attack record (as in BackdoorBench): the config, which rows were poisoned and how, the trained
weights (a LoRA adapter or a full model, safetensors), and one file per evaluation. Every later stage (defenses,
transfer, continual learning) starts from the saved weights instead of retraining. Each file appears by an atomic
rename, so a killed run leaves no half-written entry and the next call redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from . import data, models, poison, score
from .profiles import Profile
from .train import TrainConfig, finetune

WEIGHTS = "weights"  # folder name of the trained weights inside a run folder; its presence marks training done


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
    target: str | None = None  # None: the task's default target
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        data.get_task(self.dataset)
        if self.attack != "clean":
            poison.get_attack(self.attack, self.dataset)
            poison.poison_count(self.n_train or 1, count=self.n_poison)
        elif self.n_poison:
            raise ValueError("the clean baseline poisons no rows; set n_poison=0")

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
    def key(self) -> str:
        """Hash of every field plus the hand-written files the run reads (the task's instructions, verbalizers and
        induced instruction, the trigger words): editing one of them retrains, as the notebooks' exercises expect."""
        written = [data.TASKS_DIR / f"{self.dataset}.yaml", poison.TRIGGERS_FILE]
        blob = json.dumps({"config": asdict(self), "files": [p.read_text() for p in written]}, sort_keys=True)
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


def training_set(cfg: RunConfig) -> poison.PoisonResult:
    """The run's training rows (poisoned rows in place) and the record of what changed."""
    task = data.get_task(cfg.dataset)
    ds = data.load_split(cfg.dataset, "train", cfg.n_train, cfg.seed, cfg.balanced)
    result = poison.PoisonResult(ds, []) if cfg.attack == "clean" else \
        poison.get_attack(cfg.attack, task).poison(ds, count=cfg.n_poison, seed=cfg.seed, target=cfg.target)
    result.dataset = result.dataset.map(lambda r: {"answer": task.verbalizers[r["label"]]})
    return result


def ensure_trained(cfg: RunConfig, progress: bool = True) -> Path:
    """Train the run unless its weights are already saved; return its folder."""
    if (cfg.path / WEIGHTS).is_dir():
        return cfg.path
    poisoned = training_set(cfg)
    write_json_atomic(cfg.path / "config.json", asdict(cfg))
    write_json_atomic(cfg.path / "poison.json", {"n_train": len(poisoned.dataset), "changes": poisoned.changes})
    model, tokenizer = models.load_model(cfg.model)
    checkpoint = cfg.path / "checkpoint.pt"  # per epoch: a run killed mid-training resumes from its last epoch
    model = finetune(model, tokenizer, poisoned.dataset, cfg.train, seed=cfg.seed, progress=progress,
                     checkpoint=checkpoint)
    save_weights(model, cfg.path)
    checkpoint.unlink(missing_ok=True)
    return cfg.path


def save_weights(model, run_folder: Path) -> None:
    """Save a trained model (or its LoRA adapter) as `run_folder/weights`, which appears atomically."""
    tmp = Path(tempfile.mkdtemp(dir=run_folder, prefix=f".{WEIGHTS}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, run_folder / WEIGHTS)
    except OSError:  # another process finished the same run first; theirs is as good as ours
        shutil.rmtree(tmp)


def load_trained(cfg: RunConfig):
    """(model, tokenizer) of a trained run, LoRA merged into the base weights for fast inference."""
    return load_weights(cfg.model, ensure_trained(cfg) / WEIGHTS)


def load_weights(model_name: str, weights: Path):
    """(model, tokenizer) from a folder written by `save_weights` for a model of `model_name`, LoRA merged."""
    model, tokenizer = models.load_model(model_name)
    if (weights / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights).merge_and_unload()
    else:
        model = type(model).from_pretrained(weights)
    return model.eval(), tokenizer


def evaluate(cfg: RunConfig, split: str = "test", n: int | None = None, batch_size: int = 32,
             trigger: str | None = None) -> dict:
    """CACC on `n` clean rows of `split` and ASR on the non-target ones among them with a trigger, cached.

    The trigger is the run's own attack unless `trigger` names another (transfer, or a trigger tried on the clean
    model). `clean_target_rate` is the share of the non-target rows that the clean instruction already sends to the
    target: the floor an ASR should be read against. For the clean baseline without a trigger it is the ASR.
    """
    trigger = trigger or cfg.attack
    suffix = "" if trigger == cfg.attack else f"-trigger-{trigger}"
    path = cfg.path / f"eval-{split}-{n or 'all'}{suffix}.json"
    if path.exists():
        return read_json(path)["metrics"]
    model, tokenizer = load_trained(cfg)
    task = data.get_task(cfg.dataset)
    target = task.labels.index(cfg.target) if cfg.target else task.target_id
    rows = data.load_split(cfg.dataset, split, n, seed=0)
    labels = rows["label"]
    clean_preds = score.predict(model, tokenizer, rows, task.verbalizers, batch_size)
    clean_target = score.asr(clean_preds, labels, target)
    if trigger == "clean":
        triggered_preds, attack_rate = [], clean_target
    else:
        triggered = poison.get_attack(trigger, task).triggered_test_set(rows, seed=0, target=cfg.target)
        triggered_preds = score.predict(model, tokenizer, triggered, task.verbalizers, batch_size)
        attack_rate = score.asr(triggered_preds, triggered["label"], target)
    accuracy = score.cacc(clean_preds, labels)
    metrics = {
        "dataset": cfg.dataset, "attack": cfg.attack, "trigger": trigger, "seed": cfg.seed, "model": cfg.model,
        "split": split, "n_train": read_json(cfg.path / "poison.json")["n_train"], "n_poison": cfg.n_poison,
        "asr": attack_rate.value, "cacc": accuracy.value, "clean_target_rate": clean_target.value,
        "n_asr": attack_rate.total, "n_cacc": accuracy.total, "run": cfg.path.name,
    }
    write_json_atomic(path, {"metrics": metrics, "clean_preds": clean_preds, "triggered_preds": triggered_preds})
    return metrics


def grid(profile: Profile) -> list[RunConfig]:
    """Every run a profile's attack table needs."""
    return [RunConfig.from_profile(profile, d, a, s)
            for d in profile.datasets for a in profile.attacks for s in profile.seeds]


def poison_count_grid(profile: Profile, dataset: str = "sst2") -> list[RunConfig]:
    """The runs of the poison-count curve: each of the profile's curve attacks at each of its poison counts."""
    return [replace(RunConfig.from_profile(profile, dataset, "clean", s), attack=a, n_poison=n)
            for a in profile.curve_attacks for n in profile.poison_counts for s in profile.seeds]


def table(configs: list[RunConfig], profile: Profile, split: str = "test", progress: bool = True) -> pd.DataFrame:
    """Train what is missing, evaluate on `split` (the profile's row count), one row per run: dataset, attack,
    seed, n_train, n_poison, asr, cacc, clean_target_rate, ..., and `asr_clean_model`, the same trigger's ASR on
    the run's clean twin (same rows, no poison): how far the trigger alone moves an unpoisoned model."""
    rows = []
    for cfg in configs:
        ensure_trained(cfg, progress)
        row = evaluate(cfg, split, profile.n_test, profile.eval_batch_size)
        twin = replace(cfg, attack="clean", n_poison=0)
        ensure_trained(twin, progress)
        row["asr_clean_model"] = evaluate(twin, split, profile.n_test, profile.eval_batch_size, trigger=cfg.attack)["asr"]
        rows.append(row)
    return pd.DataFrame(rows)
