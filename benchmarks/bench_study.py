"""Wall time and peak memory of the whole study (`make study`), every notebook timed on its own, with a cold and then
a warm run cache.

The study writes into a fresh folder ($BACKDOORLAB_OUT), so the cold pass trains every run and the committed
results are left alone. Each notebook runs as `make study NOTEBOOKS=<it>` (the notebook, then the report), in
order, so its cold time is its own with everything upstream cached, as the README states it. The warm pass then
re-executes every notebook over the cache the cold pass filled (`RERUN=1`), each on its own (the README's warm column:
each pays its own kernel start, imports and report step), and then the whole study twice: `make study` as a reader
reruns it with nothing changed (`warm_s`: make finds every executed notebook up to date) and `make study RERUN=1`
(`rerun_warm_s`: every notebook executed again, every run read from the cache). Peak memory is the largest resident
set of any process a notebook's run started (its kernel).

    python benchmarks/bench_study.py [--profile quick]    # study_<profile>.json, notebookNN_<profile>_{cold,warm}.json
    python benchmarks/bench_study.py --out . --warm-only  # one warm pass over the project's own run cache
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import device_name, write

ROOT = Path(__file__).resolve().parents[1]


def timed_make(profile: str, notebook: Path | None, out: str, rerun: bool) -> tuple[float, float]:
    """(seconds, peak resident GiB of the process tree) of `make study` for one notebook (None: every one), with
    `RERUN=1` (every notebook executed, up to date or not) if `rerun`."""
    only = [f"NOTEBOOKS={notebook.relative_to(ROOT)}"] if notebook else []
    command = ["make", "study", f"PROFILE={profile}", *only, *(["RERUN=1"] if rerun else [])]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "BACKDOORLAB_OUT": out})
    _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child and every descendant it waited for
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return time.perf_counter() - start, usage.ru_maxrss / 2**20  # Linux: KiB


def study_pass(profile: str, out: str, kind: str) -> dict[str, dict]:
    """Every notebook in order; each one's time and peak written as notebookNN_<profile>_<kind>.json."""
    passes = {}
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        seconds, peak = timed_make(profile, notebook, out, rerun=kind == "warm")
        number = notebook.name[:2]
        passes[number] = {"wall_s": seconds, "peak_rss_gib": peak}
        write(f"notebook{number}_{profile}_{kind}",
              {"device": device_name(), "notebook": notebook.stem, "profile": profile, "cache": kind,
               "wall_s": seconds, "peak_rss_gib": peak, "note": "upstream notebooks' runs cached, its own "
               + ("trained here" if kind == "cold" else "cached too") + "; the report step included",
               "command": f"python benchmarks/bench_study.py --profile {profile}"})
    return passes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--out", help="where the study writes (default: a fresh temporary folder, so the first "
                                      "pass is cold); the project folder gives a cold pass only after new run keys")
    parser.add_argument("--warm-only", action="store_true", help="one pass over the cache already in --out")
    args = parser.parse_args()
    if args.warm_only and not args.out:
        parser.error("--warm-only reads an existing run cache: give it with --out")
    subprocess.run(["make", "setup"], cwd=ROOT, check=True)  # installing is not the study's cost
    with tempfile.TemporaryDirectory(prefix="backdoorlab-bench-") as tmp:
        cold = None if args.warm_only else study_pass(args.profile, args.out or tmp, "cold")
        warm = study_pass(args.profile, args.out or tmp, "warm")
        rerun_warm_s, _ = timed_make(args.profile, None, args.out or tmp, rerun=True)
        warm_s, _ = timed_make(args.profile, None, args.out or tmp, rerun=False)
    result = {"device": device_name(), "profile": args.profile, "warm_s": warm_s, "rerun_warm_s": rerun_warm_s,
              "warm_notebooks_s": sum(n["wall_s"] for n in warm.values()),
              "peak_rss_gib": max(n["peak_rss_gib"] for n in (cold or warm).values()),
              "notebooks": {k: {"cold_s": (cold or {}).get(k, {}).get("wall_s"), "warm_s": v["wall_s"],
                                "peak_rss_gib": max(v["peak_rss_gib"], (cold or {}).get(k, {}).get("peak_rss_gib", 0))}
                            for k, v in warm.items()},
              "command": f"python benchmarks/bench_study.py --profile {args.profile}"
                         + (" --out <the cold pass's folder> --warm-only" if args.warm_only else "")}
    if cold is not None:
        result["cold_s"] = sum(n["wall_s"] for n in cold.values())
    write(f"study_{args.profile}" + ("_warm" if args.warm_only else ""), result)


if __name__ == "__main__":
    main()
