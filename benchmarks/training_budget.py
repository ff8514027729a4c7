"""Choose a profile's training budget (training rows, epochs, learning rate) on the validation split, and see what
each costs.

The quick profile has to fit a lab (issue 15: the whole study cold in 45 minutes on 2 cores) and still train a
clean model that does its task. The rule: among the settings tried, the cheapest (fewest row-epochs, then the
lower learning rate) whose clean SST-2 run reaches validation accuracy `--bar` (0.85), averaged over `--seeds`;
if none does, the most accurate. Attack runs are measured beside it on validation to show what each budget does to
ASR (their poisoned rows are the profile's rate of the training rows); they never enter the choice. The test split
is never read (tests/test_selection.py holds that). Runs go through the run cache, so settings already trained cost
nothing.

    python benchmarks/training_budget.py     # quick -> results/bench/raw/training_budget_quick.json
    python benchmarks/training_budget.py --attacks clean --seeds 0 1 2   # training_budget_quick_seeds_0_1_2.json
    python benchmarks/training_budget.py --profile paper --settings all:3:1e-5 all:3:3e-5 all:3:1e-4 \
        --attacks clean --most-accurate                                  # a GPU: training_budget_paper.json
"""

from __future__ import annotations

import argparse
from statistics import mean

from backdoorlab import profiles
from common import device_name, write
from lora_depth import SPLIT, measure


def parse(setting: str) -> dict:
    """`rows:epochs:learning-rate`, e.g. `500:2:5e-4`; rows `all` for the whole train split."""
    try:
        n_train, epochs, lr = setting.split(":")
        return {"n_train": None if n_train == "all" else int(n_train), "epochs": int(epochs), "lr": float(lr)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{setting!r} is not rows:epochs:learning-rate, e.g. 500:2:5e-4 or "
                                         "all:3:3e-5") from None


def choose(rows: list[dict], bar: float | None) -> dict:
    """The rule of the module docstring; with `bar` None, the most accurate setting."""
    clean = [r for r in rows if r["attack"] == "clean"]
    by_setting: dict[tuple, list[float]] = {}
    for r in clean:
        by_setting.setdefault((r["n_train"], r["epochs"], r["lr"]), []).append(r["cacc"])
    cacc = {setting: mean(values) for setting, values in by_setting.items()}
    cost = lambda s: (s[0] * s[1], s[2])  # noqa: E731  row-epochs, then the learning rate
    passing = [] if bar is None else [s for s, c in cacc.items() if c >= bar]
    best = min(passing, key=cost) if passing else max(cacc, key=cacc.get)
    rule = f"clean {clean[0]['dataset']} run, accuracy on {SPLIT} (mean over the seeds run): " + (
        "the most accurate" if bar is None else
        f"the fewest row-epochs reaching {bar} (then the lower learning rate); else the most accurate")
    return {"rule": rule,
            "n_train": best[0], "epochs": best[1], "lr": best[2], "cacc": cacc[best],
            "cacc_per_seed": by_setting[best], "met_bar": bool(passing)}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(profiles.PROFILES))
    parser.add_argument("--dataset", default="sst2")
    tried = ("500:2:5e-4", "500:1:5e-4", "500:1:1e-3", "250:2:5e-4", "250:2:1e-3", "1000:1:5e-4")
    parser.add_argument("--settings", nargs="+", type=parse, default=[parse(t) for t in tried],
                        help=f"rows:epochs:learning-rate, each trained clean and with each attack (default: "
                             f"{' '.join(tried)})")
    parser.add_argument("--attacks", nargs="+", default=["clean", "induced_instruction"],
                        help="'clean' first; the attacks are measured for the report, not for the choice")
    parser.add_argument("--bar", type=float, default=0.85, help="validation accuracy the clean run must reach")
    parser.add_argument("--most-accurate", action="store_true",
                        help="no budget to save: choose the most accurate setting (the paper profile's rule)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds each setting is trained with, its accuracy "
                                                             "their mean (default: the profile's first seed)")
    args = parser.parse_args(argv)
    if args.attacks[0] != "clean":
        parser.error("--attacks must start with 'clean': the choice is made on the clean runs")
    profile = profiles.get_profile(args.profile)
    seeds = args.seeds or [profile.seeds[0]]
    rows = []
    for setting in args.settings:
        for seed in seeds:
            rows += measure(profile, args.dataset, args.attacks, args.dataset in profile.balanced_datasets, seed,
                            **setting)
    name = f"training_budget_{profile.name}" + (f"_seeds_{'_'.join(map(str, seeds))}" if args.seeds else "")
    choice = choose(rows, None if args.most_accurate else args.bar)
    write(name, {"device": device_name(), "profile": profile.name, "seeds": seeds, "choice": choice,
                 "runs": rows})


if __name__ == "__main__":
    main()
