"""The study's one cache: stages (trained models) and probes (measurements of a stage), keyed by their content.

A **stage** is a trained model: its parent (another stage, or the base model), the rows it trains on and how it
trains. Its key hashes its own content and its parent's key, so a changed parent retrains every child, and its
folder under ``results/runs/`` holds what it trained (a LoRA adapter, the embedding matrix, or a whole model, as
safetensors), which rows it trained on, and how long it took. `ensure` trains a chain from whatever is saved;
`load` applies a chain's saved weights to the base model. Attack runs (`runs.RunConfig`), further tuning on clean
data (`runs.Tuning`: continual learning, a user's finetuning) and fingerprint implants (`fingerprint.Implant`) are
stages.

A **probe** is a measurement of a stage (the rows of any dataset, prompted one way) saved as one JSON file in the
stage's folder, named by what was measured: an attack run's CACC/ASR, a transfer probe, a fingerprint verification.
The untouched model is the stage `Base(model)`. Every file appears by an atomic rename, so a killed run leaves no
half-written entry and the next call redoes only what is missing; a damaged entry is named with the `rm` to run.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors.torch import load_file, save_file

from . import data, models
from .airgap import sha256
from .train import TrainConfig, answer_loss, finetune

WEIGHTS = "weights"  # folder of a stage's trained weights; its presence marks the stage trained
EMBEDDINGS_FILE = "embeddings.safetensors"  # what an embeddings-only stage saves (the input-embedding matrix)


def output_dir() -> Path:
    """Where results and figures go: $BACKDOORLAB_OUT, else the project folder."""
    return Path(os.environ.get("BACKDOORLAB_OUT", data.PROJECT_DIR))


def runs_dir() -> Path:
    return output_dir() / "results" / "runs"


def digest(obj, length: int = 12) -> str:
    """A short content hash of anything JSON can hold."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ---- atomic files ---------------------------------------------------------------------------------------------------

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


def cached_json(path: Path, compute):
    """The JSON at `path`, or `compute()`'s result written there first."""
    if path.exists():
        return read_json(path)
    result = compute()
    write_json_atomic(path, result)
    return result


def memo(name: str, inputs, compute):
    """`compute()`'s JSON result, computed once per `inputs` (anything JSON can hold) and kept in the run cache, for
    measurements that belong to no stage (e.g. notebook 01's perplexities)."""
    return cached_json(runs_dir() / "memo" / f"{name}-{digest(inputs, 16)}.json", compute)


def write_timing(folder: Path, train_s: float, model) -> None:
    """Record how long a stage trained, and where (read by the benchmarks)."""
    write_json_atomic(folder / "timing.json", {"train_s": train_s, "device": str(model.device),
                                               "threads": torch.get_num_threads()})


def read_timing(folder: Path) -> dict:
    """A stage's timing.json, or {} for stages trained before it was written."""
    path = folder / "timing.json"
    return read_json(path) if path.exists() else {}


# ---- stages ---------------------------------------------------------------------------------------------------------

