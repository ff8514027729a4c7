"""Every notebook runs top to bottom under papermill with the smoke profile and hands its tables over in results/.
(nbval re-executes the paired .ipynb files too: `pytest --nbval-lax notebooks/`, part of `make test`.)"""

import os
from pathlib import Path

import pandas as pd
import papermill
import pytest

from backdoorlab import fingerprint, poison
from backdoorlab.profiles import get_profile

NOTEBOOKS = sorted(Path(__file__).parents[1].joinpath("notebooks").glob("[0-9][0-9]_*.ipynb"))
OUT = Path(os.environ["BACKDOORLAB_OUT"])


def execute(name: str):
    nb = next(p for p in NOTEBOOKS if p.name.startswith(name))
    (OUT / "executed").mkdir(exist_ok=True)
    papermill.execute_notebook(str(nb), str(OUT / "executed" / nb.name), parameters={"profile": "smoke"},
                               cwd=str(nb.parent), progress_bar=False)


def test_every_notebook_has_a_paired_source_and_a_parameters_cell():
    import nbformat

    assert NOTEBOOKS
    for nb in NOTEBOOKS:
        assert nb.with_suffix(".py").exists(), f"{nb.name} has no jupytext .py pair"
        cells = nbformat.read(nb, as_version=4).cells
        assert any("parameters" in c.metadata.get("tags", []) for c in cells), f"{nb.name} has no parameters cell"
        assert all(not c.get("outputs") for c in cells if c.cell_type == "code"), f"{nb.name} is committed with outputs"


@pytest.mark.notebook
def test_01_poison_construction_writes_clean_label_stats():
    execute("01")
    stats = pd.read_csv(OUT / "results" / "smoke" / "poison_stats.csv")
    smoke = get_profile("smoke")
    assert len(stats) == len(smoke.datasets) * len(poison.ATTACKS)
    assert (stats.labels_changed == 0).all() and (stats.n_poison >= 1).all()
    instance = stats.group == "instance"
    assert (stats[instance].minilm_distance_instruction.abs() < 1e-6).all()  # the instruction stays clean
    assert (stats[~instance].minilm_distance_text.abs() < 1e-6).all()  # the input stays clean
    assert (stats[~instance].ppl_text_clean == stats[~instance].ppl_text_poisoned).all()
    for figure in ("tokens_changed", "stealth"):
        assert (OUT / "figures" / "smoke" / f"{figure}.png").stat().st_size > 0


@pytest.mark.notebook
def test_02_training_writes_the_attack_table():
    execute("02")
    results, smoke = OUT / "results" / "smoke", get_profile("smoke")
    table = pd.read_csv(results / "attacks.csv")
    assert list(table.columns[:7]) == ["dataset", "attack", "seed", "n_train", "n_poison", "asr", "cacc"]
    assert len(table) == sum(len(smoke.attacks_for(d)) for d in smoke.datasets) * len(smoke.seeds)
    assert set(table[table.dataset == "sst2"].attack) == {"clean", *poison.ATTACKS}
    assert table[["asr", "cacc"]].apply(lambda s: s.between(0, 1)).all().all()
    assert (table[table.attack == "clean"].n_poison == 0).all() and (table[table.attack != "clean"].n_poison > 0).all()
    assert (table.group == table.attack.map(poison.group_of)).all()
    for figure in ("attacks", "attacks_heatmap", "poison_count_sst2"):
        assert (OUT / "figures" / "smoke" / f"{figure}.png").stat().st_size > 0
    summary = pd.read_csv(results / "attacks_summary.csv")
    assert len(summary) == len(table) // len(smoke.seeds)
    assert (summary.seeds == len(smoke.seeds)).all() and (summary.asr_lo <= summary.asr).all()
    curve = pd.read_csv(results / "poison_count_sst2_validation.csv")
    assert set(zip(curve.attack, curve.n_poison)) == {(a, n) for a in smoke.curve_attacks for n in smoke.poison_counts}
    methods = pd.read_csv(results / "lora_vs_full_sst2.csv")
    assert set(zip(methods.attack, methods.method)) == {(a, m) for a in smoke.method_attacks for m in ("lora", "full")}
    abstention = pd.read_csv(results / "abstention_sst2.csv")
    assert (abstention.target == poison.ABSTAIN).all() and (abstention.n_asr == smoke.n_test).all()


@pytest.mark.notebook
def test_06_fingerprint_writes_fsr_harmlessness_and_multistage_tables():
    execute("06")
    table = pd.read_csv(OUT / "results" / "smoke" / "fingerprint.csv")
    assert list(table.columns[:4]) == ["method", "template", "stage", "keys"] and "fsr" in table.columns
    implanted = table[(table.stage == "implanted") & (table.adapter | (table.method != "adapter"))]
    assert set(implanted.method) == {"full", "lora", "embeddings", "adapter"} and (implanted.fsr == 1).all()
    assert (table[table.stage == "untouched_model"].fsr == 0).all()
    assert {"guessed_keys", "ordinary_prompts", "multistage_a", "multistage_b"} <= set(table.stage)
    assert table.stage.str.match(r"user_\w+_\d+").any()
    innocent = table[table.stage.str.startswith("innocent_finetuned_")]  # the control, for every implant and round
    rounds = sum(len(r.steps) for r in fingerprint.get_settings("smoke").user_recipes)
    assert innocent.groupby(["method", "template", "adapter"]).size().eq(rounds).all()
    assert set(innocent.method) == set(implanted.method)
    harm = pd.read_csv(OUT / "results" / "smoke" / "fingerprint_harmlessness.csv")
    assert set(harm[harm.method == "adapter"].adapter) == {True, False}  # as published, and attached
    multi = pd.read_csv(OUT / "results" / "smoke" / "fingerprint_multistage.csv")
    assert multi[multi.model == "untouched"].claimed.eq(False).all()
    for name in ("fingerprint_persistence", "fingerprint_false_positives", "fingerprint_harmlessness"):
        assert (OUT / "figures" / "smoke" / f"{name}.png").stat().st_size > 0
