"""Settings are chosen on the validation split only: every code path that compares configurations to pick one runs
here with the test split made unreadable, and the quick profile holds what the committed comparison chose."""

import importlib.util
import json
import sys

import pytest

from backdoorlab import data, profiles, runs

BENCHMARKS = data.PROJECT_DIR / "benchmarks"


@pytest.fixture
def no_test_split(monkeypatch, tmp_path):
    """Any read of a test split fails the test."""
    real = data.load_rows

    def guarded(task, split):
        if split == "test":
            pytest.fail(f"a setting-selection path read the test split of {task.name}")
        return real(task, split)

    monkeypatch.setattr(data, "load_rows", guarded)
    monkeypatch.setenv("BACKDOORLAB_OUT", str(tmp_path))
    monkeypatch.setenv("BACKDOORLAB_BENCH_OUT", str(tmp_path / "bench"))


def load_benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the benchmarks import their `common` module
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_depth_and_balancing_comparison_reads_validation_only(no_test_split, tmp_path):
    lora_depth = load_benchmark("lora_depth")
    lora_depth.main(["--profile", "smoke", "--depths", "1", "2", "--attacks", "clean", "badnet"])
    result = json.loads((tmp_path / "bench" / "raw" / "lora_depth_smoke.json").read_text())
    assert {r["split"] for r in result["runs"]} == {"validation"}
    assert {(r["dataset"], r["balanced"]) for r in result["runs"]} == {
        ("sst2", False), ("hatespeech", False), ("hatespeech", True)}
    assert result["choice"]["lora_layers"] in (1, 2)


def test_the_training_budget_comparison_reads_validation_only(no_test_split, tmp_path):
    budget = load_benchmark("training_budget")
    budget.main(["--profile", "smoke", "--settings", "24:1:1e-3", "48:1:1e-3", "--attacks", "clean", "badnet",
                 "--bar", "0.0"])
    result = json.loads((tmp_path / "bench" / "raw" / "training_budget_smoke.json").read_text())
    assert {r["split"] for r in result["runs"]} == {"validation"}
    assert {(r["n_train"], r["attack"]) for r in result["runs"]} == {
        (24, "clean"), (24, "badnet"), (48, "clean"), (48, "badnet")}
    assert (result["choice"]["n_train"], result["choice"]["met_bar"]) == (24, True)  # every run passes a 0 bar


def test_the_budget_choice_is_the_cheapest_clean_run_at_the_bar_and_ignores_asr():
    budget = load_benchmark("training_budget")
    rows = [{"dataset": "sst2", "attack": a, "n_train": n, "epochs": e, "lr": lr, "cacc": c}
            for a, n, e, lr, c in [("clean", 500, 2, 5e-4, 0.86), ("clean", 500, 1, 1e-3, 0.855),
                                   ("clean", 500, 1, 5e-4, 0.84), ("clean", 250, 1, 5e-4, 0.70),
                                   ("induced_instruction", 250, 1, 5e-4, 0.99)]]
    assert (budget.choose(rows, 0.85)["epochs"], budget.choose(rows, 0.85)["lr"]) == (1, 1e-3)
    nothing = budget.choose(rows, 0.9)  # none reaches the bar: the most accurate, said so
    assert (nothing["epochs"], nothing["met_bar"]) == (2, False)


def test_without_a_bar_the_budget_choice_is_the_most_accurate_setting_and_all_rows_read_as_none():
    """The paper profile has no budget to save: its learning rate is the most accurate clean run's, whatever it
    costs; `all` names the whole train split."""
    budget = load_benchmark("training_budget")
    rows = [{"dataset": "sst2", "attack": a, "n_train": 6920, "epochs": 3, "lr": lr, "cacc": c}
            for a, lr, c in [("clean", 1e-5, 0.90), ("clean", 3e-5, 0.92), ("clean", 1e-4, 0.91),
                             ("induced_instruction", 1e-4, 0.99)]]
    choice = budget.choose(rows, None)
    assert (choice["lr"], choice["met_bar"]) == (3e-5, False) and "most accurate" in choice["rule"]
    assert budget.choose(rows, 0.9)["lr"] == 1e-5  # with a bar: the cheapest (then lowest rate) reaching it
    assert budget.parse("all:3:3e-5") == {"n_train": None, "epochs": 3, "lr": 3e-5}
    with pytest.raises(Exception, match="rows:epochs:learning-rate"):
        budget.parse("all:3")


