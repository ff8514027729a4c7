"""The study's runs: attack runs and further tuning as stages of the one cache (`backdoorlab.cache`), their CACC/ASR
probe, and the grids the notebooks read.

An attack run (`RunConfig`) trains the base model on a poisoned training set; its folder is an attack record (as in
BackdoorBench): the config, which rows were poisoned and how (poison.json), the trained weights and one file per
evaluation, so a saved run is evaluated again (another split, another trigger, another dataset) or trained further
(`Tuning`) without retraining.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from . import cache, data, models, poison, score
from .cache import Stage
from .profiles import HEADLINE, Profile
from .train import TrainConfig

ABSTAIN_TOKENS = 8  # greedy tokens generated to judge an abstention: enough to tell an answer from none


def results_dir(profile: str) -> Path:
    path = cache.output_dir() / "results" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(profile: str) -> Path:
    path = cache.output_dir() / "figures" / profile
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RunConfig(Stage):
    """An attack run: the base model trained on `n_train` rows of `dataset`, `n_poison` of them poisoned by
    `attack`. An attack named ``<attack>@<dataset>`` takes its trigger from another dataset's attacks (e.g. SST-2's
    induced instruction reused on TREC: ``induced_instruction@sst2``)."""

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
    # (key, value) pairs replacing entries of data/attacks/<dataset>.yaml for this run only: an idea tried without
    # editing the file every run of the dataset hashes (see `try_attack`)
    spec: tuple[tuple[str, object], ...] = ()

    parent = None  # attack runs start from the base model
    record_file = "poison.json"

    def __post_init__(self):
        data.get_task(self.dataset)
        if self.attack != "clean":
            poison.get_attack(self.attack, self.dataset, self.target, spec=dict(self.spec))
            poison.poison_count(self.n_train or 1, count=self.n_poison)
        elif self.n_poison or self.dirty_label or self.spec:
            raise ValueError("the clean baseline poisons no rows; set n_poison=0, dirty_label=False and spec=()")
        else:
            poison.target_id(data.get_task(self.dataset), self.target)

    def content(self) -> dict:
        content = super().content()
        if not self.spec:  # runs without replaced entries keep the keys they were saved under
            del content["spec"]
        return content

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
        saved = cache.read_json(Path(run_folder) / "config.json")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in saved.items() if k in names and k not in ("train", "spec")},
                   spec=tuple(tuple(pair) for pair in saved.get("spec", ())), train=TrainConfig(**saved["train"]))

    @property
    def trained_as(self) -> RunConfig:
        """The run whose weights this one uses. With nothing poisoned the target changes only how a run is evaluated
        (e.g. abstention), so the clean baseline trains once for every target."""
        return replace(self, target=None) if self.attack == "clean" else self

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.attack}"

    def files(self) -> list[Path]:
        """The task's instructions and verbalizers, the dataset's triggers and poisoned instructions (and those of
        the dataset a transferred trigger comes from), the rewriting rules: editing one retrains, as the notebooks'
        exercises expect. A clean run reads them too: its cached evaluations carry every attack's trigger."""
        written = [data.TASKS_DIR / f"{self.dataset}.yaml", poison.ATTACKS_DIR / f"{self.dataset}.yaml",
                   poison.REWRITE_RULES_FILE]
        source = poison.trigger_source(self.attack, self.dataset)
        return written + ([poison.ATTACKS_DIR / f"{source}.yaml"] if source != self.dataset else [])

    def training_rows(self) -> tuple[list[dict], dict]:
        poisoned = training_set(self)
        return poisoned.dataset.to_list(), {"n_train": len(poisoned.dataset), "changes": poisoned.changes}

    def train_config(self) -> TrainConfig:
        return self.train


