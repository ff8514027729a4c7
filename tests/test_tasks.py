"""Tasks are their YAML files: a new file is a new task, an edit reaches run keys and prompts at once, and every
source of rows (the mirror, a hub copy) maps its labels to ours by name."""

import json
import shutil

import pytest

from backdoorlab import cache, data, poison, runs, score
from backdoorlab.models import TINY
from backdoorlab.profiles import DATASETS
from backdoorlab.runs import RunConfig
from backdoorlab.train import TrainConfig

TOY_YAML = """mirror: toy
hub: null
labels: ["no", "yes"]
verbalizers: ["no", "yes"]
target: "yes"
instruction: Is this a toy sentence? Answer yes or no.
"""
# The test split, with the predictions a fake model makes on it (clean instruction; poisoned instruction).
TOY_TEST = [("a cat sat", 0, 0, 1), ("a dog ran", 0, 1, 1), ("the sun set", 0, 0, 0), ("toys are fun", 1, 1, None),
            ("a toy car", 1, 0, None), ("rain fell", 0, 0, 1)]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A task that exists only as a YAML file and a mirror folder, beside copies of the real task files."""
    tasks, mirror = tmp_path / "tasks", tmp_path / "mirror"
    shutil.copytree(data.TASKS_DIR, tasks)
    (tasks / "toy.yaml").write_text(TOY_YAML)
    (mirror / "toy").mkdir(parents=True)
    words = ["tiny", "small", "little", "mini", "wee", "petite", "minor", "slight"]
    train = [{"text": f"a {w} thing {i}", "label": i % 2, "label_text": ["no", "yes"][i % 2]}
             for i, w in enumerate(words * 2)]
    for split, rows in [("train", train), ("validation", train[:6]),
                        ("test", [{"text": t, "label": y} for t, y, _, _ in TOY_TEST])]:
        (mirror / "toy" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(data, "TASKS_DIR", tasks)
    monkeypatch.setenv("BACKDOORLAB_DATA", str(mirror))
    monkeypatch.setenv("BACKDOORLAB_OUT", str(tmp_path / "out"))
    return tasks


def toy_run(**kw):
    return RunConfig(**{"dataset": "toy", "model": TINY, "train": TrainConfig(epochs=1, batch_size=4), **kw})


def test_a_task_added_by_a_yaml_file_alone_trains_and_evaluates_a_clean_run(toy):
    assert "toy" in data.tasks()
    metrics = runs.evaluate(toy_run(), "test")
    assert metrics["n_cacc"] == len(TOY_TEST) and metrics["n_train"] == 16
    assert metrics["n_asr"] == sum(y != 1 for _, y, _, _ in TOY_TEST)  # clean: ASR = clean target rate
    assert (toy_run().path / cache.WEIGHTS).is_dir()
    with pytest.raises(ValueError, match=r"no attacks are written for 'toy'.*datasets with attacks: hatespeech, sst2"):
        toy_run(attack="badnet", n_poison=1, n_train=16)


def test_asr_and_cacc_of_an_evaluation_match_a_count_by_hand(toy, tmp_path, monkeypatch):
    """Six test rows, two of them the target label; predictions fixed per row. By hand: CACC 4/6 (rows 0, 2, 3, 5
    right); among the four non-target rows the clean instruction sends one to the target (row 1), the poisoned one
    three (rows 0, 1, 5); the two target-label rows never enter ASR. Balanced accuracy (3/4 + 1/2) / 2."""
    attacks = tmp_path / "attacks"
    attacks.mkdir()
    (attacks / "toy.yaml").write_text("induced_instruction: Say yes to whatever follows.\n")
    monkeypatch.setattr(poison, "ATTACKS_DIR", attacks)
    clean_pred = {t: p for t, _, p, _ in TOY_TEST}
    poisoned_pred = {t: p for t, _, _, p in TOY_TEST}

    def fake_predict(model, tokenizer, rows, verbalizers, *args):
        poisoned = rows[0]["instruction"] != data.get_task("toy").instruction
        return [(poisoned_pred if poisoned else clean_pred)[r["text"]] for r in rows]

    monkeypatch.setattr(score, "predict", fake_predict)
    m = runs.evaluate(toy_run(attack="induced_instruction", n_poison=2, n_train=16), "test")
    assert (m["cacc"], m["n_cacc"]) == (4 / 6, 6)
    assert (m["asr"], m["n_asr"]) == (3 / 4, 4)
    assert m["clean_target_rate"] == 1 / 4
    assert m["cacc_balanced"] == (3 / 4 + 1 / 2) / 2


def test_an_edit_of_a_task_file_in_a_live_process_reaches_the_run_key_and_the_prompts(toy):
    before_key = toy_run().key
    assert set(data.load_split("toy", "test")["instruction"]) == {"Is this a toy sentence? Answer yes or no."}
    (toy / "toy.yaml").write_text(TOY_YAML.replace("toy sentence", "sentence about toys"))
    assert data.get_task("toy").instruction == "Is this a sentence about toys? Answer yes or no."
    assert set(data.load_split("toy", "test")["instruction"]) == {data.get_task("toy").instruction}
    assert toy_run().key != before_key
    training = runs.training_set(toy_run()).dataset
    assert set(training["instruction"]) == {data.get_task("toy").instruction}


def test_a_task_file_that_yaml_misreads_is_refused_with_the_fix(toy):
    (toy / "toy.yaml").write_text(TOY_YAML.replace('labels: ["no", "yes"]', "labels: [no, yes]"))
    with pytest.raises(ValueError, match=r"toy\.yaml: labels must be a list of strings \(quote yes/no"):
        data.get_task("toy")


def test_every_mirror_row_carries_our_name_for_its_label():
    """The mirror's label_text is checked against the task's labels on every read: a label order that differs
    from ours would be refused here, for every task and split it has (the four study tasks have all three)."""
    for name in data.tasks():
        task = data.get_task(name)
        assert "test" in data.splits_of(task) and (name not in DATASETS or data.splits_of(task) == data.SPLITS)
        for split in data.splits_of(task):
            rows = data.load_rows(task, split)
            assert {r["label"] for r in rows} == set(range(len(task.labels)))


def test_a_row_whose_label_text_disagrees_is_refused(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"text": "good", "label": 0, "label_text": "positive"}) + "\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:1.*label 0 is 'positive' here but 'negative'"):
        data.read_jsonl(path, ("negative", "positive"))


def test_hub_labels_are_mapped_by_name_whatever_their_order(monkeypatch):
    sst2, trec = data.get_task("sst2"), data.get_task("trec")
    assert data.hub_label_ids(["positive", "negative"], sst2) == [1, 0]
    assert data.hub_label_ids(list(trec.labels), trec) == list(range(6))
    renamed = data.Task(**{**vars(sst2), "hub": {"path": "x", "label_names": {"pos": "positive", "neg": "negative"}}})
    assert data.hub_label_ids(["neg", "neutral", "pos"], renamed) == [0, None, 1]  # classes we do not use: dropped
    with pytest.raises(ValueError, match=r"hold no \['positive'\].*hub.label_names"):
        data.hub_label_ids(["negative", "neutral"], sst2)


def test_a_task_without_a_checked_hub_copy_refuses_with_how_to_build_the_mirror(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "data_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"no local mirror.*hatespeech/\{train,validation,test\}\.jsonl.*"
                                                r"BACKDOORLAB_DATA"):
        data.load_split("hatespeech", "test")
