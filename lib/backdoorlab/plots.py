"""Figures of the study (seaborn). Each takes a tidy table, names its profile in the title, and saves a PNG."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; notebooks still show the returned figure inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .runs import figures_dir

sns.set_theme(style="whitegrid", context="notebook")
GROUP_COLORS = {"clean": "#8c8c8c", "instance": "#4c72b0", "token": "#dd8452", "phrase": "#55a868",
                "rewriting": "#c44e52"}


def save(fig, profile: str, name: str):
    fig.savefig(figures_dir(profile) / f"{name}.png", dpi=120, bbox_inches="tight")
    return fig


def backdoor_effect(effects: pd.DataFrame, profile: str):
    """The headline figure: per run, the backdoor effect (ASR minus the same trigger's ASR on the clean model) with
    its 95% interval, and beside it the raw ASR (filled) against that clean-model floor (hollow). `effects` is
    `score.backdoor_effects` of the attack table; rows in the paper's group order, one rule between groups."""
    from .poison import ATTACKS

    order = {a: i for i, a in enumerate(ATTACKS)}
    rows = effects[effects.attack != "clean"].assign(order=lambda t: t.attack.map(order))
    rows = rows.sort_values(["dataset", "order"], key=lambda c: c if c.name == "order" else c.ne("sst2")
                            ).reset_index(drop=True)  # the headline dataset first, then the others
    labels = [a if d == "sst2" else f"{d} · {a}" for d, a in zip(rows.dataset, rows.attack)]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.32 * len(rows) + 1.4), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    colors = rows.group.map(GROUP_COLORS)
    left.barh(y, rows.effect, color=colors, xerr=[rows.effect - rows.effect_lo, rows.effect_hi - rows.effect],
              error_kw={"lw": 1, "capsize": 2})
    left.axvline(0, color="black", lw=1)
    left.set(xlim=(-0.3, 1), xlabel="backdoor effect = ASR − trigger's ASR on the clean model (95%)")
    right.hlines(y, rows.asr_clean_model, rows.asr, color="#bbbbbb", lw=2)
    right.scatter(rows.asr_clean_model, y, facecolors="white", edgecolors=colors, s=30, zorder=3,
                  label="trigger on the clean model (floor)")
    right.scatter(rows.asr, y, color=colors, s=30, zorder=3, label="ASR, poisoned model")
    right.set(xlim=(-0.02, 1.02), xlabel="ASR")

    left.set_yticks(y, labels)
    left.invert_yaxis()
    for ax in (left, right):
        for i in range(1, len(rows)):
            if (rows.group[i], rows.dataset[i]) != (rows.group[i - 1], rows.dataset[i - 1]):
                ax.axhline(i - 0.5, color="black", lw=0.8)
    groups = [g for g in GROUP_COLORS if g in set(rows.group)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g]) for g in groups]
    fig.suptitle(f"What poisoning added (profile {profile}, {int(effects.seeds.max())} seed(s))")
    fig.tight_layout()
    fig.legend(handles + right.get_legend_handles_labels()[0], groups + right.get_legend_handles_labels()[1],
               loc="upper center", bbox_to_anchor=(0.5, 0), ncol=3, fontsize="small", frameon=False)
    return save(fig, profile, "backdoor_effect")


