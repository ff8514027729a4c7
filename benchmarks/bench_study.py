"""Wall time and peak memory of the whole study (`make study`, quick profile) with a cold and a warm run cache.

The study writes into a fresh folder ($BACKDOORLAB_OUT), so the cold pass trains every run and the committed
results are left alone; the warm pass re-executes every notebook over the cache it just filled. Peak memory is the
largest resident set of any process the study started (the notebook kernels).

    python benchmarks/bench_study.py [--profile quick]
    python benchmarks/bench_study.py --out . --warm-only    # one pass over the project's own run cache
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from common import device_name, write

ROOT = Path(__file__).resolve().parents[1]


def study(profile: str, out: str) -> float:
    start = time.perf_counter()
    subprocess.run(["make", "study", f"PROFILE={profile}"], cwd=ROOT, check=True,
                   env={**os.environ, "BACKDOORLAB_OUT": out})
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", help="where the study writes (default: a fresh temporary folder, so the first "
                                      "pass is cold); the project folder gives a cold pass only after new run keys")
    parser.add_argument("--warm-only", action="store_true", help="one pass over the cache already in --out")
    args = parser.parse_args()
    if args.warm_only and not args.out:
        parser.error("--warm-only reads an existing run cache: give it with --out")
    with tempfile.TemporaryDirectory(prefix="backdoorlab-bench-") as tmp:
        cold = None if args.warm_only else study(args.profile, args.out or tmp)
        warm = study(args.profile, args.out or tmp)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
    result = {"device": device_name(), "profile": args.profile, "warm_s": warm, "peak_rss_gib": peak_kib / 2**20}
    write(f"study_{args.profile}" + ("_warm" if args.warm_only else ""), result | ({} if cold is None else
                                                                              {"cold_s": cold}))


if __name__ == "__main__":
    main()
