"""Choose LoRA depth (and HateSpeech's label balancing) on the validation split, and see what they cost.

The layers below the LoRA ones are frozen, so their states are computed once (`backdoorlab.frozen`) and only the
top k layers run forward and backward: fewer layers train faster. A victim who trains a model picks its settings by
how well the *clean* model does its task, so the rule is: the setting whose clean run has the highest balanced
accuracy (mean recall over labels, `score.balanced_accuracy`) on the **validation** split, averaged over the
datasets measured; a cheaper depth wins unless a deeper one is better by more than `--tolerance`. Attack runs are
measured beside it (on validation too) to show what each setting does to ASR; they never enter the choice. The test
split is never read (tests/test_selection.py holds that). Runs go through the run cache.

    python benchmarks/lora_depth.py            # quick: SST-2 and HateSpeech, depths 4 and 10, HateSpeech natural
                                               # and label-balanced -> results/bench/raw/lora_depth_quick.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from statistics import mean

from backdoorlab import cache, profiles, runs
from common import device_name, write

SPLIT = "validation"


def measure(profile: profiles.Profile, dataset: str, attacks: list[str], balanced: bool = False,
            seed: int | None = None, **changes) -> list[dict]:
    """Each attack's run on `dataset` (the profile's, with `balanced`, `seed` (default: the profile's first) and
    `changes` to its training config or row count: `n_train=...`, `lora_layers=...`), scored on validation, beside
    the trigger on its clean twin."""
    n_train = changes.pop("n_train", profile.n_train)
    seed = profile.seeds[0] if seed is None else seed
    rows = []
    for attack in attacks:
        cfg = runs.RunConfig.from_profile(replace(profile, n_train=n_train), dataset, attack, seed=seed)
        cfg = replace(cfg, balanced=balanced, train=replace(cfg.train, **changes))
        start = time.perf_counter()
        metrics = runs.evaluate(cfg, SPLIT, profile.n_test, profile.eval_batch_size)
        on_clean = runs.evaluate(runs.clean_twin(cfg), SPLIT, profile.n_test, profile.eval_batch_size,
                                 trigger=attack)
        rows.append({"dataset": dataset, "seed": seed, "lora_layers": cfg.train.lora_layers, "balanced": balanced,
                     "epochs": cfg.train.epochs, "lr": cfg.train.lr, "attack": attack, "split": SPLIT,
                     "n_poison": metrics["n_poison"], "n_train": metrics["n_train"],
                     "cacc": metrics["cacc"], "cacc_balanced": metrics["cacc_balanced"], "asr": metrics["asr"],
                     "asr_clean_model": on_clean["asr"], "n_asr": metrics["n_asr"], "n_cacc": metrics["n_cacc"],
                     "train_s": cache.read_timing(cfg.path).get("train_s"),
                     "train_and_eval_s_this_call": time.perf_counter() - start})
        print(rows[-1], flush=True)
    return rows


def choose(rows: list[dict], tolerance: float) -> dict:
    """The rule of the module docstring, applied to the clean runs: per dataset the balancing with the best
    balanced accuracy (at each depth's best), then the shallowest depth within `tolerance` of the best mean."""
    clean = [r for r in rows if r["attack"] == "clean"]
    by_depth: dict[int, dict[str, float]] = {}
    balancing: dict[int, dict[str, bool]] = {}
    for r in clean:
        best = by_depth.setdefault(r["lora_layers"], {})
        if r["cacc_balanced"] > best.get(r["dataset"], -1.0):
            best[r["dataset"]] = r["cacc_balanced"]
            balancing.setdefault(r["lora_layers"], {})[r["dataset"]] = r["balanced"]
    scores = {depth: mean(per_dataset.values()) for depth, per_dataset in by_depth.items()}
    top = max(scores.values())
    depth = min(d for d, s in scores.items() if s >= top - tolerance)
    return {"rule": f"clean runs, balanced accuracy on {SPLIT}; shallowest depth within {tolerance} of the best",
            "mean_cacc_balanced_by_depth": scores, "lora_layers": depth,
            "balanced_datasets": sorted(d for d, b in balancing[depth].items() if b)}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(profiles.PROFILES))
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--datasets", nargs="+", default=["sst2", "hatespeech"])
    parser.add_argument("--balance", nargs="*", default=["hatespeech"],
                        help="datasets measured both natural and label-balanced (the others: natural only)")
    parser.add_argument("--attacks", nargs="+", default=["clean", "induced_instruction", "badnet"],
                        help="'clean' first; the attacks are measured for the report, not for the choice")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.attacks[0] != "clean":
        parser.error("--attacks must start with 'clean': the choice is made on the clean runs")
    profile = profiles.get_profile(args.profile)
    rows = []
    for dataset in args.datasets:
        for depth in args.depths:
            for balanced in ([False, True] if dataset in args.balance else [False]):
                attacks = args.attacks if dataset == args.datasets[0] else args.attacks[:2]
                rows += measure(profile, dataset, attacks, balanced, lora_layers=depth)
    write(f"lora_depth_{profile.name}", {"device": device_name(), "profile": profile.name, "seed": profile.seeds[0],
                                         "choice": choose(rows, args.tolerance), "runs": rows})


if __name__ == "__main__":
    main()
