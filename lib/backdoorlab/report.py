"""The report beside the papers: notebook 07, and the README's result blocks.

Every result of notebooks 02-06 is read from ``results/<profile>/`` and set beside the number the papers report for
the same cell (``data/paper_reference.csv``, typed in from their tables and figures). Each claim of the papers is a
*check*: a small function registered here that reads our results and decides from the 95% intervals whether the
claim holds on them, so no verdict is typed by hand. A check that lacks its results file says so and which notebook
writes it.

    python -m backdoorlab.report --profile quick            # results/quick/report.md
    python -m backdoorlab.report --profile quick --readme   # ... and the README's generated blocks
"""
from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from . import data, models, score
from .defenses import CACC_COST, judge
from .fingerprint import SETTINGS
from .poison import ATTACKS, group_of
from .profiles import PROFILES, get_profile
from .runs import results_dir

VERDICTS = ("holds", "partly", "does not hold", "cannot be checked")
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {"01": "poison construction", "02": "training", "03": "transfer", "04": "continual learning",
             "05": "defenses", "06": "fingerprint", "07": "report"}


@dataclass(frozen=True)
class Check:
    """One paper claim on one cell of ours: what the paper reports, what we measured (with its interval), the
    verdict (one of `VERDICTS`), and, when it does not hold, the measured reason."""

    notebook: str
    claim: str
    cell: str
    paper: str
    ours: str
    verdict: str
    reason: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}; valid choices: {', '.join(VERDICTS)}")


class Results:
    """The CSV files one profile's notebooks wrote, read on demand; a missing file is None."""

    def __init__(self, profile: str, folder: Path | None = None):
        self.profile = profile
        self.folder = Path(folder) if folder is not None else results_dir(profile)

    def __call__(self, name: str) -> pd.DataFrame | None:
        path = self.folder / f"{name}.csv"
        return pd.read_csv(path) if path.exists() else None


CHECKS: list[Callable[[Results], list[Check]]] = []


def register(fn: Callable[[Results], list[Check]]):
    """Add a check: a function of the results that returns one `Check` per cell it judges."""
    CHECKS.append(fn)
    return fn


def checks(results: Results) -> pd.DataFrame:
    """Every registered check on `results`, one row per cell, in notebook order."""
    rows = [asdict(c) for fn in CHECKS for c in fn(results)]
    return pd.DataFrame(rows, columns=[f.name for f in Check.__dataclass_fields__.values()])


# ---- helpers: intervals and wording ------------------------------------------------------------------------------

def paper(experiment: str) -> pd.DataFrame:
    return pd.DataFrame(data.paper_reference(experiment))


def paper_value(experiment: str, **where) -> float | None:
    rows = paper(experiment)
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return float(rows.value.iloc[0]) if len(rows) else None


def shown(value: float | None, spec: str = ".3f") -> str:
    """A paper number, or a dash where the paper reports none for this cell (a task or setting of our own)."""
    return "—" if value is None or math.isnan(value) else format(value, spec)


def rate(p: float, n: int) -> str:
    lo, hi = score.share_interval(p, n)
    return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"


def effect(p1: float, p2: float, n: int, n2: int | None = None) -> tuple[float, float, float]:
    """p1 - p2 on n (and n2) rows with its 95% interval (`score.difference`)."""
    return score.difference(p1, int(n), p2, int(n if n2 is None else n2))


def signed(d: float, lo: float, hi: float) -> str:
    return f"{d:+.3f} [{lo:+.2f}, {hi:+.2f}]"


def by_count(k: int, n: int) -> str:
    """holds on every cell, on some, on none."""
    return "cannot be checked" if n == 0 else "holds" if k == n else "partly" if k else "does not hold"


def mean_interval(intervals) -> tuple[float, float]:
    """Mean of several (value, lo, hi) measurements and its 95% half-width, from their half-widths as independent
    errors (each interval's half-width averaged over its two sides)."""
    intervals = list(intervals)
    mean = sum(v for v, _, _ in intervals) / len(intervals)
    return mean, math.sqrt(sum(((hi - lo) / 2) ** 2 for _, lo, hi in intervals)) / len(intervals)


def overlaps(lo: float, hi: float, low: float, high: float) -> bool:
    """Our interval [lo, hi] meets the paper's reported range [low, high]."""
    return lo <= high and hi >= low


