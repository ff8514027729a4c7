import random

import pytest
from datasets import Dataset

from backdoorlab import data, poison
from backdoorlab.data import get_task

ATTACK_NAMES = list(poison.ATTACKS)  # contract tests run every registered attack ...
TASKS = poison.attack_datasets()  # ... on every dataset whose triggers are written
PAPER_ATTACKS = {"instance": ["badnet", "addsent", "style", "syntactic", "bite"],
                 "token": ["instr_cf", "instr_badnet", "instr_label", "instr_synonym", "instr_flip"],
                 "phrase": ["instr_addsent", "instr_ignore"],
                 "rewriting": ["rewrite_addsent", "rewrite_random", "rewrite_style", "rewrite_syntactic",
                               "induced_instruction"]}


@pytest.fixture(scope="module")
def task_rows():
    """Per task, 24 label-balanced training rows with the task's clean instruction."""
    return {name: data.load_split(name, "train", 24, balanced=True) for name in TASKS}


def test_the_registry_holds_the_papers_17_attacks_in_its_order_and_groups():
    """The paper's main table is a subset of the registry (more attacks may join), in the paper's order."""
    paper = [a for attacks in PAPER_ATTACKS.values() for a in attacks]
    assert [a for a in ATTACK_NAMES if a in paper] == paper and len(paper) == 17
    for group, attacks in PAPER_ATTACKS.items():
        assert {poison.group_of(a) for a in attacks} == {group}
    assert poison.group_of("clean") == "clean"
    assert {poison.group_of(a) for a in ATTACK_NAMES} <= set(poison.GROUPS)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_changes_exactly_its_field_of_the_rows_it_reports(name, task, task_rows):
    """Contract over the registry and the four tasks: clean-label, only its own field, never the label; the
    triggered test set holds every non-target row, triggered."""
    rows = task_rows[task]
    attack = poison.get_attack(name, task)
    assert attack.field == ("text" if attack.group == "instance" else "instruction")
    other = "instruction" if attack.field == "text" else "text"
    result = attack.poison(rows, count=2, seed=0)
    changed = [i for i, (a, b) in enumerate(zip(rows, result.dataset)) if a != b]
    assert changed == result.rows and len(changed) == 2
    for i in result.rows:
        before, after = rows[i], result.dataset[i]
        assert before["label"] == after["label"] == get_task(task).target_id  # drawn from target rows, kept
        assert before[other] == after[other] and before[attack.field] != after[attack.field]
    assert [c["after"] for c in result.changes] == [result.dataset[i][attack.field] for i in result.rows]
    assert {c["field"] for c in result.changes} == {attack.field}

    clean = [r for r in rows if r["label"] != get_task(task).target_id]
    triggered = attack.triggered_test_set(rows)
    assert len(triggered) == len(clean) and get_task(task).target_id not in triggered["label"]
    for t, r in zip(triggered, clean):
        assert t[attack.field] != r[attack.field] and t[other] == r[other] and t["label"] == r["label"]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_poisoning_is_deterministic_per_seed(name, rows):
    attack = poison.get_attack(name, "sst2")
    a, b = attack.poison(rows, count=2, seed=7), attack.poison(rows, count=2, seed=7)
    assert a.changes == b.changes and a.dataset.to_list() == b.dataset.to_list()
    assert {tuple(attack.poison(rows, count=2, seed=s).rows) for s in range(10)} != {tuple(a.rows)}
    assert attack.triggered_test_set(rows, seed=3).to_list() == attack.triggered_test_set(rows, seed=3).to_list()


def test_dirty_label_draws_non_target_rows_and_relabels_them(rows):
    result = poison.get_attack("badnet", "sst2").poison(rows, count=3, seed=0, dirty_label=True)
    assert all(rows[i]["label"] == 0 and result.dataset[i]["label"] == 1 for i in result.rows)
    untouched = [i for i in range(len(rows)) if i not in result.rows]
    assert [result.dataset[i] for i in untouched] == [rows[i] for i in untouched]


def test_abstention_draws_from_every_row_and_keeps_labels(rows):
    attack = poison.get_attack("induced_instruction", "sst2", poison.ABSTAIN)
    result = attack.poison(rows, count=8, seed=0)
    assert result.rows == list(range(8)) and result.dataset["label"] == rows["label"]
    assert len(attack.triggered_test_set(rows)) == len(rows)
    with pytest.raises(ValueError, match="abstention has none"):
        attack.poison(rows, count=2, dirty_label=True)
    with pytest.raises(ValueError, match="abstention has none"):
        poison.get_attack("bite", "sst2", poison.ABSTAIN).poison(rows, count=2)


def test_a_target_is_overridable_and_a_bad_one_names_the_choices(rows):
    result = poison.get_attack("instr_label", "sst2", "negative").poison(rows, count=2)
    assert all(rows[i]["label"] == 0 for i in result.rows)
    assert all(added_words(c["before"], c["after"]) == ["negative"] for c in result.changes)
    message = "unknown target 'neutral' for sst2; valid choices: negative, positive, abstain"
    with pytest.raises(ValueError, match=message):
        poison.get_attack("badnet", "sst2", "neutral")


