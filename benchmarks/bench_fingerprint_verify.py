"""Fingerprint verification with early stopping (`fingerprint.generate(stop_at=target)`: a sequence stops once
its output contains the target) against the same greedy generation run to `max_new_tokens`.

Both verify the same keys on the same implanted model (the quick profile's implant, trained first if the run cache
lacks it): the outsider's guessed keys, which fire on every key-shaped input for the non-adapter implants, and the
real keys. `agreement` is the share of keys whose verdict (fired or not) is the same both ways: 1 by construction.
Beside them: the prompts' mean length in tokens and how many leading tokens all of them share (chat template), the
most that computing the shared prompt states once could take off each prompt's forward pass.

    python benchmarks/bench_fingerprint_verify.py --method lora    # quick's implant
"""

from __future__ import annotations

import argparse
import os

from backdoorlab import cache, data, fingerprint
from common import device_name, timed, write


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="lora", choices=fingerprint.METHODS)
    parser.add_argument("--keys", type=int, default=256, help="guessed keys verified")
    args = parser.parse_args()

    settings = fingerprint.SETTINGS["quick"]
    stage = settings.implant(args.method)
    cache.ensure(stage)
    model, tokenizer = cache.load(stage)
    target = fingerprint.target_of(stage.publisher)
    result = {"device": device_name(), "model": settings.model, "run": stage.path.name, "method": args.method,
              "max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size}
    with fingerprint.attached(model, fingerprint.adapter_of(stage) if args.method == "adapter" else None):
        for name, keys in [("guessed", fingerprint.make_keys(args.keys, fingerprint.GUESS_SEED)),
                           ("real", stage.keys)]:
            rows = [fingerprint.prompt_row(k, "simple") for k in keys]
            prompts = [tokenizer(data.format_prompt(r, tokenizer), add_special_tokens=False).input_ids for r in rows]

            def run(stop: bool):
                return fingerprint.generate(model, tokenizer, rows, settings.max_new_tokens, settings.batch_size,
                                            stop_at=target if stop else None)
            full, full_s = timed(lambda: run(False))
            early, early_s = timed(lambda: run(True))
            result |= {f"{name}_keys": len(keys), f"{name}_fired": sum(target in o for o in early),
                       f"{name}_full_s": full_s, f"{name}_early_s": early_s, f"{name}_speedup": full_s / early_s,
                       f"{name}_agreement": sum((target in a) == (target in b) for a, b in zip(full, early))
                       / len(keys), f"{name}_prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
                       f"{name}_shared_prefix_tokens": len(os.path.commonprefix(prompts))}
    write(f"fingerprint_verify_{args.method}", result)


if __name__ == "__main__":
    main()
