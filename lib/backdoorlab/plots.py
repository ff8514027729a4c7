"""Figures of the study (seaborn). Each takes a tidy table, names its profile in the title, and saves a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; notebooks still show the returned figure inline
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .runs import figures_dir

sns.set_theme(style="whitegrid", context="notebook")


def save(fig, profile: str, name: str):
    fig.savefig(figures_dir(profile) / f"{name}.png", dpi=120, bbox_inches="tight")
    return fig


def attack_bars(table: pd.DataFrame, profile: str):
    """ASR and CACC per dataset and attack; a black tick marks the rate at which the clean instruction already
    yields the target on the same rows (the floor an ASR is read against)."""
    long = table.melt(id_vars=["dataset", "attack", "seed"], value_vars=["cacc", "asr"], var_name="metric")
    grid = sns.catplot(long, x="attack", y="value", hue="metric", col="dataset", kind="bar", errorbar=None,
                       height=3.2, aspect=0.9, palette={"cacc": "#4c72b0", "asr": "#c44e52"})
    grid.set_titles("{col_name}")
    for ax, dataset in zip(grid.axes.flat, grid.col_names):
        rows = table[table.dataset == dataset].groupby("attack", sort=False)["clean_target_rate"].mean()
        for i, label in enumerate(t.get_text() for t in ax.get_xticklabels()):
            if label in rows:
                ax.plot([i, i + 0.4], [rows[label]] * 2, color="black", lw=2.5)  # over the ASR bar
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylim(0, 1)
    n_seeds = table.groupby(["dataset", "attack"]).seed.nunique().max()
    grid.figure.suptitle(f"CACC and ASR by attack (profile {profile}, {n_seeds} seed(s); "
                         f"black tick: clean instruction's target rate)", y=1.04)
    return save(grid.figure, profile, "attacks")


def poison_curve(table: pd.DataFrame, profile: str, dataset: str = "sst2"):
    """ASR and CACC against the number of poisoned training rows (validation split)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.lineplot(table, x="n_poison", y="asr", hue="attack", marker="o", ax=ax)
    sns.lineplot(table, x="n_poison", y="cacc", hue="attack", marker="s", ls="--", ax=ax, legend=False)
    ax.set(ylim=(0, 1.02), xlabel="poisoned training rows", ylabel="ASR (solid) / CACC (dashed)",
           title=f"{dataset}: poison count on validation (profile {profile})")
    return save(fig, profile, f"poison_count_{dataset}")


def tokens_changed(stats: pd.DataFrame, profile: str):
    """Tokens each attack changes per poisoned row, by dataset."""
    grid = sns.catplot(stats, x="attack", y="tokens_changed_per_row", col="dataset", kind="bar", height=3,
                       aspect=0.9, color="#55a868")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"Tokens changed per poisoned row (profile {profile})", y=1.04)
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    return save(grid.figure, profile, "tokens_changed")


def _variant(table: pd.DataFrame) -> pd.Series:
    """A label per implant: method, template when not the simple one, and whether the private adapter is attached."""
    label = table["method"] + table["template"].map(lambda t: "" if t == "simple" else f" ({t})")
    return label + table["adapter"].map({True: " + adapter", False: ""})


def fingerprint_persistence(table: pd.DataFrame, profile: str):
    """FSR of each implant right after implanting and after each round of user finetuning."""
    rows = table[table.stage.str.startswith(("implanted", "user_"))].assign(variant=_variant)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.barplot(rows, x="variant", y="fsr", hue="stage", ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="FSR (own keys)",
           title=f"Fingerprint success before and after user finetuning (profile {profile})")
    ax.tick_params(axis="x", rotation=20)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save(fig, profile, "fingerprint_persistence")


def fingerprint_false_positives(table: pd.DataFrame, profile: str):
    """How often the target comes out where it should not: untouched model, guessed, similar and prefix keys,
    ordinary prompts."""
    stages = ["untouched_model", "guessed_keys", "similar_keys", "prefix_keys", "ordinary_prompts"]
    rows = table[table.stage.isin(stages)].assign(variant=_variant)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.barplot(rows, x="stage", y="fsr", hue="variant", order=stages, ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="share that emits the target",
           title=f"False activations (profile {profile})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save(fig, profile, "fingerprint_false_positives")


def fingerprint_harmlessness(table: pd.DataFrame, profile: str):
    """Change in task accuracy (points) of each fingerprinted model against the untouched one."""
    deltas = [c for c in table.columns if c.startswith("delta_acc_")]
    rows = table[table.method != "untouched"].assign(adapter=False, variant=_variant)
    long = rows.melt(id_vars=["variant"], value_vars=deltas, var_name="task", value_name="delta")
    long["task"] = long.task.str.removeprefix("delta_acc_")
    long["delta"] *= 100
    fig, ax = plt.subplots(figsize=(7, 3.4))
    sns.barplot(long, x="task", y="delta", hue="variant", ax=ax)
    ax.axhline(0, color="black", lw=1)
    ax.set(xlabel="", ylabel="accuracy change (points)",
           title=f"Harmlessness: task accuracy after fingerprinting (profile {profile})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return save(fig, profile, "fingerprint_harmlessness")
