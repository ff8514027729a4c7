import copy

import torch

from backdoorlab import frozen, train
from backdoorlab.train import TrainConfig


def test_states_are_the_hidden_states_after_the_frozen_layers(tiny):
    model, tokenizer = tiny
    ids = tokenizer("a fine film , warm and funny").input_ids
    with torch.no_grad():
        want = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]  # after layer 0
    (got,) = frozen.states(model, 1, [ids])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert frozen.supported(model, 1) and not frozen.supported(model, 0) and not frozen.supported(model, 2)


def test_states_are_computed_once_and_never_served_to_changed_weights(tiny, monkeypatch):
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    ids = tokenizer("dull and long").input_ids
    computed = []
    real = frozen._compute
    monkeypatch.setattr(frozen, "_compute",
                        lambda m, n, seqs, shared: computed.append(len(seqs)) or real(m, n, seqs, shared))
    first = frozen.states(model, 1, [ids, ids])[0]
    assert frozen.states(model, 1, [ids])[0] is first and computed == [1]  # duplicates and repeats: one pass
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.down_proj.weight.mul_(2)
    assert not torch.equal(frozen.states(changed, 1, [ids])[0], first) and computed == [1, 1]


def test_training_on_frozen_states_gives_the_weights_of_a_full_forward(tiny, rows):
    data = [{**r, "answer": ["negative", "positive"][r["label"]]} for r in rows]
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, lora_layers=1)
    tuned = [train.finetune(copy.deepcopy(tiny[0]), tiny[1], data, cfg, seed=0, progress=False, reuse_frozen=reuse)
             for reuse in (False, True)]
    plain, reused = ({n: p for n, p in m.named_parameters() if "lora" in n} for m in tuned)
    assert plain.keys() == reused.keys() and plain
    for name in plain:  # float rounding only: the frozen states were packed with other rows than the batches
        torch.testing.assert_close(reused[name], plain[name], atol=1e-4, rtol=1e-3)
