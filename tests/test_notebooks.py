"""Every notebook runs top to bottom under papermill with the smoke profile and hands its tables over in results/.
(nbval re-executes the paired .ipynb files too: `pytest --nbval-lax notebooks/`, part of `make test`.)"""

import os
from pathlib import Path

import pandas as pd
import papermill
import pytest

from backdoorlab import defenses, fingerprint, poison, transfer
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


def test_every_committed_notebook_holds_the_cells_of_its_source():
    """The .py is the source of truth; an .ipynb left behind by an edit runs old code under nbval and papermill."""
    import jupytext

    for nb in NOTEBOOKS:
        committed = [(c.cell_type, c.source) for c in jupytext.read(nb).cells]
        source = [(c.cell_type, c.source) for c in jupytext.read(nb.with_suffix(".py")).cells]
        assert committed == source, f"{nb.name} differs from its source: jupytext --sync {nb.with_suffix('.py')}"


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
    runs_per_seed = sum(len(smoke.attacks_for(d)) for d in smoke.datasets)
    seeded = {(d, a, s) for d, a, s in zip(table.dataset, table.attack, table.seed) if s != smoke.seeds[0]}
    assert seeded == {("sst2", a, s) for a in smoke.seeded_attacks for s in smoke.headline_seeds} != set()
    assert len(table) == runs_per_seed + len(seeded)
    assert set(table[table.dataset == "sst2"].attack) == {"clean", *poison.ATTACKS}
    assert table[["asr", "cacc"]].apply(lambda s: s.between(0, 1)).all().all()
    assert (table[table.attack == "clean"].n_poison == 0).all() and (table[table.attack != "clean"].n_poison > 0).all()
    assert (table.group == table.attack.map(poison.group_of)).all()
    for figure in ("backdoor_effect", "attacks_heatmap", "poison_count_sst2"):
        assert (OUT / "figures" / "smoke" / f"{figure}.png").stat().st_size > 0
    summary = pd.read_csv(results / "attacks_summary.csv")
    assert len(summary) == runs_per_seed
    seeds = summary.set_index(["dataset", "attack"]).seeds
    assert seeds[("sst2", "clean")] == 1 + len(smoke.headline_seeds) and seeds.drop(("sst2", "clean")).eq(1).all()
    assert (summary.asr_lo <= summary.asr).all() and (summary.asr_rows_lo <= summary.asr).all()
    curve = pd.read_csv(results / "poison_count_sst2_validation.csv")
    assert set(zip(curve.attack, curve.n_poison)) == {(a, n) for a in smoke.curve_attacks for n in smoke.poison_counts}
    methods = pd.read_csv(results / "lora_vs_full_sst2.csv")
    assert set(zip(methods.attack, methods.method)) == {(a, m) for a in smoke.method_attacks for m in ("lora", "full")}
    abstention = pd.read_csv(results / "abstention_sst2.csv")
    assert (abstention.target == poison.ABSTAIN).all() and (abstention.n_asr == smoke.n_test).all()