def poison_curve(table: pd.DataFrame, profile: str, dataset: str = "sst2"):
    """ASR and CACC against the number of poisoned training rows (validation split)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.lineplot(table, x="n_poison", y="asr", hue="attack", marker="o", ax=ax)
    sns.lineplot(table, x="n_poison", y="cacc", hue="attack", marker="s", ls="--", ax=ax, legend=False)
    sns.lineplot(table, x="n_poison", y="asr_clean_model", hue="attack", ls=":", ax=ax, legend=False)
    ax.set(ylim=(0, 1.02), xlabel="poisoned training rows",
           ylabel="ASR (solid) / CACC (dashed)\ntrigger on the clean model (dotted)",
           title=f"{dataset}: poison count on validation (profile {profile})")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1))  # beside the curves, never over them
    return save(fig, profile, f"poison_count_{dataset}")


def tokens_changed(stats: pd.DataFrame, profile: str):
    """Tokens each attack changes per poisoned row, by dataset."""
    fig, ax = plt.subplots(figsize=(7, 0.3 * stats.attack.nunique() + 1.5))
    sns.barplot(stats, y="attack", x="tokens_changed_per_row", hue="dataset", ax=ax)
    ax.set(xlabel="tokens changed per poisoned row", ylabel="",
           title=f"Tokens changed per poisoned row (profile {profile})")
    return save(fig, profile, "tokens_changed")


def stealth(stats: pd.DataFrame, profile: str):
    """Per attack, how visible the field it changes is: the log2 perplexity ratio poisoned / clean (right of 0:
    less fluent than the clean text) and the MiniLM distance from the clean version; bars are the mean over
    datasets, dots the datasets."""
    on_text = stats.field == "text"
    changed = stats.assign(
        log2_ppl_ratio=np.log2(np.where(on_text, stats.ppl_text_poisoned / stats.ppl_text_clean,
                                        stats.ppl_instruction_poisoned / stats.ppl_instruction_clean)),
        minilm_distance=np.where(on_text, stats.minilm_distance_text, stats.minilm_distance_instruction))
    order = list(dict.fromkeys(stats.attack))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(order) + 1.5), sharey=True)
    for ax, column, label in [(axes[0], "log2_ppl_ratio", "log2 perplexity poisoned / clean (medians)"),
                              (axes[1], "minilm_distance", "MiniLM distance from clean")]:
        sns.barplot(changed, y="attack", x=column, hue="group", order=order, dodge=False, errorbar=None,
                    palette=GROUP_COLORS, ax=ax, legend=ax is axes[1])
        sns.stripplot(changed, y="attack", x=column, order=order, color="black", size=3, ax=ax)
        ax.set(xlabel=label, ylabel="")
    axes[0].axvline(0, color="black", lw=1)
    fig.suptitle(f"Stealth of the changed field: input (instance-level) or instruction (profile {profile})")
    return save(fig, profile, "stealth")


def attack_heatmap(effects: pd.DataFrame, profile: str):
    """The main table as three heatmaps: backdoor effect (what poisoning added, the headline), raw ASR and CACC;
    attacks as rows in the paper's order and groups, datasets as columns; cells a reduced grid did not run stay
    blank. `effects` is `score.backdoor_effects` of the attack table."""
    from .poison import ATTACKS, group_of

    order = [a for a in ("clean", *ATTACKS) if a in set(effects.attack)]
    datasets = list(dict.fromkeys(effects.dataset))
    labels = [f"{group_of(a)} · {a}" for a in order]
    fig, axes = plt.subplots(1, 3, figsize=(5 + 2.2 * len(datasets), 0.32 * len(order) + 1.8), sharey=True)
    panels = [("effect", "backdoor effect", "RdBu_r", -1), ("asr", "ASR", "Reds", 0), ("cacc", "CACC", "Blues", 0)]
    for ax, (metric, title, cmap, vmin) in zip(axes, panels):
        grid = effects.pivot(index="attack", columns="dataset", values=metric).reindex(index=order, columns=datasets)
        if metric == "effect":
            grid.loc["clean"] = np.nan  # the clean run has no trigger
        sns.heatmap(grid, annot=True, fmt=".2f", vmin=vmin, vmax=1, cmap=cmap, cbar=False, ax=ax, yticklabels=labels)
        ax.set(title=title, xlabel="", ylabel="")
        ax.grid(False)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")  # long names never overlap
        for i in range(1, len(order)):  # a rule between groups
            if group_of(order[i]) != group_of(order[i - 1]):
                ax.axhline(i, color="black", lw=1.5)
    fig.suptitle(f"Attacks by group (profile {profile}, {int(effects.seeds.max())} seed(s); "
                 "effect = ASR − the trigger's ASR on the clean model)")
    return save(fig, profile, "attacks_heatmap")


def _variant(table: pd.DataFrame) -> pd.Series:
    """A label per implant: method, template when not the simple one, and whether the private adapter is attached."""
    label = table["method"] + table["template"].map(lambda t: "" if t == "simple" else f" ({t})")
    adapter_method = table["method"] == "adapter"
    return label + (adapter_method & table["adapter"]).map({True: " (attached)", False: ""}) + (
        adapter_method & ~table["adapter"]).map({True: " (published alone)", False: ""})


def fingerprint_persistence(table: pd.DataFrame, profile: str):
    """FSR of each implant right after implanting and after each round of user finetuning, and on the base model
    finetuned the same way by a user nobody fingerprinted (`innocent_finetuned_*`: must stay at 0)."""
    rows = table[table.stage.str.startswith(("implanted", "user_", "innocent_"))].assign(variant=_variant)
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
    rows = table[table.method != "untouched"].assign(variant=_variant)
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


def transfer_heatmap(table: pd.DataFrame, profile: str):
    """Zero-shot poison transfer: the backdoor effect (ASR on the poisoned model minus ASR on the clean model, same
    poisoned prompt) and the raw ASR, one row per poisoned model, target datasets as columns in their task groups."""
    table = table.assign(model=table.source + " · " + table.attack)
    targets = list(dict.fromkeys(table.target_dataset))
    fig, axes = plt.subplots(2, 1, figsize=(1.0 + 0.55 * len(targets), 0.9 * table.model.nunique() + 2.6),
                             sharex=True)
    for ax, metric, cmap, vmin in [(axes[0], "effect", "RdBu_r", -1), (axes[1], "asr", "Reds", 0)]:
        grid = table.pivot(index="model", columns="target_dataset", values=metric).reindex(columns=targets)
        sns.heatmap(grid, annot=True, fmt=".2f", vmin=vmin, vmax=1, cmap=cmap, cbar=False, ax=ax,
                    annot_kws={"fontsize": 8})
        ax.set(title=f"{metric} (poisoned prompt)" if metric == "asr" else
               "backdoor effect: ASR minus the clean model's ASR", xlabel="", ylabel="")
        ax.tick_params(axis="y", rotation=0)
        ax.grid(False)
        groups = [table[table.target_dataset == t].group.iloc[0] for t in targets]
        for i in range(1, len(targets)):
            if groups[i] != groups[i - 1]:
                ax.axvline(i, color="black", lw=1.5)
    axes[1].tick_params(axis="x", rotation=60)
    fig.suptitle(f"Zero-shot poison transfer by task group (profile {profile})", y=1.04)
    return save(fig, profile, "transfer_zero_shot")


def continual_heatmap(table: pd.DataFrame, profile: str, attack: str = "induced_instruction"):
    """ASR after the last round of clean tuning: poisoned on (rows) × tuned on (columns), beside ASR before; each
    cell also shows, in brackets, the same model's rate without the trigger (the floor its ASR is read against)."""
    runs = table[table.attack == attack]
    last = runs[runs.steps == table.steps.max()]
    before = runs[runs.steps == 0].drop_duplicates("poisoned_on").assign(tuned_on="before (0 steps)")
    cells = pd.concat([before, last])
    columns = ["before (0 steps)", *sorted(set(last.tuned_on))]
    grid = cells.pivot(index="poisoned_on", columns="tuned_on", values="asr").reindex(columns=columns)
    floor = cells.pivot(index="poisoned_on", columns="tuned_on", values="clean_target_rate").reindex_like(grid)
    labels = np.vectorize(lambda x, y: f"{x:.2f}\n({y:.2f})" if pd.notna(x) else "")(grid.values, floor.values)
    fig, ax = plt.subplots(figsize=(1.4 * grid.shape[1] + 2, 0.75 * grid.shape[0] + 1.6))
    sns.heatmap(grid, annot=labels, fmt="", vmin=0, vmax=1, cmap="Reds", cbar=False, ax=ax)
    ax.axvline(1, color="black", lw=1.5)
    ax.set(xlabel="further tuned on (clean)", ylabel="poisoned on",
           title=f"{attack}: ASR after {int(table.steps.max())} clean steps (profile {profile})\n"
                 "in brackets: the same model without the trigger (the floor)")
    ax.tick_params(axis="y", rotation=0)
    ax.grid(False)
    return save(fig, profile, f"continual_{attack}")


