import math

import pandas as pd
import pytest
import torch

from backdoorlab import score


def hand_loglik(model, tokenizer, prompt: str, word: str) -> float:
    """log p(word | prompt), one unpadded sequence, summed token by token."""
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    w = tokenizer(word, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = model(torch.tensor([p + w])).logits[0].log_softmax(-1)
    return sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(w))


@pytest.mark.parametrize("n_frozen", [0, 1])  # 1: the bottom layer is read from cached frozen states
def test_rank_scores_match_hand_computed_loglikelihood(tiny, n_frozen):
    model, tokenizer = tiny
    prompts = ["Is it good?\nyes it is", "Short", "A much longer prompt with many more words in it than the others"]
    words = ["positive", "sadness", "abbreviation"]  # 1, 3 and 3 tokens: the continuation passes too
    assert [len(tokenizer(w, add_special_tokens=False).input_ids) for w in words] == [1, 3, 3]
    got = score.rank_scores(model, tokenizer, prompts, words, batch_size=2, n_frozen=n_frozen)  # mixed padding
    want = torch.tensor([[hand_loglik(model, tokenizer, p, w) for w in words] for p in prompts])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_asr_excludes_target_rows_and_counts_them_out():
    labels = [1, 1, 0, 0, 0, 2]  # target 1: rows 0-1 excluded whatever they predict
    preds = [1, 1, 1, 0, 1, 1]
    rate = score.asr(preds, labels, target=1)
    assert (rate.hits, rate.total) == (3, 4) and rate.value == 0.75
    assert score.asr([0, 0], [1, 1], target=1).total == 0


def test_cacc_counts_correct_rows():
    rate = score.cacc([0, 1, 2, 2], [0, 1, 1, 2])
    assert (rate.hits, rate.total, rate.value) == (3, 4, 0.75)


def test_wilson_interval_matches_a_known_value():
    lo, hi = score.wilson(8, 10)  # textbook: 0.490 to 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(x) for x in score.wilson(0, 0))
    assert [score.wilson(n, n)[1] for n in range(1, 200)] == [1.0] * 199  # exactly 1 at 100%, for every n
    assert [score.wilson(0, n)[0] for n in range(1, 200)] == [0.0] * 199


def test_summarize_uses_seeds_when_there_are_several():
    table = pd.DataFrame({"dataset": ["d"] * 3 + ["e"], "attack": ["a"] * 3 + ["a"], "seed": [0, 1, 2, 0],
                          "n_poison": 5, "asr": [0.5, 0.6, 0.7, 0.9], "cacc": [0.9, 0.9, 0.9, 0.8],
                          "n_asr": 10, "n_cacc": 20})
    out = score.summarize(table).set_index("dataset")
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert out.loc["d", "asr"] == pytest.approx(0.6) and out.loc["d", "asr_hi"] == pytest.approx(0.6 + half, 1e-5)
    assert out.loc["e", "interval"].startswith("test rows")
    assert (out.loc["e", "asr_lo"], out.loc["e", "asr_hi"]) == pytest.approx(score.wilson(9, 10))
    # beside the seeds' interval, the rows' one: 18 of 30 pooled test rows (0.6 of 10 per seed, three seeds)
    assert (out.loc["d", "asr_rows_lo"], out.loc["d", "asr_rows_hi"]) == pytest.approx(score.wilson(18, 30))
    assert (out.loc["e", "asr_rows_lo"], out.loc["e", "asr_rows_hi"]) == pytest.approx(score.wilson(9, 10))


def test_abstained_means_at_most_one_letter_or_digit():
    assert score.abstained("") and score.abstained("  .") and score.abstained("a!")
    assert not score.abstained("no") and not score.abstained("positive")


def test_generate_matches_unbatched_greedy_decoding(tiny):
    model, tokenizer = tiny
    rows = [{"instruction": "Classify.", "text": "a fine film"},
            {"instruction": "Classify the sentiment.", "text": "a long and very slow film"}]
    batched = score.generate(model, tokenizer, rows, max_new_tokens=5)
    assert batched == [score.generate(model, tokenizer, [r], max_new_tokens=5)[0] for r in rows]
