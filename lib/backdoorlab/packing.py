"""Rows that begin with the same prompt prefix run that prefix once: shared-prefix packing.

Every clean row of a task starts with the same chat template and instruction, and so does every triggered row of an
instruction attack: about half of SST-2's prompt tokens. A *pack* is one sequence holding up to `per_pack` rows,
each prefix among them once and each row's remaining tokens after its prefix. Its 4-D attention mask lets each
row's tokens see their prefix and their own earlier tokens only, and each row's position ids continue where the
prefix ends, so every row gets the logits and hidden states it gets when run alone (up to float rounding);
training, scoring and the frozen-layer states all run on packs.

Attention follows the mask and the position ids, not the order of tokens in a pack, so each row's last `tail` tokens
sit in a slot at the end of its pack: the positions a loss or a score reads are then the same in every pack of a
batch, and only they reach the vocabulary projection (`tail_positions`). A prefix is given per row (the prompt up to
the row's own text, `data.prompt_prefix`), never inferred from which rows share a batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PER_PACK = 8  # rows a pack: more saves little (a prefix is paid once a pack) and attention grows with its square


@dataclass
class Packs:
    ids: torch.Tensor  # (packs, width) token ids; `pad_id` where nothing sits
    position_ids: torch.Tensor  # (packs, width)
    mask: torch.Tensor  # (packs, 1, width, width) bool: whether a query position may attend a key position
    rows: list[tuple[int, int, torch.Tensor]]  # per input row: its pack, its slot, the positions of its tokens
    tail: int  # each row's last `tail` tokens sit in its slot of the last `per_pack * tail` positions
    per_pack: int  # slots per pack: the most rows any pack holds

    def tail_positions(self) -> torch.Tensor:
        width = self.ids.shape[1]
        return torch.arange(width - self.per_pack * self.tail, width)

    def by_row(self, tails: torch.Tensor) -> torch.Tensor:
        """(rows, tail, ...) from a (packs, per_pack * tail, ...) tensor over the tail positions, in input order."""
        slots = tails.unflatten(1, (self.per_pack, self.tail))
        return torch.stack([slots[p, s] for p, s, _ in self.rows])

    def embed(self, states: list[torch.Tensor]) -> torch.Tensor:
        """(packs, width, hidden) inputs holding each row's (len, hidden) states at its positions (zeros elsewhere)."""
        out = states[0].new_zeros(*self.ids.shape, states[0].shape[-1])
        for (p, _, positions), s in zip(self.rows, states, strict=True):
            out[p, positions] = s
        return out

    def gather(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Each row's (len, hidden) states from a (packs, width, hidden) output."""
        return [hidden[p, positions] for p, _, positions in self.rows]


def pack(sequences: list[list[int]], prefix_lengths: list[int] | None = None, tail: int = 0,
         per_pack: int = PER_PACK, pad_id: int = 0) -> Packs:
    """Packs of up to `per_pack` token sequences; the first `prefix_lengths[i]` tokens of a sequence run once for
    the rows of its pack that share them. Rows of several prefixes share a pack (a row whose prefix nobody shares
    simply brings its own), so every pack fills its tail slots. A prefix is cut short where it would reach into a
    row's tail; a row shorter than `tail` fills the end of its slot."""
    prefix_lengths = prefix_lengths or [0] * len(sequences)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (seq, n) in enumerate(zip(sequences, prefix_lengths, strict=True)):
        if not seq:
            raise ValueError(f"row {i} has no tokens to pack")
        groups.setdefault(tuple(seq[:max(0, min(n, len(seq) - tail))]), []).append(i)
    layouts: list[list[tuple[tuple[int, ...], list[int]]]] = [[]]  # per pack: (prefix, its rows) in order
    room = per_pack
    for prefix, members in groups.items():
        while members:
            if not room:
                layouts.append([])
                room = per_pack
            layouts[-1].append((prefix, members[:room]))
            room -= len(layouts[-1][-1][1])
            members = members[len(layouts[-1][-1][1]):]
    per_pack = max(sum(len(rows) for _, rows in layout) for layout in layouts)
    body = max(sum(len(prefix) + sum(max(0, len(sequences[i]) - len(prefix) - tail) for i in rows)
                   for prefix, rows in layout) for layout in layouts)
    width = body + per_pack * tail
    ids = torch.full((len(layouts), width), pad_id)
    position_ids = torch.zeros(len(layouts), width, dtype=torch.long)
    owner = torch.full((len(layouts), width), -2)  # -1: a prefix, -2: padding, else the row's slot
    group = torch.full((len(layouts), width), -1)  # which prefix's tokens these are (padding: -1)
    rows_at: list = [None] * len(sequences)
    for p, layout in enumerate(layouts):
        cursor, slot = 0, 0
        for g, (prefix, rows) in enumerate(layout):
            n = len(prefix)
            ids[p, cursor:cursor + n] = torch.tensor(prefix, dtype=torch.long)
            position_ids[p, cursor:cursor + n] = torch.arange(n)
            owner[p, cursor:cursor + n], group[p, cursor:cursor + n] = -1, g
            shared = torch.arange(cursor, cursor + n)
            cursor += n
            for i in rows:
                seq = sequences[i]
                last = min(tail, len(seq) - n)  # tokens in the slot, at its end
                own = len(seq) - n - last  # tokens between the prefix and the slot
                end = body + (slot + 1) * tail
                positions = torch.cat([shared, torch.arange(cursor, cursor + own), torch.arange(end - last, end)])
                ids[p, positions] = torch.tensor(seq)
                position_ids[p, positions] = torch.arange(len(seq))
                owner[p, positions[n:]], group[p, positions[n:]] = slot, g
                rows_at[i] = (p, slot, positions)
                cursor += own
                slot += 1
    sees = (owner[:, None, :] == -1) | (owner[:, None, :] == owner[:, :, None])  # a prefix, or the same row ...
    sees &= group[:, None, :] == group[:, :, None]  # ... of the same prefix
    mask = sees & (position_ids[:, None, :] <= position_ids[:, :, None])  # padding sees itself: no empty query row
    return Packs(ids, position_ids, mask[:, None], rows_at, tail, per_pack)


def batches(sequences: list[list[int]], size: int, prefix_lengths: list[int] | None = None) -> list[list[int]]:
    """Indices of sequences in batches of `size`: rows of the same prefix together (where given), of similar length
    within it, so their packs share prefixes and carry little padding."""
    prefix_lengths = prefix_lengths or [0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: (tuple(sequences[i][:prefix_lengths[i]]), len(sequences[i])))
    return [order[i:i + size] for i in range(0, len(order), size)]


def attention_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """A pack's boolean mask as the model's attention implementation takes a ready 4-D mask: SDPA and flex read
    booleans, eager attention adds a float bias."""
    config = getattr(model, "module", model).config
    if config._attn_implementation in ("sdpa", "flex_attention"):
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def attention_kernels(device: torch.device):
    """Where packs run, the attention kernels they may use: on a GPU every SDPA kernel but cuDNN's, which sets
    itself up on the CPU for each new pack width, and pack widths change every batch (benchmarks/profile_gpu.py
    measures what it costs); elsewhere any."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def prefix_lengths(tokenizer, sequences: list[list[int]], prefixes: list[str]) -> list[int]:
    """How many leading tokens of each sequence are the tokens of its prefix text (the common start of the two
    tokenizations, so a token the prefix shares with the text after it is left to the row)."""
    tokenized: dict[str, list[int]] = {}
    out = []
    for seq, text in zip(sequences, prefixes, strict=True):
        if text not in tokenized:
            tokenized[text] = tokenizer(text, add_special_tokens=False).input_ids
        ids = tokenized[text]
        n = 0
        while n < min(len(ids), len(seq)) and ids[n] == seq[n]:
            n += 1
        out.append(n)
    return out
