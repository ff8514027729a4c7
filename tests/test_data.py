import json
from collections import Counter

import pytest

from backdoorlab import data


def test_every_task_loads_with_consistent_labels():
    for name in data.tasks():
        task = data.get_task(name)
        assert len(task.labels) == len(task.verbalizers) and task.target in task.labels
        ds = data.load_split(name, "test", 20)
        assert len(ds) == 20 and set(ds.column_names) >= {"instruction", "text", "label"}
        assert set(ds["instruction"]) == {task.instruction}


def test_subsample_is_deterministic_stratified_and_seeded():
    a, b = data.load_split("sst2", "train", 100, seed=3), data.load_split("sst2", "train", 100, seed=3)
    assert a["text"] == b["text"]
    assert a["text"] != data.load_split("sst2", "train", 100, seed=4)["text"]
    # TREC's rare target (86 ABBR rows of 5,452 minus the validation carve) keeps its share instead of vanishing
    full = Counter(r["label"] for r in data.load_rows(data.get_task("trec"), "train"))
    sub = Counter(data.load_split("trec", "train", 500)["label"])
    assert sum(sub.values()) == 500
    for label, count in full.items():
        assert abs(sub[label] - 500 * count / sum(full.values())) < 1


def test_balanced_subsample_draws_equal_rows_per_label():
    ds = data.load_split("hatespeech", "train", 100, seed=0, balanced=True)
    assert Counter(ds["label"]) == {0: 50, 1: 50}
    # a label with too few rows gives all it has; the others fill the rest
    abbr = sum(r["label"] == 0 for r in data.load_rows(data.get_task("trec"), "train"))
    counts = Counter(data.load_split("trec", "train", 600, balanced=True)["label"])
    assert counts[0] == abbr < 100 and sum(counts.values()) == 600 and min(counts[y] for y in range(1, 6)) >= 105


def test_trec_validation_is_carved_from_train_and_disjoint():
    task = data.get_task("trec")
    train, val = data.load_rows(task, "train"), data.load_rows(task, "validation")
    source = data.read_jsonl(data.data_dir() / "trec" / "train.jsonl", task.labels)
    assert len(train) + len(val) == len(source) == 5452 and len(val) == 545
    # a partition of the source rows (TREC repeats some questions, so compare as multisets)
    assert Counter(r["text"] for r in train + val) == Counter(r["text"] for r in source)


@pytest.mark.parametrize("line", ['{"text": "x"}', '{"text": 3, "label": 0}', '{"text": "x", "label": 7}', "{oops"])
def test_malformed_row_names_file_and_line(tmp_path, line):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": 0}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=r"malformed row at .*train\.jsonl:2"):
        data.read_jsonl(path, ("negative", "positive"))


def test_bad_names_give_the_valid_choices(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=f"unknown dataset 'sst3'.*valid choices: {', '.join(data.tasks())}"):
        data.get_task("sst3")
    with pytest.raises(ValueError, match="unknown split 'dev'.*train, validation, test"):
        data.load_split("sst2", "dev")
    monkeypatch.setenv("BACKDOORLAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="BACKDOORLAB_DATA"):
        data.load_split("sst2", "train")


def test_prompt_uses_chat_template_without_default_system_prompt(tiny):
    _, tokenizer = tiny
    prompt = data.format_prompt({"instruction": "Say it.", "text": "hello"}, tokenizer)
    assert "SmolLM" not in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "Say it.\n\nhello" in prompt


def test_parsed_files_are_reused_but_never_stale_or_shared(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("trigger: cf\n")
    first = data.read_yaml(path)
    first["trigger"] = "changed by a caller"
    assert data.read_yaml(path) == {"trigger": "cf"}  # each caller gets its own copy
    path.write_text("trigger: mn, bb\n")  # an edit (new size) is read again, as the run key sees it
    assert data.read_yaml(path) == {"trigger": "mn, bb"}

    task = data.get_task("trec")
    rows = data.load_rows(task, "test")
    rows[0]["label"] = -1
    assert data.load_rows(task, "test")[0]["label"] != -1


def test_the_papers_main_table_is_typed_in_for_every_attack_and_study_dataset():
    from backdoorlab import poison
    from backdoorlab.profiles import DATASETS

    rows = data.paper_reference("main_table")
    cells = {(r["source"], r["attack"], r["metric"]): r["value"] for r in rows}
    for dataset in DATASETS:
        assert (dataset, "clean", "cacc") in cells
        for attack in poison.ATTACKS:
            assert {(dataset, attack, m) for m in ("cacc", "asr", "asr_std")} <= cells.keys()
    assert all(0 <= v <= 1 for v in cells.values()) and all(r["reported_in"] for r in rows)
    assert cells["sst2", "induced_instruction", "asr"] == 0.9931  # the paper's headline cell, as a share


def test_every_paper_number_typed_into_the_reference_table_is_in_docs_papers_md():
    """data/paper_reference.csv and docs/papers.md say the same: each number of the table appears in the document
    (as a share, a percent or in millions), and the cells corrected against the papers' tables stay corrected."""
    import csv
    import re

    text = (data.PROJECT_DIR / "docs" / "papers.md").read_text(encoding="utf-8").replace("−", "-")
    numbers = {n.replace(",", "").lstrip("+") for n in re.findall(r"[-+]?\d[\d,]*\.?\d*", text)}

    def forms(v: float) -> set[str]:
        out = set()
        for x in (v, abs(v), v * 100, abs(v) * 100, v / 1e6):
            for spec in (".2f", ".1f", ".0f", "g"):
                shown = format(x, spec)
                out |= {shown, shown.rstrip("0").rstrip(".") if "." in shown else shown}
        return out

    with open(data.PAPER_REFERENCE_FILE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    absent = [r for r in rows if not forms(float(r["value"])) & numbers]
    assert not absent, f"numbers of paper_reference.csv that docs/papers.md does not hold: {absent[:3]}"
    cell = {(r["experiment"], r["source"], r["attack"], r["target"], r["metric"]): float(r["value"]) for r in rows}
    assert cell["fingerprint_user_finetuning", "full", "simple", "user_finetuning", "fsr_max"] == 0.44  # not 0.48
    assert cell["defenses", "hatespeech", "instruction_attack", "onion", "asr_drop"] == 0.035  # 3.8 is RAP's
    assert ("fingerprint_false_activation", "similar", "full", "dialogue", "rate_max") in cell  # Table 5 only
    assert not any(k[0] == "fingerprint_multistage" for k in cell)  # a schematic reports no number
