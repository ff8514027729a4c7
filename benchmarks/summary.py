"""Collect the raw benchmark files of one machine into summary.json and a markdown table (results/bench/).

    python benchmarks/summary.py                       # results/bench/raw -> results/bench/summary.{json,md}
    python benchmarks/summary.py --raw results/bench/h100/raw --name summary-h100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backdoorlab.models import SMOLLM2
from common import bench_dir

TARGETS = {  # the issues' targets on the 2-core machine, for the table's last column
    "train_speedup_vs_trainer_lora": ">= 1.5", "train_speedup_vs_trainer_full": ">= 1.5",
    "train_speedup_vs_previous": ">= 1.5", "score_speedup_vs_generate": ">= 2 (cold pass)",
    "score_agreement": ">= 0.99", "quick_cold_s": "<= 2700", "quick_warm_s": "<= 30 (make study, nothing changed)",
    "quick_rerun_warm_s": "(make study RERUN=1: every notebook executed again)", "peak_rss_gib": "<= 4",
    "train_mfu": "(GPU: >= 0.40)", "paper_train_speedup_vs_trainer_smollm2_gpu": ">= 5 (issue 27)",
    "train_speedup_vs_before_gpu_path": ">= 1 (no slower)", "score_speedup_vs_before_gpu_path": ">= 1 (no slower)",
}


def ratio(result: dict, ours: str, baseline: str) -> float | None:
    return result[ours] / result[baseline] if ours in result and baseline in result else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=bench_dir() / "raw")
    parser.add_argument("--name", default="summary")
    args = parser.parse_args()
    raw = {p.stem: json.loads(p.read_text()) for p in sorted(args.raw.glob("*.json"))}
    lora, full = raw.get(f"train_lora_{SMOLLM2}", {}), raw.get(f"train_full_{SMOLLM2}", {})
    scoring, study, packing = raw.get("score", {}), raw.get("study_quick", {}), raw.get("packing", {})
    memory, gpu_path = raw.get("memory_user_round", {}), raw.get("packing_vs_gpu_path", {})
    larger = [k for k, v in raw.items() if k.startswith("train_") and v.get("model") != SMOLLM2]
    paper_runs = [k for k, v in raw.items() if k.startswith("gpu_") and "run_speedup_vs_before" in v]  # bench_gpu
    sources = [k for k in [f"train_lora_{SMOLLM2}", f"train_full_{SMOLLM2}", "score", "packing", "packing_vs_gpu_path",
                           "memory_user_round",
                           "fingerprint_verify_lora", "study_quick", "study_quick_warm", *larger, *paper_runs]
               if k in raw]
    summary = {
        # the machines of the files read here (each names its own); the other raw files are studies, not speed
        "device": "; ".join(sorted({raw[k]["device"] for k in sources if raw[k].get("device")})),
        "train_speedup_vs_trainer_lora": lora.get("speedup_vs_trainer"),
        "train_speedup_vs_trainer_lora_later_runs": lora.get("speedup_vs_trainer_warm"),
        "train_speedup_vs_trainer_lora_no_reuse": ratio(lora, "ours_no_reuse_tokens_per_s", "trainer_tokens_per_s"),
        "train_speedup_vs_trainer_full": full.get("speedup_vs_trainer"),
        "train_mfu": lora.get("mfu"),
        "train_mfu_full": full.get("mfu"),
        "score_speedup_vs_generate": scoring.get("speedup_vs_generate"),
        "score_speedup_vs_generate_later_runs": scoring.get("speedup_vs_generate_warm"),
        "score_speedup_vs_generate_no_reuse": ratio(scoring, "ours_no_reuse_rows_per_s", "generate_rows_per_s"),
        "score_agreement": scoring.get("agreement"),
        "train_speedup_vs_previous": packing.get("train_cold_speedup"),  # a dataset's first run: states cold
        "train_speedup_vs_previous_later_runs": packing.get("train_warm_speedup"),
        "score_speedup_vs_previous": packing.get("score_cold_speedup"),
        # quick's training and scoring against the code before the GPU path (issue 27: the CPU may not get slower)
        "train_speedup_vs_before_gpu_path": gpu_path.get("train_cold_speedup"),
        "train_speedup_vs_before_gpu_path_later_runs": gpu_path.get("train_warm_speedup"),
        "score_speedup_vs_before_gpu_path": gpu_path.get("score_cold_speedup"),
        "user_round_peak_rss_gib": memory.get("ours_full_peak_rss_gib"),  # full finetuning on Alpaca rows
        "user_round_peak_rss_gib_previous": memory.get("baseline_full_peak_rss_gib"),
        "fingerprint_verify_speedup_early_stop": raw.get("fingerprint_verify_lora", {}).get("guessed_speedup"),
        "quick_cold_s": study.get("cold_s"),
        "quick_warm_s": raw.get("study_quick_warm", study).get("warm_s"),  # a warm pass of its own, if measured
        "quick_rerun_warm_s": raw.get("study_quick_warm", study).get("rerun_warm_s"),
        "peak_rss_gib": study.get("peak_rss_gib"),
        **{f"notebook{k}_cold_s": v["cold_s"] for k, v in study.get("notebooks", {}).items()},
        "sources": sorted(sources),
    }
    for v in (raw[k] for k in paper_runs):  # the paper profile's run, ours vs the code before the GPU path
        where = f"{v['model'].split('-')[0]}_{'cpu' if 'threads' in v['device'] else 'gpu'}"
        summary[f"paper_run_speedup_vs_before_{where}"] = v["run_speedup_vs_before"]
        summary[f"paper_run_host_share_{where}"] = v["ours"]["host_share"]
        summary[f"paper_run_host_share_before_{where}"] = v["before"]["host_share"]
        summary[f"paper_train_speedup_vs_trainer_{where}"] = v.get("train_speedup_vs_trainer")
        summary[f"paper_train_mfu_{where}"] = v["mfu"]
    for v in (raw[k] for k in larger):  # larger models' MFU (random-initialised, GPU only)
        summary[f"train_mfu_{v['model']}_{v['method']}"] = v["mfu"]
        summary[f"train_speedup_vs_trainer_{v['model']}_{v['method']}"] = v["speedup_vs_trainer"]
    out = args.raw.parent
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [f"# Benchmarks on {summary['device']}", "", "| measure | value | target |", "|---|---|---|"]
    for key, value in summary.items():
        if key not in ("device", "sources"):
            shown = "not measured" if value is None else f"{value:.3g}" if isinstance(value, float) else value
            lines.append(f"| {key} | {shown} | {TARGETS.get(key, '')} |")
    lines += ["", f"From {', '.join(f'raw/{s}.json' for s in summary['sources'])}; commands in benchmarks/*.py."]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