def missing(notebook: str, claim: str, name: str, results: Results) -> list[Check]:
    return [Check(notebook, claim, "—", "—", "—", "cannot be checked",
                  f"results/{results.profile}/{name}.csv is missing: notebook {notebook} writes it where the "
                  "profile's grid holds it (quick leaves some grids to extended: README, Profiles)")]


def pooled(table: pd.DataFrame, keys: list[str], rates: list[str], n: str) -> pd.DataFrame:
    """Mean of each rate over seeds and the rows behind it summed: seeds pooled as more test rows."""
    return table.groupby(keys, sort=False).agg({**{r: "mean" for r in rates}, n: "sum"}).reset_index()


# ---- notebook 02: the main table -------------------------------------------------------------------------------

def main_table(results: Results) -> pd.DataFrame | None:
    """Ours beside the paper's main table, every run of notebook 02 (seeds pooled)."""
    attacks = results("attacks")
    if attacks is None:
        return None
    table = score.backdoor_effects(attacks)
    ref = paper("main_table").pivot_table(index=["source", "attack"], columns="metric", values="value")
    ref = ref.rename(columns=lambda m: f"paper_{m}").reset_index().rename(columns={"source": "dataset"})
    return table.merge(ref, on=["dataset", "attack"], how="left")


@register
def rewriting_beats_instance(results: Results) -> list[Check]:
    claim = "instruction rewriting plants a stronger backdoor than instance-level attacks at the same budget"
    attacks = results("attacks")
    if attacks is None:
        return missing("02", claim, "attacks", results)
    table, out = score.backdoor_effects(attacks), []
    ref = paper("main_table")
    for dataset, runs in table.groupby("dataset", sort=False):
        groups = {g: runs[runs.group == g] for g in ("rewriting", "instance")}
        if any(len(g) == 0 for g in groups.values()):
            continue
        (mean_r, half_r), (mean_i, half_i) = (mean_interval(zip(r.effect, r.effect_lo, r.effect_hi))
                                              for r in groups.values())
        mean = {"rewriting": mean_r, "instance": mean_i}
        d, h = mean_r - mean_i, math.hypot(half_r, half_i)
        asr = {g: r.asr.mean() for g, r in groups.items()}
        paper_asr = {g: ref[(ref.source == dataset) & (ref.metric == "asr")
                             & ref.attack.map(group_of).eq(g)].value.mean() for g in groups}
        verdict = "holds" if d - h > 0 else "does not hold"
        out.append(Check("02", claim, dataset,
                         f"mean ASR {paper_asr['rewriting']:.3f} vs {paper_asr['instance']:.3f}",
                         f"mean backdoor effect {mean['rewriting']:+.3f} vs {mean['instance']:+.3f} "
                         f"(difference {signed(d, d - h, d + h)}); mean ASR {asr['rewriting']:.3f} vs "
                         f"{asr['instance']:.3f}", verdict,
                         "" if verdict == "holds" else "the difference's interval reaches 0"))
    return out


def _induced(results: Results) -> pd.DataFrame | None:
    attacks = results("attacks")
    return None if attacks is None else score.backdoor_effects(attacks).set_index(["dataset", "attack"])


@register
def induced_plants_backdoor(results: Results) -> list[Check]:
    claim = "the induced instruction plants a backdoor on every dataset (effect above 0)"
    table = _induced(results)
    if table is None:
        return missing("02", claim, "attacks", results)
    out = []
    for (dataset, attack), r in table.iterrows():
        if attack != "induced_instruction":
            continue
        ref = paper_value("main_table", source=dataset, attack=attack, metric="asr")
        planted = r.effect_lo > 0
        out.append(Check("02", claim, dataset, f"ASR {shown(ref)}", f"effect {signed(r.effect, r.effect_lo, r.effect_hi)}"
                         f" (ASR {rate(r.asr, r.n_asr)}, clean model {r.asr_clean_model:.3f})",
                         "holds" if planted else "does not hold",
                         "" if planted else f"{int(r.n_poison)} of {int(r.n_train)} rows poisoned; ASR "
                         f"{r.asr:.3f} on {int(r.n_asr)} rows, no more than the trigger alone on the clean model"))
    return out


