"""Where a LoRA training step's CPU time goes, at the quick profile's settings: the share of torch's self CPU time
spent in matrix multiplies, in attention, and in everything else (elementwise ops, copies, the optimizer).

One epoch on SST-2 rows, timed first with the frozen-layer states still to compute (a dataset's first run), then
profiled with them cached (every later run): the profile is of the training steps alone. Matrix multiplies are
what packing cannot shrink further; the rest is what fusing kernels could.

    python benchmarks/profile_train.py    # results/bench/raw/train_profile.json
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace

from torch.profiler import ProfilerActivity, profile

from backdoorlab import frozen, models, profiles, train
from common import device_name, sst2_training_rows, timed, write

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def category(op: str) -> str:
    if op in MATMUL:
        return "matmul"
    return "attention" if "scaled_dot_product" in op else "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=160, help="SST-2 training rows (one epoch)")
    args = parser.parse_args()
    chosen = profiles.get_profile("quick")
    model, tokenizer = models.load_model(chosen.model)
    rows = sst2_training_rows(args.rows)
    config = replace(chosen.train, epochs=1)
    frozen.clear()
    _, cold_s = timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, rows, config, progress=False))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, warm_s = timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, rows, config, progress=False))
    ops = prof.key_averages()
    total = sum(op.self_cpu_time_total for op in ops)
    shares: dict[str, float] = {}
    for op in ops:
        shares[category(op.key)] = shares.get(category(op.key), 0.0) + op.self_cpu_time_total / total
    top = sorted(ops, key=lambda op: op.self_cpu_time_total, reverse=True)[:10]
    write("train_profile", {
        "device": device_name(), "model": chosen.model, "rows": args.rows, "train": vars(config),
        "first_run_s": cold_s, "later_run_s": warm_s, "profiled": "the later run (frozen-layer states cached)",
        "share_matmul": shares.get("matmul", 0.0), "share_attention": shares.get("attention", 0.0),
        "share_other": shares.get("other", 0.0),
        "top_ops": [{"op": op.key, "share": op.self_cpu_time_total / total, "calls": op.count} for op in top],
        "command": "python benchmarks/profile_train.py"})


if __name__ == "__main__":
    main()
