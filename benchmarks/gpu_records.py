"""Every evaluation an archive of `benchmarks/paper_gpu.sh` holds, as one table: which run (its config), which
split and trigger, CACC, ASR and the clean prompt's target rate with their row counts, and how long the run trained
where. The archive carries the runs' records (JSON, no weights), so this reads a GPU session's results on any
machine; a run the session stopped before finishing has no evaluation and no row.

    python benchmarks/gpu_records.py results/paper/gpu_records_first_pass.tar.gz \\
        --out results/paper/gpu_evaluations_first_pass.csv
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import PurePosixPath

import pandas as pd

CONFIG = ("dataset", "attack", "n_poison", "seed", "model", "n_train", "dirty_label")
TRAIN = ("method", "epochs", "lr", "batch_size", "lora_layers")
METRICS = ("asr", "cacc", "clean_target_rate", "n_asr", "n_cacc")


def evaluations(archive) -> pd.DataFrame:
    with tarfile.open(archive) as tar:
        files = {PurePosixPath(m.name): tar.extractfile(m) for m in tar.getmembers() if m.isfile()}
        read = {path: json.load(f) for path, f in files.items() if path.suffix == ".json"}
    rows = []
    for path, record in sorted(read.items()):
        if path.parent.parent.name != "runs" or not path.name.startswith("eval-"):
            continue
        config = read[path.parent / "config.json"]
        timing = read.get(path.parent / "timing.json", {})
        rows.append({"run": path.parent.name, **{k: config[k] for k in CONFIG},
                     **{k: config["train"][k] for k in TRAIN}, "split": record["metrics"]["split"],
                     "trigger": record["metrics"]["trigger"], **{k: record["metrics"][k] for k in METRICS},
                     "train_s": timing.get("train_s"), "device": timing.get("device")})
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("archive", help="paper_gpu.tar.gz as benchmarks/paper_gpu.sh wrote it")
    parser.add_argument("--out", required=True, help="the CSV to write")
    args = parser.parse_args()
    table = evaluations(args.archive)
    table.to_csv(args.out, index=False, float_format="%.4f")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