@pytest.mark.notebook
def test_03_transfer_writes_instruction_and_zero_shot_tables():
    execute("03")
    results, smoke = OUT / "results" / "smoke", get_profile("smoke")
    instruction = pd.read_csv(results / "transfer_instruction.csv")
    others = [d for d in smoke.datasets if d != "sst2"]
    assert set(zip(instruction.dataset, instruction.attack)) == {
        (d, a) for d in others for a in ("induced_instruction@sst2", "induced_instruction", *smoke.transfer_instance)}
    assert (instruction.effect == instruction.asr - instruction.asr_clean_model).all()
    zero_shot = pd.read_csv(results / "transfer_zero_shot.csv")
    for column in ("source", "attack", "target_dataset", "group", "asr", "asr_clean_model", "clean_target_rate",
                   "n_asr"):
        assert column in zero_shot.columns
    assert set(zero_shot.target_dataset) == set(transfer.target_datasets()) and zero_shot.target_dataset.nunique() >= 15
    assert set(zero_shot.group) == set(transfer.groups()) and len(zero_shot) == 15 * len(smoke.transfer_sources)
    assert zero_shot[["asr", "asr_clean_model", "clean_target_rate"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (zero_shot.n_asr <= smoke.transfer_rows).all() and (zero_shot.n_asr > 0).all()
    assert (OUT / "figures" / "smoke" / "transfer_zero_shot.png").stat().st_size > 0


@pytest.mark.notebook
def test_04_continual_learning_writes_the_poisoned_on_by_tuned_on_table():
    execute("04")
    results, smoke = OUT / "results" / "smoke", get_profile("smoke")
    table = pd.read_csv(results / "continual.csv")
    for column in ("poisoned_on", "attack", "tuned_on", "steps", "asr", "cacc"):
        assert column in table.columns
    induced = table[table.attack == "induced_instruction"]
    last = induced[induced.steps == max(smoke.continual_steps)]
    assert set(zip(last.poisoned_on, last.tuned_on)) >= {(a, b) for a in smoke.datasets for b in smoke.datasets}
    assert set(table.steps) == {0, *smoke.continual_steps}
    step0 = table[table.steps == 0]  # the poisoned model itself, the same whatever it is tuned on next
    assert step0.groupby(["poisoned_on", "attack"]).asr.nunique().eq(1).all()
    assert table[table.tuned_on != "alpaca"].cacc_new_task.notna().all()
    chain = pd.read_csv(results / "continual_chain.csv")
    assert list(chain.tuned_on.fillna("")) == ["", *smoke.continual_chain]
    for figure in ("continual_curve", "continual_induced_instruction"):
        assert (OUT / "figures" / "smoke" / f"{figure}.png").stat().st_size > 0


@pytest.mark.notebook
def test_05_defenses_writes_the_attack_by_defense_matrix():
    execute("05")
    results, smoke = OUT / "results" / "smoke", get_profile("smoke")
    table = pd.read_csv(results / "defenses.csv")
    for column in ("dataset", "attack", "defense", "setting", "asr", "cacc", "asr_undefended", "cacc_undefended",
                   "n_asr", "precision", "recall"):
        assert column in table.columns
    assert set(table.defense) == set(defenses.DEFENSES)  # smoke defends every candidate with every defense
    assert table[["asr", "cacc", "asr_undefended", "cacc_undefended"]].apply(lambda c: c.between(0, 1)).all().all()
    assert table[table.acts_on == "data"].recall.notna().all() and table[table.acts_on != "data"].recall.isna().all()
    per_run = table.groupby(["dataset", "attack", "dirty_label"])
    assert per_run.asr_undefended.nunique().eq(1).all()  # one undefended number per run, beside every defense
    assert set(table[table.defense == "demonstrations"].setting) == {f"k={k}" for k in smoke.demonstration_k}
    audit = pd.read_csv(results / "defenses_audit.csv")
    assert (audit[audit.group == "instance"].recall == 0).all()
    onion = pd.read_csv(results / "defenses_onion_validation.csv")
    assert onion.groupby("field").chosen.sum().eq(1).all()
    for name in ("defenses", "defenses_demonstrations", "defenses_pruning"):
        assert (OUT / "figures" / "smoke" / f"{name}.png").stat().st_size > 0


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


@pytest.mark.notebook
def test_07_report_checks_every_claim_on_the_smoke_results():
    from backdoorlab import report

    execute("07")
    text = (OUT / "results" / "smoke" / "report.md").read_text(encoding="utf-8")
    claims = report.checks(report.Results("smoke", OUT / "results" / "smoke"))
    assert set(claims.verdict) <= set(report.VERDICTS) and claims.notebook.nunique() == 5  # notebooks 02-06
    assert f"{len(claims)} cells:" in text and "## What did not reproduce" in text
    assert (OUT / "figures" / "smoke" / "ours_vs_paper.png").stat().st_size > 0


@pytest.mark.notebook
def test_student_copies_run_up_to_their_first_exercise_and_hold_no_solution(tmp_path):
    """`make exercises`: each student copy runs with smoke up to its exercises (upstream runs are cached by the
    notebook tests above); its solution cells are stubs, and every notebook has at least two exercises."""
    import nbformat

    from backdoorlab import course

    copies = course.write_exercises(tmp_path / "exercises")
    assert [p.name for p in copies] == [nb.name for nb in NOTEBOOKS]
    for path in copies:
        nb = nbformat.read(path, as_version=4)
        start = course.first_exercise(nb.cells)
        assert start < len(nb.cells) and nb.cells[start].source.count("\n1. ") == 1
        assert nb.cells[start].source.count("\n2. ") == 1, f"{path.name}: fewer than two exercises"
        solutions = [c for c in nb.cells if course.SOLUTION_TAG in c.metadata.get("tags", [])]
        assert all(course.STUB in c.source for c in solutions)
        head = tmp_path / f"head-{path.name}"
        nbformat.write(nbformat.v4.new_notebook(cells=nb.cells[:start], metadata=nb.metadata), head)
        papermill.execute_notebook(str(head), str(tmp_path / f"ran-{path.name}"), parameters={"profile": "smoke"},
                                   cwd=str(NOTEBOOKS[0].parent), progress_bar=False)


def test_a_solution_stub_keeps_signatures_and_docstrings_and_raises():
    from backdoorlab import course

    source = 'import math\n\n\n@staticmethod\ndef f(x: int) -> int:\n    """Doc."""\n    return x + 1\n\n\n' \
             'class A:\n    name = "a"\n\n    def g(self):\n        return 1\n\n\nprint("not kept")\n'
    stubbed = course.stub(source)
    assert "import math" in stubbed and "@staticmethod\ndef f(x: int) -> int:\n    \"\"\"Doc.\"\"\"" in stubbed
    assert "return" not in stubbed and "print" not in stubbed and stubbed.count(course.STUB) == 2
    with pytest.raises(NotImplementedError):  # a class stub says so as soon as its cell runs
        exec(stubbed, {})
    namespace = {}
    exec(course.stub('def f(x):\n    """Doc."""\n    return x\n'), namespace)  # a function's, when called
    with pytest.raises(NotImplementedError):
        namespace["f"](1)