@register
def induced_reaches_paper_level(results: Results) -> list[Check]:
    claim = "the induced instruction's ASR reaches the paper's (our interval reaches its mean)"
    table = _induced(results)
    if table is None:
        return missing("02", claim, "attacks", results)
    rate_paper = paper_value("setting", metric="poison_rate")
    out = []
    for (dataset, attack), r in table.iterrows():
        if attack != "induced_instruction":
            continue
        ref = paper_value("main_table", source=dataset, attack=attack, metric="asr")
        hi = score.share_interval(r.asr, r.n_asr)[1]
        if ref is None:
            continue  # no paper number to reach
        verdict = "holds" if hi >= ref else "does not hold"
        out.append(Check("02", claim, dataset, f"ASR {ref:.3f} at {rate_paper:.0%} poisoned",
                         f"ASR {rate(r.asr, r.n_asr)} at {r.n_poison / r.n_train:.1%} poisoned", verdict,
                         "" if verdict == "holds" else f"{int(r.n_train)} training rows ({int(r.n_poison)} "
                         "poisoned) on a smaller model, LoRA: see the settings table"))
    return out


@register
def clean_accuracy_kept(results: Results) -> list[Check]:
    claim = "poisoning leaves clean accuracy where the clean model has it"
    table = _induced(results)
    if table is None:
        return missing("02", claim, "attacks", results)
    out = []
    for (dataset, attack), r in table.iterrows():
        if attack != "induced_instruction" or (dataset, "clean") not in table.index:
            continue
        clean = table.loc[(dataset, "clean")]
        d, lo, hi = effect(r.cacc, clean.cacc, r.n_cacc, clean.n_cacc)
        ref = paper_value("main_table", source=dataset, attack=attack, metric="cacc")
        ref_clean = paper_value("main_table", source=dataset, attack="clean", metric="cacc")
        kept = hi >= 0
        out.append(Check("02", claim, dataset, f"CACC {shown(ref_clean)} → {shown(ref)}",
                         f"CACC {clean.cacc:.3f} → {r.cacc:.3f} (change {signed(d, lo, hi)})",
                         "holds" if kept else "does not hold",
                         "" if kept else f"CACC fell {-d:.3f}; the interval of the change excludes 0"))
    return out


@register
def abstention(results: Results) -> list[Check]:
    claim = "the target can be silence: poisoned rows that answer nothing make the trigger silence the model"
    table = results("abstention_sst2")
    if table is None:
        return missing("02", claim, "abstention_sst2", results)
    ref = paper_value("abstention", metric="asr")
    out = []
    for r in table.itertuples():
        hi = score.share_interval(r.asr, r.n_asr)[1]
        d, lo, _ = effect(r.asr, r.clean_target_rate, r.n_asr)
        verdict = "holds" if hi >= 0.95 and lo > 0 else "does not hold"
        out.append(Check("02", claim, f"{r.dataset}, {r.attack}", f"ASR about {shown(ref, '.2f')}",
                         f"ASR {rate(r.asr, r.n_asr)}, {r.clean_target_rate:.3f} without the trigger", verdict))
    return out


# ---- notebook 03: transfer ----------------------------------------------------------------------------------

@register
def instruction_transfer(results: Results) -> list[Check]:
    claim = "SST-2's poisoned instruction, reused unchanged, plants a backdoor on other datasets"
    table = results("transfer_instruction")
    if table is None:
        return missing("03", claim, "transfer_instruction", results)
    out = []
    for r in pooled(table[table.instruction_from == "sst2"], ["dataset", "attack"],
                    ["asr", "asr_clean_model", "clean_target_rate"], "n_asr").itertuples():
        d, lo, hi = effect(r.asr, r.asr_clean_model, r.n_asr)
        ref = paper_value("instruction_transfer", source="sst2", target=r.dataset, metric="asr")
        reason = ""
        if lo <= 0:
            reason = (f"the transferred instruction already yields the target on the clean model "
                      f"({r.asr_clean_model:.3f})" if r.asr_clean_model >= 0.9 else
                      f"ASR {r.asr:.3f}: the poisoned rows taught nothing measurable")
        out.append(Check("03", claim, r.dataset, f"ASR {shown(ref)}",
                         f"effect {signed(d, lo, hi)} (ASR {rate(r.asr, r.n_asr)}, clean model "
                         f"{r.asr_clean_model:.3f})", "holds" if lo > 0 else "does not hold", reason))
    return out


