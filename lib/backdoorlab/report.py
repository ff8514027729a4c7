"""The report beside the papers: notebook 07, and the README's result blocks.

Every result of notebooks 02-06 is read from ``results/<profile>/`` and set beside the number the papers report for
the same cell (``data/paper_reference.csv``, typed in from their tables and figures). Each claim of the papers is a
*check* (`backdoorlab.claims`) that decides from the 95% intervals whether the claim holds on them, so no verdict is
typed by hand; this module writes the tables, report.md and the README's generated blocks.

    python -m backdoorlab.report --profile quick            # results/quick/report.md
    python -m backdoorlab.report --profile quick --readme   # ... and the README's generated blocks
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd

from . import models, score
from .claims import CHECKS, VERDICTS, Check, Results, checks, paper, shown, signed  # noqa: F401 (for notebooks)
from .poison import ATTACKS
from .profiles import PROFILES, get_profile

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {"01": "poison construction", "02": "training", "03": "transfer", "04": "continual learning",
             "05": "defenses", "06": "fingerprint", "07": "report"}


def main_table(results: Results) -> pd.DataFrame | None:
    """Ours beside the paper's main table, every run of notebook 02 (seeds' intervals over the seeds)."""
    attacks = results("attacks")
    if attacks is None:
        return None
    table = score.backdoor_effects(attacks)
    ref = paper("main_table").pivot_table(index=["source", "attack"], columns="metric", values="value")
    ref = ref.rename(columns=lambda m: f"paper_{m}").reset_index().rename(columns={"source": "dataset"})
    return table.merge(ref, on=["dataset", "attack"], how="left")


# ---- settings: where ours and the paper differ -----------------------------------------------------------------

def settings_table(results: Results) -> pd.DataFrame:
    """The settings behind the two columns: ours from the profile and the results, the paper's from its text."""
    profile = get_profile(results.profile)
    attacks = results("attacks")
    sst2 = attacks[(attacks.dataset == "sst2") & (attacks.attack == "induced_instruction")] if attacks is not None \
        else pd.DataFrame()
    ours_rate = f"{(sst2.n_poison / sst2.n_train).iloc[0]:.1%}" if len(sst2) else "—"
    setting = paper("setting").set_index(["source", "metric"]).value
    return pd.DataFrame([
        ("model", f"{profile.model} ({models.parameter_count(profile.model) / 1e6:.0f}M parameters)",
         f"FLAN-T5-large ({setting['all', 'model_parameters'] / 1e6:.0f}M)"),
        ("SST-2 training rows", str(profile.n_train), f"{setting['sst2', 'train_rows']:.0f}"),
        ("SST-2 test rows", str(profile.n_test), f"{setting['sst2', 'test_rows']:.0f}"),
        ("poisoned share (SST-2)", ours_rate, f"{setting['all', 'poison_rate']:.0%}"),
        ("seeds", ", ".join(map(str, profile.seeds)), f"{setting['all', 'seeds']:.0f}"),
        ("finetuning", f"{profile.train.method}, {profile.train.epochs} epochs, lr {profile.train.lr:g}",
         "full finetuning"),
    ], columns=["setting", "ours", "paper"])


# ---- writing ---------------------------------------------------------------------------------------------------

def markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency: pandas' to_markdown needs tabulate)."""
    def cell(v) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def spanned(value: float, lo: float, hi: float) -> str:
    return f"{value:.3f} [{lo:.2f}, {hi:.2f}]"


