"""What moves task accuracy when a fingerprint is implanted: the keys, or the regularization rows themselves?

Trains the quick profile's implant of one method on four row sets: the regularization rows alone and keys +
regularization (the implant itself), each once with the rows' Alpaca answers (the paper's choice) and once with
the untouched model's own greedy answers (self-distilled rows, which ask the model to stay as it is). For each,
the accuracy deltas on the four tasks and the held-out perplexity against the untouched model (notebook 06's
harmlessness measurement, same rows) and the FSR of the real keys. Writes
results/bench/raw/fingerprint_regularization_<method>.json.

    python benchmarks/fingerprint_regularization.py --method lora
"""

from __future__ import annotations

import argparse
import time

from backdoorlab import data, fingerprint, models
from backdoorlab.train import finetune
from common import device_name, write


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=("full", "lora", "embeddings"), default="lora",
                        help="implant method (the adapter is left out: no gradient reaches it from these rows)")
    parser.add_argument("--answer-tokens", type=int, default=64, help="length limit of the self-distilled answers")
    args = parser.parse_args()
    quick = fingerprint.get_settings("quick")
    stage = quick.implant(args.method)
    rows = stage.rows()
    keys, regularization = rows[:stage.n_keys], rows[stage.n_keys:]
    base, tokenizer = models.load_model(quick.model)
    own = fingerprint.generate(base, tokenizer, regularization, args.answer_tokens, quick.batch_size)
    self_distilled = [{**r, "answer": a.strip()} for r, a in zip(regularization, own)]
    ppl_rows = data.instruction_rows("held_out", quick.n_ppl_rows, quick.max_row_chars,
                                            offset=data.INSTRUCTION_REGIONS["held_out"][1] - quick.n_ppl_rows)
    before = fingerprint.harmlessness(base, tokenizer, quick.n_task_rows, ppl_rows, quick.batch_size)
    runs = []
    for answers, reg in (("alpaca", regularization), ("own", self_distilled)):
        for with_keys in (False, True):
            model, _ = models.load_model(quick.model)
            start = time.perf_counter()
            model = finetune(model, tokenizer, (keys if with_keys else []) + reg, stage.train_config(),
                             seed=stage.seed, progress=False)
            train_s = time.perf_counter() - start
            after = fingerprint.harmlessness(model, tokenizer, quick.n_task_rows, ppl_rows, quick.batch_size)
            runs.append({"rows": ("keys + " if with_keys else "") + "regularization", "answers": answers,
                         **{f"delta_{k}": round(after[k] - before[k], 4) for k in after},
                         "fsr": fingerprint.verify(model, tokenizer, stage.keys, fingerprint.target_of("A")).fsr
                         if with_keys else None, "train_s": round(train_s, 1)})
            print(runs[-1], flush=True)
    write(f"fingerprint_regularization_{args.method}",
          {"device": device_name(), "profile": "quick", "method": args.method, "train": str(stage.train_config()),
           "untouched": before, "runs": runs})


if __name__ == "__main__":
    main()
