"""Shared by the benchmark scripts: the machine's name, its measured matmul peak, FLOP counts, and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

def sst2_training_rows(n: int):
    """SST-2's training rows as every benchmark draws them (the first `n` with seed 0), each with its answer."""
    from backdoorlab import data

    task = data.get_task("sst2")
    return data.load_split("sst2", "train", n, seed=0).map(lambda r: {"answer": task.verbalizers[r["label"]]})


def bench_dir() -> Path:
    """Where benchmark results go: $BACKDOORLAB_BENCH_OUT (read at each call), else results/bench."""
    return Path(os.environ.get("BACKDOORLAB_BENCH_OUT", Path(__file__).resolve().parents[1] / "results" / "bench"))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{cpu}, {torch.get_num_threads()} threads"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """(fn(), seconds it took), the device synchronised on both sides."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def matmul_peak(repeats: int = 10) -> float:
    """Best FLOP/s of a square matrix product on this device, in the training precision (fp32 on the CPU,
    bf16 on a GPU): the denominator of MFU, measured rather than taken from a datasheet."""
    dev = device()
    n, dtype = (8192, torch.bfloat16) if dev.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def linear_params(model) -> tuple[int, int, int, int]:
    """(decoder layers, linear weights per layer, hidden size, vocabulary size) of a causal LM."""
    cfg = model.config
    d, inner = cfg.hidden_size, cfg.intermediate_size
    kv = d // cfg.num_attention_heads * cfg.num_key_value_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inner  # q, o; k, v; gate, up, down
    return cfg.num_hidden_layers, per_layer, d, cfg.vocab_size


def write(name: str, result: dict) -> Path:
    path = bench_dir() / "raw" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return path
