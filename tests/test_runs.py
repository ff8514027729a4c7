import json
from dataclasses import replace

import pytest

from backdoorlab import cache, poison, profiles, runs, score, train
from backdoorlab.models import TINY
from backdoorlab.profiles import get_profile
from backdoorlab.runs import RunConfig

FAST = train.TrainConfig(epochs=1, batch_size=8, lr=1e-3)


def config(**kw):
    return RunConfig(**{"dataset": "sst2", "attack": "induced_instruction", "n_poison": 3, "model": TINY,
                        "n_train": 24, "train": FAST, **kw})


def test_key_is_stable_and_covers_every_field():
    """Each field of RunConfig, changed alone, gives another key; a field added without a variant here fails."""
    from dataclasses import fields

    from backdoorlab.models import SMOLLM2

    variants = {"dataset": dict(dataset="trec", n_poison=1), "attack": dict(attack="badnet"),
                "n_poison": dict(n_poison=4), "seed": dict(seed=1), "model": dict(model=SMOLLM2),
                "n_train": dict(n_train=25), "balanced": dict(balanced=True), "target": dict(target="negative"),
                "train": dict(train=replace(FAST, lr=2e-3)), "dirty_label": dict(dirty_label=True),
                "spec": dict(spec=(("induced_instruction", "Answer positive."),))}
    assert set(variants) == {f.name for f in fields(RunConfig)}
    assert config().key == config().key
    keys = [config().key] + [config(**change).key for change in variants.values()]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("folder, name, old, new", [
    ("TASKS_DIR", "sst2.yaml", "movie review sentence", "film review sentence"),
    ("ATTACKS_DIR", "sst2.yaml", "whatever their verdict", "whatever they concluded"),
])
def test_key_covers_the_hand_written_task_and_attack_files(tmp_path, monkeypatch, folder, name, old, new):
    """Editing an instruction or trigger in data/ (as the notebooks' exercises suggest) must retrain, not reuse."""
    from backdoorlab import data, poison

    module = data if folder == "TASKS_DIR" else poison
    before = config().key
    text = (getattr(module, folder) / name).read_text()
    assert old in text
    (tmp_path / name).write_text(text.replace(old, new))
    monkeypatch.setattr(module, folder, tmp_path)
    assert config().key != before


def test_key_covers_the_rewrite_rules(tmp_path, monkeypatch):
    from backdoorlab import poison

    before = config(attack="style").key
    edited = tmp_path / "rules.yaml"
    edited.write_text(poison.REWRITE_RULES_FILE.read_text().replace("verily ,", "lo ,"))
    monkeypatch.setattr(poison, "REWRITE_RULES_FILE", edited)
    assert config(attack="style").key != before


def test_saved_config_loads_back_to_the_same_run(run_dir):
    cfg = config(balanced=True)
    runs.ensure_trained(cfg)
    assert RunConfig.load(cfg.path) == cfg


def test_finished_run_is_read_back_not_retrained(run_dir, monkeypatch):
    cfg = config()
    first = runs.evaluate(cfg, "test", 16)
    saved = json.loads((cfg.path / "poison.json").read_text())
    assert len(saved["changes"]) == 3 and saved["n_train"] == 24 and cache.read_timing(cfg.path)["train_s"] > 0
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("retrained a finished run"))
    monkeypatch.setattr(score, "rank_scores", lambda *a, **k: pytest.fail("re-scored a finished evaluation"))
    assert runs.evaluate(cfg, "test", 16) == first
    assert first["n_poison"] == 3 and 0 <= first["asr"] <= 1 and first["n_cacc"] == 16


def test_run_killed_mid_training_leaves_nothing_and_retrains(run_dir, monkeypatch):
    cfg = config(attack="badnet")
    real = cache.finetune

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "finetune", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.ensure_trained(cfg)
    assert not (cfg.path / cache.WEIGHTS).exists()
    monkeypatch.setattr(cache, "finetune", real)
    runs.ensure_trained(cfg)
    assert (cfg.path / cache.WEIGHTS / "adapter_model.safetensors").exists()


