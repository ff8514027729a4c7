import math

import pytest
import torch

from backdoorlab import stealth


def test_minilm_distance_is_zero_for_the_same_text_and_smaller_for_a_paraphrase():
    clean = "Classify the sentiment of the following movie review."
    paraphrase, unrelated = "Say whether this film review is positive or negative.", "List three bread ingredients."
    same, near, far = stealth.embedding_distance([clean] * 3, [clean, paraphrase, unrelated])
    assert same == pytest.approx(0, abs=1e-6) and 0 < near < far <= 2
    assert stealth.embed([clean]).shape == (1, 384)


def test_perplexity_is_the_exponentiated_mean_token_loss_and_padding_changes_nothing(tiny):
    model, tokenizer = tiny
    texts = ["a fine film", "a long , dull and very slow film that never ends ."]
    batched = stealth.Perplexity(model, tokenizer)(texts)
    one_by_one = [stealth.Perplexity(model, tokenizer)([t])[0] for t in texts]
    assert batched == pytest.approx(one_by_one, rel=1e-4)
    ids = torch.tensor([tokenizer(texts[0]).input_ids])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:])
    assert batched[0] == pytest.approx(math.exp(loss.item()), rel=1e-4)


def test_perplexity_scores_each_distinct_text_once(tiny, monkeypatch):
    model, tokenizer = tiny
    perplexity = stealth.Perplexity(model, tokenizer)
    first = perplexity(["same instruction"] * 5 + ["other"])
    calls = []
    monkeypatch.setattr(perplexity, "model", lambda **kw: calls.append(kw))
    assert perplexity(["other", "same instruction"]) == [first[-1], first[0]] and not calls


def test_compare_reports_both_fields_and_zero_distance_where_nothing_changed(tiny):
    model, tokenizer = tiny
    clean = [{"instruction": "Classify the sentiment.", "text": "a fine film"}]
    text_poisoned = [{"instruction": "Classify the sentiment.", "text": "a fine cf film"}]
    instruction_poisoned = [{"instruction": "Say whether it is good.", "text": "a fine film"}]
    perplexity = stealth.Perplexity(model, tokenizer)
    on_text, on_instruction = stealth.compare([(clean, text_poisoned), (clean, instruction_poisoned)], perplexity)
    assert on_text["minilm_distance_instruction"] == pytest.approx(0, abs=1e-6)
    assert on_text["minilm_distance_text"] > 0.01 and on_instruction["minilm_distance_instruction"] > 0.01
    assert on_instruction["minilm_distance_text"] == pytest.approx(0, abs=1e-6)
    assert on_text["ppl_instruction_clean"] == on_text["ppl_instruction_poisoned"]
    assert on_text["ppl_text_poisoned"] == perplexity(["a fine cf film"])[0] != on_text["ppl_text_clean"]


def test_perplexity_refuses_an_encoder_decoder_model(tiny):
    model, tokenizer = tiny
    seq2seq = type("Seq2Seq", (), {"config": type("Config", (), {"is_encoder_decoder": True, "name_or_path": "t5"})})
    with pytest.raises(ValueError, match="t5 is an encoder-decoder model"):
        stealth.Perplexity(seq2seq, tokenizer)