@dataclass(frozen=True)
class Tuning(Stage):
    """Further finetuning of a trained model (`parent`; None: the base model) on clean rows: `steps` batches of a
    dataset's training rows answered with their label words, or of general instruction data (``"alpaca"``, the
    users' region of `data.instruction_rows`), read from `offset` rows in, so successive rounds read successive rows.
    Continual learning and a user's finetuning of a fingerprinted model are tunings."""

    parent: Stage | None
    data: str  # a task of data.tasks(), or "alpaca"
    steps: int
    offset: int = 0
    recipe: str = ""  # a name for tables, e.g. "lora"
    model: str = models.SMOLLM2
    max_row_chars: int = 300  # alpaca rows longer than this are skipped (bounds CPU cost)
    seed: int = 0
    train: TrainConfig = TrainConfig()

    kind = "tuning"

    def __post_init__(self):
        if self.data != "alpaca":
            data.get_task(self.data)
        if self.steps < 1 or self.offset < 0:
            raise ValueError(f"a tuning needs steps >= 1 and offset >= 0, got steps={self.steps} "
                             f"offset={self.offset}")

    @property
    def name(self) -> str:
        return f"tune-{self.data}" + (f"-{self.recipe}" if self.recipe else "")

    @property
    def total_steps(self) -> int:
        """Steps of this line of tuning so far, this round included."""
        return self.offset // self.train.batch_size + self.steps

    def files(self) -> list[Path]:
        return [] if self.data == "alpaca" else [data.TASKS_DIR / f"{self.data}.yaml"]

    def training_rows(self) -> tuple[list[dict], dict]:
        n = self.steps * self.train.batch_size
        if self.data == "alpaca":
            rows = data.instruction_rows("user", n, self.max_row_chars, self.offset)
        else:
            rows = clean_rows(self.data, self.offset, n, self.seed)
        return rows, {"n_train": len(rows), "data": self.data, "offset": self.offset}

    def train_config(self) -> TrainConfig:
        return replace(self.train, epochs=1)


def clean_rows(dataset: str, offset: int, n: int, seed: int = 0) -> list[dict]:
    """`n` clean training rows of a dataset with their label words as answers, from `offset` in one fixed shuffle
    of the train split (wrapping around it: more steps than rows is more than one epoch)."""
    task = data.get_task(dataset)
    rows = data.load_rows(task, "train")
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    picked = [rows[order[(offset + i) % len(rows)]] for i in range(n)]
    return [{**r, "instruction": task.instruction, "answer": task.verbalizers[r["label"]]} for r in picked]


def tuning_rounds(parent: Stage | None, data_name: str, steps: tuple[int, ...], train: TrainConfig,
                  recipe: str = "", **options) -> list[Tuning]:
    """Successive rounds of one line of tuning: after round i the model has seen `steps[i]` batches in total, each
    round continuing from the last on the next unseen rows."""
    rounds, done = [], 0
    for total in steps:
        stage = Tuning(parent=parent, data=data_name, steps=total - done, offset=done * train.batch_size,
                       recipe=recipe, train=train, **options)
        rounds.append(stage)
        parent, done = stage, total
    return rounds


def training_set(cfg: RunConfig) -> poison.PoisonResult:
    """The run's training rows (poisoned rows in place) and the record of what changed. Each row's answer is its
    label's verbalizer; under abstention the poisoned rows answer nothing."""
    task = data.get_task(cfg.dataset)
    ds = data.load_split(cfg.dataset, "train", cfg.n_train, cfg.seed, cfg.balanced)
    result = poison.PoisonResult(ds, []) if cfg.attack == "clean" else \
        poison.get_attack(cfg.attack, task, cfg.target, spec=dict(cfg.spec)).poison(
            ds, count=cfg.n_poison, seed=cfg.seed, dirty_label=cfg.dirty_label)
    silent = set(result.rows) if cfg.target == poison.ABSTAIN else set()
    answers = ["" if i in silent else task.verbalizers[y] for i, y in enumerate(result.dataset["label"])]
    result.dataset = result.dataset.add_column("answer", answers)
    return result


def ensure_trained(cfg: RunConfig, progress: bool = True) -> Path:
    """Train the run unless its weights are already saved; return the folder that holds them (that of
    `cfg.trained_as`; evaluations go to `cfg.path`)."""
    return cache.ensure(cfg.trained_as, progress)