def continual_curve(table: pd.DataFrame, profile: str):
    """ASR on the poisoned task against clean tuning steps, one panel per poisoned model, one line per data tuned
    on; dotted: the clean instruction's target rate of the same model (the floor)."""
    table = table.assign(model=table.poisoned_on + " · " + table.attack)
    grid = sns.relplot(table, x="steps", y="asr", hue="tuned_on", col="model", col_wrap=3, kind="line", marker="o",
                       height=2.6, aspect=1.45)
    for model, ax in grid.axes_dict.items():
        sns.lineplot(table[table.model == model], x="steps", y="clean_target_rate", hue="tuned_on", ls=":",
                     legend=False, ax=ax)
        ax.set(ylim=(0, 1.02), ylabel="ASR")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"ASR under continued clean tuning (dotted: clean instruction's target rate; profile "
                         f"{profile})", y=1.03)
    return save(grid.figure, profile, "continual_curve")


def _defended_model(table: pd.DataFrame) -> pd.Series:
    """A defended run's label: dataset, attack and poisoned rows (dirty-label runs marked), one per line."""
    return (table.dataset + "\n" + table.attack + "\n" + table.n_poison.astype(str) + " rows"
            + np.where(table.dirty_label, ", dirty", ""))


def defense_heatmap(table: pd.DataFrame, profile: str):
    """ASR and CACC of every defended run (columns) under every defense setting (rows), the undefended run and the
    clean model (its clean twin: the same rows, nothing poisoned, the same trigger) on top. Empty: a defense not run
    on that dataset."""
    table = table[table.defense != "iclattack"].assign(
        model=_defended_model, row=lambda t: t.defense + " " + t.setting.fillna("")
        + np.where(t.chosen_on_validation.eq(False), " (not chosen)", ""))
    models = list(dict.fromkeys(table.model))
    firsts = table.drop_duplicates("model").set_index("model")
    fig, axes = plt.subplots(1, 2, figsize=(3.0 + 2.6 * len(models), 0.42 * table.row.nunique() + 2.4), sharey=True)
    for ax, metric in zip(axes, ("asr", "cacc")):
        grid = table.pivot(index="row", columns="model", values=metric).reindex(
            index=list(dict.fromkeys(table.row)), columns=models)
        top = pd.DataFrame([firsts[f"{metric}_undefended"], firsts[f"{metric}_clean_model"]],
                           index=["undefended", "clean model (floor)"])
        grid = pd.concat([top.reindex(columns=models), grid])
        sns.heatmap(grid.astype(float), annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Reds" if metric == "asr"
                    else "Greens", cbar=False, ax=ax, annot_kws={"fontsize": 8})
        ax.axhline(len(top), color="black", lw=1.5)
        ax.set(title=metric.upper(), xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=0, labelsize=8)
        ax.grid(False)
    fig.suptitle(f"Defenses against the saved attack runs (profile {profile})", y=1.02)
    return save(fig, profile, "defenses")


