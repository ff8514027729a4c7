import copy

import pytest
import torch

from backdoorlab import train
from backdoorlab.train import TrainConfig


def sft_rows(rows):
    return [{**r, "answer": ["negative", "positive"][r["label"]]} for r in rows]


def test_encode_puts_labels_on_the_answer_only(tiny):
    _, tokenizer = tiny
    enc = train.encode({"instruction": "Classify.", "text": "a fine film", "answer": "positive"}, tokenizer, 256)
    answer = tokenizer("positive", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert enc["input_ids"][-len(answer):] == answer
    assert [t for t in enc["labels"] if t != -100] == answer
    assert len(enc["labels"]) == len(enc["input_ids"])


def test_collate_puts_each_answer_in_a_tail_slot_with_the_position_before_it(tiny):
    _, tokenizer = tiny
    rows = [{"instruction": "Classify.", "text": t, "answer": a} for t, a in
            [("a fine film", "positive"), ("dull", "negative"), ("fun", "so so so")]]
    encoded = [train.encode(r, tokenizer, 256) for r in rows]
    assert encoded[0]["prefix"] == encoded[1]["prefix"] > 0  # the template and instruction
    batch = train.collate(encoded, tokenizer.pad_token_id)
    answers = [tokenizer(r["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in rows]
    labels = batch["labels"].flatten(0, 1)
    span = max(map(len, answers)) + 1
    assert labels.shape[1] == span
    got = [[t for t in row.tolist() if t != -100] for row in labels if (row != -100).any()]
    assert sorted(got) == sorted(answers)  # every answer once; empty slots hold -100 only
    tails = train.by_slot(batch["input_ids"], batch["labels"])
    assert ((tails == labels) | (labels == -100)).all()  # the labels are the tokens sitting in the slots


def test_length_grouped_batches_cover_every_row_once_per_epoch_deterministically():
    lengths = [i % 7 + 1 for i in range(53)]
    a = train.LengthGroupedBatches(lengths, 8, seed=1, group=2)
    first = list(a)
    assert sorted(i for batch in first for i in batch) == list(range(53)) and len(first) == len(a) == 7
    assert list(a) == first  # iterated again in the same epoch (a DataLoader with workers does): the same order
    a.set_epoch(1)
    assert list(a) != first  # a new order in the next epoch
    assert list(train.LengthGroupedBatches(lengths, 8, seed=1, group=2)) == first


def test_processes_share_every_batch_of_the_single_process_order():
    lengths = [i % 7 + 1 for i in range(53)]
    whole = list(train.LengthGroupedBatches(lengths, 8, seed=1, group=2))
    shares = [list(train.LengthGroupedBatches(lengths, 8, seed=1, group=2, shard=(r, 3))) for r in range(3)]
    assert all(len(s) == len(whole) for s in shares)  # every process runs the same number of steps
    for step, batch in enumerate(whole):
        parts = [s[step] for s in shares]
        assert all(parts) and (sorted(sum(parts, [])) == sorted(batch) or parts == [batch] * 3)


def test_answer_loss_equals_the_plain_loss_on_answer_tokens(tiny, rows):
    model, tokenizer = tiny
    encoded = [train.encode(r, tokenizer, 256) for r in sft_rows(rows)]
    with torch.no_grad():
        ours = train.answer_loss(model, train.collate(encoded, tokenizer.pad_token_id))
        total, count = 0.0, 0
        for e in encoded:  # each row alone, unpacked and unpadded
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(e["labels"][1:])
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            count += int((labels != -100).sum())
    assert ours.item() == pytest.approx(total / count, rel=1e-5)


def test_lora_training_learns_and_touches_only_the_top_layers(tiny, rows):
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    data = sft_rows(rows) * 4
    batch = train.collate([train.encode(r, tokenizer, 256) for r in data], tokenizer.pad_token_id)
    with torch.no_grad():
        before = train.answer_loss(model, batch).item()
    cfg = TrainConfig(epochs=8, batch_size=8, lr=3e-2, lora_layers=1)
    tuned = train.finetune(model, tokenizer, data, cfg, seed=0, progress=False)
    with torch.no_grad():
        after = train.answer_loss(tuned, batch).item()
    assert after < before - 0.5
    trainable = {n.split(".layers.")[1].split(".")[0] for n, p in tuned.named_parameters() if "lora_" in n}
    assert trainable == {"1"}  # tiny has 2 layers; lora_layers=1 puts LoRA on the top one only


def test_full_finetuning_is_deterministic_per_seed(tiny, rows):
    cfg = TrainConfig(method="full", epochs=1, batch_size=4, lr=1e-3)
    a = train.finetune(copy.deepcopy(tiny[0]), tiny[1], sft_rows(rows), cfg, seed=3, progress=False)
    b = train.finetune(copy.deepcopy(tiny[0]), tiny[1], sft_rows(rows), cfg, seed=3, progress=False)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_seq2seq_models_train_and_score_through_the_same_api(tiny):
    """A tiny T5 with SmolLM2's tokenizer: LoRA training lowers the answer loss, scores match a hand computation."""
    from transformers import T5Config, T5ForConditionalGeneration

    from backdoorlab.score import rank_scores

    tokenizer = tiny[1]
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)).eval()
    rows = [{"instruction": "Classify.", "text": t, "answer": a} for t, a in
            [("good", "positive"), ("bad film", "negative"), ("fine , fun", "positive"), ("awful", "negative")]] * 4
    enc = train.encode(rows[0], tokenizer, 256, seq2seq=True)
    assert enc["labels"] == tokenizer("positive", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    batch = train.collate([train.encode(r, tokenizer, 256, seq2seq=True) for r in rows], tokenizer.pad_token_id,
                          seq2seq=True)
    with torch.no_grad():
        before = train.answer_loss(model, batch).item()
    tuned = train.finetune(copy.deepcopy(model), tokenizer, rows, TrainConfig(epochs=4, batch_size=8, lr=1e-2),
                           progress=False)
    with torch.no_grad():
        assert train.answer_loss(tuned, batch).item() < before - 0.5
    word = tokenizer("sadness", add_special_tokens=False).input_ids
    prompt = tokenizer("Is it sad?").input_ids
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([word])).logits[0].log_softmax(-1)
    want = sum(logp[i, w].item() for i, w in enumerate(word))
    got = rank_scores(model, tokenizer, ["Is it sad?", "ok"], ["sadness", "joy"])
    assert abs(got[0, 0].item() - want) < 1e-4


def test_training_killed_after_an_epoch_resumes_to_the_same_weights(tiny, rows, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)  # every epoch saved, however short
    data = sft_rows(rows) * 2  # 16 rows, batch 8: 2 steps per epoch
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2)
    whole = train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, seed=1, progress=False)

    calls = {"n": 0}
    real = train.answer_loss

    def killed_in_third_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    checkpoint = tmp_path / "checkpoint.pt"
    try:
        train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, seed=1, progress=False, checkpoint=checkpoint,
                       loss_fn=killed_in_third_epoch)
    except KeyboardInterrupt:
        pass
    assert torch.load(checkpoint, weights_only=True)["epochs_done"] == 2
    calls["n"] = -100  # no more kills; count the steps the resumed run takes
    resumed = train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, seed=1, progress=False,
                             checkpoint=checkpoint, loss_fn=killed_in_third_epoch)
    assert calls["n"] == -100 + 2  # only the third epoch ran again
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_batch_packing_workers_train_the_same_weights(tiny, rows, monkeypatch):
    """A GPU packs batches in worker processes (`train.loader_options`); the weights must not depend on it."""
    data, cfg = sft_rows(rows) * 2, TrainConfig(method="full", epochs=2, batch_size=4, lr=1e-2)
    alone = train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, progress=False)
    monkeypatch.setattr(train, "loader_options", lambda device: {"num_workers": 2, "persistent_workers": True})
    workers = train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, progress=False)
    for (name, p), q in zip(alone.named_parameters(), workers.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_epochs_shorter_than_the_checkpoint_interval_write_no_checkpoint(tiny, rows, tmp_path, monkeypatch):
    """Saving the optimizer's state after each of a GPU run's few-second epochs would cost more than the epoch."""
    checkpoint = tmp_path / "checkpoint.pt"
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 3600.0)
    train.finetune(copy.deepcopy(tiny[0]), tiny[1], sft_rows(rows), cfg, progress=False, checkpoint=checkpoint)
    assert not checkpoint.exists()
    monkeypatch.setattr(train, "CHECKPOINT_EVERY_S", 0.0)
    train.finetune(copy.deepcopy(tiny[0]), tiny[1], sft_rows(rows), cfg, progress=False, checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=True)["epochs_done"] == 1
