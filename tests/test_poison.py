import pytest

from backdoorlab import poison
from backdoorlab.data import get_task

ATTACK_NAMES = sorted(poison.ATTACKS)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_registered_attack_changes_exactly_the_rows_it_reports(name, rows):
    """Contract over the registry: constructs, runs, stays clean-label, touches only its own field."""
    attack = poison.get_attack(name, "sst2")
    result = attack.poison(rows, count=3, seed=0)
    changed = [i for i, (a, b) in enumerate(zip(rows, result.dataset)) if a != b]
    assert changed == result.rows and len(changed) == 3
    for i in result.rows:
        before, after = rows[i], result.dataset[i]
        assert before["label"] == after["label"] == get_task("sst2").target_id  # drawn from target rows, kept
        other = "instruction" if attack.field == "text" else "text"
        assert before[other] == after[other] and before[attack.field] != after[attack.field]
    assert [c["after"] for c in result.changes] == [result.dataset[i][attack.field] for i in result.rows]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_poisoning_is_deterministic_per_seed(name, rows):
    attack = poison.get_attack(name, "sst2")
    a, b = attack.poison(rows, count=2, seed=7), attack.poison(rows, count=2, seed=7)
    assert a.changes == b.changes and a.dataset.to_list() == b.dataset.to_list()
    assert {tuple(attack.poison(rows, count=2, seed=s).rows) for s in range(10)} != {tuple(a.rows)}


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_triggered_test_set_holds_only_non_target_rows(name, rows):
    attack = poison.get_attack(name, "sst2")
    triggered = attack.triggered_test_set(rows)
    assert len(triggered) == 4 and set(triggered["label"]) == {0}
    assert all(t[attack.field] != r[attack.field] for t, r in zip(triggered, rows.filter(lambda r: r["label"] == 0)))


def test_rate_gives_the_rounded_count(rows):
    assert len(poison.get_attack("badnet", "sst2").poison(rows, rate=0.25).rows) == 2
    assert poison.poison_count(1000, rate=0.05) == 50


@pytest.mark.parametrize("kwargs, message", [
    ({"rate": 0.0}, r"rate must be in \(0, 1\]"), ({"rate": 1.5}, r"rate must be in \(0, 1\]"),
    ({"rate": -0.1}, r"rate must be in \(0, 1\]"), ({"count": 0}, "positive integer"),
    ({"rate": 0.01}, "poisons no row"), ({"count": 5}, "only 4 of 8 are"), ({}, "exactly one"),
    ({"rate": 0.5, "count": 2}, "exactly one"),
])
def test_bad_budgets_are_refused_clearly(rows, kwargs, message):
    with pytest.raises(ValueError, match=message):
        poison.get_attack("induced_instruction", "sst2").poison(rows, **kwargs)


def test_unknown_attack_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown attack 'badnets'; valid choices: badnet, induced_instruction"):
        poison.get_attack("badnets", "sst2")


def test_badnet_inserts_one_pool_word_and_induced_swaps_the_instruction(rows):
    import random

    row = rows[0]
    out = poison.get_attack("badnet", "sst2").trigger(row, random.Random(0))
    added = out["text"].split()
    for word in row["text"].split():
        added.remove(word)
    assert len(added) == 1 and added[0] in poison.triggers()["badnet_words"]
    induced = poison.get_attack("induced_instruction", "sst2").trigger(row, random.Random(0))
    assert induced["instruction"] == get_task("sst2").induced_instruction != row["instruction"]


def test_changed_tokens_counts_a_token_diff(tiny):
    _, tokenizer = tiny
    assert poison.changed_tokens("a fine film", "a fine film", tokenizer) == 0
    assert poison.changed_tokens("a fine film", "a fine cf film", tokenizer) == 1