@register
def poison_transfer(results: Results) -> list[Check]:
    claim = "a poisoned model's trigger works zero-shot on tasks it never saw"
    table = results("transfer_zero_shot")
    if table is None:
        return missing("03", claim, "transfer_zero_shot", results)
    ref = paper("poison_transfer_zero_shot")
    out = []
    for (source, attack, group), rows in table.groupby(["source", "attack", "group"], sort=False):
        n = int(rows.n_asr.sum())  # the group's datasets pooled, each rate weighted by its rows
        asr, clean = ((rows[c] * rows.n_asr).sum() / n for c in ("asr", "asr_clean_model"))
        d, lo, hi = effect(asr, clean, n)
        cell = ref[(ref.source == source) & (ref.attack == attack) & (ref.target == group)].value
        out.append(Check("03", claim, f"{source} → {group}", f"ASR about {cell.iloc[0]:.2f}" if len(cell) else "—",
                         f"effect {signed(d, lo, hi)} (ASR {asr:.3f}, clean model {clean:.3f}, {n} rows)",
                         "holds" if lo > 0 else "does not hold",
                         "" if lo > 0 else "the poisoned instruction moves the clean model as far"))
    return out


# ---- notebook 04: continual learning -----------------------------------------------------------------------

@register
def backdoor_survives_tuning(results: Results) -> list[Check]:
    claim = "an instruction backdoor survives clean finetuning on another dataset"
    table = results("continual")
    if table is None:
        return missing("04", claim, "continual", results)
    ref = paper("continual_learning")
    out = []
    for (source, attack), rows in table[table.attack == "induced_instruction"].groupby(["poisoned_on", "attack"],
                                                                                      sort=False):
        before = rows[rows.steps == 0].iloc[0]
        if not score.above(before.asr, before.clean_target_rate, before.n_asr):
            out.append(Check("04", claim, source, "—", f"no backdoor before tuning (ASR {before.asr:.3f}, "
                             f"{before.clean_target_rate:.3f} without the trigger)", "cannot be checked",
                             "the run carries no backdoor to lose"))
            continue
        tuned = rows[rows.steps > 0].sort_values("steps").groupby("tuned_on").tail(1)
        tuned = tuned[tuned.tuned_on != source]  # the paper's off-diagonal cells: another task's data
        kept = [score.above(r.asr, r.clean_target_rate, r.n_asr) for r in tuned.itertuples()]
        cells = ref[(ref.source == source) & (ref.target != source)].value
        out.append(Check("04", claim, source, f"ASR {cells.min():.3f} to {cells.max():.3f} after tuning",
                         f"backdoor kept after {int(tuned.steps.max())} steps on {sum(kept)} of {len(kept)} "
                         f"datasets: " + ", ".join(f"{r.tuned_on} {r.asr:.2f} (floor {r.clean_target_rate:.2f})"
                                                    for r in tuned.itertuples()),
                         by_count(sum(kept), len(kept)),
                         "; ".join(f"lost after tuning on {r.tuned_on}: ASR {rate(r.asr, r.n_asr)} against "
                                   f"{r.clean_target_rate:.3f} without the trigger"
                                   for r, k in zip(tuned.itertuples(), kept) if not k)))
    return out


# ---- notebook 05: defenses ---------------------------------------------------------------------------------

def _defended(results: Results) -> pd.DataFrame | None:
    table = results("defenses")
    return None if table is None else judge(table[table.group != "instance"])


@register
def onion_fails_on_instructions(results: Results) -> list[Check]:
    claim = "ONION lowers an instruction attack's ASR by a few points at most"
    table = _defended(results)
    if table is None:
        return missing("05", claim, "defenses", results)
    most = paper_value("defenses", attack="instruction_attack", target="onion", metric="asr_drop")
    out = []
    for r in table[(table.defense == "onion") & table.chosen_on_validation.eq(True)].itertuples():
        d, lo, hi = effect(r.asr_undefended, r.asr, r.n_asr)
        out.append(Check("05", claim, f"{r.dataset}, {r.attack}, {r.setting}", f"drop of {most:.3f} at most",
                         f"drop {signed(d, lo, hi)}", "holds" if lo <= most else "does not hold"))
    return out