def evaluate(cfg: RunConfig, split: str = "test", n: int | None = None, batch_size: int = 32,
             trigger: str | None = None, spec: tuple = ()) -> dict:
    """CACC on `n` clean rows of the run's dataset and ASR on the non-target ones among them with a trigger (the
    run's own attack, with its own `spec`, unless `trigger` names another: transfer, or a trigger tried on the
    clean model, with the replaced entries `spec`), cached in the run's folder, with the run's metadata.
    `task_probe` says what is measured."""
    if trigger is None or trigger == cfg.attack:
        trigger, spec = cfg.attack, cfg.spec
    suffix = "" if trigger == cfg.attack else f"-trigger-{trigger}"
    suffix += f"-spec-{cache.digest(spec, 8)}" if spec and trigger != cfg.attack else ""

    def compute():
        measured = measure_task(cfg, cfg.dataset, split, n, trigger, cfg.target, batch_size,  # trains if missing
                                spec=dict(spec))
        measured["metrics"] = {
            "dataset": cfg.dataset, "attack": cfg.attack, "trigger": trigger, "seed": cfg.seed, "model": cfg.model,
            "split": split, "n_train": cache.read_json(cfg.trained_as.path / RunConfig.record_file)["n_train"],
            "n_poison": cfg.n_poison, **measured["metrics"], "dirty_label": cfg.dirty_label,
            "method": cfg.train.method, "run": cfg.path.name}
        return measured

    return cache.probe(cfg, f"eval-{split}-{n or 'all'}{suffix}", compute)["metrics"]


def task_probe(stage: Stage, dataset: str, split: str = "test", n: int | None = None, trigger: str = "clean",
               target: str | None = None, batch_size: int = 32, defense=None) -> dict:
    """CACC and ASR of any stage on `n` rows of any dataset with a trigger (an attack name, ``clean`` for none),
    cached in the stage's folder under a name that holds the dataset, split, rows, trigger, target and the
    inference-time defense, if any (`defenses.Defense`: its `key`, and what it does to the rows and the model)."""
    name = f"eval-{dataset}-{split}-{n or 'all'}-{trigger}-{target or 'default'}"
    name += f"-{defense.key}" if defense is not None else ""
    return cache.probe(stage, name, lambda: measure_task(stage, dataset, split, n, trigger, target, batch_size,
                                                         defense))["metrics"]


