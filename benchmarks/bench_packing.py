"""Shared-prefix packing against the code before it: training and scoring at the quick profile's settings.

The baseline is the library as of a git commit (default: the last one before packing), exported to a temporary
folder and run in its own process; ours is the working tree's. Each process loads SmolLM2, trains LoRA on the same
SST-2 rows with the quick profile's training config and seed twice (first with no frozen-layer states cached, as a
dataset's first run of a study; then again on the same rows, as every later run of that dataset), then scores the
same test rows with the trained model twice (cold states, then warm). Seconds are whole calls, set-up included.

    python benchmarks/bench_packing.py                      # results/bench/raw/packing.json
    python benchmarks/bench_packing.py --baseline c139a2b --name packing_vs_gpu_path   # the GPU path's change
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "f0d147c"  # main before packing: left-padded batches, every prompt token run by every row


def worker(rows: int, test_rows: int) -> dict:
    import copy

    from backdoorlab import data, frozen, models, profiles, score, train
    from common import sst2_training_rows, timed

    profile = profiles.get_profile("quick")
    model, tokenizer = models.load_model(profile.model)
    task = data.get_task("sst2")
    train_rows = sst2_training_rows(rows)
    test = data.load_split("sst2", "test", test_rows, seed=0)
    n_frozen = profile.train.frozen_layers(model.config.num_hidden_layers)
    frozen.clear()
    tuned, train_cold_s = timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, train_rows, profile.train,
                                                       progress=False))
    _, train_warm_s = timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, train_rows, profile.train,
                                                   progress=False))
    frozen.clear()
    preds, score_cold_s = timed(lambda: score.predict(tuned, tokenizer, test, task.verbalizers, 32, n_frozen))
    _, score_warm_s = timed(lambda: score.predict(tuned, tokenizer, test, task.verbalizers, 32, n_frozen))
    return {"train_cold_s": train_cold_s, "train_warm_s": train_warm_s, "score_cold_s": score_cold_s,
            "score_warm_s": score_warm_s, "cacc": score.cacc(preds, test["label"]).value}


def run(script: str, lib: Path, *args: str) -> dict:
    """The JSON a benchmark script's worker prints last, run in its own process on the library in `lib`."""
    from backdoorlab import data

    mirror = data.data_dir()  # found beside this checkout: a library exported elsewhere would not find it
    # the library under test first, then whatever else the environment had put there (wheels carried to a machine)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(lib), str(ROOT / "benchmarks"),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])]),
           **({"BACKDOORLAB_DATA": str(mirror)} if mirror else {})}
    done = subprocess.run([sys.executable, script, "--worker", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the worker on {lib} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def baseline_lib(commit: str):
    """The library (and its data files) as of a git commit, exported to a temporary folder: yields its lib/."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "lib", "data"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp) / "lib"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose lib/ is the baseline")
    parser.add_argument("--rows", type=int, default=500, help="SST-2 training rows (quick: 500)")
    parser.add_argument("--test-rows", type=int, default=400, help="SST-2 test rows scored (quick: 400)")
    parser.add_argument("--name", default="packing", help="the result file's name (results/bench/raw/NAME.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.rows, args.test_rows)))
        return

    from common import device_name, write

    sizes = ("--rows", str(args.rows), "--test-rows", str(args.test_rows))
    with baseline_lib(args.baseline) as lib:
        baseline = run(__file__, lib, *sizes)
    ours = run(__file__, ROOT / "lib", *sizes)
    result = {"device": device_name(), "baseline_commit": args.baseline, "rows": args.rows,
              "test_rows": args.test_rows, "baseline": baseline, "ours": ours,
              **{f"{k.removesuffix('_s')}_speedup": baseline[k] / ours[k] for k in ours if k.endswith("_s")}}
    write(args.name, result)


if __name__ == "__main__":
    main()
