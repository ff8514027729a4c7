"""Hidden states of a model's frozen lower layers, computed once per token sequence and reused.

With LoRA on the top k decoder layers the layers below never change, so every epoch, every attack run of a dataset
and every evaluation on the same test rows pushes the same token sequences through the same frozen layers. Their
output (the input of the first trainable layer) is computed once per sequence, kept in memory, and training and
scoring run only the top layers from there (`only_layers`). benchmarks/bench_train.py measures what it saves.

States are keyed by a fingerprint of the frozen weights, so another model, or one whose lower layers changed, is
never served someone else's states. Sequences are computed in packs (`packing`): a prompt prefix shared by several
of them runs once, and no sequence sees another's tokens or padding, so its states depend on which rows shared its
pack only up to float rounding. A model whose forward does something our shortcut does not reproduce (say, scaling
input embeddings) fails the one-off numerical check in `supported` and runs the plain full forward instead.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from contextlib import contextmanager

import torch

from . import packing

ROWS_PER_CALL = 32  # sequences whose states one forward pass computes (in packs)
MAX_BYTES = 1_500_000_000  # least recently used states are dropped beyond this (peak memory stays under ~4 GiB)
_states: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_bytes = 0
_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_supported: dict[str, bool] = {}


def decoder(model):
    """The module holding the decoder layers (`.layers`, `.embed_tokens`) of a causal LM, peft-wrapped or not;
    None for encoder-decoder models and architectures laid out otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config.is_encoder_decoder:
        return None
    inner = base.base_model
    return inner if hasattr(inner, "layers") and hasattr(inner, "embed_tokens") else None


def trainable_depth(model) -> int:
    """Number of bottom decoder layers (embeddings included) with no trainable parameter: 0 when the embeddings
    train or the layout is not a plain decoder."""
    dec = decoder(model)
    if dec is None or any(p.requires_grad for p in dec.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(dec.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(dec.layers)


@contextmanager
def only_layers(model, start: int, stop: int | None = None):
    """Within the block, the model runs only its decoder layers [start:stop]. With `start` = the frozen depth,
    feed it `inputs_embeds` = the states that `states` returns."""
    dec = decoder(model)
    if start == 0 and stop is None:
        yield model
        return
    layers = dec.layers
    dec.layers = layers[start:stop]
    try:
        yield model
    finally:
        dec.layers = layers


def _fingerprint(model, n_frozen: int) -> str:
    per_model = _fingerprints.setdefault(model, {})
    if n_frozen not in per_model:
        dec = decoder(model)
        digest = hashlib.blake2b(digest_size=16)
        for module in (dec.embed_tokens, *dec.layers[:n_frozen]):
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        per_model[n_frozen] = digest.hexdigest()
    return per_model[n_frozen]


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def _compute(model, n_frozen: int, sequences: list[tuple[int, ...]], prefix_lengths: list[int]
             ) -> list[torch.Tensor]:
    dec = decoder(model)
    device = next(model.parameters()).device
    captured = []  # the last frozen layer's output: the decoder's own output would be normed
    hook = dec.layers[n_frozen - 1].register_forward_hook(
        lambda module, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
    out = {}
    try:
        with only_layers(model, 0, n_frozen):
            for chunk in packing.batches(sequences, ROWS_PER_CALL, prefix_lengths):
                packs = packing.pack([list(sequences[i]) for i in chunk], [prefix_lengths[i] for i in chunk])
                captured.clear()
                dec(input_ids=packs.ids.to(device), position_ids=packs.position_ids.to(device),
                    attention_mask=packing.attention_mask(model, packs.mask.to(device)), use_cache=False)
                out.update(zip((sequences[i] for i in chunk), packs.gather(captured[0].float().cpu())))
    finally:
        hook.remove()
    return [out[s] for s in sequences]


def states(model, n_frozen: int, sequences: list[list[int]], prefix_lengths: list[int] | None = None
           ) -> list[torch.Tensor]:
    """(len, hidden) float32 CPU states after the bottom `n_frozen` decoder layers, one per token sequence,
    computed for the sequences not seen before with these frozen weights; the first `prefix_lengths[i]` tokens of a
    sequence are run once for every sequence sharing them."""
    global _bytes
    key = _fingerprint(model, n_frozen)
    sequences = [tuple(s) for s in sequences]
    lengths = dict(zip(sequences, prefix_lengths or [0] * len(sequences), strict=True))
    missing = list(dict.fromkeys(s for s in sequences if (key, s) not in _states))
    computed = _compute(model, n_frozen, missing, [lengths[s] for s in missing]) if missing else []
    for seq, state in zip(missing, computed):
        _states[(key, seq)] = state
        _bytes += state.numel() * state.element_size()
    found = []
    for seq in sequences:
        _states.move_to_end((key, seq))
        found.append(_states[(key, seq)])
    while _bytes > MAX_BYTES and len(_states) > len(sequences):
        _, dropped = _states.popitem(last=False)
        _bytes -= dropped.numel() * dropped.element_size()
    return found


def clear() -> None:
    global _bytes
    _states.clear()
    _bytes = 0


def supported(model, n_frozen: int) -> bool:
    """Whether running the top layers on cached states gives this model's own logits (checked once per frozen
    weights on a short sequence); False also when there is nothing to skip."""
    dec = decoder(model)
    if dec is None or not 0 < n_frozen < len(dec.layers):
        return False
    if next(model.parameters()).device.type != "cpu":
        return False  # on an H100, rerunning the frozen layers beat fetching their states (results/bench/)
    key = _fingerprint(model, n_frozen)
    if key not in _supported:
        device = next(model.parameters()).device
        ids = torch.arange(10, 26, device=device)[None]
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits.float()
            hidden = _compute(model, n_frozen, [tuple(ids[0].tolist())], [0])[0][None].to(device, _dtype(model))
            with only_layers(model, n_frozen):
                top = model(inputs_embeds=hidden, use_cache=False).logits.float()
        _supported[key] = torch.allclose(full, top, atol=1e-3, rtol=1e-3)
    return _supported[key]