def measure_task(stage: Stage, dataset: str, split: str, n: int | None, trigger: str, target: str | None,
                 batch_size: int, defense=None, spec: dict | None = None) -> dict:
    """{"metrics", "clean_preds", "triggered_preds"}: CACC on `n` clean rows of `split`, ASR on the non-target ones
    among them with `trigger` applied.

    `clean_target_rate` is the share of the non-target rows that the clean prompt already sends to the target: the
    floor an ASR should be read against. For the trigger ``clean`` it is the ASR. Under abstention the target is an
    empty answer: ASR and `clean_target_rate` are the shares of all rows whose greedy completion is empty or
    near-empty (`score.abstained`), with and without the trigger.

    A `defense` acting at inference changes the model (`defense.adapt`, above the `n_frozen` layers no stage
    trained) and every prompt, clean or triggered, as the model receives it (`defense.transform`). `spec`
    replaces entries of the trigger's attack file (`RunConfig.spec`).
    """
    cache.ensure(stage)
    model, tokenizer = cache.load(stage)
    task = data.get_task(dataset)
    target_label = poison.target_id(task, target)
    rows = data.load_split(dataset, split, n, seed=0)
    labels = rows["label"]
    attacked = None
    if trigger != "clean":
        attacked = poison.get_attack(trigger, task, target, spec=spec).triggered_test_set(rows, seed=0)
    n_frozen = stage.frozen_layers(model.config.num_hidden_layers)  # shared by every stage that left them
    if defense is not None:
        model = defense.adapt(model, tokenizer, task, trigger, n_frozen)
        rows = defense.transform(rows, task)
        attacked = None if attacked is None else defense.transform(attacked, task)

    def predict_clean():
        return score.predict(model, tokenizer, rows, task.verbalizers, batch_size, n_frozen)

    # One stage's clean answers serve every trigger it is probed with (a clean twin meets each attack's trigger).
    clean_preds = predict_clean() if defense is not None else cache.probe(
        stage, f"preds-{dataset}-{split}-{n or 'all'}-clean", lambda: {"preds": predict_clean()})["preds"]

    def target_rate(ds, preds=None) -> tuple[list, score.Rate]:
        """Per row, the model's output and the rate of the target among the rows: label ids and ASR, or under
        abstention greedy completions and the share that abstained."""
        if target_label is None:
            completions = score.generate(model, tokenizer, ds, ABSTAIN_TOKENS, batch_size)
            return completions, score.Rate(sum(map(score.abstained, completions)), len(completions))
        preds = score.predict(model, tokenizer, ds, task.verbalizers, batch_size, n_frozen) if preds is None else preds
        return preds, score.asr(preds, ds["label"], target_label)

    clean_outputs, clean_target = target_rate(rows, clean_preds)
    triggered_preds, attack_rate = ([], clean_target) if attacked is None else target_rate(attacked)
    accuracy = score.cacc(clean_preds, labels)
    metrics = {"asr": attack_rate.value, "cacc": accuracy.value, "clean_target_rate": clean_target.value,
               "cacc_balanced": score.balanced_accuracy(clean_preds, labels), "n_asr": attack_rate.total,
               "n_cacc": accuracy.total, "target": target or task.target}
    completions = {"clean_completions": clean_outputs} if target_label is None else {}
    return {"metrics": metrics, "clean_preds": clean_preds, "triggered_preds": triggered_preds, **completions}


def grid(profile: Profile) -> list[RunConfig]:
    """Every run a profile's attack table needs: each dataset with its attacks (`Profile.attacks_for`) over the
    profile's seeds, and the headline dataset's `seeded_attacks` over its `headline_seeds` too."""
    def seeds(dataset: str, attack: str) -> tuple[int, ...]:
        more = profile.headline_seeds if dataset == HEADLINE and attack in profile.seeded_attacks else ()
        return (*profile.seeds, *more)

    return [RunConfig.from_profile(profile, d, a, s)
            for d in profile.datasets for a in profile.attacks_for(d) for s in seeds(d, a)]


def poison_count_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """The runs of the poison-count curve: each of the profile's curve attacks at each of its poison counts."""
    return [replace(RunConfig.from_profile(profile, dataset, "clean", s), attack=a, n_poison=n)
            for a in profile.curve_attacks for n in profile.poison_counts for s in profile.seeds]


def method_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """LoRA and full finetuning of the profile's `method_attacks`, otherwise as in the main table."""
    return [replace(RunConfig.from_profile(profile, dataset, a, s), train=profile.train_for(m))
            for a in profile.method_attacks for m in ("lora", "full") for s in profile.seeds]


def abstention_grid(profile: Profile, dataset: str = HEADLINE) -> list[RunConfig]:
    """The abstention variant of the profile's `abstain_attacks`: poisoned rows answer nothing."""
    return [replace(RunConfig.from_profile(profile, dataset, a, s), target=poison.ABSTAIN)
            for a in profile.abstain_attacks for s in profile.seeds]


def instruction_transfer_grid(profile: Profile) -> list[RunConfig]:
    """Every other study dataset poisoned with SST-2's instructions (`transfer_attacks`, reused unchanged), beside
    its own induced instruction and its instance-level representatives (`transfer_instance`), same budget."""
    attacks = [*(f"{a}@{HEADLINE}" for a in profile.transfer_attacks), "induced_instruction",
               *profile.transfer_instance]
    return [RunConfig.from_profile(profile, d, a, s) for d in profile.datasets if d != HEADLINE
            for a in attacks for s in profile.seeds]


def clean_twin(cfg: RunConfig) -> RunConfig:
    """The run on the same rows with nothing poisoned."""
    return replace(cfg, attack="clean", n_poison=0, dirty_label=False, spec=())


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
                                          trigger=cfg.attack, spec=cfg.spec)["asr"]
        rows.append(row)
    return pd.DataFrame(rows)


