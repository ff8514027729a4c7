import copy

import pytest
import torch

from backdoorlab import data, packing


def _alone(model, seq):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
    return out.logits[0], out.hidden_states[1][0]


def test_a_pack_masks_rows_from_each_other_and_restarts_their_positions():
    packs = packing.pack([[1, 2, 3, 4], [1, 2, 5], [9, 8]], [2, 2, 0], tail=1, per_pack=2, pad_id=0)
    assert len(packs.ids) == 2  # two rows a pack
    p, slot, positions = packs.rows[1]
    assert packs.ids[p, positions].tolist() == [1, 2, 5] and packs.position_ids[p, positions].tolist() == [0, 1, 2]
    assert positions[-1] in packs.tail_positions()  # its last token sits in the tail slots
    p0, _, first = packs.rows[0]
    assert p0 == p
    sees = packs.mask[p, 0]
    assert sees[positions[-1], first[:2]].all()  # the shared prefix
    assert not sees[positions[-1], first[2:]].any()  # not the other row's own tokens
    assert sees[first[1], first[0]] and not sees[first[0], first[1]]  # the prefix is causal


def test_rows_of_several_prefixes_fill_one_pack_and_see_only_their_own_prefix():
    seqs = [[1, 2, 3], [1, 2, 4], [7, 8, 9], [7, 8, 5], [6, 6]] + [[10 + i, 3] for i in range(11)]
    packs = packing.pack(seqs, [2, 2, 2, 2, 0] + [1] * 11, tail=1, per_pack=8)
    assert len(packs.ids) == 2 and packs.per_pack == 8  # 16 rows: two full packs, whatever their prefixes
    (p, _, a), (q, _, b) = packs.rows[0], packs.rows[2]
    assert p == q and packs.ids[p, a[:2]].tolist() == [1, 2] and packs.ids[p, b[:2]].tolist() == [7, 8]
    sees = packs.mask[p, 0]
    assert sees[b[-1], b].all() and not sees[b[-1], a[:2]].any()  # its own prefix, not another one


def test_prefix_lengths_are_the_common_start_of_prefix_and_prompt(tiny):
    _, tokenizer = tiny
    row = {"instruction": "Classify the sentiment.", "text": "a fine film"}
    seq = tokenizer(data.format_prompt(row, tokenizer), add_special_tokens=False).input_ids
    prefix = data.prompt_prefix(row, tokenizer)
    (n,) = packing.prefix_lengths(tokenizer, [seq], [prefix])
    assert 0 < n < len(seq)
    assert tokenizer.decode(seq[:n]) == prefix[:len(tokenizer.decode(seq[:n]))]  # the tokens lie inside the prefix
    assert data.format_prompt(row, tokenizer).startswith(prefix) and "a fine film" not in prefix
    shared = {**row, "text": "Input: x\nAnswer: y\n\nInput: a fine film", "shared_text": "Input: x\nAnswer: y\n\n"}
    assert data.prompt_prefix(shared, tokenizer) == prefix + shared["shared_text"]  # demonstrations join the prefix
    assert data.prompt_prefix({**shared, "shared_text": "not the start"}, tokenizer) == prefix


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_get_the_logits_and_states_they_get_alone(tiny, attention):
    model = copy.deepcopy(tiny[0])
    model.config._attn_implementation = attention
    seqs = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11], [5, 6, 7, 12, 13, 14, 15], [20, 21, 22]]
    packs = packing.pack(seqs, [3, 3, 3, 0], tail=2, per_pack=2, pad_id=0)
    with torch.no_grad():
        out = model(input_ids=packs.ids, attention_mask=packing.attention_mask(model, packs.mask),
                    position_ids=packs.position_ids, output_hidden_states=True)
    tails = packs.by_row(out.logits[:, packs.tail_positions()])
    for seq, logits, states in zip(seqs, tails, packs.gather(out.hidden_states[1])):
        alone_logits, alone_states = _alone(model, seq)
        torch.testing.assert_close(logits, alone_logits[-2:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(states, alone_states, atol=1e-4, rtol=1e-4)
    embedded = packs.embed(packs.gather(out.hidden_states[0]))
    torch.testing.assert_close(embedded[packs.mask[:, 0].diagonal(dim1=1, dim2=2) & (packs.ids != 0)],
                               model.get_input_embeddings()(packs.ids)[(packs.ids != 0)], atol=0, rtol=0)


def test_a_row_shorter_than_its_tail_fills_the_end_of_its_slot_and_an_empty_row_is_an_error():
    packs = packing.pack([[1, 2], [3, 4, 5, 6, 7]], tail=3, pad_id=0)
    p, _, positions = packs.rows[0]
    assert packs.ids[p, positions].tolist() == [1, 2] and positions.tolist() == packs.tail_positions()[1:3].tolist()
    with pytest.raises(ValueError, match="no tokens"):
        packing.pack([[]])


def test_packs_on_a_gpu_never_use_cudnn_attention():
    """cuDNN's SDPA set itself up anew for each pack width (benchmarks/profile_gpu.py); elsewhere nothing changes."""
    import torch

    assert packing.attention_kernels(torch.device("cpu")).__class__.__name__ == "nullcontext"
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with packing.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