class Stage:
    """A trained model. Subclasses are frozen dataclasses with a `model` field (the base model's name), a `parent`
    (a Stage, or None for the base model) and a `seed`, and say what they train on (`training_rows`) and how
    (`train_config`); `prepare`/`finish` let a method wrap the model around training (the fingerprint adapter)."""

    model: str
    parent: Stage | None
    seed: int
    # Hashed into the key, so two kinds of stage with equal fields stay apart. Attack runs, the first kind, hash none:
    # runs saved before the other kinds existed keep their keys.
    kind = ""
    record_file = "rows.json"  # what `training_rows` says about the rows, saved in the stage's folder
    reuse_frozen = True  # train the top layers from the frozen layers' saved states (off for an objective that
    # reads another model's states of the same batch)

    @property
    def name(self) -> str:
        """A readable prefix of the folder name."""
        return type(self).__name__.lower()

    def content(self) -> dict:
        """Every field but the parent (which enters the key by its own key)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "parent"}

    def files(self) -> list[Path]:
        """Hand-written files the stage reads: editing one retrains it."""
        return []

    def training_rows(self) -> tuple[list[dict], dict]:
        """Rows {"instruction", "text", "answer", ...} and a JSON record of how they were made (saved beside)."""
        raise NotImplementedError

    def train_config(self) -> TrainConfig:
        raise NotImplementedError

    def loss(self):
        """The training objective, `loss(model, batch)`: cross-entropy on the answer tokens unless a stage says
        otherwise (a distillation objective, say)."""
        return answer_loss

    def prepare(self, model, tokenizer):
        """Called before training; returns the model to train."""
        return model

    def finish(self, model, folder: Path):
        """Called after training, before the weights are saved; returns the model to save."""
        return model

    @property
    def key(self) -> str:
        texts = [p.read_text(encoding="utf-8") if p.exists() else None for p in self.files()]
        blob = {"config": self.content(), "files": texts}
        if self.kind:
            blob["kind"] = self.kind
        if self.parent is not None:
            blob["parent"] = self.parent.key
        return digest(blob)

    @property
    def path(self) -> Path:
        return runs_dir() / f"{self.name}-{self.key}"

    @property
    def trained_as(self) -> Stage:
        """The stage whose weights this one uses (itself, unless two stages differ only in how they are probed)."""
        return self

    def chain(self) -> list[Stage]:
        """The stages whose weights make this one, from the first trained on the base model."""
        return ([] if self.parent is None else self.parent.chain()) + [self.trained_as]

    def frozen_layers(self, n_layers: int) -> int:
        """Bottom layers that no stage of the chain trained (their states are shared with the base model's)."""
        return min(s.train_config().frozen_layers(n_layers) for s in self.chain())


def _plain(value):
    return asdict(value) if is_dataclass(value) else value


@dataclass(frozen=True)
class Base(Stage):
    """The untouched base model, as a stage that never trains: probes of it are saved in its folder."""

    model: str = models.SMOLLM2
    parent = None
    seed = 0

    @property
    def path(self) -> Path:
        return runs_dir() / f"base-{self.model.strip('/').replace('/', '_')}"

    def chain(self) -> list[Stage]:
        return []

    def frozen_layers(self, n_layers: int) -> int:
        return n_layers


def is_trained(stage: Stage) -> bool:
    return isinstance(stage, Base) or (stage.path / WEIGHTS).is_dir()


def ensure(stage: Stage, progress: bool = True) -> Path:
    """Train the stage (and first any ancestor not saved) unless its weights are saved; return its folder."""
    if isinstance(stage, Base):
        stage.path.mkdir(parents=True, exist_ok=True)
        return stage.path
    stage = stage.trained_as
    folder = stage.path  # once: the key hashes files in data/, which may be edited while the stage trains
    if (folder / WEIGHTS).is_dir():
        return folder
    if stage.parent is not None:
        ensure(stage.parent, progress)
    rows, record = stage.training_rows()
    write_json_atomic(folder / "config.json", {"kind": type(stage).__name__, **stage.content(),
                                               "parent": None if stage.parent is None else stage.parent.path.name})
    write_json_atomic(folder / stage.record_file, record)
    model, tokenizer = load(stage.parent, stage.model, place=False)
    model = stage.prepare(model, tokenizer)
    checkpoint = folder / "checkpoint.pt"  # per epoch: a stage killed mid-training resumes from its last epoch
    start = time.perf_counter()
    model = finetune(model, tokenizer, rows, stage.train_config(), seed=stage.seed, progress=progress,
                     checkpoint=checkpoint, reuse_frozen=stage.reuse_frozen, loss_fn=stage.loss())
    write_timing(folder, time.perf_counter() - start, model)
    save_weights(stage.finish(model, folder), stage.train_config().method, folder)
    checkpoint.unlink(missing_ok=True)
    return folder


def save_weights(model, method: str, folder: Path) -> None:
    """Save what trained as `folder/weights`, which appears atomically: a LoRA adapter, the input-embedding matrix
    (embeddings-only), or the whole model (full finetuning)."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{WEIGHTS}-"))
    if method == "embeddings":
        save_file({"weight": model.get_input_embeddings().weight.detach().cpu().contiguous()}, tmp / EMBEDDINGS_FILE)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    try:
        os.replace(tmp, folder / WEIGHTS)
    except OSError:  # another process finished the same stage first; theirs is as good as ours
        shutil.rmtree(tmp)


def apply_weights(model, weights: Path):
    """`model` with one stage's saved weights applied (a LoRA adapter merged in)."""
    if (weights / "adapter_config.json").exists():
        from peft import PeftModel

        # peft loads an adapter for inference, its base frozen; the merged model trains on like a fresh one
        return PeftModel.from_pretrained(model, weights).merge_and_unload().requires_grad_(True)
    if (weights / EMBEDDINGS_FILE).exists():
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(load_file(weights / EMBEDDINGS_FILE)["weight"])
        return model
    return type(model).from_pretrained(weights)


def load(stage: Stage | None, model_name: str | None = None, place: bool = True):
    """(model, tokenizer) of a trained stage (None or `Base`: the base model `model_name`), every LoRA merged, on
    the GPU when there is one (with `place`) and in eval mode. On a GPU the last `LOADED_ON_GPU` models are kept
    there and each call gets its own copy (a device-to-device copy instead of reading and moving the weights
    again: a clean run is probed with every attack's trigger in turn); callers may change their copy."""
    model_name = stage.model if stage is not None else model_name
    device = gpu() if place else None
    chain = [] if stage is None else stage.chain()
    memo_key = (model_name, tuple(s.key for s in chain))
    if device and memo_key in _loaded:
        _loaded.move_to_end(memo_key)
        model, tokenizer = _loaded[memo_key]
        return copy.deepcopy(model), tokenizer
    model, tokenizer = models.load_model(model_name)
    for s in chain:
        if not is_trained(s):
            raise FileNotFoundError(f"stage {s.path.name} is not trained; cache.ensure(stage) trains it")
        model = apply_weights(model, s.path / WEIGHTS)
    if place:
        model = model.to(device or "cpu")
    model.eval()
    if device:
        _loaded[memo_key] = (copy.deepcopy(model), tokenizer)
        while len(_loaded) > LOADED_ON_GPU:
            _loaded.popitem(last=False)
    return model, tokenizer


def gpu() -> str | None:
    return "cuda" if torch.cuda.is_available() else None


LOADED_ON_GPU = 2
_loaded: OrderedDict = OrderedDict()


# ---- probes ---------------------------------------------------------------------------------------------------------

def probe(stage: Stage, name: str, compute):
    """A measurement of a stage, `compute()`'s JSON result, saved once as ``<stage folder>/<name>.json``. The name
    says everything the measurement depends on beyond the stage (which rows, how prompted); `digest` shortens it."""
    return cached_json(stage.path / f"{name}.json", compute)


# ---- packing the cache for a lab ------------------------------------------------------------------------------------

PACKED_SUFFIXES = (".safetensors", ".json", ".md")  # weights, records and probes, peft's adapter card: no pickles
MANIFEST = "MANIFEST.json"


def pack(archive: Path, root: Path | None = None) -> dict:
    """Every finished file of the run cache into one uncompressed tar (safetensors barely compress) with a manifest
    of each file's size and SHA-256. Checkpoints of unfinished training and temporary folders stay out."""
    root = Path(root or runs_dir())
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in PACKED_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    manifest = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in files}
    body = json.dumps(manifest, indent=1).encode()
    tmp = Path(archive).with_name(f".{Path(archive).name}.tmp")
    with tarfile.open(tmp, "w") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for name in manifest:
            tar.add(root / name, arcname=name, recursive=False)
    os.replace(tmp, archive)
    return manifest