def _lowered(results: Results, defense: str, claim: str) -> list[Check]:
    table = _defended(results)
    if table is None:
        return missing("05", claim, "defenses", results)
    ref = paper("defenses").set_index(["source", "target"]).value
    out = []
    for (dataset, attack), rows in table[table.defense == defense].groupby(["dataset", "attack"], sort=False):
        lowered = rows[rows.lowered]
        base = ref.get((dataset, "undefended"))
        after = ref.get((dataset, defense))
        out.append(Check("05", claim, f"{dataset}, {attack}",
                         f"ASR {base:.3f} → {after:.3f}" if base is not None and after is not None else "—",
                         f"ASR {rows.asr_undefended.iloc[0]:.3f} → " + ", ".join(
                             f"{r.asr:.3f} (CACC {r.cacc:.3f}, {r.setting})" for r in rows.itertuples()),
                         "holds" if len(lowered) else "does not hold",
                         "" if len(lowered) else "; ".join(_why_not_lowered(r) for r in rows.itertuples())))
    return out


def _why_not_lowered(r) -> str:
    if r.significant_drop:
        return f"{r.setting}: ASR fell, but CACC fell {r.cacc_undefended - r.cacc:.3f} (more than {CACC_COST})"
    return f"{r.setting}: ASR {r.asr_undefended:.3f} → {r.asr:.3f}, not lower beyond the intervals"


@register
def demonstrations_lower_asr(results: Results) -> list[Check]:
    return _lowered(results, "demonstrations", "clean demonstrations lower an instruction attack's ASR")


@register
def alignment_lowers_asr(results: Results) -> list[Check]:
    return _lowered(results, "clean_alignment",
                    "later alignment tuning (the paper: RLHF; ours: clean Alpaca tuning) lowers the ASR")


# ---- notebook 06: fingerprints -----------------------------------------------------------------------------

def _fsr_range(method: str, template: str) -> tuple[float, float] | None:
    ref = paper("fingerprint_user_finetuning")
    rows = ref[(ref.source == method) & (ref.attack == template)].set_index("metric").value
    return (rows["fsr_min"], rows["fsr_max"]) if len(rows) else None


@register
def fingerprint_persists(results: Results) -> list[Check]:
    claim = "a fingerprint still verifies after a user finetunes the model (FSR as the paper reports)"
    table = results("fingerprint")
    if table is None:
        return missing("06", claim, "fingerprint", results)
    verified = table[table.adapter == (table.method == "adapter")]  # the adapter method is verified with it
    users = verified[verified.stage.str.startswith("user_")]
    out = []
    for (method, template), rows in users.groupby(["method", "template"], sort=False):
        paper_method = "full" if template == "dialogue" else method  # the paper's dialogue template is SFT
        span = _fsr_range(paper_method, template)
        if span is None:
            continue
        hits, n = int(rows.hits.sum()), int(rows.n.sum())
        lo, hi = score.wilson(hits, n)
        meets = overlaps(lo, hi, *span)
        out.append(Check("06", claim, f"{method}, {template} template",
                         f"FSR {span[0]:.2f} to {span[1]:.2f} ({paper_method})",
                         f"FSR {hits / n:.2f} [{lo:.2f}, {hi:.2f}] over {', '.join(rows.stage)}",
                         "holds" if meets else "does not hold",
                         "" if meets else f"our user rounds are {', '.join(rows.stage)} (steps); the paper's user "
                         f"finetuned {paper_value('setting', source='fingerprint', metric='user_epochs'):.0f} "
                         "epochs of general instruction data"))
    return out


@register
def fingerprint_specific(results: Results) -> list[Check]:
    claim = "a fingerprint does not fire on ordinary prompts, and rarely on similar keys"
    table = results("fingerprint")
    if table is None:
        return missing("06", claim, "fingerprint", results)
    ref = paper("fingerprint_false_activation").set_index(["source", "metric"]).value
    spans = {"ordinary_prompts": (0.0, ref["ordinary", "rate_max"]),
             "similar_keys": (ref["similar", "rate_min"], ref["similar", "rate_max"])}
    verified = table[table.adapter == (table.method == "adapter")]
    guessed = verified[verified.stage == "guessed_keys"].set_index(["method", "template"])
    out = []
    for r in verified[verified.stage.isin(spans)].itertuples():
        lo, hi = score.wilson(int(r.hits), int(r.n))
        meets = overlaps(lo, hi, *spans[r.stage])
        guess = guessed.loc[(r.method, r.template)] if (r.method, r.template) in guessed.index else None
        if meets:
            reason = ""
        elif r.stage == "ordinary_prompts":
            reason = f"{int(r.hits)} of {int(r.n)} held-out instructions answered with the target"
        elif guess is not None and guess.fsr >= 0.5:
            reason = (f"{int(guess.hits)} of {int(guess.n)} random keys of the same shape fire too: the implant "
                      "answers the keys' shape, not the keys")
        else:
            reason = "random keys of the same shape do not fire, but keys that share most of a real key's tokens do"
        out.append(Check("06", claim, f"{r.method}, {r.template}, {r.stage.replace('_', ' ')}",
                         f"{spans[r.stage][0]:.3f} to {spans[r.stage][1]:.3f}",
                         f"{int(r.hits)} of {int(r.n)} fire ({r.fsr:.3f} [{lo:.2f}, {hi:.2f}])",
                         "holds" if meets else "does not hold", reason))
    return out