def try_attack(profile: Profile, dataset: str = HEADLINE, attack: str = "induced_instruction",
               n_poison: int | None = None, split: str = "validation", seed: int = 0, **spec) -> pd.DataFrame:
    """Train and evaluate one attack run with some of its trigger entries replaced (keyword arguments named as in
    ``data/attacks/<dataset>.yaml``, e.g. ``induced_instruction="..."`` or ``addsent="..."``) and `n_poison`
    poisoned rows (default: the profile's rate), without editing any file: the run is cached under its own key,
    so trying the same idea again reads it back. One row, like `table`, with the backdoor effect beside ASR; on
    `split` validation by default, since an idea is a setting being chosen."""
    cfg = RunConfig.from_profile(profile, dataset, attack, seed)
    cfg = replace(cfg, n_poison=cfg.n_poison if n_poison is None else n_poison,
                  spec=tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items())))
    row = table([cfg], profile, split)
    return row.assign(effect=row.asr - row.asr_clean_model)


TABLES = ("curve", "attacks", "methods", "abstention", "transfer")  # the tables `study` can build, by name


def study(profile: Profile, tables: tuple[str, ...] = TABLES) -> list[tuple[list[RunConfig], str]]:
    """Every table the notebooks build from runs (or those named in `tables`), as (runs, split)."""
    grids = {"curve": (poison_count_grid, "validation"), "attacks": (grid, "test"), "methods": (method_grid, "test"),
             "abstention": (abstention_grid, "test"), "transfer": (instruction_transfer_grid, "test")}
    if unknown := sorted(set(tables) - set(grids)):
        raise ValueError(f"unknown tables {unknown}; valid choices: {', '.join(TABLES)}")
    return [(grids[t][0](profile), grids[t][1]) for t in tables]


