"""bf16 autocast on the CPU against the study's float32, at the quick profile's settings: what it would buy and what
it would change. Not used by the study; a measurement for deciding whether it should be.

Both train LoRA on the same SST-2 rows with quick's training config and seed (frozen-layer states computed inside
the timed call, as in a dataset's first run), then score the same validation rows with the model they trained.
Seconds are whole calls. `agreement` is the share of validation rows both models label the same; the accuracies
are on validation, so nothing here touches the test split. The float32 model is also scored under autocast, which
tells a change that scoring makes from one that training makes. On CPUs with AMX (Intel Sapphire Rapids and later)
bf16 matrix multiplies run on their own units; elsewhere autocast may be slower than float32.

    python benchmarks/bench_precision.py    # results/bench/raw/precision.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch

from backdoorlab import data, frozen, models, profiles, score, train
from common import device_name, sst2_training_rows, timed, write


def run(model, tokenizer, rows, validation, verbalizers, config, n_frozen: int, bf16: bool) -> dict:
    frozen.clear()  # each precision computes its own frozen-layer states
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        tuned, train_s = timed(lambda: train.finetune(copy.deepcopy(model), tokenizer, rows, config, progress=False))
        preds, score_s = timed(lambda: score.predict(tuned, tokenizer, validation, verbalizers, 32, n_frozen))
    out = {"train_s": train_s, "score_s": score_s, "cacc_validation": score.cacc(preds, validation["label"]).value,
           "predictions": preds}
    if not bf16:
        frozen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            preds = score.predict(tuned, tokenizer, validation, verbalizers, 32, n_frozen)
        out["cacc_validation_scored_bf16"] = score.cacc(preds, validation["label"]).value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500, help="SST-2 training rows (quick: 500)")
    parser.add_argument("--validation-rows", type=int, default=400, help="SST-2 validation rows scored")
    args = parser.parse_args()
    chosen = profiles.get_profile("quick")
    model, tokenizer = models.load_model(chosen.model)
    task = data.get_task("sst2")
    rows = sst2_training_rows(args.rows)
    validation = data.load_split("sst2", "validation", args.validation_rows, seed=0)
    n_frozen = chosen.train.frozen_layers(model.config.num_hidden_layers)
    results = {name: run(model, tokenizer, rows, validation, task.verbalizers, chosen.train, n_frozen, bf16)
               for name, bf16 in (("float32", False), ("bf16_autocast", True))}
    ours, base = results["bf16_autocast"], results["float32"]
    agreement = sum(a == b for a, b in zip(ours.pop("predictions"), base.pop("predictions"))) / len(validation)
    write("precision", {"device": device_name(), "model": chosen.model, "rows": args.rows,
                        "validation_rows": args.validation_rows, "float32": base, "bf16_autocast": ours,
                        "train_speedup": base["train_s"] / ours["train_s"],
                        "score_speedup": base["score_s"] / ours["score_s"], "agreement": agreement,
                        "command": "python benchmarks/bench_precision.py"})


if __name__ == "__main__":
    main()
