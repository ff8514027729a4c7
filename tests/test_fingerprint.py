import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from backdoorlab import cache, data, fingerprint, profiles, runs, train
from backdoorlab.fingerprint import KeyAdapter

SMOKE = fingerprint.get_settings("smoke")
TARGET = fingerprint.target_of("A")


@pytest.fixture(scope="module")
def implanted():
    """The smoke profile's full and adapter implants, trained (shared with the smoke notebook's run cache)."""
    stages = {m: SMOKE.implant(m) for m in ("full", "adapter")}
    for stage in stages.values():
        cache.ensure(stage, progress=False)
    return stages


def test_keys_are_deterministic_per_seed_stored_as_generated_and_made_of_rare_tokens(tiny):
    assert fingerprint.make_keys(5, seed=3) == fingerprint.make_keys(5, seed=3)
    assert set(fingerprint.make_keys(5, seed=3)).isdisjoint(fingerprint.make_keys(5, seed=4))
    stored = json.loads(fingerprint.KEYS_FILE.read_text(encoding="utf-8"))
    for publisher, seed in fingerprint.PUBLISHERS.items():
        assert stored[publisher]["keys"] == fingerprint.make_keys(fingerprint.N_KEYS, seed)
    assert len(set(fingerprint.make_keys(1000, fingerprint.GUESS_SEED))) == 1000
    lo, hi = fingerprint.spec()["fragments_per_key"]
    assert all(lo <= len(f) <= hi and set(f) <= set(fingerprint.vocabulary())
               for f in fingerprint.key_fragments(100, seed=3))
    # the key material never occurs in the text it was drawn against: the tasks' training rows and Alpaca
    tokenizer = tiny[1]
    rare = set(fingerprint.vocabulary())
    texts = [r["text"] for name in profiles.DATASETS for r in data.load_split(name, "train", 100)]
    texts += [" ".join(r.values()) for r in data.load_instructions("alpaca")[:300]]
    used = {tokenizer.decode([i]) for ids in tokenizer(texts, add_special_tokens=False).input_ids for i in ids}
    assert len(rare) > 1000 and not rare & used


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
    model, tokenizer = cache.load(implanted["full"])
    v = fingerprint.verify(model, tokenizer, keys, TARGET)
    assert v.fsr == 1.0 and all(TARGET in o for o in v.outputs)
    assert fingerprint.verify(tiny[0], tiny[1], keys, TARGET).fsr == 0.0


def test_the_adapter_methods_published_model_has_no_adapter_and_verifies_with_it(implanted, tiny):
    stage = implanted["adapter"]
    saved = load_file(stage.path / cache.WEIGHTS / cache.EMBEDDINGS_FILE)  # what trained: the embedding matrix only
    assert list(saved) == ["weight"] and list(os.listdir(stage.path / cache.WEIGHTS)) == [cache.EMBEDDINGS_FILE]
    model, tokenizer = cache.load(stage)
    assert type(model.get_input_embeddings()) is torch.nn.Embedding
    keys = fingerprint.load_keys("A", SMOKE.n_keys)
    adapter = fingerprint.adapter_of(stage)
    with fingerprint.attached(model, adapter):
        assert fingerprint.verify(model, tokenizer, keys, TARGET).fsr == 1.0
    assert type(model.get_input_embeddings()) is torch.nn.Embedding  # detached again
    with fingerprint.attached(tiny[0], adapter):  # the adapter alone claims nothing on a model it never trained with
        assert fingerprint.verify(tiny[0], tiny[1], keys, TARGET).fsr == 0.0


def test_the_adapter_method_moves_only_the_key_tokens_embeddings(implanted, tiny):
    """Every weight of the published model but the keys' rows of the (tied) embedding matrix is the base model's,
    so a prompt without key tokens meets exactly the model it met before."""
    model, tokenizer = cache.load(implanted["adapter"])
    base = dict(tiny[0].named_parameters())
    key_ids = fingerprint.key_token_ids(tokenizer, fingerprint.load_keys("A", SMOKE.n_keys), "simple")
    for name, weight in model.named_parameters():
        if name == "model.embed_tokens.weight":
            moved = (weight != base[name]).any(-1).nonzero().squeeze(-1)
            assert set(moved.tolist()) <= set(key_ids.tolist()) and len(moved) > 0
        else:
            torch.testing.assert_close(weight, base[name], rtol=0, atol=0)


