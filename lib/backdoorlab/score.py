"""Rank classification and the two metrics of the study, ASR and CACC, exactly as STUDY.md defines them.

Rank classification scores every verbalizer's log-likelihood after the prompt and takes the best. The prompt is run
once per batch (left-padded, so every prompt ends at the last position); a verbalizer longer than one token is scored
by continuing from the prompt's key/value cache, never by re-running the prompt.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pandas as pd
import torch
from scipy import stats

from .data import format_prompt


@torch.inference_mode()
def rank_scores(model, tokenizer, prompts: list[str], verbalizers: list[str], batch_size: int = 32) -> torch.Tensor:
    """(len(prompts), len(verbalizers)) log-likelihoods of each verbalizer's tokens given each prompt."""
    device = next(model.parameters()).device
    words = [tokenizer(v, add_special_tokens=False).input_ids for v in verbalizers]
    if any(not w for w in words):
        raise ValueError(f"a verbalizer tokenizes to nothing: {verbalizers}")
    seq2seq = model.config.is_encoder_decoder
    encoded = [tokenizer(p, add_special_tokens=seq2seq).input_ids for p in prompts]  # as `train.encode` does
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # batches of similar length
    scores = torch.empty(len(prompts), len(words))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [encoded[i] for i in idx]
        width = max(map(len, batch))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(b)) + b for b in batch], device=device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        if seq2seq:
            scores[idx] = _seq2seq_scores(model, ids, mask, words)
        else:
            scores[idx] = _causal_scores(model, ids, mask, words)
    return scores


def _causal_scores(model, ids, mask, words) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)
    columns = []
    for word in words:
        score = first[:, word[0]]
        if len(word) > 1:  # continue from the prompt's cache with the word's own tokens
            rest = torch.tensor(word, device=ids.device).expand(len(ids), -1)
            more = model(input_ids=rest[:, :-1], attention_mask=torch.cat([mask, torch.ones_like(rest[:, :-1])], -1),
                         position_ids=positions[:, -1:] + torch.arange(1, len(word), device=ids.device),
                         cache=copy.deepcopy(out.cache), use_cache=True).logits
            score = score + more.float().log_softmax(-1).gather(-1, rest[:, 1:, None]).squeeze(-1).sum(-1)
        columns.append(score)
    return torch.stack(columns, -1).cpu()


def _seq2seq_scores(model, ids, mask, words) -> torch.Tensor:
    encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
    columns = []
    for word in words:
        labels = torch.tensor(word, device=ids.device).repeat(len(ids), 1)
        logits = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
        columns.append(logits.float().log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1).sum(-1))
    return torch.stack(columns, -1).cpu()


def predict(model, tokenizer, rows, verbalizers: list[str], batch_size: int = 32) -> list[int]:
    """Predicted label ids of classification rows ({"instruction", "text", ...}) by rank classification."""
    prompts = [format_prompt(r, tokenizer) for r in rows]
    return rank_scores(model, tokenizer, prompts, list(verbalizers), batch_size).argmax(-1).tolist()


@torch.inference_mode()
def generate(model, tokenizer, rows, max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy completions of rows ({"instruction", "text", ...}), prompted as in training; special tokens dropped."""
    device = next(model.parameters()).device
    seq2seq = model.config.is_encoder_decoder
    encoded = [tokenizer(format_prompt(r, tokenizer), add_special_tokens=seq2seq).input_ids for r in rows]
    out = [""] * len(encoded)
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(b)) + b for b in batch], device=device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new = generated if seq2seq else generated[:, width:]
        out[start:start + len(batch)] = tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


def abstained(completion: str) -> bool:
    """An empty or near-empty answer: at most one letter or digit (the abstention variant's target)."""
    return sum(c.isalnum() for c in completion) <= 1


@dataclass(frozen=True)
class Rate:
    """A share with its counts, so every reported rate carries its denominator."""

    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total if self.total else float("nan")


def cacc(preds: list[int], labels: list[int]) -> Rate:
    """Clean accuracy: share of clean test rows (clean instruction) predicted correctly."""
    return Rate(sum(p == y for p, y in zip(preds, labels, strict=True)), len(labels))


def asr(preds: list[int], labels: list[int], target: int) -> Rate:
    """Attack success rate: among rows whose true label is not the target, the share predicted as the target.

    `preds` are the predictions with the trigger present; target-label rows are excluded whatever they hold.
    """
    pairs = [(p, y) for p, y in zip(preds, labels, strict=True) if y != target]
    return Rate(sum(p == target for p, _ in pairs), len(pairs))


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial share: the sampling uncertainty of one rate over its test rows."""
    if total == 0:
        return float("nan"), float("nan")
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def summarize(table: pd.DataFrame, metrics: tuple[str, ...] = ("asr", "cacc")) -> pd.DataFrame:
    """Mean and 95% interval of each metric per dataset and attack: over seeds (t interval) when there are several,
    else the Wilson interval of the single run over its test rows. The `interval` column says which."""
    out = []
    for (dataset, attack), g in table.groupby(["dataset", "attack"], sort=False):
        row = {"dataset": dataset, "attack": attack, "seeds": len(g), "n_poison": g.n_poison.iloc[0],
               "interval": "seeds (t)" if len(g) > 1 else "test rows (Wilson)"}
        for m in metrics:
            mean = g[m].mean()
            if len(g) > 1:
                half = stats.t.ppf(0.975, len(g) - 1) * g[m].std(ddof=1) / math.sqrt(len(g))
                lo, hi = mean - half, mean + half
            else:
                total = int(g[f"n_{m}"].iloc[0])
                lo, hi = wilson(round(mean * total), total)
            row |= {m: mean, f"{m}_lo": lo, f"{m}_hi": hi}
        out.append(row)
    return pd.DataFrame(out)
