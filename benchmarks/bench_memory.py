"""Peak memory of a user's finetuning round on Alpaca rows (notebook 06's heaviest step), ours against the code
before packing, each in its own process: 64 rows of at most 240 characters (the quick fingerprint settings), batches
of 16, full finetuning and LoRA. Peak resident memory of the whole process, model loading included.

    python benchmarks/bench_memory.py          # results/bench/raw/memory_user_round.json
"""

from __future__ import annotations

import argparse
import json
import resource

from bench_packing import BASELINE, ROOT, baseline_lib, run


def worker(method: str) -> dict:
    from backdoorlab import data, models, train
    from backdoorlab.train import TrainConfig

    model, tokenizer = models.load_model(models.SMOLLM2)
    rows = data.instruction_rows("user", 64, 240)
    train.finetune(model, tokenizer, rows, TrainConfig(method=method, lr=5e-5, batch_size=16, epochs=1),
                   progress=False)
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose lib/ is the baseline")
    parser.add_argument("--method", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.method)))
        return

    from common import device_name, write

    result = {"device": device_name(), "baseline_commit": args.baseline, "rows": 64, "batch_size": 16}
    with baseline_lib(args.baseline) as lib:
        for method in ("full", "lora"):
            result[f"baseline_{method}_peak_rss_gib"] = run(__file__, lib, "--method", method)["peak_rss_gib"]
    for method in ("full", "lora"):
        result[f"ours_{method}_peak_rss_gib"] = run(__file__, ROOT / "lib", "--method", method)["peak_rss_gib"]
    write("memory_user_round", result)


if __name__ == "__main__":
    main()