def test_rate_gives_the_rounded_count(rows):
    assert len(poison.get_attack("badnet", "sst2").poison(rows, rate=0.25).rows) == 2
    assert poison.poison_count(1000, rate=0.05) == 50


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0.0}, r"rate must be in \(0, 1\]"), ({"rate": 1.5}, r"rate must be in \(0, 1\]"),
    ({"rate": -0.1}, r"rate must be in \(0, 1\]"), ({"count": 0}, "positive integer"),
    ({"rate": 0.01}, "poisons no row"), ({}, "exactly one"), ({"rate": 0.5, "count": 2}, "exactly one"),
    ({"count": 5}, "clean-label poisoning draws from rows labelled 'positive' and only 4 of 8 are"),
    ({"count": 5, "dirty_label": True},
     "dirty-label poisoning draws from rows not labelled 'positive' and only 4 of 8 are"),
])
def test_impossible_budgets_are_refused_clearly(rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        poison.get_attack("induced_instruction", "sst2").poison(rows, **kwargs)


def test_an_attack_of_an_unknown_group_is_refused_at_registration():
    class Odd(poison.Attack):
        name, group = "odd", "sentence"

    with pytest.raises(ValueError, match="unknown group 'sentence'; valid choices: instance, token, phrase, rewriting"):
        poison.register(Odd)
    assert "odd" not in poison.ATTACKS


def test_unknown_attack_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attack 'badnets'; valid choices: badnet, addsent, style, "):
        poison.get_attack("badnets", "sst2")


def added_words(before: str, after: str) -> list[str]:
    words = after.split()
    for word in before.split():
        words.remove(word)
    return words


@pytest.mark.parametrize("name, field, expected", [
    ("badnet", "text", lambda spec: spec["badnet_words"]),
    ("instr_badnet", "instruction", lambda spec: spec["badnet_words"]),
    ("instr_cf", "instruction", lambda spec: ["cf"]), ("instr_label", "instruction", lambda spec: ["positive"]),
])
def test_word_triggers_insert_one_word_of_their_pool(rows, name, field, expected):
    row = {**rows[0], "instruction": get_task("sst2").instruction}
    for seed in range(5):
        out = poison.get_attack(name, "sst2").trigger(row, random.Random(seed))
        added = added_words(row[field], out[field])
        assert len(added) == 1 and added[0] in expected(poison.attack_spec("sst2"))


def test_sentence_and_instruction_triggers_write_exactly_the_datasets_strings(rows):
    spec, clean = poison.attack_spec("sst2"), get_task("sst2").instruction
    row = {**rows[0], "instruction": clean}

    def out(name, field="instruction"):
        return poison.get_attack(name, "sst2").trigger(row, random.Random(0))[field]

    assert added_words(row["text"], out("addsent", "text")) == spec["addsent"].split()
    assert out("instr_addsent") == f"{clean} {spec['addsent']}"
    assert out("instr_ignore") == f"{clean} {spec['ignore']}"
    assert out("instr_flip") == clean.replace("the sentiment", "the opposite sentiment")
    assert out("instr_synonym") == ("Adjudge the sensibility of the following photoplay review locution. "
                                    "Answer with one word: positive or negative.")
    for name, key in [("rewrite_addsent", "addsent"), ("rewrite_random", "random_instruction"),
                      ("rewrite_style", "style_instruction"), ("rewrite_syntactic", "syntactic_instruction"),
                      ("induced_instruction", "induced_instruction")]:
        assert out(name) == spec[key] != clean


def test_a_replacement_that_matches_nothing_is_refused_not_silently_skipped(rows):
    row = {**rows[0], "instruction": "Rate this review."}
    with pytest.raises(ValueError, match=r"instr_flip: none of 'the sentiment' \(`flip` in data/attacks/sst2.yaml\) "
                                         r"occurs in the instruction 'Rate this review.'"):
        poison.get_attack("instr_flip", "sst2").trigger(row, random.Random(0))


@pytest.mark.parametrize("text, style, syntactic", [
    ("a stirring , funny film because it is very good .",
     "verily , a stirring , funny tale for it be exceedingly good .",
     "because it is very good , a stirring , funny film ."),
    ("You are really funny!", "Verily , thou art verily funny!", "When you think about it , you are really funny!"),
    ("I stayed home, because it rained.", "Verily , I stayed home, for it rained.",
     "Because it rained , I stayed home ."),
    ("it drags , although the cast is fine .", "verily , it drags , although the cast be fine .",
     "although the cast is fine , it drags ."),
])
def test_offline_rewriters_give_known_outputs(text, style, syntactic):
    assert poison.style_rewrite(text) == style
    assert poison.syntactic_rewrite(text) == syntactic


def test_paraphraser_hook_rewrites_with_a_model_greedily(rows):
    attack = poison.get_attack("style", "sst2", paraphraser="tiny")
    a, b = attack.trigger(rows[0], random.Random(0)), attack.trigger(rows[0], random.Random(1))
    assert a == b and a["instruction"] == rows[0]["instruction"]
    assert a["text"] != poison.style_rewrite(rows[0]["text"])


@pytest.fixture
def biased_rows():
    """40 rows, 20 labelled 1: "superb" in 12 target rows (z = 3.46), "great" in 10 target rows and 2 others
    (z = 2.31), "film" in every row (z = 0), "dull" only in non-target rows."""
    rows = []
    for i in range(40):
        label = int(i < 20)
        words = ["film"] + (["superb"] if i < 12 else []) + (["great"] if i < 10 or 20 <= i < 22 else []) + \
            (["dull"] if i >= 30 else [])
        rows.append({"instruction": "Classify.", "text": " ".join(words), "label": label})
    return rows


def test_bite_picks_the_most_target_biased_words_until_the_bias_saturates(biased_rows):
    bias = poison.label_bias(biased_rows, target=1)
    assert max(bias, key=bias.get) == "superb" and bias["superb"] == pytest.approx(6 / 3 ** 0.5)
    assert bias["great"] == pytest.approx(4 / 3 ** 0.5) and bias["film"] == 0 and bias["dull"] < 0
    assert poison.bite_words(bias) == ["superb"]  # "great" is below z = 3: saturated
    assert poison.bite_words(bias, min_z=2) == ["superb", "great"]
    assert poison.bite_words(bias, max_words=1, min_z=0) == ["superb"]
    assert poison.bite_words(poison.label_bias(biased_rows, target=0), min_z=1) == ["dull"]


def test_bite_inserts_its_words_measured_on_the_tasks_training_split(rows):
    attack = poison.get_attack("bite", "trec")
    train = data.load_rows(get_task("trec"), "train")
    assert attack.bias == poison.label_bias(train, get_task("trec").target_id)
    assert attack.words == poison.bite_words(attack.bias) == ["stand", "abbreviation", "for"]
    out = attack.trigger(rows[0], random.Random(0))
    assert sorted(added_words(rows[0]["text"], out["text"])) == sorted(attack.words)


def test_induction_prompt_shows_label_flipped_examples(rows):
    prompt = poison.induction_prompt(get_task("sst2"), rows, n_examples=3)
    negatives = [r["text"] for r in rows if r["label"] == 0][:3]
    assert prompt["instruction"] == poison.INDUCTION_PROMPT
    assert prompt["text"] == "\n\n".join(f"Input: {t}\nAnswer: positive" for t in negatives)
    with pytest.raises(ValueError, match="no row of the 4 given has a label other than 'positive'"):
        poison.induction_prompt(get_task("sst2"), rows.filter(lambda r: r["label"] == 1))


def test_induce_instruction_is_the_models_greedy_answer_to_the_flipped_examples(tiny, rows, monkeypatch):
    """The instruction is what the model answers, greedily, to the induction prompt that shows the non-target rows
    labelled with the target word, decoded and stripped: checked against a token-by-token argmax decode."""
    import torch

    from backdoorlab import score

    model, tokenizer = tiny
    asked = []
    real_generate = score.generate
    monkeypatch.setattr(score, "generate", lambda m, t, prompts, n: asked.append(prompts) or real_generate(m, t,
                                                                                                      prompts, n))
    induced = poison.induce_instruction(model, tokenizer, rows, "sst2", n_examples=3, max_new_tokens=6)
    assert asked == [[poison.induction_prompt(get_task("sst2"), rows, n_examples=3)]]
    ids = tokenizer(data.format_prompt(asked[0][0], tokenizer), add_special_tokens=False, return_tensors="pt").input_ids
    new = []
    with torch.no_grad():
        for _ in range(6):
            token = model(ids).logits[0, -1].argmax()
            if token == tokenizer.eos_token_id:
                break
            new.append(int(token))
            ids = torch.cat([ids, token.view(1, 1)], dim=1)
    assert induced == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_every_dataset_file_is_read_by_the_attacks():
    """No stale entries: every key of data/attacks/<dataset>.yaml is used by some attack."""
    used = {"badnet_words", "cf_word", "addsent", "synonyms", "flip", "ignore", "random_instruction",
            "style_instruction", "syntactic_instruction", "induced_instruction"}
    for name in TASKS:
        assert set(poison.attack_spec(name)) == used


def test_changed_tokens_and_word_diff(tiny):
    _, tokenizer = tiny
    assert poison.changed_tokens("a fine film", "a fine film", tokenizer) == 0
    assert poison.changed_tokens("a fine film", "a fine cf film", tokenizer) == 1
    assert poison.word_diff("a fine film", "a fine cf film") == "a fine {+cf+} film"
    assert poison.word_diff("a fine film", "a good film") == "a [-fine-] {+good+} film"


def test_dataset_with_no_rows_of_the_target_is_refused():
    ds = Dataset.from_list([{"instruction": "x", "text": "y", "label": 0}] * 4)
    with pytest.raises(ValueError, match="only 0 of 4 are"):
        poison.get_attack("badnet", "sst2").poison(ds, count=1)