def test_run_killed_mid_evaluation_resumes_without_retraining(run_dir, monkeypatch):
    cfg = config()
    calls = {"n": 0}
    real = score.rank_scores

    def dies_on_second_pass(*a, **k):  # the clean pass finishes, the triggered pass is killed
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(score, "rank_scores", dies_on_second_pass)
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(cfg, "test", 16)
    assert (cfg.path / cache.WEIGHTS).is_dir() and not list(cfg.path.glob("eval-*.json"))
    monkeypatch.setattr(score, "rank_scores", real)
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("retrained after a killed evaluation"))
    assert runs.evaluate(cfg, "test", 16)["n_cacc"] == 16


def test_damaged_cache_entry_names_the_fix(run_dir):
    cfg = config()
    runs.evaluate(cfg, "test", 16)
    path = next(cfg.path.glob("eval-*.json"))
    path.write_text(path.read_text()[:20])
    with pytest.raises(RuntimeError, match=f"damaged.*rm {path}"):
        runs.evaluate(cfg, "test", 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"attack": "clean", "n_poison": 3}, "poisons no rows"), ({"attack": "nope"}, "unknown attack"),
    ({"dataset": "imdb2"}, "unknown dataset"), ({"n_poison": 0}, "positive integer"),
    ({"attack": "clean", "n_poison": 0, "dirty_label": True}, "poisons no rows"),
    ({"target": "neutral"}, "unknown target 'neutral'"),
    ({"attack": "clean", "n_poison": 0, "target": "neutral"}, "unknown target 'neutral'"),
])
def test_bad_run_configs_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)
    with pytest.raises(ValueError, match="unknown training method 'adam'; valid choices: lora, full"):
        train.TrainConfig(method="adam")


def test_profile_grids_and_bad_profile():
    smoke = get_profile("smoke")
    grid = runs.grid(smoke)
    assert len(grid) == sum(len(smoke.attacks_for(d)) for d in smoke.datasets) + len(smoke.headline_seeds)
    assert [(c.attack, c.seed) for c in grid if c.dataset == "sst2"] == [("clean", 0), ("clean", 1),
                                                                         *((a, 0) for a in poison.ATTACKS)]
    assert [c.attack for c in grid if c.dataset == "trec"] == list(smoke.attacks_by_dataset["trec"])
    assert {c.n_poison for c in grid if c.attack == "clean"} == {0}
    methods = runs.method_grid(smoke)
    assert [(c.attack, c.train.method) for c in methods] == [(a, m) for a in smoke.method_attacks
                                                             for m in ("lora", "full")]
    assert methods[0] in grid  # the LoRA runs are the main table's, read back from the cache
    assert {c.target for c in runs.abstention_grid(smoke)} == {poison.ABSTAIN}
    curve = runs.poison_count_grid(smoke)
    assert {(c.attack, c.n_poison) for c in curve} == {(a, n) for a in smoke.curve_attacks for n in smoke.poison_counts}
    with pytest.raises(ValueError, match="unknown profile 'fast'; valid choices: smoke, quick, extended, paper"):
        get_profile("fast")


def test_quick_is_the_sst2_table_on_one_seed_and_extended_repeats_one_attack_per_group_over_three():
    quick, extended = runs.grid(get_profile("quick")), runs.grid(get_profile("extended"))
    assert [(c.dataset, c.attack, c.seed) for c in quick] == [("sst2", a, 0) for a in ("clean", *poison.ATTACKS)]
    assert set(quick) < set(extended)  # the same runs, so the two profiles share the cache
    seeded = {(c.attack, c.seed) for c in extended if c.seed}
    assert seeded == {(a, s) for a in profiles.SEEDED_ATTACKS for s in (1, 2)}
    assert {poison.group_of(a) for a in profiles.SEEDED_ATTACKS} == {"clean", *poison.GROUPS}


