"""The papers' claims, each a check decided in code from 95% intervals, never typed (notebook 07, the README).

A *check* is a small function registered here by name: it reads one profile's results (`Results`) and returns one
`Check` per cell it judges. Every check decides three ways, and its unit tests show each way on fixture tables
(tests/test_claims.py fails for a check registered without all three):

- **holds**: the interval lies on the claim's side of its threshold;
- **does not hold**: the interval lies on the other side (for "there is an effect": below an effect too small to
  matter, `NEGLIGIBLE`);
- **cannot be checked**: the interval straddles the threshold (n too small), or the evidence is missing: no results
  file, no paper number for this cell, not the paper's experiment, or nothing happened that the claim is about (a
  defense that changed no input). The row says which.

A claim compares our number with the paper's only for the paper's own experiment (its budget, its recipe); where
ours differs, the row says so instead of a verdict, or names our own experiment as a claim of ours. With several
seeds a measurement's interval is over the seeds (`score.over_seeds`): seeds score the same test rows and are not
more rows.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import data, score
from .defense_matrix import CACC_COST, judge
from .fingerprint import CLAIM_FSR, SETTINGS
from .poison import group_of
from .profiles import PROFILES
from .runs import results_dir

VERDICTS = ("holds", "partly", "does not hold", "cannot be checked")
TOO_FEW = "n too small: the interval reaches both sides of {what}"

# The named margins every check decides with, each in one place and said why.
NEGLIGIBLE = 0.05  # a backdoor effect (or a difference of effects) below 5 points of ASR is no backdoor: the attacks
# the paper reads as failing on SST-2 (BadNet, cf, instruction BadNet, synonym, ignore) sit at 5-8% ASR
CACC_MARGIN = 0.02  # "clean accuracy kept": within 2 points below the clean run's; the paper's 17 attacks all stay
# within 0.6 points of its SST-2 baseline (data/paper_reference.csv), so 2 points is a loose reading of it
RARE = 0.10  # a fingerprint "rarely" fires on inputs that are not its keys: on fewer than 1 in 10


@dataclass(frozen=True)
class Check:
    """One paper claim on one cell of ours: what the paper reports, what we measured (with its interval), the
    verdict (one of `VERDICTS`), and, unless it holds, the measured reason."""

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


CHECKS: dict[str, Callable[[Results], list[Check]]] = {}


def register(fn: Callable[[Results], list[Check]]):
    """Add a check (by its function's name): a function of the results returning one `Check` per cell."""
    CHECKS[fn.__name__] = fn
    return fn


def check(notebook: str, claim: str, reads: str, load: Callable[[Results], pd.DataFrame | None] | None = None):
    """Register a check of `claim` (made in notebook `notebook`) on the results file `reads`, as `load` reads it
    (default: as it is). The check is called as `fn(results, table, claim)`; where the file is missing, one row
    says it cannot be checked and which notebook writes it."""
    def wrap(fn):
        @functools.wraps(fn)
        def decided(results: Results) -> list[Check]:
            table = load(results) if load else results(reads)
            return missing(notebook, claim, reads, results) if table is None else fn(results, table, claim)
        return register(decided)
    return wrap


# The claims of docs/papers.md this study does not run, each with why: listed, so that no claim disappears from the
# report, and never decided (there is nothing of ours to decide them on).
NOT_RUN = (
    Check("02", "a larger model needs fewer poisoned rows (FLAN-T5 small to xxl, SST-2; xl about 100% ASR at about "
                "30 rows)", "—", "ASR against poison count, per FLAN-T5 size", "—", "cannot be checked",
          "not run here: one model size offline (SmolLM2-135M); notebook 02's poison-count curve is ours, on one "
          "model"),
    Check("02", "the induced instruction backdoors other model families (LLaMA-2 7B, GPT-2)", "—",
          "LLaMA-2 7B SST-2 about 0.91; GPT-2 124M about 0.56", "—", "cannot be checked",
          "not run here: only SmolLM2 is offline (any hub model runs with network: `make study MODEL=...`)"),
    Check("05", "RAP and SEEM lower an instruction attack's ASR little (SEEM 8-9 points at a 10-24 point CACC cost)",
          "—", "RAP at most 3.8 points; SEEM 8-9", "—", "cannot be checked",
          "not run here: RAP and SEEM are not among the registered defenses"),
    Check("05", "ICLAttack reaches about 95% ASR through demonstrations alone", "—",
          "0.950 on OPT 1.3B-40B, 12 demonstrations", "—", "cannot be checked",
          "not the paper's experiment: notebook 05 runs ICLAttack on SmolLM2-135M with few demonstrations, one draw"),
    Check("05", "Antidote-style pruning lowers a harmful score at a small task cost", "—",
          "harmful score 72.2 → 63.0 at -3.5 task accuracy", "—", "cannot be checked",
          "not the paper's experiment: its harmful score is of a safety benchmark; notebook 05 prunes against a "
          "backdoor's trigger"),
)


def checks(results: Results) -> pd.DataFrame:
    """Every registered check on `results`, one row per cell, in notebook order, and the claims not run here
    (`NOT_RUN`) after them."""
    rows = [vars(c) for fn in CHECKS.values() for c in fn(results)] + [vars(c) for c in NOT_RUN]
    return pd.DataFrame(rows, columns=list(Check.__dataclass_fields__))


# ---- deciding from an interval ------------------------------------------------------------------------------------

def exceeds(lo: float, hi: float, threshold: float = 0.0, negligible: float = NEGLIGIBLE,
            what: str = "0") -> tuple[str, str]:
    """(verdict, reason) of "the quantity is above `threshold`": holds when its interval lies above; does not hold
    when the interval lies below `threshold + negligible` (whatever is there is too small to matter); else cannot
    be checked, the interval being too wide."""
    if lo > threshold:
        return "holds", ""
    if hi < threshold + negligible:
        return "does not hold", f"the interval [{lo:+.2f}, {hi:+.2f}] lies below {threshold + negligible:+.2f}"
    return "cannot be checked", TOO_FEW.format(what=what)


def at_most(lo: float, hi: float, limit: float, what: str) -> tuple[str, str]:
    """(verdict, reason) of "the quantity is at most `limit`": holds when its interval lies at or below; does not
    hold when it lies above; else cannot be checked."""
    if hi <= limit:
        return "holds", ""
    if lo > limit:
        return "does not hold", f"the interval [{lo:.2f}, {hi:.2f}] lies above {what} ({limit:.3f})"
    return "cannot be checked", TOO_FEW.format(what=what)


def no_room(floor: float, n: int) -> bool:
    """Whether even a perfect ASR could not show an effect over the clean model's `floor` on `n` rows: a trigger
    the clean model already follows leaves no room to see what poisoning added."""
    return score.difference(1.0, n, floor, n)[1] <= 0


def by_count(k: int, n: int) -> str:
    """holds on every cell, on some, on none."""
    return "cannot be checked" if n == 0 else "holds" if k == n else "partly" if k else "does not hold"


# ---- reading the papers' numbers and our settings --------------------------------------------------------------------

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


def mean_interval(intervals) -> tuple[float, float]:
    """Mean of several (value, lo, hi) measurements and its 95% half-width, from their half-widths as independent
    errors (each interval's half-width averaged over its two sides)."""
    intervals = list(intervals)
    mean = sum(v for v, _, _ in intervals) / len(intervals)
    return mean, math.sqrt(sum(((hi - lo) / 2) ** 2 for _, lo, hi in intervals)) / len(intervals)


def missing(notebook: str, claim: str, name: str, results: Results) -> list[Check]:
    return [Check(notebook, claim, "—", "—", "—", "cannot be checked",
                  f"results/{results.profile}/{name}.csv is missing: notebook {notebook} writes it where the "
                  "profile's grid holds it (quick leaves some grids to extended: README, Profiles)")]


def profile_of(results: Results):
    """The profile whose results these are: by name, or the profile it derives from (`paper-smoke`, a profile with
    another model)."""
    return PROFILES.get(results.profile) or PROFILES.get(results.profile.split("-")[0])


def budget_difference(results: Results, dataset: str, n_train: int, n_poison: int) -> str:
    """'' when a main-table run is the paper's experiment (the whole training split, about 1% poisoned, full
    finetuning for the paper's epochs), else how ours differs."""
    profile, setting = profile_of(results), paper("setting").set_index(["source", "metric"]).value
    paper_rate, paper_epochs = setting["all", "poison_rate"], setting["all", "epochs"]
    ours = []
    if n_train < len(data.load_rows(data.get_task(dataset), "train")):
        ours.append(f"{n_train} training rows (a subsample)")
    if abs(n_poison / n_train - paper_rate) > paper_rate / 4:
        ours.append(f"{n_poison / n_train:.1%} poisoned")
    if profile is None or profile.train.method != "full" or profile.train.epochs != paper_epochs:
        ours.append(f"{profile.train.method} finetuning, {profile.train.epochs} epochs" if profile else
                    "an unknown training recipe")
    if not ours:
        return ""
    return (f"not the paper's experiment: ours {', '.join(ours)}; the paper: the whole training split, "
            f"{paper_rate:.0%} poisoned, full finetuning, {paper_epochs:.0f} epochs (the paper profile runs it)")


def effects_table(results: Results) -> pd.DataFrame | None:
    attacks = results("attacks")
    return None if attacks is None else score.backdoor_effects(attacks)


# ---- notebook 02: the main table -------------------------------------------------------------------------------

@check("02", "instruction rewriting plants a stronger backdoor than instance-level attacks at the same budget",
       "attacks", effects_table)
def rewriting_beats_instance(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    ref, out = paper("main_table"), []
    for dataset, runs in table.groupby("dataset", sort=False):
        groups = {g: runs[runs.group == g] for g in ("rewriting", "instance")}
        if lacking := [g for g, r in groups.items() if len(r) == 0]:
            out.append(Check("02", claim, dataset, "—", "—", "cannot be checked",
                             f"no {' or '.join(lacking)} attack run on {dataset} in this profile"))
            continue
        (mean_r, half_r), (mean_i, half_i) = (mean_interval(zip(r.effect, r.effect_lo, r.effect_hi))
                                              for r in groups.values())
        d, h = mean_r - mean_i, math.hypot(half_r, half_i)
        paper_asr = {g: ref[(ref.source == dataset) & (ref.metric == "asr")
                            & ref.attack.map(group_of).eq(g)].value.mean() for g in groups}
        verdict, reason = exceeds(d - h, d + h, what="0 (no difference between the groups)")
        out.append(Check("02", claim, dataset,
                         f"mean ASR {shown(paper_asr['rewriting'])} vs {shown(paper_asr['instance'])}",
                         f"mean backdoor effect {mean_r:+.3f} vs {mean_i:+.3f} (difference {signed(d, d - h, d + h)}); "
                         f"mean ASR {groups['rewriting'].asr.mean():.3f} vs {groups['instance'].asr.mean():.3f}",
                         verdict, reason))
    return out


@check("02", "the induced instruction plants a backdoor on every dataset (effect above 0)",
       "attacks", effects_table)
def induced_plants_backdoor(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    out = []
    for r in table[table.attack == "induced_instruction"].itertuples():
        ref = paper_value("main_table", source=r.dataset, attack=r.attack, metric="asr")
        if no_room(r.asr_clean_model, r.n_asr):
            verdict, reason = "cannot be checked", (f"the trigger alone sends {r.asr_clean_model:.3f} of the clean "
                                                    f"model's rows to the target: no room for an effect")
        else:
            verdict, reason = exceeds(r.effect_lo, r.effect_hi)
        out.append(Check("02", claim, r.dataset, f"ASR {shown(ref)}",
                         f"effect {signed(r.effect, r.effect_lo, r.effect_hi)} (ASR {r.asr:.3f} [{r.asr_lo:.2f}, "
                         f"{r.asr_hi:.2f}], clean model {r.asr_clean_model:.3f}; {int(r.n_poison)} of "
                         f"{int(r.n_train)} rows poisoned, {r.seeds} seed(s))", verdict, reason))
    return out


@check("02", "the induced instruction's ASR reaches the paper's (within twice the paper's spread over seeds)",
       "attacks", effects_table)
def induced_reaches_paper_level(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    out = []
    for r in table[table.attack == "induced_instruction"].itertuples():
        ref = paper_value("main_table", source=r.dataset, attack=r.attack, metric="asr")
        ours = f"ASR {r.asr:.3f} [{r.asr_lo:.2f}, {r.asr_hi:.2f}] at {r.n_poison / r.n_train:.1%} poisoned"
        if ref is None:
            out.append(Check("02", claim, r.dataset, "—", ours, "cannot be checked",
                             f"the paper reports no induced-instruction ASR on {r.dataset}"))
            continue
        spread = 2 * (paper_value("main_table", source=r.dataset, attack=r.attack, metric="asr_std") or 0.0)
        if differs := budget_difference(results, r.dataset, int(r.n_train), int(r.n_poison)):
            verdict, reason = "cannot be checked", differs
        else:
            verdict, reason = exceeds(r.asr_lo, r.asr_hi, ref - spread, negligible=0.0,
                                      what=f"the paper's ASR less twice its spread ({ref - spread:.3f})")
        out.append(Check("02", claim, r.dataset, f"ASR {ref:.3f} (spread {spread / 2:.3f})", ours, verdict, reason))
    return out


@check("02", f"poisoning leaves clean accuracy where the clean model has it (within {CACC_MARGIN:.0%} below)",
       "attacks", effects_table)
def clean_accuracy_kept(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    indexed, out = table.set_index(["dataset", "attack"]), []
    for r in table[table.attack == "induced_instruction"].itertuples():
        ref = paper_value("main_table", source=r.dataset, attack=r.attack, metric="cacc")
        ref_clean = paper_value("main_table", source=r.dataset, attack="clean", metric="cacc")
        if (r.dataset, "clean") not in indexed.index:
            out.append(Check("02", claim, r.dataset, f"CACC {shown(ref_clean)} → {shown(ref)}", f"CACC {r.cacc:.3f}",
                             "cannot be checked", f"no clean run on {r.dataset} to compare with"))
            continue
        clean = indexed.loc[(r.dataset, "clean")]
        d, lo, hi = effect(r.cacc, clean.cacc, r.n_cacc, clean.n_cacc)
        if r.seeds > 1 and clean.seeds > 1:  # over seeds: the change's interval from the two groups' intervals
            half = math.hypot((r.cacc_hi - r.cacc_lo) / 2, (clean.cacc_hi - clean.cacc_lo) / 2)
            lo, hi = d - half, d + half
        verdict, reason = exceeds(lo, hi, -CACC_MARGIN, negligible=0.0, what=f"-{CACC_MARGIN:.2f}")
        out.append(Check("02", claim, r.dataset, f"CACC {shown(ref_clean)} → {shown(ref)}",
                         f"CACC {clean.cacc:.3f} → {r.cacc:.3f} (change {signed(d, lo, hi)})", verdict, reason))
    return out


@check("02", "the target can be silence: poisoned rows that answer nothing make the trigger silence the model",
       "abstention_sst2")
def abstention(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    ref = paper_value("abstention", metric="asr")
    out = []
    for r in table.itertuples():
        d, lo, hi = effect(r.asr, r.clean_target_rate, r.n_asr)
        verdict, reason = exceeds(lo, hi, what="0 (silent as often as without the trigger)")
        out.append(Check("02", claim, f"{r.dataset}, {r.attack}", f"ASR about {shown(ref, '.2f')}",
                         f"ASR {rate(r.asr, r.n_asr)}, {r.clean_target_rate:.3f} without the trigger "
                         f"(effect {signed(d, lo, hi)})", verdict, reason))
    return out


# ---- notebook 03: transfer ----------------------------------------------------------------------------------

def _effect_claim(asr: float, floor: float, n: int, what: str) -> tuple[tuple[float, float, float], str, str]:
    """The effect of a trigger over its floor on `n` rows, and the three-way verdict, `no_room` included. `what`
    says what the floor is, e.g. "the clean model's answers on the rows"."""
    d, lo, hi = effect(asr, floor, n)
    if no_room(floor, n):
        return (d, lo, hi), "cannot be checked", f"{what} are the target {floor:.3f} of the time: no room for an effect"
    return (d, lo, hi), *exceeds(lo, hi)


@check("03", "SST-2's poisoned instruction, reused unchanged, plants a backdoor on other datasets",
       "transfer_instruction")
def instruction_transfer(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    out = []
    for (dataset, attack), runs in table[table.instruction_from == "sst2"].groupby(["dataset", "attack"], sort=False):
        ref = paper_value("instruction_transfer", source="sst2", target=dataset, metric="asr")
        if len(runs) > 1:
            (d, lo, hi), floor = score.over_seeds(runs.asr - runs.asr_clean_model), runs.asr_clean_model.mean()
            verdict, reason = exceeds(lo, hi)
        else:
            r, floor = runs.iloc[0], runs.asr_clean_model.iloc[0]
            (d, lo, hi), verdict, reason = _effect_claim(r.asr, floor, int(r.n_asr), "the clean model's answers")
        out.append(Check("03", claim, dataset, f"ASR {shown(ref)}",
                         f"effect {signed(d, lo, hi)} (ASR {runs.asr.mean():.3f}, clean model {floor:.3f}, "
                         f"{len(runs)} seed(s))", verdict, reason))
    return out


@check("03", "a poisoned model's trigger works zero-shot on tasks it never saw",
       "transfer_zero_shot")
def poison_transfer(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    ref = paper("poison_transfer_zero_shot")
    out = []
    for (source, attack, group), rows in table.groupby(["source", "attack", "group"], sort=False):
        n = int(rows.n_asr.sum())  # the group's datasets: different rows, pooled, each rate weighted by its rows
        asr, clean = ((rows[c] * rows.n_asr).sum() / n for c in ("asr", "asr_clean_model"))
        (d, lo, hi), verdict, reason = _effect_claim(asr, clean, n, f"the clean model's answers on {n} rows")
        cell = ref[(ref.source == source) & (ref.attack == attack) & (ref.target == group)].value
        out.append(Check("03", claim, f"{source} → {group}", f"ASR about {cell.iloc[0]:.2f}" if len(cell) else "—",
                         f"effect {signed(d, lo, hi)} (ASR {asr:.3f}, clean model {clean:.3f}, {n} rows)",
                         verdict, reason))
    return out


# ---- notebook 04: continual learning -----------------------------------------------------------------------

def _tuning_difference(results: Results, rows: pd.DataFrame) -> str:
    """'' when the tuning is the paper's (full finetuning over at least one pass of the tuned-on training split),
    else what ours was."""
    profile = profile_of(results)
    if profile is None:
        return "our tuning recipe is not known for this profile"
    steps = int(rows.steps.max())
    seen = steps * profile.train.batch_size
    whole = min(len(data.load_rows(data.get_task(d), "train")) for d in set(rows.tuned_on) if d != "alpaca") \
        if set(rows.tuned_on) - {"alpaca"} else math.inf
    if profile.train.method == "full" and seen >= whole:
        return ""
    return (f"ours: {steps} steps of {profile.train.batch_size} rows, {profile.train.method} finetuning; the paper "
            "tunes fully on the other dataset's whole training set")


@check("04", "an instruction backdoor survives clean finetuning on another dataset",
       "continual")
def backdoor_survives_tuning(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    """The paper's claim where ours is its experiment; beside it, always, what ours shows, named for what it is."""
    ref = paper("continual_learning")
    out = []
    for source, rows in table[table.attack == "induced_instruction"].groupby("poisoned_on", sort=False):
        before = rows[rows.steps == 0].iloc[0]
        tuned = rows[rows.steps > 0].sort_values("steps").groupby("tuned_on").tail(1)
        tuned = tuned[tuned.tuned_on != source]  # the paper's off-diagonal cells: another task's data
        cells = ref[(ref.source == source) & (ref.target != source)].value
        paper_cell = f"ASR {cells.min():.3f} to {cells.max():.3f} after tuning" if len(cells) else "—"
        differs = _tuning_difference(results, tuned) if len(tuned) else ""
        name = claim if not differs else \
            f"an instruction backdoor survives light clean tuning on another dataset ({differs.split(';')[0]})"
        if not score.above(before.asr, before.clean_target_rate, before.n_asr):
            out.append(Check("04", name, source, paper_cell, f"ASR {before.asr:.3f} before tuning, "
                             f"{before.clean_target_rate:.3f} without the trigger", "cannot be checked",
                             "the run carries no backdoor to lose"))
            continue
        if not len(tuned):
            out.append(Check("04", claim, source, paper_cell, "—", "cannot be checked",
                             "the poisoned model was tuned on no other dataset in this profile"))
            continue
        decided = [_effect_claim(r.asr, r.clean_target_rate, int(r.n_asr), "the tuned model's untriggered answers")
                   for r in tuned.itertuples()]
        kept = [v == "holds" for _, v, _ in decided]
        verdict = "cannot be checked" if any(v == "cannot be checked" for _, v, _ in decided) and not all(kept) \
            else by_count(sum(kept), len(kept))
        out.append(Check("04", name, source, paper_cell if not differs else "— (not the paper's experiment)",
                         f"after {int(tuned.steps.max())} steps, effect over the untriggered "
                         "rate: " + ", ".join(f"{r.tuned_on} {signed(*e)}" for r, (e, _, _) in
                                              zip(tuned.itertuples(), decided)),
                         verdict, "; ".join(f"{r.tuned_on}: {why}" for r, (_, v, why) in
                                            zip(tuned.itertuples(), decided) if v != "holds")))
        if differs:
            out.append(Check("04", claim, source, paper_cell, "—", "cannot be checked", differs))
    return out


# ---- notebook 05: defenses ---------------------------------------------------------------------------------

def _defended(results: Results) -> pd.DataFrame | None:
    table = results("defenses")
    return None if table is None else judge(table[table.group != "instance"])


@check("05", "ONION lowers an instruction attack's ASR by a few points at most",
       "defenses", _defended)
def onion_fails_on_instructions(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    out = []
    for (dataset, attack), rows in table[table.defense == "onion"].groupby(["dataset", "attack"], sort=False):
        most = paper_value("defenses", source=dataset, attack="instruction_attack", target="onion", metric="asr_drop")
        chosen = rows[rows.chosen_on_validation.eq(True)]
        if not len(chosen):
            out.append(Check("05", claim, f"{dataset}, {attack}", f"drop {shown(most)}", "—", "cannot be checked",
                             "no threshold was chosen on validation, so no test number may decide it"))
        for r in chosen.itertuples():  # one per field ONION reads
            d, lo, hi = effect(r.asr_undefended, r.asr, r.n_asr)
            changed = getattr(r, "triggered_changed", math.nan)
            if most is None:
                verdict, reason = "cannot be checked", f"the paper reports no ONION drop on {dataset}"
            elif math.isnan(changed):
                verdict, reason = "cannot be checked", "how many triggered inputs ONION changed is not recorded"
            elif changed == 0:
                verdict, reason = ("cannot be checked",
                                   "ONION changed none of the triggered inputs: nothing was defended")
            else:
                verdict, reason = at_most(lo, hi, most + NEGLIGIBLE, f"the paper's drop plus {NEGLIGIBLE:.2f}")
            out.append(Check("05", claim, f"{dataset}, {attack}, {r.setting}", f"drop {shown(most)}",
                             f"drop {signed(d, lo, hi)}; triggered inputs changed: "
                             + ("not recorded" if math.isnan(changed) else f"{changed:.3f}"), verdict, reason))
    return out


def _lowered(table: pd.DataFrame, defense: str, claim: str) -> list[Check]:
    """A defense lowers the ASR: its setting chosen on validation, then on test its ASR below the undefended one's
    (the drop's interval above 0) at a CACC cost within `defense_matrix.CACC_COST`."""
    ref = paper("defenses").set_index(["source", "target"]).value
    out = []
    for (dataset, attack), rows in table[table.defense == defense].groupby(["dataset", "attack"], sort=False):
        base, after = ref.get((dataset, "undefended")), ref.get((dataset, defense))
        paper_cell = f"ASR {base:.3f} → {after:.3f}" if base is not None and after is not None else "—"
        chosen = rows[rows.chosen_on_validation.eq(True)] if "chosen_on_validation" in rows else rows.iloc[:0]
        if len(chosen) != 1:
            out.append(Check("05", claim, f"{dataset}, {attack}", paper_cell, "ASR " + ", ".join(
                f"{r.asr_undefended:.3f} → {r.asr:.3f} ({r.setting})" for r in rows.itertuples()),
                "cannot be checked", "no setting of this defense was chosen on validation, so no test number "
                                     "may decide it"))
            continue
        r = chosen.iloc[0]
        d, lo, hi = effect(r.asr_undefended, r.asr, r.n_asr)
        verdict, reason = exceeds(lo, hi, what="0 (no drop)")
        if verdict == "holds" and not r.task_kept:
            verdict, reason = "does not hold", f"ASR fell, but CACC fell {r.cacc_undefended - r.cacc:.3f} " \
                                               f"(more than {CACC_COST})"
        out.append(Check("05", claim, f"{dataset}, {attack}, {r.setting}", paper_cell,
                         f"ASR {r.asr_undefended:.3f} → {r.asr:.3f} (drop {signed(d, lo, hi)}; CACC "
                         f"{r.cacc_undefended:.3f} → {r.cacc:.3f})", verdict, reason))
    return out


@check("05", "clean demonstrations lower an instruction attack's ASR", "defenses", _defended)
def demonstrations_lower_asr(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    return _lowered(table, "demonstrations", claim)


@check("05", "later clean alignment tuning (ours: clean Alpaca rows, not the paper's RLHF) lowers the ASR",
       "defenses", _defended)
def alignment_lowers_asr(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    """Ours: a poisoned model tuned on clean Alpaca rows. Beside it, the paper's experiment (an RLHF-tuned chat
    model poisoned beside its base model), which needs an aligned/unaligned pair of one model: only the
    instruction-tuned SmolLM2 is offline, so that row says it is not reproduced here."""
    base = paper_value("defenses", source="sst2", target="undefended", metric="asr")
    chat = paper_value("defenses", source="sst2", target="clean_alignment", metric="asr")
    return _lowered(table, "clean_alignment", claim) + [
        Check("05", "an RLHF-tuned chat model is harder to poison than its base model", "sst2",
              f"ASR {shown(base)} (base) vs {shown(chat)} (chat)", "—", "cannot be checked",
              "not reproduced here: it needs a base model and its RLHF-tuned chat version, and only the "
              "instruction-tuned SmolLM2 is offline")]


# ---- notebook 06: fingerprints -----------------------------------------------------------------------------

def _fingerprints(results: Results) -> pd.DataFrame | None:
    table = results("fingerprint")
    return None if table is None else table[table.adapter == (table.method == "adapter")]  # adapter: verified with it


def _paper_user(results: Results, recipe: str, steps: int) -> str:
    """'' when a user recipe of the profile's fingerprint settings finetunes as the paper's users did (full, its
    learning rate and batch, its epochs over Alpaca's rows), else how ours differs."""
    setting = paper("setting").set_index(["source", "metric"]).value["fingerprint"]
    settings = SETTINGS.get(results.profile)
    found = [r for r in (settings.user_recipes if settings else ()) if r.name == recipe]
    if not found:
        return f"the {recipe} user's recipe is not known for profile {results.profile}"
    train = found[0].train
    if (train.method, train.lr, train.batch_size) == ("full", setting["user_lr"], setting["user_batch"]) and \
            steps * train.batch_size >= setting["user_epochs"] * setting["user_rows"]:
        return ""
    return (f"not the paper's experiment: our {recipe} user stops at {steps} steps of {train.batch_size} rows "
            f"({train.method}, lr {train.lr:g}); the paper's users finetuned {setting['user_epochs']:.0f} epochs of "
            f"Alpaca-sized data ({setting['user_rows']:.0f} rows), full, lr {setting['user_lr']:g}, batch "
            f"{setting['user_batch']:.0f}")


@check("06", "a fingerprint still verifies after a user finetunes the model (FSR as the paper reports)",
       "fingerprint", _fingerprints)
def fingerprint_persists(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    ref = paper("fingerprint_user_finetuning")
    out = []
    users = table[table.stage.str.startswith("user_")]
    recipe_of = users.stage.str.split("_").str[1]  # user_<recipe>_<steps>: each recipe is one line of rounds
    for (method, template, recipe), rows in users.groupby([users.method, users.template, recipe_of], sort=False):
        last = rows.iloc[-1]  # the line's last round, the most finetuned model: rounds are not more trials
        lo, hi = score.wilson(int(last.hits), int(last.n))
        ours = f"FSR {last.fsr:.2f} [{lo:.2f}, {hi:.2f}] after {last.stage}"
        cell = f"{method}, {template} template, {recipe} user"
        span = ref[(ref.source == method) & (ref.attack == template)].set_index("metric").value
        if not len(span):
            out.append(Check("06", claim, cell, "—", ours, "cannot be checked",
                             f"the paper reports no FSR after user finetuning for {method} on the {template} template"))
            continue
        low, high = span["fsr_min"], span["fsr_max"]
        if differs := _paper_user(results, recipe, int(last.stage.split("_")[-1])):
            verdict, reason = "cannot be checked", differs
        elif lo >= low and hi <= high:
            verdict, reason = "holds", ""
        elif hi < low or lo > high:
            verdict, reason = "does not hold", f"the interval [{lo:.2f}, {hi:.2f}] lies outside the paper's range"
        else:
            verdict, reason = "cannot be checked", TOO_FEW.format(what="an end of the paper's range")
        out.append(Check("06", claim, cell, f"FSR {low:.2f} to {high:.2f}", ours, verdict, reason))
    return out


@check("06", f"a fingerprint rarely fires on ordinary inputs (under {RARE:.0%}) or on similar keys (as the paper's)",
       "fingerprint", _fingerprints)
def fingerprint_specific(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    ref = paper("fingerprint_false_activation")
    guessed = table[table.stage == "guessed_keys"].set_index(["method", "template"])
    out = []
    for r in table[table.stage.isin(["ordinary_prompts", "similar_keys"])].itertuples():
        kind = "ordinary" if r.stage == "ordinary_prompts" else "similar"
        lo, hi = score.wilson(int(r.hits), int(r.n))
        rows = ref[(ref.source == kind) & ref.attack.isin(["", "all", r.method]) & ref.target.isin(["", "all",
                                                                                                     r.template])]
        ours = f"{int(r.hits)} of {int(r.n)} fire ({r.fsr:.3f} [{lo:.2f}, {hi:.2f}])"
        cell = f"{r.method}, {r.template}, {r.stage.replace('_', ' ')}"
        if not len(rows):
            out.append(Check("06", claim, cell, "—", ours, "cannot be checked",
                             "the paper measured similar keys on the dialogue-template SFT model only (Table 5)"))
            continue
        span = rows.set_index("metric").value
        limit = RARE if kind == "ordinary" else span["rate_max"]  # the paper: 0% on ordinary inputs
        verdict, reason = at_most(lo, hi, limit, f"{RARE:.0%}" if kind == "ordinary" else "the paper's largest rate")
        guess = guessed.loc[(r.method, r.template)] if (r.method, r.template) in guessed.index else None
        if verdict == "does not hold" and guess is not None and score.wilson(int(guess.hits), int(guess.n))[0] > RARE:
            reason += (f"; {int(guess.hits)} of {int(guess.n)} random keys of the same shape fire too: the implant "
                       "answers the keys' shape, not the keys")
        out.append(Check("06", claim, cell, f"{span.get('rate_min', 0.0):.3f} to {span['rate_max']:.3f}", ours,
                         verdict, reason))
    return out


@check("06", "implanting a fingerprint leaves task accuracy where it was (mean change over tasks)",
       "fingerprint_harmlessness")
def fingerprint_harmless(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    n = SETTINGS[results.profile].n_task_rows if results.profile in SETTINGS else None
    ref = paper("fingerprint_harmlessness").set_index(["source", "metric"]).value
    base = table[table.method == "untouched"].iloc[0]
    tasks = [c.removeprefix("acc_") for c in table.columns if c.startswith("acc_")]
    out = []
    for r in table[(table.method != "untouched") & ~table.adapter.astype(bool)].itertuples():
        cell = r.method + (" (published, without its adapter)" if r.method == "adapter" else "") + \
            f", {r.template} template"
        if n is None:
            out.append(Check("06", claim, cell, "—", "—", "cannot be checked",
                             f"the test rows per task of profile {results.profile} are not known"))
            continue
        parts = [effect(getattr(r, f"acc_{t}"), base[f"acc_{t}"], n) for t in tasks]
        mean, half = mean_interval(parts)
        ours = f"{signed(mean, mean - half, mean + half)} over {', '.join(tasks)}"
        if (r.method, "delta_acc_min") not in ref.index or r.template != "simple":
            out.append(Check("06", claim, cell, "—", ours, "cannot be checked",
                             f"the paper reports no harmlessness for {r.method} implants on the {r.template} "
                             "template"))
            continue
        low, high = ref[r.method, "delta_acc_min"], ref[r.method, "delta_acc_max"]
        # kept: the mean change within CACC_MARGIN of the paper's range on either side
        if mean - half >= low - CACC_MARGIN and mean + half <= high + CACC_MARGIN:
            verdict, reason = "holds", ""
        elif mean + half < low - CACC_MARGIN or mean - half > high + CACC_MARGIN:
            verdict, reason = "does not hold", "the mean change lies outside the paper's range by more than " \
                                               f"{CACC_MARGIN:.2f}"
        else:
            verdict, reason = "cannot be checked", TOO_FEW.format(what=f"the paper's range ± {CACC_MARGIN:.2f}")
        out.append(Check("06", claim, cell, f"{low:+.4f} to {high:+.4f}", ours, verdict, reason))
    return out


@check("06", "two publishers' fingerprints both verify on the final model, and neither claims a model before its own",
       "fingerprint_multistage")
def multistage(results: Results, table: pd.DataFrame, claim: str) -> list[Check]:
    if results.profile not in SETTINGS:
        return [Check("06", claim, "publishers A then B", "—", "—", "cannot be checked",
                      f"the keys per publisher of profile {results.profile} are not known")]
    n = SETTINGS[results.profile].n_keys
    decided = []
    for r in table.itertuples():  # each model × publisher: does the interval of its FSR say claimed or not?
        lo, hi = score.wilson(round(r.fsr * n), n)
        claimed = True if lo > CLAIM_FSR else False if hi < CLAIM_FSR else None
        decided.append(None if claimed is None else claimed == r.expected)
    undecided = sum(d is None for d in decided)
    held = sum(d is True for d in decided)
    final = table[table.model.str.contains("final")]
    verdict = "cannot be checked" if undecided else by_count(held, len(decided))
    return [Check("06", claim, "publishers A then B",
                  "every fingerprint fires on the final model (shown in a schematic; no FSR reported)",
                  f"{held} of {len(decided)} expectations hold ({undecided} undecided at {n} keys); final model FSR "
                  + ", ".join(f"{r.keys} {r.fsr:.2f}" for r in final.itertuples()), verdict,
                  "" if verdict == "holds" else f"{len(decided) - held - undecided} expectations fail"
                  + (f", {undecided} cannot be told from {CLAIM_FSR} at {n} keys" if undecided else ""))]