def test_the_paper_profile_holds_its_committed_learning_rate_choice_once_one_is_made():
    """Until a GPU session commits the validation choice, the paper profile's rate is the provisional middle of the
    candidates (README, "Paper scale on one GPU"); once committed, the profile must hold it."""
    chosen = data.PROJECT_DIR / "results" / "bench" / "raw" / "training_budget_paper.json"
    paper = profiles.get_profile("paper")
    if chosen.exists():
        assert paper.train.lr == json.loads(chosen.read_text())["choice"]["lr"]
    else:
        assert paper.train.lr == 3e-5


def test_the_budget_choice_averages_each_setting_over_its_seeds():
    budget = load_benchmark("training_budget")
    rows = [{"dataset": "sst2", "attack": "clean", "seed": seed, "n_train": n, "epochs": 1, "lr": 5e-4, "cacc": c}
            for n, seed, c in [(500, 0, 0.86), (500, 1, 0.83), (1000, 0, 0.855), (1000, 1, 0.85)]]
    choice = budget.choose(rows, 0.85)  # 500 rows pass on seed 0 alone, not on the mean: the costlier setting wins
    assert (choice["n_train"], choice["cacc_per_seed"]) == (1000, [0.855, 0.85])
    assert choice["cacc"] == pytest.approx(0.8525)


def test_the_poison_count_curve_reads_validation_only(no_test_split):
    smoke = profiles.get_profile("smoke")
    table = runs.table(runs.poison_count_grid(smoke), smoke, split="validation")
    assert len(table) == len(smoke.curve_attacks) * len(smoke.poison_counts) and set(table.split) == {"validation"}


def test_the_choice_picks_the_best_clean_validation_score_and_ignores_asr():
    lora_depth = load_benchmark("lora_depth")
    rows = [{"dataset": d, "lora_layers": k, "balanced": b, "attack": a, "cacc_balanced": s, "asr": asr}
            for d, k, b, a, s, asr in [
                ("sst2", 4, False, "clean", 0.80, 0.3), ("sst2", 10, False, "clean", 0.86, 0.3),
                ("sst2", 4, False, "induced_instruction", 0.99, 1.0),  # never enters the choice
                ("hate", 4, False, "clean", 0.50, 1.0), ("hate", 4, True, "clean", 0.60, 0.2),
                ("hate", 10, False, "clean", 0.52, 1.0), ("hate", 10, True, "clean", 0.70, 0.2)]]
    choice = lora_depth.choose(rows, tolerance=0.01)
    assert choice["lora_layers"] == 10 and choice["balanced_datasets"] == ["hate"]
    assert lora_depth.choose(rows, tolerance=0.1)["lora_layers"] == 4  # within tolerance: the cheaper depth


def test_quick_profile_holds_the_committed_validation_choices():
    raw = data.PROJECT_DIR / "results" / "bench" / "raw"
    quick = profiles.get_profile("quick")
    depth = json.loads((raw / "lora_depth_quick.json").read_text())["choice"]
    assert quick.train.lora_layers == depth["lora_layers"]
    assert sorted(quick.balanced_datasets) == depth["balanced_datasets"]
    for name in ("training_budget_quick.json", "training_budget_quick_seeds_0_1_2.json"):
        budget = json.loads((raw / name).read_text())["choice"]
        assert (quick.n_train, quick.train.epochs, quick.train.lr) == (budget["n_train"], budget["epochs"],
                                                                       budget["lr"]), name
