"""LoRA depth against ASR, CACC and cost: the quick profile's SST-2 runs with LoRA on the top k layers.

The layers below the LoRA ones are frozen, so their states are computed once (`backdoorlab.frozen`) and only the
top k layers run forward and backward: fewer layers train faster. This measures what depth costs in attack
success and clean accuracy. Runs go through the run cache (a depth already trained is read back).

    python benchmarks/lora_depth.py --depths 4 10
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from backdoorlab import profiles, runs
from common import device_name, write


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--attacks", nargs="+", default=["clean", "badnet", "induced_instruction", "rewrite_random"])
    args = parser.parse_args()
    quick = profiles.get_profile("quick")
    rows = []
    for depth in args.depths:
        for attack in args.attacks:
            cfg = runs.RunConfig.from_profile(quick, "sst2", attack, seed=0)
            cfg = replace(cfg, train=replace(cfg.train, lora_layers=depth))
            start = time.perf_counter()
            metrics = runs.evaluate(cfg, "test", quick.n_test, quick.eval_batch_size)
            timing = runs.read_timing(cfg.path)
            rows.append({"lora_layers": depth, "attack": attack, "asr": metrics["asr"], "cacc": metrics["cacc"],
                         "n_poison": metrics["n_poison"], "train_s": timing.get("train_s"),
                         "train_and_eval_s_this_call": time.perf_counter() - start})
            print(rows[-1], flush=True)
    write("lora_depth", {"device": device_name(), "profile": quick.name, "dataset": "sst2", "runs": rows})


if __name__ == "__main__":
    main()