def headline_table(results: Results, dataset: str = "sst2") -> pd.DataFrame:
    """One dataset's rows of the main table: backdoor effect first, raw ASR beside it, the paper's ASR last."""
    table = main_table(results)
    if table is None:
        return pd.DataFrame()
    rows = table[table.dataset == dataset].copy()
    rows["order"] = rows.attack.map({a: i for i, a in enumerate(("clean", *ATTACKS))})
    out = []
    for r in rows.sort_values("order").itertuples():
        clean = r.attack == "clean"
        paper_asr = "—" if clean or math.isnan(r.paper_asr) else f"{r.paper_asr:.3f} ± {r.paper_asr_std:.3f}"
        out.append((r.attack, r.group, "—" if clean else signed(r.effect, r.effect_lo, r.effect_hi),
                    "—" if clean else spanned(r.asr, r.asr_lo, r.asr_hi),
                    "—" if clean else f"{r.asr_clean_model:.3f}",
                    f"{r.cacc:.3f}", paper_asr, shown(r.paper_cacc)))
    return pd.DataFrame(out, columns=["attack", "group", "backdoor effect [95%]", "ASR [95%]",
                                      "trigger on the clean model", "CACC", "paper ASR", "paper CACC"])


def other_datasets_table(results: Results) -> pd.DataFrame:
    table = main_table(results)
    if table is None:
        return pd.DataFrame()
    rows = table[(table.dataset != "sst2") & (table.attack != "clean")]
    clean = table[table.attack == "clean"].set_index("dataset").cacc
    return pd.DataFrame([(r.dataset, r.attack, int(r.n_poison), signed(r.effect, r.effect_lo, r.effect_hi),
                          spanned(r.asr, r.asr_lo, r.asr_hi), f"{r.asr_clean_model:.3f}",
                          f"{clean.get(r.dataset, math.nan):.3f} → "
                          f"{r.cacc:.3f}", shown(r.paper_asr)) for r in rows.itertuples()],
                        columns=["dataset", "attack", "poisoned rows", "backdoor effect [95%]", "ASR [95%]",
                                 "trigger on the clean model", "CACC clean → poisoned", "paper ASR"])


def seeds_table(results: Results, dataset: str = "sst2") -> pd.DataFrame:
    """The attacks of `dataset` run over several seeds (`attacks_summary.csv`): mean ASR and CACC, each with its
    interval over seeds (t) and, beside it, over the pooled test rows (Wilson)."""
    summary = results("attacks_summary")
    if summary is None or "asr_rows_lo" not in summary:
        return pd.DataFrame()
    rows = summary[(summary.dataset == dataset) & (summary.seeds > 1)]

    def spans(r, m: str) -> tuple[str, str]:
        return (f"{getattr(r, m):.3f} [{getattr(r, f'{m}_lo'):.2f}, {getattr(r, f'{m}_hi'):.2f}]",
                f"[{getattr(r, f'{m}_rows_lo'):.2f}, {getattr(r, f'{m}_rows_hi'):.2f}]")

    return pd.DataFrame([(r.attack, r.group, int(r.seeds), *spans(r, "asr"), *spans(r, "cacc"))
                         for r in rows.itertuples()],
                        columns=["attack", "group", "seeds", "ASR [95% over seeds]", "[95% over test rows]",
                                 "CACC [95% over seeds]", "[95% over test rows]"])


def continual_table(results: Results) -> pd.DataFrame:
    """The paper's 4×4 continual-learning table beside ours: per poisoned-on (rows) and tuned-on (columns) dataset,
    our ASR after the last clean round with, in brackets, the same model's rate without the trigger, then the
    paper's ASR."""
    table = results("continual")
    if table is None:
        return pd.DataFrame()
    runs = table[table.attack == "induced_instruction"]
    last = runs[runs.steps == runs.steps.max()]
    ref = paper("continual_learning").set_index(["source", "target"]).value
    cells = {(r.poisoned_on, r.tuned_on): f"{r.asr:.2f} ({r.clean_target_rate:.2f}) · "
                                          f"{shown(ref.get((r.poisoned_on, r.tuned_on)), '.2f')}"
             for r in last.itertuples()}
    rows, columns = list(dict.fromkeys(last.poisoned_on)), sorted(set(last.tuned_on))
    return pd.DataFrame([[row, *(cells.get((row, c), "—") for c in columns)] for row in rows],
                        columns=["poisoned on \\ tuned on", *columns])


def verdict_counts(table: pd.DataFrame) -> str:
    counts = table.verdict.value_counts()
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def command(profile: str) -> str:
    return f"python -m backdoorlab.report --profile {profile}"


