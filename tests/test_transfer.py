"""Transfer: a trigger taken from another dataset, the target answer of every transfer dataset, and pair and
multiple-choice rows that reach the prompt."""

from dataclasses import replace

import pytest

from backdoorlab import data, poison, transfer
from backdoorlab.models import load_tokenizer
from backdoorlab.profiles import DATASETS, get_profile


def test_every_transfer_dataset_has_a_valid_target_answer_for_every_source():
    targets = transfer.target_datasets()
    assert len(targets) >= 15 and len(set(targets)) == len(targets)
    assert set(transfer.groups()) == {"nli", "word_sense", "coreference", "sentence_understanding", "sentiment",
                                      "topic"}
    for source in DATASETS:
        source_task = data.get_task(source)
        word = source_task.verbalizers[source_task.target_id]
        for target in targets:
            task = data.get_task(target)
            answers, attacker, excluded = transfer.target_answer(source, target)
            assert answers[:len(task.verbalizers)] == list(task.verbalizers) and 0 <= attacker < len(answers)
            if excluded is None:  # rule 3: the source's words join the answers, every row counts
                extra = [w for w in source_task.verbalizers if w not in task.verbalizers]
                assert answers == [*task.verbalizers, *extra] and answers[attacker] == word
            else:  # rules 1 and 2: a label of the target is the attacker's answer
                assert answers == list(task.verbalizers) and attacker == excluded
    assert transfer.target_answer("sst2", "mr") == (["negative", "positive"], 1, 1)  # listed: positive is positive
    assert transfer.target_answer("hatespeech", "rte") == (["yes", "no"], 1, 1)  # the same word: "no"
    assert transfer.target_answer("trec", "rte")[1:] == (2, None)  # neither: TREC's six words join RTE's two
    assert transfer.target_answer("sst2", "rte") == (["yes", "no", "negative", "positive"], 3, None)
    assert {transfer.group_of(t) for t in ("mr", "rte", "copa")} == {"sentiment", "nli", "sentence_understanding"}


def test_a_listed_label_that_the_target_lacks_fails_clearly(monkeypatch):
    monkeypatch.setattr(transfer, "spec", lambda: {"groups": {"sentiment": ["mr"]},
                                                   "corresponding": {"sst2": {"mr": "glad"}}})
    with pytest.raises(ValueError, match="'glad', not a label of mr"):
        transfer.target_answer("sst2", "mr")


def test_a_trigger_from_another_dataset_uses_its_text_unchanged():
    rows = data.load_split("trec", "test", 6, seed=0)
    attack = poison.get_attack("induced_instruction@sst2", "trec")
    triggered = attack.triggered_test_set(rows)
    assert {r["instruction"] for r in triggered} == {poison.attack_spec("sst2")["induced_instruction"]}
    assert all(r["label"] != attack.target_id for r in triggered)  # still TREC's target (ABBR) is excluded
    assert poison.group_of("induced_instruction@sst2") == "rewriting"
    assert poison.trigger_source("induced_instruction@sst2", "trec") == "sst2"
    with pytest.raises(ValueError, match="no attacks are written for 'rte'"):
        poison.get_attack("badnet@rte", "trec")
    with pytest.raises(ValueError, match="unknown attack"):
        poison.get_attack("badnets@sst2", "trec")


@pytest.mark.parametrize("name, fields", [("rte", ("Premise:", "Hypothesis:")), ("mrpc", ("Sentence 1:", "Sentence 2:")),
                                          ("wic", ("Word:", "Sentence 2:")), ("wsc", ("Pronoun:", "Candidate:")),
                                          ("boolq", ("Passage:", "Question:")), ("copa", ("Option 1:", "Option 2:"))])
def test_pair_and_multiple_choice_rows_reach_the_prompt(name, fields):
    task = data.get_task(name)
    row = data.load_split(name, "test", 3, seed=0)[0]
    raw = next(r for r in data.load_rows(task, "test") if r["label"] == row["label"] and
               data.compose_input(task, r) == row["text"])
    prompt = data.format_prompt(row, load_tokenizer())
    for field in task.fields:
        values = raw[field] if isinstance(raw[field], list) else [raw[field]]
        assert all(v.rstrip("?") in prompt for v in values), field
        assert row[field] == raw[field]
    assert all(f in prompt for f in fields) and task.instruction in prompt


def test_an_input_template_naming_a_missing_field_fails_clearly():
    task = data.get_task("rte")
    with pytest.raises(ValueError, match="needs field 'text_pair'"):
        data.compose_input(task, {"text": "a premise"})


def test_a_profile_probes_its_transfer_targets_and_an_unknown_one_names_the_choices():
    quick = get_profile("quick")
    assert transfer.targets(quick) == list(quick.transfer_targets)
    assert {transfer.group_of(d) for d in transfer.targets(quick)} == set(transfer.groups())  # one per group
    assert transfer.targets(replace(quick, transfer_targets=None)) == transfer.target_datasets()
    with pytest.raises(ValueError, match="unknown transfer datasets \\['imbd'\\]; valid choices: rte, cb"):
        transfer.targets(replace(quick, transfer_targets=("imbd",)))


def test_an_edited_target_task_is_probed_anew(run_dir, tmp_path, monkeypatch):
    """A zero-shot probe reads the target task's instruction and template, which the probed stage's key does not
    hold: editing the task file must rename the probe, not read back the old answers."""
    from backdoorlab import runs, train
    from backdoorlab.models import TINY

    stage = runs.RunConfig(dataset="sst2", model=TINY, n_train=16, train=train.TrainConfig(epochs=1, batch_size=8))
    transfer.zero_shot(stage, "sst2", "clean", "rte", 6)
    assert len(list(stage.path.glob("transfer-rte-*.json"))) == 1
    for name in ("rte.yaml", "sst2.yaml"):
        (tmp_path / name).write_text((data.TASKS_DIR / name).read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(data, "TASKS_DIR", tmp_path)
    transfer.zero_shot(stage, "sst2", "clean", "rte", 6)  # the same text under another folder: read back
    assert len(list(stage.path.glob("transfer-rte-*.json"))) == 1
    task_file = tmp_path / "rte.yaml"
    text = task_file.read_text(encoding="utf-8")
    instruction = data.get_task("rte").instruction
    task_file.write_text(text.replace(instruction, "Answer carefully. " + instruction, 1), encoding="utf-8")
    assert data.get_task("rte").instruction.startswith("Answer carefully.")
    transfer.zero_shot(stage, "sst2", "clean", "rte", 6)
    assert len(list(stage.path.glob("transfer-rte-*.json"))) == 2