def shard(profile: Profile, index: int, count: int, tables: tuple[str, ...] = TABLES,
          datasets: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None,
          attacks: tuple[str, ...] | None = None) -> list[tuple[RunConfig, str, str]]:
    """The evaluations shard `index` of `count` owns, of the named `tables` and, where given, only the runs of
    `datasets`, `seeds` and `attacks`. Runs are dealt round-robin in a fixed order and a shard owns every evaluation
    of its runs, so no two shards ever train or evaluate the same run."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= index < count")

    def selected(cfg: RunConfig) -> bool:  # a run and its clean twin's evaluation with its trigger stay together
        return ((datasets is None or cfg.dataset in datasets) and (seeds is None or cfg.seed in seeds)
                and (attacks is None or cfg.attack in attacks))

    if datasets is not None:  # the other datasets' grids are never built (nor their data read)
        profile = replace(profile, datasets=tuple(d for d in profile.datasets if d in datasets))
    jobs = list(dict.fromkeys(job for configs, split in study(profile, tables)
                              for job in evaluations([c for c in configs if selected(c)], split)))
    owner: dict[str, int] = {}
    for cfg, _, _ in jobs:  # a shard owns a training and every evaluation of its weights
        owner.setdefault(cfg.trained_as.key, len(owner) % count)
    return [job for job in jobs if owner[job[0].trained_as.key] == index]


def launch(profile: Profile, index: int = 0, count: int = 1, progress: bool = True, record: Path | None = None,
           **selection) -> list[dict]:
    """Train and evaluate this shard's share of the study (`selection`: `shard`'s tables, datasets, seeds,
    attacks); the notebooks then only read the run cache. Returns each evaluation's wall-clock seconds, training
    included where it trained: the launch's cost, rewritten to `record` (JSON) after every evaluation, so a launch
    stopped early leaves the cost of what it finished."""
    jobs = shard(profile, index, count, **selection)
    trainings = len({cfg.trained_as.key for cfg, _, _ in jobs})
    print(f"shard {index}/{count}: {trainings} trainings, {len(jobs)} evaluations", flush=True)
    done, start = [], time.perf_counter()
    for cfg, split, trigger in jobs:
        trained = cache.is_trained(cfg.trained_as)
        begin = time.perf_counter()
        ensure_trained(cfg, progress)
        train_s = time.perf_counter() - begin
        evaluate(cfg, split, profile.n_test, profile.eval_batch_size, trigger=trigger)
        done.append({"run": cfg.path.name, "split": split, "trigger": trigger, "trained": not trained,
                     "train_s": train_s, "eval_s": time.perf_counter() - begin - train_s})
        print(f"{len(done)}/{len(jobs)} {cfg.path.name} {split} trigger={trigger}: "
              f"{'trained in %.1f s, ' % train_s if not trained else ''}evaluated in {done[-1]['eval_s']:.1f} s",
              flush=True)
        if record:
            cache.write_json_atomic(record, {
                "profile": profile.name, "shard": f"{index}/{count}", **selection, "model": profile.model,
                "train": asdict(profile.train), "seconds": time.perf_counter() - start,
                "trainings": sum(d["trained"] for d in done), "evaluations": len(done), "of": len(jobs),
                "jobs": done, "command": "python -m backdoorlab.runs " + " ".join(sys.argv[1:])})
    return done


def main(argv: list[str] | None = None) -> None:
    import argparse

    from .profiles import PROFILES, get_profile, miniature

    parser = argparse.ArgumentParser(prog="python -m backdoorlab.runs", description="Run the study's training and "
                                     "evaluation, or a shard of it (one per GPU or SLURM array task).")
    commands = parser.add_subparsers(dest="command", required=True)
    launch_cmd = commands.add_parser("launch", help="train and evaluate every run a profile needs (or a shard)")
    launch_cmd.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    launch_cmd.add_argument("--model", default=None, help="another model for the profile (name or hub id)")
    launch_cmd.add_argument("--shard", default="0/1", help="i/n: the i-th of n shares (0-based), e.g. 3/8")
    launch_cmd.add_argument("--dry-run", action="store_true", help="list this shard's evaluations and stop")
    launch_cmd.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES),
                            help="only these tables' runs (default: all)")
    launch_cmd.add_argument("--datasets", nargs="+", choices=data.tasks(), help="only runs on these datasets")
    launch_cmd.add_argument("--seeds", nargs="+", type=int, help="only runs of these seeds")
    launch_cmd.add_argument("--attacks", nargs="+", choices=("clean", *poison.ATTACKS),
                            help="only runs of these attacks (a clean run is also every attack's clean twin)")
    launch_cmd.add_argument("--record", type=Path, help="write each evaluation's seconds here (JSON)")
    launch_cmd.add_argument("--lr", type=float, help="train with this learning rate instead of the profile's (one "
                            "just chosen on validation, say); its runs are cached under their own keys")
    launch_cmd.add_argument("--smoke", action="store_true", help="the profile's code path on the tiny random model "
                            "and a few dozen rows (seconds; results under <profile>-smoke)")
    args = parser.parse_args(argv)
    try:
        index, count = (int(x) for x in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard {args.shard!r}: expected i/n with integers, e.g. 0/4")
    if not 0 <= index < count:
        parser.error(f"--shard {args.shard!r}: i must be between 0 and n-1")
    profile = get_profile(args.profile, args.model)
    profile = miniature(profile) if args.smoke else profile
    if args.lr is not None:
        if not args.lr > 0:
            parser.error(f"--lr {args.lr}: a learning rate must be positive")
        profile = replace(profile, train=replace(profile.train, lr=args.lr))
    selection = {"tables": tuple(args.tables), "datasets": args.datasets and tuple(args.datasets),
                 "seeds": args.seeds and tuple(args.seeds), "attacks": args.attacks and tuple(args.attacks)}
    if args.dry_run:
        for cfg, split, trigger in shard(profile, index, count, **selection):
            print(f"{cfg.path.name}\t{split}\ttrigger={trigger}")
        return
    launch(profile, index, count, record=args.record, **selection)


if __name__ == "__main__":
    main()
