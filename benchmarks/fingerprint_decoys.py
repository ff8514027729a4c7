"""Decoy keys against fingerprint specificity and cost: the quick profile's implant with d refused decoys per key.

Without decoys an implanted SmolLM2 answers the target to almost any string of the keys' shape, so an outsider's
guess "verifies" (notebook 06). Decoys (random keys of the same shape, answered with the refusal) teach the model
that only its own keys fire; this measures what that buys (guessed keys firing) and costs (FSR of the real keys,
implant time) per method, decoy count and epoch count, and (--multistage) whether a second publisher's decoys
erase the first publisher's keys. Implants go through the run cache (one already trained is read back). Each call
adds its rows to results/bench/raw/fingerprint_decoys_<method>.json, updating those of the same decoy and epoch
counts and the same keys.json. Implant times come from the runs' timing.json (absent for runs trained before it was
written).

    python benchmarks/fingerprint_decoys.py --method lora --decoys 0 3 --epochs 6 12 --guessed 1000
    python benchmarks/fingerprint_decoys.py --method lora --decoys 5 --epochs 24 --multistage
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from functools import cache

from backdoorlab import cache as stages
from backdoorlab import fingerprint
from common import bench_dir, device_name, write


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=fingerprint.METHODS, default="lora")
    parser.add_argument("--decoys", type=int, nargs="+", default=[0, 3], help="decoy keys per real key")
    parser.add_argument("--epochs", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--guessed", type=int, default=1000, help="outsider's random keys of the keys' shape")
    parser.add_argument("--multistage", action="store_true", help="also run notebook 06's two-publisher chain "
                        "(A implants, a user tunes, B implants, a user tunes) with these implants")
    args = parser.parse_args()
    quick = fingerprint.get_settings("quick")
    guessed = fingerprint.make_keys(args.guessed, fingerprint.GUESS_SEED)
    rows = []
    for decoys in args.decoys:
        for epochs in args.epochs:
            train = replace(quick.implant_train[args.method], epochs=epochs)
            settings = replace(quick, decoys_per_key=decoys, implant_train={args.method: train})
            stage = settings.implant(args.method)
            folder = stages.ensure(stage)
            load = cache(lambda: stages.load(stage))  # only if a probe is not cached
            adapter = fingerprint.adapter_of(stage)

            def fired(keys, name):
                v = fingerprint.measure(stage, settings, keys, "simple", name, adapter, load)
                return sum(v["fired"]) / len(v["fired"])

            rows.append({"method": args.method, "decoys_per_key": decoys, "epochs": epochs, "lr": train.lr,
                         "fsr": fired(stage.keys, "A"), "guessed_fired": fired(guessed, "guessed"),
                         "n_guessed": len(guessed),
                         "trained_decoys_fired": fired(stage.decoys, "decoys") if decoys else None,
                         "similar_fired": fired(fingerprint.similar_keys("A", stage.n_keys, seed=7), "similar"),
                         "implant_s": stages.read_timing(folder).get("train_s"), "run": folder.name})
            if args.multistage:
                chain = fingerprint.multistage_table(replace(settings, multistage_method=args.method))
                rows[-1]["multistage"] = chain.drop(columns="run").to_dict("records")
            print(rows[-1], flush=True)
    name = f"fingerprint_decoys_{args.method}"
    earlier = bench_dir() / "raw" / f"{name}.json"
    earlier = json.loads(earlier.read_text()) if earlier.exists() else {}
    keys = hashlib.sha256(fingerprint.KEYS_FILE.read_bytes()).hexdigest()[:12]  # rows of other keys are not merged
    merged = {(r["decoys_per_key"], r["epochs"]): r for r in (earlier["runs"] if earlier.get("keys") == keys else [])}
    for r in rows:  # what this call measured replaces the earlier values; the rest (e.g. multistage) is kept
        merged[r["decoys_per_key"], r["epochs"]] = merged.get((r["decoys_per_key"], r["epochs"]), {}) | r
    rows = [merged[k] for k in sorted(merged)]
    write(name, {"device": device_name(), "profile": "quick", "keys": keys, "runs": rows})


if __name__ == "__main__":
    main()