def _refusals(tar: tarfile.TarFile, manifest: dict) -> list[str]:
    problems, seen = [], set()
    for m in tar.getmembers():
        path = PurePosixPath(m.name)
        if m.name == MANIFEST:
            continue
        if path.is_absolute() or ".." in path.parts or not path.parts:
            problems.append(f"{m.name}: a path outside the cache")
        elif not m.isfile():
            problems.append(f"{m.name}: not a plain file (a link or device)")
        elif path.suffix not in PACKED_SUFFIXES:
            problems.append(f"{m.name}: {path.suffix or 'no suffix'} is not one of {', '.join(PACKED_SUFFIXES)}")
        elif m.name not in manifest:
            problems.append(f"{m.name}: not in the manifest")
        elif m.size != manifest[m.name]["size"]:
            problems.append(f"{m.name}: {m.size} bytes, the manifest says {manifest[m.name]['size']}")
        seen.add(m.name)
    problems += [f"{name}: in the manifest, not in the archive" for name in sorted(set(manifest) - seen)]
    return problems


def unpack(archive: Path, root: Path | None = None) -> int:
    """Unpack an archive made by `pack` into the run cache; return how many files were added. Refuses (ValueError,
    nothing written) an archive without a manifest, with a path outside the cache, a link, a file type other than
    `PACKED_SUFFIXES`, or a file whose size or SHA-256 is not the manifest's. Entries the cache already holds are
    kept (the cache is keyed by content); new stage folders appear whole, by one rename each."""
    root = Path(root or runs_dir())
    try:
        tar = tarfile.open(archive)
    except (OSError, tarfile.ReadError) as e:
        why = " ".join(str(e).split())  # tarfile's reasons span lines
        raise ValueError(f"refused {archive}: not a readable tar archive ({why}); make one with `python -m "
                         "backdoorlab.cache pack`") from None
    root.mkdir(parents=True, exist_ok=True)
    with tar:
        try:
            manifest = json.load(tar.extractfile(MANIFEST))
        except KeyError:
            raise ValueError(f"refused {archive}: no {MANIFEST}; make one with `python -m backdoorlab.cache pack`")
        if problems := _refusals(tar, manifest):
            raise ValueError(f"refused {archive}, nothing unpacked: " + "; ".join(problems[:5])
                             + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
        try:
            tar.extractall(staging, members=[m for m in tar.getmembers() if m.name != MANIFEST], filter="data")
            wrong = [n for n, entry in manifest.items() if sha256(staging / n) != entry["sha256"]]
            if wrong:
                raise ValueError(f"refused {archive}, nothing unpacked: SHA-256 differs from the manifest for "
                                 + ", ".join(wrong[:5]))
            added = 0
            for stage in sorted(staging.iterdir()):
                added += _move_new(stage, root / stage.name)
            return added
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_new(source: Path, target: Path) -> int:
    """Move what `target` lacks: a missing folder whole (one rename), else its missing children, recursively."""
    if not target.exists():
        count = sum(1 for p in source.rglob("*") if p.is_file()) if source.is_dir() else 1
        os.replace(source, target)
        return count
    if source.is_dir() and target.is_dir() and source.name != WEIGHTS:  # a saved weights folder is never mixed
        return sum(_move_new(child, target / child.name) for child in sorted(source.iterdir()))
    return 0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m backdoorlab.cache", description="Pack the run cache into one "
                                     "archive for a lab, or unpack one into it.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [("pack", "write the cache to ARCHIVE"), ("unpack", "add ARCHIVE's entries to the cache")]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("archive", type=Path)
        cmd.add_argument("--cache", type=Path, default=None, help="the run cache (default: results/runs)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        manifest = pack(args.archive, args.cache)
        size = sum(e["size"] for e in manifest.values()) / 2**30
        print(f"{args.archive}: {len(manifest)} files, {size:.2f} GiB")
    else:
        try:
            print(f"{args.archive}: {unpack(args.archive, args.cache)} files added to {args.cache or runs_dir()}")
        except ValueError as e:
            raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