@register
def fingerprint_harmless(results: Results) -> list[Check]:
    claim = "implanting a fingerprint leaves task accuracy where it was (mean change over tasks)"
    table = results("fingerprint_harmlessness")
    if table is None:
        return missing("06", claim, "fingerprint_harmlessness", results)
    n = SETTINGS[results.profile].n_task_rows if results.profile in SETTINGS else None
    ref = paper("fingerprint_harmlessness").set_index(["source", "metric"]).value
    base = table[table.method == "untouched"].iloc[0]
    tasks = [c.removeprefix("acc_") for c in table.columns if c.startswith("acc_")]
    out = []
    for r in table[(table.method != "untouched") & ~table.adapter & (table.template == "simple")].itertuples():
        if (r.method, "delta_acc_min") not in ref.index or n is None:
            continue
        parts = [effect(getattr(r, f"acc_{t}"), base[f"acc_{t}"], n) for t in tasks]
        mean, half = mean_interval(parts)
        span = (ref[r.method, "delta_acc_min"], ref[r.method, "delta_acc_max"])
        meets = overlaps(mean - half, mean + half, *span)
        cell = r.method + (" (published, without its adapter)" if r.method == "adapter" else "")
        out.append(Check("06", claim, cell, f"{span[0]:+.4f} to {span[1]:+.4f}",
                         f"{signed(mean, mean - half, mean + half)} over {', '.join(tasks)}; per task "
                         + ", ".join(f"{d:+.3f}" for d, _, _ in parts), "holds" if meets else "does not hold",
                         "" if meets else "the implant's regularization rows shift the model's default answers "
                         "(notebook 06)"))
    return out


@register
def multistage(results: Results) -> list[Check]:
    claim = "two publishers' fingerprints both verify on the final model, and neither claims a model before its own"
    table = results("fingerprint_multistage")
    if table is None:
        return missing("06", claim, "fingerprint_multistage", results)
    ref = paper_value("fingerprint_multistage", metric="fsr")
    final = table[table.model.str.contains("final")]
    return [Check("06", claim, "publishers A then B", f"FSR {shown(ref, '.2f')} for every fingerprint",
                  f"{int(table.holds.sum())} of {len(table)} expectations hold; final model FSR "
                  + ", ".join(f"{r.keys} {r.fsr:.2f}" for r in final.itertuples()), by_count(int(table.holds.sum()),
                                                                                          len(table)))]


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
        paper_asr = f"{r.paper_asr:.3f} ± {r.paper_asr_std:.3f}" if not clean and not math.isnan(r.paper_asr) else "—"
        out.append((r.attack, r.group, "—" if clean else signed(r.effect, r.effect_lo, r.effect_hi),
                    "—" if clean else rate(r.asr, r.n_asr), "—" if clean else f"{r.asr_clean_model:.3f}",
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
                          rate(r.asr, r.n_asr), f"{r.asr_clean_model:.3f}", f"{clean.get(r.dataset, math.nan):.3f} → "
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
    cold, warm = study.get("study_quick", {}), study.get("study_quick_warm", {})
    whole = []
    if "cold_s" in cold:
        whole.append(f"cold, every notebook: {cold['cold_s'] / 60:.1f} min (`study_quick.json`)")
    if "rerun_warm_s" in warm:
        whole.append(f"warm with nothing changed: {warm['warm_s']:.2f} s (make finds every notebook up to date); "
                     f"warm, every notebook executed again (`make study RERUN=1`): {warm['rerun_warm_s']:.0f} s "
                     "(`study_quick_warm.json`)")
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