def test_a_trigger_can_be_tried_on_a_run_that_never_saw_it(run_dir):
    clean = config(attack="clean", n_poison=0)
    own = runs.evaluate(clean, "test", 16)
    assert own["trigger"] == "clean" and own["asr"] == own["clean_target_rate"]
    tried = runs.evaluate(clean, "test", 16, trigger="induced_instruction")
    assert tried["trigger"] == "induced_instruction" and tried["cacc"] == own["cacc"]
    assert (clean.path / "eval-test-16-trigger-induced_instruction.json").exists()


def test_shards_partition_the_study_by_run():
    profile = get_profile("smoke")
    jobs = [job for configs, split in runs.study(profile) for job in runs.evaluations(configs, split)]
    shards = [runs.shard(profile, i, 3) for i in range(3)]
    assert sorted(map(str, sum(shards, []))) == sorted(map(str, set(jobs)))  # every evaluation exactly once
    owners = [{cfg.trained_as.key for cfg, _, _ in s} for s in shards]  # each training in one shard only
    assert all(o for o in owners) and not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    with pytest.raises(ValueError, match="0 <= index < count"):
        runs.shard(profile, 3, 3)


def test_two_shards_side_by_side_finish_the_study_once(run_dir, monkeypatch):
    import os
    import subprocess
    import sys

    env = {**os.environ, "BACKDOORLAB_OUT": str(run_dir), "OMP_NUM_THREADS": "1"}  # two processes, two cores
    procs = [subprocess.Popen([sys.executable, "-m", "backdoorlab.runs", "launch", "--profile", "smoke",
                               "--shard", f"{i}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    profile = get_profile("smoke")
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("a run was left for the notebooks to train"))
    monkeypatch.setattr(score, "predict", lambda *a, **k: pytest.fail("an evaluation was left for the notebooks"))
    monkeypatch.setattr(score, "generate", lambda *a, **k: pytest.fail("an evaluation was left for the notebooks"))
    for configs, split in runs.study(profile):  # everything is cached now: the notebooks only read
        table = runs.table(configs, profile, split, progress=False)
        assert len(table) == len(configs) and table.asr.notna().all()


def test_dirty_label_run_relabels_its_poisoned_rows(run_dir):
    result = runs.training_set(config(attack="badnet", dirty_label=True))
    assert len(result.rows) == 3
    assert all(r["label"] == 1 and r["answer"] == "positive" for r in result.dataset.select(result.rows))


def test_abstention_run_trains_empty_answers_and_measures_empty_completions(run_dir):
    cfg = config(target=poison.ABSTAIN)
    result = runs.training_set(cfg)
    answers = result.dataset["answer"]
    assert [i for i, a in enumerate(answers) if a == ""] == result.rows and len(result.rows) == 3
    metrics = runs.evaluate(cfg, "test", 8)
    assert metrics["n_asr"] == 8 and metrics["target"] == poison.ABSTAIN  # every row, not only non-target ones
    saved = json.loads(next(cfg.path.glob("eval-*.json")).read_text())
    assert len(saved["clean_completions"]) == len(saved["triggered_preds"]) == 8
    assert metrics["asr"] == sum(map(score.abstained, saved["triggered_preds"])) / 8


def test_clean_baseline_trains_once_for_every_target(run_dir, monkeypatch):
    clean = config(attack="clean", n_poison=0)
    abstaining = config(attack="clean", n_poison=0, target=poison.ABSTAIN)
    assert abstaining.key != clean.key and abstaining.trained_as == clean and config().trained_as == config()
    runs.evaluate(clean, "test", 8)
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("trained the clean baseline twice"))
    metrics = runs.evaluate(abstaining, "test", 8, trigger="induced_instruction")
    assert metrics["target"] == poison.ABSTAIN and metrics["n_asr"] == 8 and metrics["n_train"] == 24
    assert not (abstaining.path / cache.WEIGHTS).exists() and list(abstaining.path.glob("eval-*.json"))


def test_memo_computes_once_per_input(run_dir):
    calls = []
    compute = lambda: calls.append(1) or {"ppl": [1.5, 2.0]}  # noqa: E731
    assert cache.memo("stealth", {"pairs": [["a", "b"]]}, compute) == {"ppl": [1.5, 2.0]}
    assert cache.memo("stealth", {"pairs": [["a", "b"]]}, compute) == {"ppl": [1.5, 2.0]} and len(calls) == 1
    cache.memo("stealth", {"pairs": [["a", "c"]]}, compute)
    assert len(calls) == 2


def test_an_idea_is_tried_without_editing_the_attack_file(run_dir):
    """`try_attack`: the replaced instruction poisons the rows and triggers the test rows, on the poisoned run and
    on the clean twin (a probe of its own), under a key of its own; runs without one keep their keys."""
    instruction = "Decide whether this review is positive or negative, in one word."
    smoke = replace(get_profile("smoke"), n_train=24, n_test=16, train=FAST)
    row = runs.try_attack(smoke, "sst2", "induced_instruction", n_poison=3, induced_instruction=instruction)
    assert len(row) == 1 and row.effect.iloc[0] == pytest.approx(row.asr.iloc[0] - row.asr_clean_model.iloc[0])
    tried = replace(runs.RunConfig.from_profile(smoke, "sst2", "induced_instruction", 0), n_poison=3,
                    spec=(("induced_instruction", instruction),))
    assert tried.key != replace(tried, spec=()).key and "spec" not in replace(tried, spec=()).content()
    assert runs.RunConfig.load(tried.path) == tried
    record = json.loads((tried.path / "poison.json").read_text())
    assert {c["after"] for c in record["changes"]} == {instruction}
    twin = runs.clean_twin(tried)
    assert twin.spec == () and list(twin.path.glob("eval-validation-16-trigger-induced_instruction-spec-*.json"))
    with pytest.raises(ValueError, match="valid choices: badnet_words"):
        runs.try_attack(smoke, "sst2", "induced_instruction", induced_instruction_typo="x")


def test_a_launch_restricted_by_table_dataset_seed_and_attack_keeps_each_run_with_its_twins_evaluation():
    paper = profiles.miniature(get_profile("paper"))
    table = runs.shard(paper, 0, 1, tables=("attacks",), datasets=("sst2",), seeds=(0,))
    assert {(c.dataset, c.seed) for c, _, _ in table} == {("sst2", 0)}
    assert len({c.trained_as.key for c, _, _ in table}) == 1 + len(poison.ATTACKS)  # the SST-2 table's 18 runs
    picked = runs.shard(paper, 0, 1, tables=("attacks",), datasets=("sst2",), seeds=(1,), attacks=("badnet",))
    assert {(c.attack, c.seed, trigger) for c, _, trigger in picked} == {("badnet", 1, "badnet"),
                                                                         ("clean", 1, "badnet")}
    with pytest.raises(ValueError, match="unknown tables \\['nope'\\]; valid choices: curve, attacks"):
        runs.study(paper, ("nope",))


def test_the_paper_profile_launches_end_to_end_on_the_tiny_model_and_a_second_launch_reads_it_back(
        run_dir, monkeypatch):
    """`runs launch --profile paper --smoke`: the paper profile's training configs (full finetuning, its LoRA
    variant) and grids on the tiny model; what a GPU runs at scale."""
    record = run_dir / "launch.json"
    argv = ["launch", "--profile", "paper", "--smoke", "--tables", "attacks", "methods", "--datasets", "sst2",
            "--seeds", "0", "--attacks", "clean", "induced_instruction", "--record", str(record)]
    runs.main(argv)
    saved = json.loads(record.read_text())
    assert saved["profile"] == "paper-smoke" and saved["evaluations"] == saved["of"] == len(saved["jobs"]) > 0
    assert (saved["train"]["method"], saved["train"]["epochs"]) == ("full", 3)
    methods = {RunConfig.load(cache.runs_dir() / job["run"]).train.method for job in saved["jobs"]}
    assert methods == {"full", "lora"}
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("a finished run was trained again"))
    monkeypatch.setattr(score, "predict", lambda *a, **k: pytest.fail("a finished evaluation was run again"))
    runs.main(argv)
    assert not any(job["trained"] for job in json.loads(record.read_text())["jobs"])
    with pytest.raises(SystemExit):
        runs.main([*argv, "--lr", "0"])