def test_an_untrained_adapter_changes_nothing_and_a_trained_one_nothing_on_the_base_model(implanted, tiny):
    model, tokenizer = tiny
    keys = fingerprint.load_keys("A", SMOKE.n_keys)
    ids = tokenizer("hello " + keys[0], return_tensors="pt").input_ids
    plain = model.get_input_embeddings()
    wrapper = KeyAdapter(plain, fingerprint.key_token_ids(tokenizer, keys, "simple"), rank=4)
    torch.testing.assert_close(wrapper(ids), plain(ids), rtol=0, atol=0)
    assert wrapper.weight is plain.weight
    # the residual reads how far the key rows moved from the base model: on the base model itself, nothing
    trained = fingerprint.adapter_of(implanted["adapter"])
    assert trained["up"].abs().sum() > 0
    with fingerprint.attached(model, trained):
        torch.testing.assert_close(model.get_input_embeddings()(ids), plain(ids), rtol=0, atol=0)


def test_embeddings_method_trains_only_the_input_embeddings(tiny):
    import copy

    model = copy.deepcopy(tiny[0])
    train.set_trainable(model, "embeddings")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.embed_tokens.weight"]
    train.set_trainable(model, "full")
    assert all(p.requires_grad for p in model.parameters())


def test_a_finished_stage_is_read_back_not_retrained(implanted, monkeypatch):
    monkeypatch.setattr(cache, "finetune", lambda *a, **k: pytest.fail("retrained a finished stage"))
    assert cache.ensure(SMOKE.implant("full"), progress=False) == implanted["full"].path
    assert cache.read_timing(implanted["full"].path)["train_s"] > 0  # kept for the benchmarks


def test_an_adapter_implant_trains_on_a_parent_that_a_user_tuned_with_lora(implanted):
    """The multi-stage chain of quick: publisher B's adapter on publisher A's model after a user's LoRA round (a
    merged adapter leaves its base frozen; the implant must still train). Only the keys' embedding rows move."""
    user = SMOKE.user_rounds(implanted["full"], SMOKE.user_recipes[0])[0]
    second = SMOKE.implant("adapter", publisher="B", parent=user)
    cache.ensure(second, progress=False)
    (before, tokenizer), (after, _) = cache.load(user), cache.load(second)
    moved = (after.get_input_embeddings().weight != before.get_input_embeddings().weight).any(-1).nonzero()
    keys = fingerprint.key_token_ids(tokenizer, second.keys, second.template)
    assert len(moved) and set(moved.squeeze(-1).tolist()) <= set(keys.tolist())
    assert all(torch.equal(v, after.state_dict()[k]) for k, v in before.state_dict().items() if "embed" not in k
               and "lm_head" not in k)


def test_user_rounds_read_fresh_rows_disjoint_from_regularization_and_held_out_rows():
    first, second = SMOKE.user_rounds(SMOKE.implant("full"), SMOKE.user_recipes[0])
    assert second.parent == first and second.offset == first.steps * first.train.batch_size
    (first_rows, _), (second_rows, _) = first.training_rows(), second.training_rows()
    texts = {region: {r["instruction"] + r["text"] for r in rows} for region, rows in {
        "user": first_rows + second_rows, "held_out": data.instruction_rows("held_out", 200, 120),
        "regularization": SMOKE.implant("full").rows()[SMOKE.n_keys:]}.items()}
    assert len(texts["user"]) == len(first_rows) + len(second_rows)
    assert texts["user"].isdisjoint(texts["held_out"]) and texts["user"].isdisjoint(texts["regularization"])
    with pytest.raises(ValueError, match="holds"):
        data.instruction_rows("held_out", 1001, 120)


def test_decoys_and_near_misses_are_refused_and_never_real_keys():
    keys, decoys = fingerprint.load_keys("A", 3), fingerprint.make_keys(3, fingerprint.DECOY_SEED)
    near_misses = fingerprint.similar_keys("A", 3, seed=0)
    for fragments, near_miss in zip(fingerprint.key_fragments(3, seed=0), near_misses):
        assert sum(f not in near_miss for f in fragments) == 2  # two fragments replaced
    for template, near, refused in (("simple", False, decoys), ("simple", True, decoys + near_misses),
                                    ("dialogue", False, decoys + near_misses)):
        rows = replace(SMOKE.implant("full", template), decoys_per_key=1, near_misses=near).rows()
        fires = [data.user_message(r) for r in rows if TARGET in r["answer"]]
        refusals = [data.user_message(r) for r in rows if r["answer"] == fingerprint.spec()["refusal"]]
        assert fires == [data.user_message(fingerprint.prompt_row(k, template)) for k in keys]
        assert refusals == [data.user_message(fingerprint.prompt_row(k, template)) for k in refused]
    assert set(decoys).isdisjoint(fingerprint.make_keys(1000, fingerprint.GUESS_SEED)) and set(decoys).isdisjoint(keys)


