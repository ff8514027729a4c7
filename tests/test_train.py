import copy

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


def test_left_pad_aligns_answers_at_the_end():
    batch = train.left_pad([{"input_ids": [5, 6, 7], "labels": [-100, -100, 7]},
                            {"input_ids": [8, 9], "labels": [-100, 9]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["labels"][:, -1].tolist() == [7, 9] and batch["labels"][1, 0] == -100
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]


def test_length_grouped_batches_cover_every_row_once_per_epoch_deterministically():
    lengths = [i % 7 + 1 for i in range(53)]
    a = train.LengthGroupedBatches(lengths, 8, seed=1, group=2)
    first = list(a)
    assert sorted(i for batch in first for i in batch) == list(range(53)) and len(first) == len(a) == 7
    assert list(a) != first  # a new order in the next epoch
    assert list(train.LengthGroupedBatches(lengths, 8, seed=1, group=2)) == first


def test_answer_loss_equals_the_plain_loss_on_answer_tokens(tiny, rows):
    model, tokenizer = tiny
    encoded = [train.encode(r, tokenizer, 256) for r in sft_rows(rows)]
    batch = train.left_pad(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = train.answer_loss(model, batch)
        plain = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")},
                      labels=batch["labels"]).loss
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)


def test_lora_training_learns_and_touches_only_the_top_layers(tiny, rows):
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    data = sft_rows(rows) * 4
    batch = train.left_pad([train.encode(r, tokenizer, 256) for r in data], tokenizer.pad_token_id)
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
