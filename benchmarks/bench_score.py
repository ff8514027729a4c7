"""Scoring throughput of rank classification (`backdoorlab.score.predict`) against `generate()` + string matching.

Both classify the same SST-2 test rows with the same finetuned model (the quick profile's clean SST-2 run, trained
first if the run cache lacks it) and batch size. The baseline generates greedily as many tokens as the longest
verbalizer and takes the verbalizer the answer starts with. `agreement` is the share of rows where both predict the
same label. Ours is timed with cold frozen-layer states (a first run on these rows) and warm (any later run).

    python benchmarks/bench_score.py
"""

from __future__ import annotations

import argparse

import torch

from backdoorlab import cache, data, frozen, profiles, runs, score
from common import device, device_name, timed, write


@torch.inference_mode()
def generate_predictions(model, tokenizer, rows, verbalizers: list[str], batch_size: int) -> list[int]:
    prompts = [data.format_prompt(r, tokenizer) for r in rows]
    longest = max(len(tokenizer(v, add_special_tokens=False).input_ids) for v in verbalizers)
    tokenizer.padding_side = "left"
    preds = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        out = model.generate(**batch, max_new_tokens=longest, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for text in tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True):
            answer = text.strip().lower()
            preds.append(next((j for j, v in enumerate(verbalizers) if answer.startswith(v.lower())), -1))
    return preds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=400, help="SST-2 test rows")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    profile = profiles.get_profile("quick")
    cfg = runs.RunConfig.from_profile(profile, "sst2", "clean", seed=0)
    model, tokenizer = cache.load(cfg)
    model.to(device())
    task = data.get_task("sst2")
    rows = data.load_split("sst2", "test", args.rows, seed=0)
    n_frozen = cfg.train.frozen_layers(model.config.num_hidden_layers)
    frozen.clear()
    ours, cold_s = timed(lambda: score.predict(model, tokenizer, rows, task.verbalizers, args.batch_size, n_frozen))
    _, warm_s = timed(lambda: score.predict(model, tokenizer, rows, task.verbalizers, args.batch_size, n_frozen))
    _, plain_s = timed(lambda: score.predict(model, tokenizer, rows, task.verbalizers, args.batch_size))
    generated, generate_s = timed(lambda: generate_predictions(model, tokenizer, rows, task.verbalizers,
                                                               args.batch_size))
    result = {
        "device": device_name(), "model": cfg.model, "run": cfg.path.name, "rows": len(rows),
        "batch_size": args.batch_size,
        "generate_rows_per_s": len(rows) / generate_s, "ours_rows_per_s": len(rows) / cold_s,
        "ours_warm_rows_per_s": len(rows) / warm_s, "ours_no_reuse_rows_per_s": len(rows) / plain_s,
        "speedup_vs_generate": generate_s / cold_s, "speedup_vs_generate_warm": generate_s / warm_s,
        "agreement": sum(a == b for a, b in zip(ours, generated)) / len(rows),
        "generate_unparsed": sum(g == -1 for g in generated),
        "accuracy_ours": score.cacc(ours, rows["label"]).value,
        "accuracy_generate": score.cacc(generated, rows["label"]).value,
    }
    write("score", result)


if __name__ == "__main__":
    main()
