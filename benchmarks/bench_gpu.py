"""A paper-scale SST-2 run against `transformers.Trainer`, and where a training step's time goes: host work or the
model's compute, for the library before the GPU path and ours.

Each side runs in its own process on the same device, with the paper profile's training config: one clean SST-2 run
(`--rows` training rows, default all 6,920, 3 epochs, full finetuning), then the test split scored clean and with
the induced instruction (the two evaluations of every run of the table). A run is timed whole (tokenising, packing,
training, scoring; loading the model excluded), and its host work timed apart: tokenising the rows (once a run)
and packing every batch of every epoch (collation and the packs' masks). In the code before, packing sits in the
step; ours packs in loader workers on a GPU (on the CPU the cores are the model's, and it stays in the step).
`host_share` is the share of the run's time its host work takes when done in the step.

Beside them, in this process: the same rows through `transformers.Trainer` (its defaults, the usual causal-LM
collator, bf16 on a GPU), and MFU, the FLOPs our path executes (`bench_train.executed_flops`: the packs it runs,
padding and masked attention included) over the matmul peak measured in the same run.

    python benchmarks/bench_gpu.py        # a GPU: results/bench/raw/gpu_<device>_<model>.json
                                          # no GPU: the tiny model and SmolLM2 on a few hundred rows
    make bench-gpu
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from dataclasses import replace
from pathlib import Path

BASELINE = "c139a2b"  # main before the GPU path: packing in the step, a sync every step, a checkpoint every epoch


def worker(model_name: str, rows: int | None, test_rows: int | None, settings: dict) -> dict:
    """One run with this process's library (`settings`: the training config's fields and the scoring batch, given
    explicitly since the code before has no paper profile): its seconds, its host work's, its accuracy and ASR."""
    import torch

    from backdoorlab import data, models, poison, score, train
    from common import sst2_training_rows, sync, timed

    eval_batch_size = settings.pop("eval_batch_size")
    cfg = train.TrainConfig(**settings)
    model, tokenizer = models.load_model(model_name)
    train_rows = sst2_training_rows(rows)
    task = data.get_task("sst2")
    test = data.load_split("sst2", "test", test_rows, seed=0)
    triggered = poison.get_attack("induced_instruction", task).triggered_test_set(test)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoded, encode_s = timed(lambda: [train.encode(r, tokenizer, cfg.max_length) for r in train_rows])
    sampler = train.LengthGroupedBatches([len(e["input_ids"]) for e in encoded], cfg.batch_size, seed=0)
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in sampler:
            train.collate([encoded[i] for i in batch], tokenizer.pad_token_id)
    pack_s = time.perf_counter() - start
    sync()
    start = time.perf_counter()
    tuned = train.finetune(copy.deepcopy(model).to(device), tokenizer, train_rows, cfg, progress=False)
    sync()
    train_s = time.perf_counter() - start
    (clean, attacked), score_s = timed(lambda: [
        score.predict(tuned, tokenizer, ds, task.verbalizers, eval_batch_size) for ds in (test, triggered)])
    tokens = cfg.epochs * sum(len(e["input_ids"]) for e in encoded)
    return {"train_s": train_s, "score_s": score_s, "run_s": train_s + score_s, "encode_s": encode_s,
            "pack_s": pack_s, "host_share": (encode_s + pack_s) / train_s, "tokens": tokens,
            "tokens_per_s": tokens / train_s, "scored_rows": len(test) + len(triggered),
            "cacc": score.cacc(clean, test["label"]).value,
            "asr": score.asr(attacked, triggered["label"], task.target_id).value}


# Without a GPU (and with no size given): the step split on the tiny model and on SmolLM2, at sizes a 2-core CPU
# trains in a minute or two: (model, training rows, test rows, epochs).
CPU_SIZES = (("tiny", 512, 200, 3), ("smollm2-135m-instruct", 128, 100, 1))


def measure(model_name: str, rows: int | None, test_rows: int | None, epochs: int, baseline: str,
            baseline_lib: Path | None, trainer: bool) -> None:
    from bench_packing import ROOT, baseline_lib as exported_lib, run
    from bench_train import executed_flops, trainer_baseline
    from backdoorlab import models, profiles, train
    from common import device_name, matmul_peak, sst2_training_rows, write

    sizes = ("--model", model_name, "--epochs", str(epochs), *(("--rows", str(rows)) if rows else ()),
             *(("--test-rows", str(test_rows)) if test_rows else ()))
    paper = profiles.get_profile("paper")
    cfg = replace(paper.train, epochs=epochs)
    settings = json.dumps({**vars(cfg), "eval_batch_size": paper.eval_batch_size})
    if baseline_lib:
        before = run(__file__, baseline_lib, settings, *sizes)
    else:
        with exported_lib(baseline) as lib:
            before = run(__file__, lib, settings, *sizes)
    ours = run(__file__, ROOT / "lib", settings, *sizes)
    model, tokenizer = models.load_model(model_name)
    train_rows = sst2_training_rows(rows)
    encoded = [train.encode(r, tokenizer, cfg.max_length) for r in train_rows]
    peak = matmul_peak()
    result = {"device": device_name(), "model": model_name, "train": vars(cfg), "rows": len(train_rows),
              "matmul_peak_flops": peak, "baseline_commit": None if baseline_lib else baseline,
              "before": before, "ours": ours, "run_speedup_vs_before": before["run_s"] / ours["run_s"],
              "mfu": executed_flops(model, encoded, cfg, 0, 0) / ours["train_s"] / peak}
    if trainer:
        trainer_s = trainer_baseline(copy.deepcopy(model), tokenizer, train_rows, cfg)
        result |= {"trainer_s": trainer_s, "trainer_tokens_per_s": ours["tokens"] / trainer_s,
                   "train_speedup_vs_trainer": trainer_s / ours["train_s"]}
    result["command"] = "python benchmarks/bench_gpu.py " + " ".join(sizes)
    write(f"gpu_{re.sub(r'[^a-z0-9]+', '_', device_name().lower()).strip('_')[:40]}_{model_name}", result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model name (tiny: the smoke model; default SmolLM2)")
    parser.add_argument("--rows", type=int, default=None, help="SST-2 training rows (default: all 6,920)")
    parser.add_argument("--test-rows", type=int, default=None, help="SST-2 test rows scored (default: all 1,821)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose lib/ is the code before")
    parser.add_argument("--baseline-lib", type=Path, help="that lib/ folder itself (a machine without git history)")
    parser.add_argument("--no-trainer", action="store_true", help="skip transformers.Trainer")
    parser.add_argument("--worker", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.rows, args.test_rows, args.worker)))
        return
    import torch

    if torch.cuda.is_available() or args.model or args.rows:
        sizes = [(args.model or "smollm2-135m-instruct", args.rows, args.test_rows, args.epochs)]
    else:
        sizes = CPU_SIZES
    for model_name, rows, test_rows, epochs in sizes:
        measure(model_name, rows, test_rows, epochs, args.baseline, args.baseline_lib, not args.no_trainer)


if __name__ == "__main__":
    main()