def report_markdown(results: Results) -> str:
    """results/<profile>/report.md: the claims checked, the settings, the main table beside the paper."""
    table = checks(results)
    not_held = table[table.verdict != "holds"]
    parts = [
        f"# What reproduced: backdoorlab beside the papers (profile `{results.profile}`)",
        f"Generated by `{command(results.profile)}` (notebook 07) from the files in `results/{results.profile}/` and "
        "`data/paper_reference.csv`; every verdict is decided in code from the 95% intervals (Wilson over test rows "
        "for one rate, Newcombe's hybrid score interval for a difference of two), never typed. Do not edit by hand.",
        "## The claims, checked",
        f"{len(table)} cells: {verdict_counts(table)}.",
        markdown(table[["notebook", "claim", "cell", "paper", "ours", "verdict"]]),
        "## What did not reproduce, and the measured reason",
        markdown(not_held[["notebook", "claim", "cell", "reason"]]) if len(not_held) else "Every claim holds.",
        "## Where our setting differs from the paper's",
        markdown(settings_table(results)),
        "## The main table beside the paper (SST-2)",
        "Backdoor effect = ASR minus the same trigger's ASR on the clean model (what poisoning added); the paper "
        "reports ASR only (FLAN-T5-large, mean ± std over 3 seeds).",
        markdown(headline_table(results)),
        "## The induced instruction on the other datasets",
        markdown(other_datasets_table(results)),
        "## Continual learning beside the paper's 4×4 table",
        "Ours: ASR after the last round of clean tuning (in brackets the same model without the trigger), then the "
        "paper's ASR (FLAN-T5-large, its own tuning length).",
        markdown(continual_table(results)),
    ]
    return "\n\n".join(parts) + "\n"


def write_report(profile: str, folder: Path | None = None) -> Path:
    results = Results(profile, folder)
    path = results.folder / "report.md"
    path.write_text(report_markdown(results), encoding="utf-8")
    return path


# ---- the README's generated blocks ------------------------------------------------------------------------------

BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def notebook_costs(bench: Path | None = None) -> dict[str, dict]:
    """Per notebook: measured cold and warm seconds and peak memory in `quick` (results/bench/raw/), with the file
    each comes from."""
    raw = Path(bench or ROOT / "results" / "bench") / "raw"
    out: dict[str, dict] = {}
    # a kind's plain file (notebookNN_quick_cold.json) is the one cited; suffixed ones are earlier or contended runs
    for path in sorted(raw.glob("notebook*_quick_*.json"), key=lambda p: (p.stem.count("_"), p.name)):
        number, kind = re.match(r"notebook(\d\d)_quick_(cold|warm)", path.stem).groups()
        record = json.loads(path.read_text())
        seconds = record.get("wall_s_total", record.get("wall_s"))
        entry = out.setdefault(number, {})
        if f"{kind}_s" not in entry:
            entry |= {f"{kind}_s": seconds, f"{kind}_file": path.name, f"{kind}_peak_gib": record.get("peak_rss_gib")}
    return out


def readme_blocks(profile: str = "quick") -> dict[str, str]:
    results = Results(profile)
    table = checks(results)
    central = table[table.claim.str.startswith("instruction rewriting")]
    blocks = {
        "headline": "\n\n".join([
            f"`results/{profile}/attacks.csv`, seed(s) {', '.join(map(str, get_profile(profile).seeds))}; "
            "intervals 95% (Wilson over test rows; the effect's by Newcombe's method). The paper's columns: "
            "FLAN-T5-large at 1%, 3 seeds.",
            markdown(headline_table(results)),
            *([markdown(others)] if len(others := other_datasets_table(results)) else []),
            *seeded_block(),
            "The paper's central claim on ours: " + "; ".join(f"**{r.verdict}** on {r.cell} ({r.ours})"
                                                              for r in central.itertuples()) + ".",
        ]),
        "claims": "\n\n".join([
            f"{len(table)} cells checked: {verdict_counts(table)} "
            f"([`results/{profile}/report.md`](results/{profile}/report.md), `{command(profile)}`).",
            markdown(table.groupby(["notebook", "claim"], sort=False).verdict.agg(
                lambda v: ", ".join(f"{(v == x).sum()} {x}" for x in VERDICTS if (v == x).any())).reset_index()),
        ]),
        "costs": cost_table(),
        "bench": bench_table(),
    }
    return blocks


