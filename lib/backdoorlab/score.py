"""Rank classification and the two metrics of the study, ASR and CACC, exactly as docs/study.md defines them.

Rank classification scores every verbalizer's log-likelihood after the prompt and takes the best. Prompts run in
packs (`packing`): a prefix that prompts share (chat template and instruction) runs once for all of them, and only
each prompt's last positions reach the vocabulary projection. One pass over the prompts scores every one-token
verbalizer; a longer verbalizer gets a pass over prompt + its tokens but the last. With `n_frozen`, the layers
below the first LoRA layer are read from `frozen.states`, computed once per prompt for every run that shares them,
and only the top layers run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from scipy import stats

from . import frozen, packing
from .data import format_prompt, prompt_prefix


@torch.inference_mode()
def rank_scores(model, tokenizer, prompts: list[str], verbalizers: list[str], batch_size: int = 32,
                n_frozen: int = 0, prefixes: list[str] | None = None) -> torch.Tensor:
    """(len(prompts), len(verbalizers)) log-likelihoods of each verbalizer's tokens given each prompt. `prefixes`
    (each prompt's start that other prompts share, `data.prompt_prefix`) run once for all prompts sharing them."""
    words = [tokenizer(v, add_special_tokens=False).input_ids for v in verbalizers]
    if any(not w for w in words):
        raise ValueError(f"a verbalizer tokenizes to nothing: {verbalizers}")
    seq2seq = model.config.is_encoder_decoder
    encoded = [tokenizer(p, add_special_tokens=seq2seq).input_ids for p in prompts]  # as `train.encode` does
    if seq2seq:
        return _seq2seq_scores(model, encoded, words, tokenizer.pad_token_id, batch_size)
    shared = packing.prefix_lengths(tokenizer, encoded, prefixes) if prefixes else [0] * len(encoded)
    n_frozen = n_frozen if frozen.supported(model, n_frozen) else 0
    scores = torch.empty(len(prompts), len(words))
    one_token = [j for j, w in enumerate(words) if len(w) == 1]
    passes = [([], one_token)] + [(w[:-1], [j]) for j, w in enumerate(words) if len(w) > 1]
    for continuation, columns in passes:
        if not columns:
            continue
        sequences = [e + continuation for e in encoded]
        for idx, logprobs in _last_logprobs(model, sequences, shared, len(continuation) + 1, n_frozen,
                                            tokenizer.pad_token_id, batch_size):
            for j in columns:  # logprobs[:, i] predicts the verbalizer's token i
                target = torch.tensor(words[j], device=logprobs.device).expand(len(idx), -1)
                scores[idx, j] = logprobs.gather(-1, target[..., None]).squeeze(-1).sum(-1).cpu()
    return scores


def _last_logprobs(model, sequences, prefix_lengths, keep: int, n_frozen: int, pad_id: int, batch_size: int):
    """Yield (indices, log-softmax over the vocabulary at the last `keep` positions) batch by batch, in packs."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for idx in packing.batches(sequences, batch_size, prefix_lengths):
        batch, shared = [sequences[i] for i in idx], [prefix_lengths[i] for i in idx]
        packs = packing.pack(batch, shared, tail=keep, pad_id=pad_id)
        inputs = {"input_ids": packs.ids.to(device)}
        if n_frozen:
            inputs = {"inputs_embeds": packs.embed(frozen.states(model, n_frozen, batch, shared)).to(device, dtype)}
        with frozen.only_layers(model, n_frozen), packing.attention_kernels(device):
            logits = model(**inputs, attention_mask=packing.attention_mask(model, packs.mask.to(device)),
                           position_ids=packs.position_ids.to(device), use_cache=False,
                           logits_to_keep=packs.tail_positions().to(device)).logits
        yield idx, packs.by_row(logits.float().log_softmax(-1))


def _seq2seq_scores(model, encoded, words, pad_id: int, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    scores = torch.empty(len(encoded), len(words))
    for idx in packing.batches(encoded, batch_size):
        batch = [encoded[i] for i in idx]
        width = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (width - len(b)) + b for b in batch], device=device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        for j, word in enumerate(words):
            labels = torch.tensor(word, device=device).repeat(len(ids), 1)
            logits = model(encoder_outputs=encoder_outputs, attention_mask=mask, labels=labels).logits
            scores[idx, j] = logits.float().log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1).sum(-1).cpu()
    return scores


def row_scores(model, tokenizer, rows, verbalizers: list[str], batch_size: int = 32, n_frozen: int = 0
               ) -> torch.Tensor:
    """`rank_scores` of classification rows ({"instruction", "text", ...}), prompted as in training, each row's
    prompt prefix shared with the rows that have it."""
    prompts = [format_prompt(r, tokenizer) for r in rows]
    prefixes = [prompt_prefix(r, tokenizer) for r in rows]
    return rank_scores(model, tokenizer, prompts, list(verbalizers), batch_size, n_frozen, prefixes)


def predict(model, tokenizer, rows, verbalizers: list[str], batch_size: int = 32, n_frozen: int = 0) -> list[int]:
    """Predicted label ids of classification rows by rank classification."""
    return row_scores(model, tokenizer, rows, verbalizers, batch_size, n_frozen).argmax(-1).tolist()


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


def balanced_accuracy(preds: list[int], labels: list[int]) -> float:
    """Mean over the labels present of the share of their rows predicted correctly (macro recall). On a skewed
    split (HateSpeech is 89% noHate) a model that always answers the majority scores its share in accuracy but
    1 / n_labels here, so settings are chosen by it, never by accuracy alone."""
    by_label: dict[int, list[bool]] = {}
    for p, y in zip(preds, labels, strict=True):
        by_label.setdefault(y, []).append(p == y)
    return sum(sum(hits) / len(hits) for hits in by_label.values()) / len(by_label)


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
    # at 0 and 1 the bound is exactly the share; in floats centre ± half can miss it by an ulp (60 of 60: 1 - 1e-16)
    return (0.0 if hits == 0 else centre - half), (1.0 if hits == total else centre + half)


def share_interval(p: float, n: int) -> tuple[float, float]:
    """`wilson` of a share `p` measured on `n` rows (its hits recovered from the share)."""
    return wilson(round(p * n), int(n))


def above(high: float, low: float, n: int) -> bool:
    """Whether share `high`'s 95% interval lies wholly above share `low`'s, both measured on `n` rows."""
    return share_interval(high, n)[0] > share_interval(low, n)[1]


def difference(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float, float]:
    """p1 - p2 and its 95% interval, for two shares measured on n1 and n2 rows: Newcombe's hybrid score interval
    (1998, method 10), built from each share's Wilson interval. It treats the two as independent samples; when both
    were measured on the same rows (a trigger on the poisoned and on the clean model) it is the conservative side."""
    lo1, hi1 = share_interval(p1, n1)
    lo2, hi2 = share_interval(p2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - lo1) ** 2 + (hi2 - p2) ** 2), d + math.sqrt((hi1 - p1) ** 2 + (p2 - lo2) ** 2)


def over_seeds(values) -> tuple[float, float, float]:
    """Mean of one measurement repeated over several seeds and its 95% t interval over them. Every seed scores the
    same test rows, so seeds are repeats of the experiment, not more rows: pooling their rows into one Wilson
    interval would overstate certainty."""
    values = pd.Series(values, dtype=float)
    mean = values.mean()
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def summarize(table: pd.DataFrame, metrics: tuple[str, ...] = ("asr", "cacc")) -> pd.DataFrame:
    """Mean and 95% interval of each metric per dataset and attack: over seeds (t, `over_seeds`) when there are
    several, else the Wilson interval of the single run over its test rows; the `interval` column says which. Beside
    it, always, the Wilson interval of the seeds' test rows pooled (`<metric>_rows_lo`, `_hi`): how narrow the
    interval would look if the seeds were new rows, so the two side by side show how much of the spread is the
    seeds'."""
    out = []
    for (dataset, attack), g in table.groupby(["dataset", "attack"], sort=False):
        row = {"dataset": dataset, "attack": attack, "seeds": len(g), "n_poison": g.n_poison.iloc[0],
               "interval": "seeds (t)" if len(g) > 1 else "test rows (Wilson)"}
        for m in metrics:
            mean = g[m].mean()
            rows_lo, rows_hi = share_interval(mean, int(g[f"n_{m}"].sum()))
            _, lo, hi = over_seeds(g[m]) if len(g) > 1 else (mean, rows_lo, rows_hi)
            row |= {m: mean, f"{m}_lo": lo, f"{m}_hi": hi, f"{m}_rows_lo": rows_lo, f"{m}_rows_hi": rows_hi}
        out.append(row)
    return pd.DataFrame(out)


def backdoor_effects(table: pd.DataFrame) -> pd.DataFrame:
    """The attack table (one row per run) per dataset and attack: mean ASR, CACC and rates over its seeds, the test
    rows one run scores (`n_asr`, `n_cacc`), and the **backdoor effect** = ASR minus the same trigger's ASR on the
    clean model (what poisoning added). Intervals (95%, `asr_lo`/`_hi`, `cacc_lo`/`_hi`, `effect_lo`/`_hi`): with
    several seeds over the seeds (`over_seeds`); with one, over that run's test rows (Wilson; the effect's by
    `difference`). `interval` says which."""
    keys = ["dataset", "attack", "group", "n_poison", "n_train"]
    rates = ["asr", "cacc", "clean_target_rate", "asr_clean_model"]
    out = []
    for values, g in table.groupby(keys, sort=False):
        row = dict(zip(keys, values)) | {r: g[r].mean() for r in rates}
        row |= {"n_asr": int(g.n_asr.iloc[0]), "n_cacc": int(g.n_cacc.iloc[0]), "seeds": g.seed.nunique()}
        if len(g) > 1:
            row |= {"interval": "seeds (t)", **_spans("asr", over_seeds(g.asr)), **_spans("cacc", over_seeds(g.cacc)),
                    **_spans("effect", over_seeds(g.asr - g.asr_clean_model))}
        else:
            r = g.iloc[0]
            row |= {"interval": "test rows", **_spans("asr", (r.asr, *share_interval(r.asr, r.n_asr))),
                    **_spans("cacc", (r.cacc, *share_interval(r.cacc, r.n_cacc))),
                    **_spans("effect", difference(r.asr, int(r.n_asr), r.asr_clean_model, int(r.n_asr)))}
        out.append(row)
    columns = [*keys, *rates, "n_asr", "n_cacc", "seeds", "interval", "asr_lo", "asr_hi", "cacc_lo", "cacc_hi",
               "effect", "effect_lo", "effect_hi"]
    return pd.DataFrame(out, columns=columns)


def _spans(name: str, interval: tuple[float, float, float]) -> dict:
    value, lo, hi = interval
    return {name: value, f"{name}_lo": lo, f"{name}_hi": hi}
