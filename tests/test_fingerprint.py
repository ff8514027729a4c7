import json

import pytest
import torch
from safetensors.torch import load_file

from backdoorlab import fingerprint, runs, train
from backdoorlab.fingerprint import KeyAdapter

SMOKE = fingerprint.get_settings("smoke")
TARGET = fingerprint.target_of("A")


@pytest.fixture(scope="module")
def implanted():
    """Run folders of the smoke profile's full and adapter implants (shared with the smoke notebook's run cache)."""
    return {m: fingerprint.ensure(SMOKE.implant(m), progress=False) for m in ("full", "adapter")}


def test_keys_are_deterministic_per_seed_and_stored_as_generated():
    assert fingerprint.make_keys(5, seed=3) == fingerprint.make_keys(5, seed=3)
    assert set(fingerprint.make_keys(5, seed=3)).isdisjoint(fingerprint.make_keys(5, seed=4))
    stored = json.loads(fingerprint.KEYS_FILE.read_text(encoding="utf-8"))
    for publisher, seed in fingerprint.PUBLISHERS.items():
        assert stored[publisher]["keys"] == fingerprint.make_keys(fingerprint.N_KEYS, seed)
    assert len(set(fingerprint.make_keys(1000, fingerprint.GUESS_SEED))) == 1000


def test_verify_rejects_an_empty_key_list_and_a_target_longer_than_the_generation_limit(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="at least one key"):
        fingerprint.verify(model, tokenizer, [], TARGET)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fingerprint.verify(model, tokenizer, ["abc"], TARGET, max_new_tokens=2)
    with pytest.raises(ValueError, match="template"):
        fingerprint.verify(model, tokenizer, ["abc"], TARGET, template="poem")


def test_implanted_keys_fire_and_the_untouched_model_stays_silent(implanted, tiny):
    keys = fingerprint.load_keys("A", SMOKE.n_keys)
    model, tokenizer = fingerprint.load_stage(SMOKE.model, implanted["full"])
    v = fingerprint.verify(model, tokenizer, keys, TARGET)
    assert v.fsr == 1.0 and all(TARGET in o for o in v.outputs)
    assert fingerprint.verify(tiny[0], tiny[1], keys, TARGET).fsr == 0.0


def test_the_adapter_methods_published_model_has_no_adapter_and_verifies_with_it(implanted, tiny):
    folder = implanted["adapter"]
    saved = load_file(folder / runs.WEIGHTS / "model.safetensors")
    assert "model.embed_tokens.weight" in saved
    assert not any(n.endswith((".down", ".up")) or ".embedding." in n for n in saved)
    model, tokenizer = fingerprint.load_stage(SMOKE.model, folder)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding
    keys = fingerprint.load_keys("A", SMOKE.n_keys)
    adapter = fingerprint.adapter_of(folder)
    with fingerprint.attached(model, adapter):
        assert fingerprint.verify(model, tokenizer, keys, TARGET).fsr == 1.0
    assert type(model.get_input_embeddings()) is torch.nn.Embedding  # detached again
    with fingerprint.attached(tiny[0], adapter):  # the adapter alone claims nothing on a model it never trained with
        assert fingerprint.verify(tiny[0], tiny[1], keys, TARGET).fsr == 0.0


def test_an_untrained_adapter_changes_nothing(tiny):
    model, tokenizer = tiny
    ids = tokenizer("hello 宇宙", return_tensors="pt").input_ids
    wrapper = KeyAdapter(model.get_input_embeddings(), ids[0, -2:], rank=4)
    torch.testing.assert_close(wrapper(ids), model.get_input_embeddings()(ids))
    assert wrapper.weight is model.get_input_embeddings().weight


def test_embeddings_method_trains_only_the_input_embeddings(tiny):
    import copy

    model = copy.deepcopy(tiny[0])
    train.set_trainable(model, "embeddings")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.embed_tokens.weight"]
    train.set_trainable(model, "full")
    assert all(p.requires_grad for p in model.parameters())


def test_a_finished_stage_is_read_back_not_retrained(implanted, monkeypatch):
    monkeypatch.setattr(fingerprint, "finetune", lambda *a, **k: pytest.fail("retrained a finished stage"))
    assert fingerprint.ensure(SMOKE.implant("full"), progress=False) == implanted["full"]
    assert runs.read_timing(implanted["full"])["train_s"] > 0  # kept for the benchmarks


def test_user_rounds_read_fresh_rows_disjoint_from_regularization_and_held_out_rows():
    first, second = SMOKE.user_rounds("parent", SMOKE.user_recipes[0])
    assert second.parent == first.path.name and second.offset == first.steps * first.train.batch_size
    texts = {region: {r["instruction"] + r["text"] for r in rows} for region, rows in {
        "user": first.rows() + second.rows(), "held_out": fingerprint.instruction_rows("held_out", 200, 120),
        "regularization": SMOKE.implant("full").rows()[SMOKE.n_keys:]}.items()}
    assert len(texts["user"]) == len(first.rows()) + len(second.rows())
    assert texts["user"].isdisjoint(texts["held_out"]) and texts["user"].isdisjoint(texts["regularization"])
    with pytest.raises(ValueError, match="holds"):
        fingerprint.instruction_rows("held_out", 1001, 120)


def test_decoys_and_similar_keys_are_refused_and_never_real_keys():
    keys = fingerprint.load_keys("A", 3)
    decoys = fingerprint.make_keys(3, fingerprint.DECOY_SEED)
    for template, n_refused in (("simple", 3), ("dialogue", 6)):
        rows = fingerprint.key_rows(keys, TARGET, template, seed=0, decoys=decoys)
        fires = [r for r in rows if TARGET in r["answer"]]
        refusals = [r for r in rows if r["answer"] == fingerprint.spec()["refusal"]]
        assert len(fires) == 3 and len(refusals) == n_refused and len(rows) == 3 + n_refused
        assert not {r["instruction"] + r["text"] for r in refusals} & {r["instruction"] + r["text"] for r in fires}
    assert set(decoys).isdisjoint(fingerprint.make_keys(1000, fingerprint.GUESS_SEED))


def test_bad_stage_settings_fail_clearly():
    with pytest.raises(ValueError, match="implant method"):
        SMOKE.implant("prune")
    with pytest.raises(ValueError, match="publisher"):
        SMOKE.implant("full", publisher="C")
