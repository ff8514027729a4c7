"""Where a full-finetuning step's time goes on a GPU, and what each of the GPU path's choices is worth.

One epoch of the paper profile's training config on `--rows` SST-2 rows, timed in one process after a warm-up run
(CUDA context, cuBLAS handles, loader workers): as the library runs it, then with one choice undone at a time (the
key-value cache that training never reads built in every forward; cuDNN's attention allowed). Then a torch.profiler
trace of `--profile-rows` rows as the library runs it: the CPU time of the top operators and the GPU's busy time,
for telling a step that waits on the CPU (kernel launches, per-call set-up) from one that waits on the GPU.

    python benchmarks/profile_gpu.py      # results/bench/raw/gpu_step_profile.json (no GPU: the tiny model)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from backdoorlab import models, packing, profiles, train
from common import device_name, sst2_training_rows, timed, write

VARIANTS = ("library", "with_kv_cache", "with_cudnn_attention")


@contextlib.contextmanager
def variant(name: str):
    """The library with one of its GPU choices undone (`library`: none)."""
    forward, kernels = train.packed_forward, packing.attention_kernels
    if name == "with_kv_cache":
        train.packed_forward = lambda model, batch, **kw: forward(model, batch, **{"use_cache": True, **kw})
    elif name == "with_cudnn_attention":
        packing.attention_kernels = lambda device: contextlib.nullcontext()
    try:
        yield
    finally:
        train.packed_forward, packing.attention_kernels = forward, kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = torch.cuda.is_available()  # without one, the same measurements on the tiny model, in a minute
    parser.add_argument("--model", default=models.SMOLLM2 if gpu else models.TINY)
    parser.add_argument("--rows", type=int, default=1280 if gpu else 256, help="SST-2 rows of each timed epoch")
    parser.add_argument("--profile-rows", type=int, default=640 if gpu else 128, help="SST-2 rows profiled")
    args = parser.parse_args()
    model, tokenizer = models.load_model(args.model)
    cfg = replace(profiles.get_profile("paper").train, epochs=1)
    rows = sst2_training_rows(args.rows)
    steps = -(-len(rows) // cfg.batch_size)

    def epoch(data):
        return timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, data, cfg, progress=False))[1]

    epoch(rows)  # warm-up: nothing below pays for the process's first CUDA work
    seconds = {}
    for name in VARIANTS:
        with variant(name):
            seconds[name] = epoch(rows)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        epoch(sst2_training_rows(args.profile_rows))
    ops = prof.key_averages()
    cpu_total = sum(op.self_cpu_time_total for op in ops)
    device_total = sum(getattr(op, "self_device_time_total", 0) for op in ops)
    top = sorted(ops, key=lambda op: op.self_cpu_time_total, reverse=True)[:12]
    write("gpu_step_profile" + ("" if gpu else f"_cpu_{args.model}"), {
        "device": device_name(), "model": args.model, "train": vars(cfg), "rows": len(rows), "steps": steps,
        "epoch_s": seconds, "step_ms": {k: 1000 * s / steps for k, s in seconds.items()},
        "profiled_rows": args.profile_rows, "profiled_cpu_s": cpu_total / 1e6,
        "profiled_gpu_busy_s": device_total / 1e6,
        "top_cpu_ops": [{"op": op.key, "cpu_share": op.self_cpu_time_total / cpu_total, "calls": op.count}
                        for op in top],
        "command": "python benchmarks/profile_gpu.py"})


if __name__ == "__main__":
    main()