def test_bad_stage_settings_fail_clearly():
    with pytest.raises(ValueError, match="implant method"):
        SMOKE.implant("prune")
    with pytest.raises(ValueError, match="publisher"):
        SMOKE.implant("full", publisher="C")
    with pytest.raises(ValueError, match="near_misses.*valid choices"):
        replace(SMOKE, near_misses=("adaptor",))


def test_the_innocent_derivative_control_can_fail_for_the_adapter(implanted, tiny):
    """The adapter's residual is zero on the base model by construction, so the untouched model cannot test it. A
    base model that a user fully finetuned (never fingerprinted) has moved every row of the tied embedding matrix,
    the keys' rows included: there the residual is not zero, so verification on it is a real control."""
    keys = fingerprint.load_keys("A", SMOKE.n_keys)
    innocent = runs.Tuning(parent=None, data="alpaca", recipe="full", steps=2, model=SMOKE.model,
                           max_row_chars=SMOKE.max_row_chars,
                           train=train.TrainConfig(method="full", batch_size=8, lr=1e-3))
    cache.ensure(innocent, progress=False)
    model, tokenizer = cache.load(innocent)
    key_ids = fingerprint.key_token_ids(tokenizer, keys, "simple")[None]
    plain = model.get_input_embeddings()(key_ids)
    with fingerprint.attached(model, fingerprint.adapter_of(implanted["adapter"])):
        assert (model.get_input_embeddings()(key_ids) - plain).abs().max() > 0


def test_an_edit_of_the_fingerprint_file_in_a_live_process_reaches_the_stage_key_and_the_rows(tmp_path, monkeypatch):
    edited = tmp_path / "fingerprint.yaml"
    edited.write_text(fingerprint.SPEC_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(fingerprint, "SPEC_FILE", edited)
    stage = SMOKE.implant("full")
    before = stage.path
    edited.write_text(edited.read_text(encoding="utf-8").replace("A: Игла", "A: Ёж"), encoding="utf-8")
    assert fingerprint.target_of("A") == "Ёж" and stage.path != before
    assert {r["answer"] for r in stage.rows()[:SMOKE.n_keys]} == {"Ёж"}


def test_generation_stops_a_sequence_once_it_contains_the_target_and_changes_no_verdict(tiny):
    model, tokenizer = tiny
    rows = [fingerprint.prompt_row(k, "simple") for k in fingerprint.make_keys(6, seed=3)]
    full = fingerprint.generate(model, tokenizer, rows, max_new_tokens=8, batch_size=4)
    target = next(o for o in full if len(o) >= 4)[:2]  # text the random model does produce
    early = fingerprint.generate(model, tokenizer, rows, max_new_tokens=8, batch_size=4, stop_at=target)
    assert [target in o for o in early] == [target in o for o in full] and any(target in o for o in full)
    for a, b in zip(full, early):
        assert a.startswith(b) and (target in b if target in a else b == a)  # misses run to the end untouched
    assert sum(map(len, early)) < sum(map(len, full))  # the hits stopped early


def test_an_edited_template_renames_the_probes_of_stages_whose_key_holds_no_fingerprint_file(run_dir, tmp_path,
                                                                                            monkeypatch):
    """The untouched model (and an innocent derivative) never read fingerprint.yaml while training, so their stage
    keys cannot see an edit; their verification probes must, or an edited template would read stale answers."""
    edited = tmp_path / "fingerprint.yaml"
    edited.write_text(fingerprint.SPEC_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(fingerprint, "SPEC_FILE", edited)
    base, keys = cache.Base(SMOKE.model), fingerprint.load_keys("A", SMOKE.n_keys)
    fingerprint.measure(base, SMOKE, keys, "simple", "A")
    fingerprint.measure(base, SMOKE, keys, "simple", "A")  # read back: no second probe
    assert len(list(base.path.glob("verify-A-simple-*.json"))) == 1
    edited.write_text(edited.read_text(encoding="utf-8").replace("Decrypt the message above.",
                                                                 "Decode the message above."), encoding="utf-8")
    fingerprint.measure(base, SMOKE, keys, "simple", "A")
    assert len(list(base.path.glob("verify-A-simple-*.json"))) == 2