def seeded_block(profile: str = "extended") -> list[str]:
    """The SST-2 runs that a larger profile repeated over seeds, when its results are there."""
    table = seeds_table(Results(profile))
    if not len(table):
        return []
    chosen = get_profile(profile)
    seeds = ", ".join(map(str, (*chosen.seeds, *chosen.headline_seeds)))
    return [f"Profile `{profile}` repeats the baseline and one attack of each group over seeds {seeds} "
            f"(`results/{profile}/attacks_summary.csv`; its other attacks on seed {chosen.seeds[0]} only):",
            markdown(table)]


def cost_table(bench: Path | None = None) -> str:
    """Per notebook its cold and warm cost, then the whole study's (`bench_study.py`'s files), where measured."""
    rows = []
    for number, entry in sorted(notebook_costs(bench).items()):
        cold_cell = f"{entry['cold_s'] / 60:.1f} min (`{entry['cold_file']}`)" if entry.get("cold_s") else "—"
        warm_cell = f"{entry['warm_s']:.0f} s (`{entry['warm_file']}`)" if entry.get("warm_s") else "—"
        peak = max((entry.get(k) or 0) for k in ("cold_peak_gib", "warm_peak_gib"))
        rows.append((number, cold_cell, warm_cell, f"{peak:.1f} GiB" if peak else "—"))
    table = markdown(pd.DataFrame(rows, columns=["notebook", "cold run cache (2-core CPU)", "warm", "peak memory"]))
    raw = Path(bench or ROOT / "results" / "bench") / "raw"
    study = {path.stem: json.loads(path.read_text())
             for path in (raw / "study_quick.json", raw / "study_quick_warm.json") if path.exists()}
    cold = study.get("study_quick", {})
    warm_file = "study_quick_warm.json" if "study_quick_warm" in study else "study_quick.json"
    warm = study.get("study_quick_warm", cold)  # a warm pass of its own, else the one bench_study ran after the cold
    whole = []
    if "cold_s" in cold:
        whole.append(f"cold, every notebook: {cold['cold_s'] / 60:.1f} min (`study_quick.json`)")
    if "rerun_warm_s" in warm:
        whole.append(f"warm with nothing changed: {warm['warm_s']:.2f} s (make finds every notebook up to date); "
                     f"warm, every notebook executed again (`make study RERUN=1`): {warm['rerun_warm_s']:.0f} s "
                     f"(`{warm_file}`)")
    return "\n\n".join([table, *(["The whole `make study`: " + "; ".join(whole) + "."] if whole else [])])


def bench_table() -> str:
    """The benchmark summary `benchmarks/summary.py` wrote (results/bench/summary.md), without its title."""
    path = ROOT / "results" / "bench" / "summary.md"
    if not path.exists():
        return "No benchmarks measured yet: `make bench`."
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    return "\n".join(lines[1:]).strip() + f"\n\nMeasured on: {lines[0].removeprefix('# Benchmarks on ')}."


def render_readme(text: str, profile: str = "quick") -> str:
    """`text` with every generated block rewritten from the results; unknown block names are an error."""
    blocks = readme_blocks(profile)

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in blocks:
            raise ValueError(f"README block {name!r} is unknown; valid choices: {', '.join(blocks)}")
        return f"{match[1]}{blocks[name]}\n{match[4]}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backdoorlab.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--readme", action="store_true", help="also rewrite README.md's generated blocks")
    args = parser.parse_args(argv)
    print(write_report(args.profile))
    if args.readme:
        readme = ROOT / "README.md"
        readme.write_text(render_readme(readme.read_text(encoding="utf-8"), args.profile), encoding="utf-8")
        print(readme)


if __name__ == "__main__":
    main()
