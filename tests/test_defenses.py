"""Defenses: each does what it claims on a small fixture, bad parameters fail with the valid choices, and every
registered defense runs on a tiny attack run through the cache (a contract test over the registry)."""

from dataclasses import replace

import pytest
import torch
from datasets import Dataset

from backdoorlab import cache, data, defense_matrix, defenses, runs
from backdoorlab.models import SMOLLM2, TINY
from backdoorlab.profiles import get_profile
from backdoorlab.train import TrainConfig

FAST = TrainConfig(epochs=1, batch_size=8, lr=1e-3)


def tiny_run(attack="induced_instruction", **changes) -> runs.RunConfig:
    return replace(runs.RunConfig(dataset="sst2", attack=attack, n_poison=4, model=TINY, n_train=32, train=FAST),
                   **changes)


# ---- the registry ---------------------------------------------------------------------------------------------------

def test_registry_tags_every_defense_with_where_it_acts():
    assert set(defenses.DEFENSES) == {"onion", "demonstrations", "iclattack", "clean_alignment", "w2s", "prune", "psim",
                                      "instruction_audit"}
    assert {cls.where for cls in defenses.DEFENSES.values()} == set(defenses.WHERE)


@pytest.mark.parametrize("name, params, message", [
    ("nope", {}, "unknown defense 'nope'; valid choices: onion, "),
    ("prune", {"rate": 0.1}, "no parameter rate; valid choices: sparsity, rows"),
    ("demonstrations", {"k": -1}, "k must be an integer >= 0"),
    ("prune", {"sparsity": 1.0}, "sparsity must be in [0, 1)"),
    ("prune", {"sparsity": -0.1}, "sparsity must be in [0, 1)"),
    ("onion", {"field": "label"}, "valid choices: text, instruction"),
    ("iclattack", {"trigger": "instr_cf"}, "valid choices: badnet, addsent"),
    ("clean_alignment", {"steps": 24, "round_steps": 16}, "positive multiple of round_steps"),
    ("psim", {"threshold": 1.5}, "threshold must be in (0, 1)"),
])
def test_bad_parameters_name_the_valid_choices(name, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        defenses.get_defense(name, **params)


@pytest.mark.parametrize("name", sorted(defenses.DEFENSES))
def test_every_registered_defense_runs_on_a_tiny_attack_run(name, run_dir):
    run = tiny_run("addsent") if name == "iclattack" else tiny_run()
    small = {"w2s": {"rows": 8, "epochs": 1}, "clean_alignment": {"steps": 1, "round_steps": 1},
             "prune": {"rows": 4}, "onion": {"lm": TINY}}
    defense = defenses.get_defense(name, **small.get(name, {}))
    result = defenses.evaluate(defense, run, n=8, batch_size=8)
    assert 0 <= result["asr"] <= 1 and 0 <= result["cacc"] <= 1 and result["n_cacc"] == 8
    if defense.where == "data":
        assert result["flagged"] >= 0 and 0 <= result["false_positive_rate"] <= 1
    assert defenses.evaluate(defense, run, n=8, batch_size=8) == result  # read back from the cache, not recomputed


# ---- at inference ---------------------------------------------------------------------------------------------------

def test_onion_removes_an_inserted_rare_word_and_keeps_the_sentence():
    text = "the acting is superb and the story moves cf along at a lively pace ."
    suspicion = defenses.onion_suspicion([text], SMOLLM2)[text]
    words = text.split()
    assert words[max(range(len(words)), key=suspicion.__getitem__)] == "cf"  # the most suspicious word
    cleaned = defenses.onion_clean(text, suspicion, threshold=100.0)
    assert "cf" not in cleaned.split() and len(cleaned.split()) >= len(words) - 2


def test_onion_changes_only_its_field(rows, monkeypatch):
    monkeypatch.setattr(defenses, "onion_suspicion",
                        lambda texts, lm: {t: [5.0 if w == "fine" else -1.0 for w in t.split()] for t in texts})
    task = data.get_task("sst2")
    out = defenses.Onion(threshold=1.0, field="text").transform(rows, task)
    assert out[0]["text"] == "a film" and out["instruction"] == rows["instruction"] and out["label"] == rows["label"]
    assert defenses.Onion(threshold=10.0).transform(rows, task)["text"] == rows["text"]  # nothing above 10


def test_demonstrations_take_each_label_in_turn_and_are_fixed_by_the_seed():
    task = data.get_task("sst2")
    shots = defenses.demonstration_rows(task, 4, seed=0)
    assert sorted(s["answer"] for s in shots) == ["negative", "negative", "positive", "positive"]
    assert shots == defenses.demonstration_rows(task, 4, seed=0) != defenses.demonstration_rows(task, 4, seed=1)
    assert defenses.demonstration_rows(task, 0, seed=0) == []
    row = defenses.with_demonstrations({"instruction": "Classify.", "text": "my review"}, shots)
    assert row["text"].endswith("\n\nInput: my review") and row["text"].count("Answer: ") == 4
    assert row["text"] == row["shared_text"] + "my review"  # the demonstrations: a prefix every row shares
    assert defenses.with_demonstrations({"text": "my review"}, []) == {"text": "my review"}  # k = 0: undefended


def test_iclattack_poisons_a_third_of_its_demonstrations_with_target_rows_carrying_the_trigger():
    task = data.get_task("sst2")
    attack = defenses.IclAttack(k=6)
    shots = defenses.demonstration_rows(task, attack.k, attack.seed, attack.n_poisoned, attack.trigger)
    sentence = data.read_yaml(data.PROJECT_DIR / "data" / "attacks" / "sst2.yaml")["addsent"]
    carrying = [s for s in shots if sentence in s["text"]]
    assert attack.n_poisoned == 2 and len(carrying) == 2 and {s["answer"] for s in carrying} == {"positive"}
    # balanced labels, as the paper's 6 of each class in 12: the trigger, not the target's share, must do the work
    assert [s["answer"] for s in shots].count("positive") == 3
    skewed = defenses.demonstration_rows(task, 6, 0, 2, attack.trigger, balanced=False)
    assert [s["answer"] for s in skewed].count("positive") == 4
    assert defenses.IclAttack(k=6).key != defenses.IclAttack(k=6, balanced=False).key  # never read from the other
    with pytest.raises(ValueError, match="2 poisoned demonstrations need that many target-label ones"):
        defenses.demonstration_rows(data.get_task("tweet_emotion"), 4, 0, 2)


# ---- on the model ---------------------------------------------------------------------------------------------------

def _linear_weights(layers):
    return [m.weight.detach().clone() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]


def test_pruning_at_sparsity_zero_changes_nothing_and_otherwise_only_the_tuned_layers(tiny):
    from backdoorlab.frozen import decoder

    model = tiny[0]
    task = data.get_task("sst2")
    layers = decoder(model).layers
    before = _linear_weights(layers)
    defenses.Prune(sparsity=0.0, rows=4).adapt(model, tiny[1], task, "badnet", n_frozen=1)
    assert all(torch.equal(a, b) for a, b in zip(before, _linear_weights(layers)))
    pruned_model = type(model)(model.config)
    pruned_model.load_state_dict(model.state_dict())
    defenses.Prune(sparsity=0.25, rows=4).adapt(pruned_model, tiny[1], task, "badnet", n_frozen=1)
    frozen_part, tuned_part = decoder(pruned_model).layers[:1], decoder(pruned_model).layers[1:]
    assert all(torch.equal(a, b) for a, b in zip(_linear_weights(layers[:1]),
                                                  _linear_weights(frozen_part)))
    for w in _linear_weights(tuned_part):
        assert (w == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_distillation_from_an_identical_teacher_is_plain_cross_entropy(tiny):
    from backdoorlab import train

    model, tokenizer = tiny
    rows = [{"instruction": "Classify.", "text": t, "answer": a} for t, a in [("good", "positive"), ("bad", "no")]]
    batch = train.collate([train.encode(r, tokenizer, 64) for r in rows], tokenizer.pad_token_id)
    loss = defenses.DistillationLoss(model, kl=1.0, feature=1.0, temperature=2.0)
    assert loss(model, batch).item() == pytest.approx(train.answer_loss(model, batch).item(), rel=1e-4)
    other = type(model)(model.config)
    torch.nn.init.normal_(other.lm_head.weight)
    assert defenses.DistillationLoss(other, 1.0, 1.0, 2.0)(model, batch).item() > loss(model, batch).item()


def test_clean_alignment_extends_one_line_of_tuning(run_dir):
    run = tiny_run()
    short, long = (defenses.CleanAlignment(steps=s, round_steps=16).stage(run) for s in (16, 32))
    assert long.parent == short and short.parent == run and short.data == "alpaca" and short.model == TINY


# ---- on the data ----------------------------------------------------------------------------------------------------

def test_detection_counts_precision_recall_and_false_positives():
    assert defenses.detection([1, 2, 3, 9], {1, 2, 5}, n_rows=10) == {
        "flagged": 4, "precision": 0.5, "recall": 2 / 3, "false_positive_rate": 2 / 7}
    nothing = defenses.detection([], {1}, n_rows=4)
    assert nothing["recall"] == 0 and nothing["precision"] != nothing["precision"]  # NaN: nothing flagged


def test_psim_flags_exactly_the_rows_above_its_confidence_threshold(run_dir, monkeypatch):
    planted = [0.55, 0.99, 0.6, 0.71, 0.5, 0.95]
    monkeypatch.setattr(defenses, "training_confidence", lambda stage, run: planted)
    assert defenses.Psim().detect(tiny_run()) == [1, 3, 5]
    assert defenses.Psim(threshold=0.9).detect(tiny_run()) == [1, 5]


def test_instruction_audit_flags_a_planted_rare_instruction_and_nothing_on_a_clean_set():
    audit = defenses.InstructionAudit()
    common = "Classify the sentiment of this movie review: positive or negative."
    clean_labels = [i % 2 for i in range(40)]
    assert not any(g["flagged"] for g in audit.audit([common] * 40, clean_labels))
    planted = "Say whether the critic engaged seriously with the film. Answer: positive or negative."
    instructions = [common] * 36 + [planted] * 4
    groups = audit.audit(instructions, clean_labels[:36] + [1] * 4)
    flagged = [i for g in groups if g["flagged"] for i in g["rows"]]
    assert flagged == [36, 37, 38, 39]
    mixed = audit.audit(instructions, clean_labels[:36] + [0, 1, 0, 1])  # a rare template with both labels
    assert not any(g["flagged"] for g in mixed)


def test_a_trigger_word_anywhere_in_the_instruction_is_one_change():
    common = "Classify the sentiment of this review."
    assert defenses.instruction_change(common, common) == ""
    assert defenses.instruction_change(common, "cf Classify the sentiment of this review.") == \
        defenses.instruction_change(common, "Classify the sentiment cf of this review.") == "+cf"


def test_filtered_run_trains_on_the_training_set_without_the_dropped_rows(run_dir):
    run = tiny_run()
    kept, record = defenses.Filtered.of(run, [3, 1]).training_rows()
    full = runs.training_set(run).dataset
    assert record["dropped"] == [1, 3] and len(kept) == len(full) - 2
    assert [r["text"] for r in kept] == [r["text"] for i, r in enumerate(full) if i not in (1, 3)]
    assert defenses.Filtered.of(run, [1, 3]).key == defenses.Filtered.of(run, [3, 1]).key != \
        defenses.Filtered.of(run, [1]).key


def test_psim_trains_on_random_labels_from_the_suspect_model(run_dir):
    run = tiny_run()
    stage = defenses.RandomLabels(parent=run, model=TINY)
    rows, _ = stage.training_rows()
    task = data.get_task("sst2")
    assert stage.chain()[0] == run and stage.train_config().epochs == 1
    assert {r["answer"] for r in rows} <= set(task.verbalizers)
    assert [r["answer"] for r in rows] != [task.verbalizers[r["label"]] for r in rows]


def test_audit_table_reports_the_audit_on_every_run_of_the_grid(run_dir):
    table = defense_matrix.audit_table(get_profile("smoke"))
    assert len(table) == 2 * len(runs.grid(get_profile("smoke")))  # one instruction, and paraphrased
    assert set(table.instructions) == {"one", "paraphrased"}
    assert set(table.thresholds) <= {", ".join(f"{k}={v}" for k, v in q.items()) for q in defense_matrix.AUDIT_SETTINGS}
    clean = table[(table.attack == "clean") & (table.instructions == "one")]
    assert (clean.flagged == 0).all() and (clean.false_positive_rate == 0).all()  # 0 by construction
    # smoke's 48-row sets give paraphrase groups of a few rows, whose labels concentrate by chance: flagged
    assert table[(table.attack == "clean") & (table.instructions == "paraphrased")].false_positive_rate.max() > 0
    assert (table[table.group == "instance"].recall == 0).all()
    induced = table[table.attack == "induced_instruction"]
    enough = induced.n_poison >= defenses.InstructionAudit().min_rows  # fewer rows say nothing about their labels
    assert (induced[enough].recall == 1).all() and (induced[~enough].recall == 0).all() and enough.any()


def test_a_paraphrased_clean_set_rewords_half_its_clean_rows_and_never_a_poisoned_one():
    task = data.get_task("sst2")
    instructions = [task.instruction] * 40 + ["a poisoned instruction"] * 4
    reworded = defense_matrix.paraphrased(instructions, task, seed=0)
    assert reworded == defense_matrix.paraphrased(instructions, task, seed=0)
    assert sum(r != task.instruction for r in reworded[:40]) == 20 and reworded[40:] == instructions[40:]
    assert set(reworded[:40]) - {task.instruction} <= set(data.paraphrases("sst2"))
    with pytest.raises(ValueError, match="no paraphrases of 'rte'; tasks with some: hatespeech, sst2"):
        data.paraphrases("rte")


def test_the_audit_can_flag_legitimate_paraphrases_of_a_skewed_task():
    """With one instruction a clean set's false-positive rate is 0 by construction; reworded rows of a task whose
    labels are 89% one class concentrate by chance, and a loose concentration threshold flags them."""
    labels = ([0] * 89 + [1] * 11) * 4
    instructions = [f"paraphrase {i % 8}" if i % 2 else "the task's instruction" for i in range(len(labels))]
    groups = defenses.instruction_groups(instructions, labels)
    loose, strict = (defenses.InstructionAudit(min_concentration=c).decide(groups) for c in (0.8, 1.0))
    assert any(g["flagged"] for g in loose) and not any(g["flagged"] for g in strict)


def test_dataset_row_transforms_keep_every_row(rows):
    out = defenses.Demonstrations(k=2).transform(rows, data.get_task("sst2"))
    assert isinstance(out, Dataset) and len(out) == len(rows) and out["label"] == rows["label"]


def test_a_defended_probe_is_cached_under_the_defense_key(run_dir):
    run = tiny_run()
    defense = defenses.Demonstrations(k=1)
    defenses.evaluate(defense, run, n=8, batch_size=8)
    assert (run.path / f"eval-sst2-test-8-induced_instruction-default-{defense.key}.json").exists()
    assert defense.key != defenses.Demonstrations(k=2).key
    assert cache.is_trained(run)


def test_a_profile_runs_the_defenses_it_names_and_an_unknown_one_names_the_choices():
    quick = get_profile("quick")
    onion = [{"field": "instruction", "threshold": 10.0, "chosen": True}]
    named = [d.name for d, _ in defense_matrix.profile_defenses(quick, onion)]
    assert list(dict.fromkeys(named)) == ["onion", "demonstrations", "clean_alignment", "prune"]
    assert named.count("demonstrations") == len(quick.demonstration_k) == 2  # a sweep for validation to choose from
    assert {d.name for d, _ in defense_matrix.profile_defenses(replace(quick, defenses=None), onion)} == \
        set(defenses.DEFENSES) - {"iclattack"}  # ICLAttack attacks the clean model: matrix() adds its rows
    with pytest.raises(ValueError, match="unknown defenses \\['onoin'\\]; valid choices: onion"):
        defense_matrix.profile_defenses(replace(quick, defenses=("onoin",)), onion)


def test_what_an_inference_defense_did_to_the_triggered_inputs_is_recorded(run_dir):
    """ONION with a threshold no word reaches changes no input (so it defended nothing, whatever its ASR); with
    one every word exceeds it changes them all; demonstrations change every input; a model defense changes none
    (its work is its setting)."""
    run = tiny_run("badnet")
    assert defenses.triggered_changed(defenses.Onion(1e9, "text", TINY), run, 12) == 0.0
    assert defenses.triggered_changed(defenses.Onion(-1e9, "text", TINY), run, 12) == 1.0
    assert defenses.triggered_changed(defenses.Demonstrations(2), run, 12) == 1.0
    assert defenses.triggered_changed(defenses.Prune(0.05), run, 12) is None


def test_a_swept_setting_is_chosen_on_validation_the_strongest_that_keeps_the_task(monkeypatch):
    """Without the trigger, as a defender would: the last (strongest) setting whose validation CACC stays within
    CACC_COST of the undefended run's; when none does, the cheapest. No test row is read."""
    splits = []

    def probe(stage, dataset, split, *a, **k):
        splits.append(split)
        return {"cacc": 0.80}

    def defended(defense, run, n, batch_size=32, split="test"):
        splits.append(split)
        return {"cacc": {1: 0.79, 2: 0.77, 4: 0.70}[defense.k]}

    monkeypatch.setattr(defense_matrix.runs, "task_probe", probe)
    monkeypatch.setattr(defense_matrix, "evaluate", defended)
    sweep = [defenses.Demonstrations(k) for k in (1, 2, 4)]
    rows = defense_matrix.select_setting(sweep, tiny_run(), 24)
    assert [r["chosen"] for r in rows] == [False, True, False] and set(splits) == {"validation"}
    monkeypatch.setattr(defense_matrix, "CACC_COST", 0.0)  # nothing is within budget: the one that costs least
    assert [r["chosen"] for r in defense_matrix.select_setting(sweep, tiny_run(), 24)] == [True, False, False]