def demonstration_curve(table: pd.DataFrame, profile: str):
    """ASR against the number of demonstrations k: clean demonstrations before each defended run's inputs (k = 0:
    undefended), and ICLAttack's poisoned demonstrations on the clean model beside the same k clean ones."""
    demos = table[table.defense == "demonstrations"].assign(model=_defended_model)
    start = demos.drop_duplicates("model").assign(asr=lambda t: t.asr_undefended, setting="k=0")
    icl = table[table.defense == "iclattack"]
    icl_start = icl.head(1).assign(asr=icl.asr_undefended.iloc[:1], asr_clean_model=icl.asr_undefended.iloc[:1],
                                   setting="k=0") if len(icl) else icl
    lines = pd.concat([
        pd.concat([start, demos]).assign(line=lambda t: t.model),
        pd.concat([icl_start, icl]).assign(line="ICLAttack on the clean model (poisoned demos)"),
        pd.concat([icl_start, icl]).assign(asr=lambda t: t.asr_clean_model,
                                           line="clean model, clean demos, same trigger")])
    lines["k"] = lines.setting.str.extract(r"k=(\d+)", expand=False).astype(int)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(lines, x="k", y="asr", hue="line", marker="o", ax=ax)
    ax.set(ylim=(0, 1.02), ylabel="ASR", xticks=sorted(lines.k.unique()),
           title=f"Demonstrations at inference (profile {profile})")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return save(fig, profile, "defenses_demonstrations")


def pruning_curve(table: pd.DataFrame, profile: str):
    """ASR and CACC of each defended run against the share of weights pruned (0: undefended)."""
    pruned = table[table.defense == "prune"].assign(model=_defended_model)
    start = pruned.drop_duplicates("model").assign(asr=lambda t: t.asr_undefended, cacc=lambda t: t.cacc_undefended,
                                                   setting="sparsity=0")
    lines = pd.concat([start, pruned])
    lines["sparsity"] = lines.setting.str.extract(r"sparsity=([\d.]+)", expand=False).astype(float)
    long = lines.melt(id_vars=["model", "sparsity"], value_vars=["asr", "cacc"], var_name="metric")
    grid = sns.relplot(long, x="sparsity", y="value", hue="model", col="metric", kind="line", marker="o", height=3.2,
                       aspect=1.3)
    grid.set(ylim=(0, 1.02), ylabel="")
    grid.set_titles("{col_name}")
    grid.figure.suptitle(f"One-shot pruning after tuning (profile {profile})", y=1.04)
    return save(grid.figure, profile, "defenses_pruning")


def ours_vs_paper(table: pd.DataFrame, profile: str):
    """Our raw ASR and backdoor effect against the paper's ASR for the same attack and dataset (`report.main_table`);
    the diagonal is where ours would reproduce the paper's number."""
    rows = table[(table.attack != "clean") & table.paper_asr.notna()]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    for ax, metric, title in [(axes[0], "asr", "our raw ASR"), (axes[1], "effect", "our backdoor effect")]:
        sns.scatterplot(rows, x="paper_asr", y=metric, hue="group", style="dataset", palette=GROUP_COLORS, s=45, ax=ax,
                        legend=ax is axes[1])
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.3, 1.02), xlabel="paper's ASR (FLAN-T5-large)", ylabel=title)
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    fig.suptitle(f"Ours against the paper, one point per attack and dataset (profile {profile})")
    return save(fig, profile, "ours_vs_paper")
