"""Wall time and peak memory of one notebook executed by papermill, over the run cache as it is (cold when its
stages are missing, warm when they are saved). The study's cost per notebook; `bench_study.py` times them all.

    python benchmarks/bench_notebook.py 03 --profile quick --cache warm
    python benchmarks/bench_notebook.py 04 --cache cold --note "shared the cores with notebook 03"
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import device_name, write

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebook", help="its number, e.g. 03")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", choices=("cold", "warm"), required=True,
                        help="what the run cache held for this notebook's own stages (recorded, not checked)")
    parser.add_argument("--note", default="", help="e.g. what else shared the cores")
    args = parser.parse_args()
    matches = sorted((ROOT / "notebooks").glob(f"{args.notebook}_*.ipynb"))
    if len(matches) != 1:
        parser.error(f"no single notebook numbered {args.notebook!r}: {[m.name for m in matches]}")
    out = ROOT / "results" / args.profile / "notebooks" / matches[0].name
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "papermill", "--log-level", "WARNING", str(matches[0]), str(out),
               "-p", "profile", args.profile]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child (the kernel)
    write(f"notebook{args.notebook}_{args.profile}_{args.cache}",
          {"device": device_name(), "notebook": matches[0].stem, "profile": args.profile, "cache": args.cache,
           "wall_s": wall, "peak_rss_gib": peak_kib / 2**20, "note": args.note,
           "command": f"python benchmarks/bench_notebook.py {args.notebook} --profile {args.profile} "
                      f"--cache {args.cache}"})


if __name__ == "__main__":
    main()
