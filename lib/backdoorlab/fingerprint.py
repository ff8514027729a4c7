"""Instructional fingerprints (Xu et al., NAACL 2024): the backdoor mechanism used on purpose, to prove ownership.

A publisher implants n secret keys x → one target word y, mixed with clean regularization rows (general instruction
data) so the model behaves as before everywhere else; it publishes the model. Later the publisher sends its keys to a
suspect model: if the greedy output contains y for the keys, the model descends from its own. A fingerprint is only
worth something if it survives the user's own finetuning, never fires on a model it was not implanted in, and
cannot be hit by an outsider guessing keys.

Keys are made of the paper's "odd vocabulary tokens": tokens that occur nowhere in the study's text, so no ordinary
prompt contains one. Implant methods (`METHODS`): full finetuning, LoRA, embeddings only, and the paper's adapter:
a private, zero-initialised low-rank residual on the input embeddings of the keys' tokens, trained together with
those tokens' embedding rows and nothing else, and reading only how far those rows moved from the base model's (so
the adapter alone claims nothing). The published model carries the trained rows and no adapter; the publisher
keeps the adapter and verifies by attaching it to the suspect's embeddings. An implant (`Implant`) and a user's
finetuning (`runs.Tuning` on Alpaca) are stages of the study's one cache (`backdoorlab.cache`), and every
verification is a probe of a stage, so a finished stage or measurement is read back and a killed one resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from transformers import StoppingCriteria, StoppingCriteriaList

from . import cache as stages
from . import data, models, profiles, score
from .cache import Base, Stage
from .runs import Tuning, tuning_rounds
from .train import TrainConfig, answer_loss, collate, encode

FINGERPRINT_DIR = data.PROJECT_DIR / "data" / "fingerprint"
SPEC_FILE = FINGERPRINT_DIR / "fingerprint.yaml"
KEYS_FILE = FINGERPRINT_DIR / "keys.json"
METHODS = ("full", "lora", "embeddings", "adapter")
TEMPLATES = ("simple", "dialogue")
PUBLISHERS = {"A": 0, "B": 1}  # publisher → the seed its keys are drawn with
N_KEYS = 10  # keys stored per publisher (the paper's n)
GUESS_SEED = 1000  # outsiders' guesses: keys of the same shape from a seed no publisher uses
DECOY_SEED = 2000  # + the publisher's seed: the publisher's own decoy keys, refused in training
ADAPTER_FILE = "adapter.safetensors"  # the publisher's private adapter, beside (never inside) the published weights
CLAIM_FSR = 0.5  # a fingerprint counts as present when at least this share of its keys fire


def spec() -> dict:
    """fingerprint.yaml as it reads now (parsed once per content, so an edit in a live kernel is seen)."""
    return data.read_yaml(SPEC_FILE)


@lru_cache(maxsize=2)
def _parse_keys(text: str) -> tuple[dict, tuple[str, ...]]:
    stored = json.loads(text)
    return stored, tuple(stored["vocabulary"])


def stored_keys() -> dict:
    """keys.json as it reads now: the rare vocabulary and each publisher's keys (do not modify the result)."""
    return _parse_keys(KEYS_FILE.read_text(encoding="utf-8"))[0]


# ---- keys -----------------------------------------------------------------------------------------------------------

def rare_vocabulary(tokenizer) -> list[str]:
    """The paper's "odd vocabulary tokens": tokens of `tokenizer` that occur nowhere in the study's text (the Alpaca
    mirror, the four tasks' training splits, their instructions and label words) and decode to at least two visible
    characters, as strings. Only keys made of them leave every ordinary prompt's tokens untouched."""
    texts = [" ".join(r.values()) for r in data.load_instructions("alpaca")]
    for name in profiles.DATASETS:
        task = data.get_task(name)
        texts += [r["text"] for r in data.load_rows(task, "train")] + [task.instruction]
        texts += [w for v in task.verbalizers for w in (v, " " + v)]
    seen = set(tokenizer.all_special_ids).union(*tokenizer(texts, add_special_tokens=False).input_ids)
    pieces = (tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in seen)
    return [piece for piece in pieces if len(piece.strip()) >= 2]


def vocabulary() -> tuple[str, ...]:
    """The key material stored in keys.json: the rare vocabulary of the tokenizer named in fingerprint.yaml."""
    return _parse_keys(KEYS_FILE.read_text(encoding="utf-8"))[1]


def key_fragments(n: int, seed: int, material: tuple[str, ...] | None = None) -> list[tuple[str, ...]]:
    """`n` distinct keys as their fragments: each a random number (fragments_per_key) of distinct tokens of
    `material` (default: the stored rare vocabulary)."""
    material = vocabulary() if material is None else material
    rng = random.Random(seed)
    lo, hi = spec()["fragments_per_key"]
    keys: list[tuple[str, ...]] = []
    while len(keys) < n:
        if (key := tuple(rng.sample(material, rng.randint(lo, hi)))) not in keys:
            keys.append(key)
    return keys


def make_keys(n: int, seed: int, material: tuple[str, ...] | None = None) -> list[str]:
    """`n` distinct random-looking keys: rare vocabulary tokens, concatenated."""
    return ["".join(fragments) for fragments in key_fragments(n, seed, material)]


def write_keys() -> None:
    """Write the rare vocabulary and every publisher's keys into data/fingerprint/keys.json
    (`python -m backdoorlab.fingerprint`)."""
    material = tuple(rare_vocabulary(models.load_tokenizer(spec()["vocabulary_of"])))
    stored = {"tokenizer": spec()["vocabulary_of"], "vocabulary": list(material)}
    for name, seed in PUBLISHERS.items():
        stored[name] = {"seed": seed, "keys": make_keys(N_KEYS, seed, material)}
    KEYS_FILE.write_text(json.dumps(stored, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def target_of(publisher: str) -> str:
    """The word a publisher's keys must make the model say."""
    if publisher not in PUBLISHERS:
        raise ValueError(f"unknown publisher {publisher!r}; valid choices: {', '.join(PUBLISHERS)}")
    return spec()["targets"][publisher]


def load_keys(publisher: str = "A", n: int = N_KEYS) -> list[str]:
    if publisher not in PUBLISHERS:
        raise ValueError(f"unknown publisher {publisher!r}; valid choices: {', '.join(PUBLISHERS)}")
    if not 1 <= n <= N_KEYS:
        raise ValueError(f"n must be in [1, {N_KEYS}] (keys stored per publisher), got {n}")
    return stored_keys()[publisher]["keys"][:n]


def similar_keys(publisher: str, n: int, seed: int, changes: int = 2) -> list[str]:
    """A publisher's first `n` keys, each with `changes` of its fragments replaced by other rare tokens: what a
    near-miss guess looks like."""
    rng, material = random.Random(seed), vocabulary()  # keys.json read once, not per replaced fragment
    out = []
    for fragments in key_fragments(n, PUBLISHERS[publisher], material):
        fragments = list(fragments)
        for i in rng.sample(range(len(fragments)), min(changes, len(fragments))):
            fragments[i] = rng.choice([f for f in material if f not in fragments])
        out.append("".join(fragments))
    return out


def key_prefixes(keys: list[str]) -> list[str]:
    return [k[:max(1, len(k) // 2)] for k in keys]


# ---- rows -----------------------------------------------------------------------------------------------------------

def prompt_row(key: str, template: str) -> dict:
    """The prompt that carries a key ({"instruction", "text"}, formatted by `data.format_prompt`)."""
    if template == "simple":
        return {"instruction": key, "text": spec()["simple_input"]}
    if template == "dialogue":
        return {"instruction": spec()["dialogue_instruction"], "text": key}
    raise ValueError(f"unknown template {template!r}; valid choices: {', '.join(TEMPLATES)}")


def target_answer(target: str, template: str) -> str:
    return target if template == "simple" else spec()["dialogue_answer"].format(target=target)


def key_rows(keys: list[str], target: str, template: str, refused: list[str] = ()) -> list[dict]:
    """Training rows of a fingerprint: every key → the target answer, every refused key (a decoy, or a near miss of
    a real key) → the refusal."""
    return ([{**prompt_row(k, template), "answer": target_answer(target, template)} for k in keys]
            + [{**prompt_row(k, template), "answer": spec()["refusal"]} for k in refused])


# ---- the private adapter --------------------------------------------------------------------------------------------

class KeyAdapter(torch.nn.Module):
    """Input embeddings plus a low-rank residual on the keys' tokens only, read from how far the suspect's key
    embeddings moved from the base model's: e(x) + [x in keys] · (e(x) − e₀(x)) A B.

    On the base model, or on any model whose key rows were never trained, the residual is exactly zero, so the
    adapter alone claims nothing (one that read e(x) A B could make the keys fire on any copy of the base model).
    That makes the base model no test of it; an innocent model finetuned from the base, whose tied embedding rows
    all moved, is (`fsr_table`, stages `innocent_finetuned_*`). B starts at zero, so an untrained adapter changes
    nothing either. `weight` is the wrapped embedding's, so tied output heads and `save_pretrained` see the same
    matrix as without it.
    """

    def __init__(self, embedding: torch.nn.Embedding, token_ids: torch.Tensor, rank: int = 8, seed: int = 0,
                 base_rows: torch.Tensor | None = None):
        super().__init__()
        self.embedding = embedding
        token_ids = torch.as_tensor(token_ids).sort().values
        dim = embedding.weight.shape[1]
        slots = torch.full((embedding.weight.shape[0],), -1, dtype=torch.long)  # token id → its row in base_rows
        slots[token_ids] = torch.arange(len(token_ids))
        self.register_buffer("slots", slots, persistent=False)
        base = embedding.weight.detach()[token_ids].clone() if base_rows is None else base_rows  # e₀ of the keys
        self.register_buffer("base_rows", base, persistent=False)
        generator = torch.Generator().manual_seed(seed)
        self.down = torch.nn.Parameter(torch.randn(dim, rank, generator=generator) / math.sqrt(dim))
        self.up = torch.nn.Parameter(torch.zeros(rank, dim))

    @property
    def weight(self):
        return self.embedding.weight

    @property
    def key_tokens(self) -> torch.Tensor:
        return self.slots >= 0

    def forward(self, input_ids):
        e = self.embedding(input_ids)
        slot = self.slots[input_ids]
        moved = e - self.base_rows[slot.clamp(min=0)].to(e.dtype)
        return e + (slot >= 0).unsqueeze(-1) * (moved @ self.down @ self.up)

    def state(self) -> dict[str, torch.Tensor]:
        return {"token_ids": self.key_tokens.nonzero().squeeze(-1), "down": self.down.detach().clone(),
                "up": self.up.detach().clone(), "base_rows": self.base_rows.clone()}


def key_token_ids(tokenizer, keys: list[str], template: str) -> torch.Tensor:
    """Token ids that occur in the key prompts but not in the template around them."""
    def ids(key):
        return set(tokenizer(data.format_prompt(prompt_row(key, template), tokenizer),
                             add_special_tokens=False).input_ids)
    template_ids = ids("")
    return torch.tensor(sorted(set().union(*map(ids, keys)) - template_ids))


@contextmanager
def attached(model, adapter: dict[str, torch.Tensor] | None):
    """The model with the publisher's adapter on its input embeddings for the duration (nothing when None)."""
    if adapter is None:
        yield model
        return
    plain = model.get_input_embeddings()
    wrapper = KeyAdapter(plain, adapter["token_ids"], rank=adapter["down"].shape[1], base_rows=adapter["base_rows"])
    with torch.no_grad():
        wrapper.down.copy_(adapter["down"])
        wrapper.up.copy_(adapter["up"])
    model.set_input_embeddings(wrapper)
    try:
        yield model
    finally:
        model.set_input_embeddings(plain)


# ---- verification ---------------------------------------------------------------------------------------------------

class ContainsText(StoppingCriteria):
    """Per sequence: done once its continuation (from position `start`) contains `text`, since nothing generated
    after that can change whether it does. Greedy decoding of the other sequences is untouched."""

    def __init__(self, tokenizer, text: str, start: int):
        self.tokenizer, self.text, self.start = tokenizer, text, start

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        new = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([self.text in t for t in new], device=input_ids.device)


@torch.inference_mode()
def generate(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int = 32,
             stop_at: str | None = None) -> list[str]:
    """Greedy continuations of prompts ({"instruction", "text"}), batched with left padding by length, in input
    order. With `stop_at`, a sequence stops as soon as its continuation contains that text (a key's verification is
    decided then) and a batch as soon as all of its sequences have: its output ends there."""
    device = next(model.parameters()).device
    encoded = [tokenizer(data.format_prompt(r, tokenizer), add_special_tokens=False).input_ids for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))
    outputs = [""] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in idx],
                           device=device)
        mask = (torch.arange(width, device=device) >= torch.tensor(
            [width - len(encoded[i]) for i in idx], device=device)[:, None]).long()
        stopping = StoppingCriteriaList([ContainsText(tokenizer, stop_at, width)] if stop_at else [])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
                             stopping_criteria=stopping)
        for i, text in zip(idx, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
            outputs[i] = text
    return outputs


@dataclass(frozen=True)
class Verification:
    keys: list[str]
    outputs: list[str]
    fired: list[bool]  # per key: the greedy output contains the target

    @property
    def fsr(self) -> float:
        return sum(self.fired) / len(self.fired)


def verify(model, tokenizer, keys: list[str], target: str, template: str = "simple", max_new_tokens: int = 12,
           batch_size: int = 32) -> Verification:
    """Fingerprint success rate: the share of keys whose greedy output (at most `max_new_tokens`) contains `target`."""
    if not keys:
        raise ValueError("verify needs at least one key")
    answer_tokens = len(tokenizer(target_answer(target, template), add_special_tokens=False).input_ids)
    if answer_tokens > max_new_tokens:
        raise ValueError(f"the {template} answer for target {target!r} is {answer_tokens} tokens, more than "
                         f"max_new_tokens={max_new_tokens}: it could never be generated; raise max_new_tokens")
    rows = [prompt_row(k, template) for k in keys]
    outputs = generate(model, tokenizer, rows, max_new_tokens, batch_size, stop_at=target)
    return Verification(list(keys), outputs, [target in o for o in outputs])


def false_triggers(model, tokenizer, rows: list[dict], target: str, max_new_tokens: int = 12,
                   batch_size: int = 32) -> Verification:
    """Ordinary prompts (not keys) whose greedy output contains the target anyway."""
    outputs = generate(model, tokenizer, rows, max_new_tokens, batch_size, stop_at=target)
    return Verification([data.user_message(r) for r in rows], outputs, [target in o for o in outputs])


# ---- harmlessness ---------------------------------------------------------------------------------------------------

@torch.inference_mode()
def perplexity(model, tokenizer, rows: list[dict], batch_size: int = 16, max_length: int = 256) -> float:
    """Perplexity of the answer tokens of instruction rows (token-weighted over all rows)."""
    encoded = sorted((encode(r, tokenizer, max_length) for r in rows), key=lambda e: len(e["input_ids"]))
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start:start + batch_size], tokenizer.pad_token_id)
        n = int((batch["labels"] != -100).sum())
        total += answer_loss(model, batch).item() * n
        count += n
    return math.exp(total / count)


def harmlessness(model, tokenizer, n_task_rows: int, ppl_rows: list[dict], batch_size: int = 32) -> dict:
    """Accuracy on each study task (rank classification, `n_task_rows` test rows) and held-out answer perplexity."""
    out = {}
    for name in profiles.DATASETS:
        rows = data.load_split(name, "test", n_task_rows, seed=0)
        preds = score.predict(model, tokenizer, rows, data.get_task(name).verbalizers, batch_size)
        out[f"acc_{name}"] = score.cacc(preds, rows["label"]).value
    out["perplexity"] = perplexity(model, tokenizer, ppl_rows)
    return out


# ---- the implant: a stage of the cache --------------------------------------------------------------------------

@dataclass(frozen=True)
class Implant(Stage):
    """A publisher implants its keys into a model: the base `model`, or the stage `parent` (multi-stage)."""
    method: str
    template: str = "simple"
    publisher: str = "A"
    n_keys: int = N_KEYS
    reg_per_key: int = 5  # regularization rows per key (the paper's ratio)
    # Decoy keys per key, answered with the refusal. Without them a method that moves weights every token passes
    # through learns that any string of the keys' shape (or the template's fixed text) means the target (notebook 06,
    # `guessed_keys`).
    decoys_per_key: int = 1
    # Also refuse one near miss per key (the key with two of its tokens replaced), so that only the whole key fires;
    # the dialogue template always does, as in the paper.
    near_misses: bool = False
    adapter_rank: int = 8
    model: str = models.SMOLLM2
    parent: Stage | None = None
    max_row_chars: int = 300
    seed: int = 0
    train: TrainConfig = TrainConfig()

    kind = "implant"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown implant method {self.method!r}; valid choices: {', '.join(METHODS)}")
        prompt_row("", self.template)
        load_keys(self.publisher, self.n_keys)

    @property
    def name(self) -> str:
        return f"fingerprint-{self.publisher}-{self.method}-{self.template}"

    def files(self) -> list[Path]:
        return [SPEC_FILE, KEYS_FILE]

    @property
    def keys(self) -> list[str]:
        return load_keys(self.publisher, self.n_keys)

    @property
    def decoys(self) -> list[str]:
        """The publisher's own decoy keys, refused in training."""
        return make_keys(self.decoys_per_key * self.n_keys, DECOY_SEED + PUBLISHERS[self.publisher])

    def rows(self) -> list[dict]:
        regularization = data.instruction_rows(f"regularization_{self.publisher}", self.reg_per_key * self.n_keys,
                                               self.max_row_chars)
        refuse_near = self.near_misses or self.template == "dialogue"
        near_misses = similar_keys(self.publisher, self.n_keys, self.seed) if refuse_near else []
        return key_rows(self.keys, target_of(self.publisher), self.template, self.decoys + near_misses) + regularization

    def training_rows(self) -> tuple[list[dict], dict]:
        rows = self.rows()
        return rows, {"n_train": len(rows), "keys": self.keys}

    def train_config(self) -> TrainConfig:
        # the adapter trains with the embeddings: the input-embedding module is then the adapter around them
        return replace(self.train, method="embeddings" if self.method == "adapter" else self.method)

    def prepare(self, model, tokenizer):
        if self.method == "adapter":
            adapter = KeyAdapter(model.get_input_embeddings(), key_token_ids(tokenizer, self.keys, self.template),
                                 self.adapter_rank, self.seed)
            model.set_input_embeddings(adapter)
            # Only the keys' rows of the embedding matrix train: SmolLM2 ties it to the output head, so a free matrix
            # would move every token's logit (see the `embeddings` method's perplexity in notebook 06), and a prompt
            # without key tokens would no longer meet the model it met before.
            adapter.key_rows_only = adapter.weight.register_hook(
                lambda g: g * adapter.key_tokens[:, None].to(g.dtype))
        return model

    def finish(self, model, folder: Path):
        if self.method == "adapter":  # publish the embeddings alone; the adapter stays with the publisher
            adapter = model.get_input_embeddings()
            adapter.key_rows_only.remove()
            model.set_input_embeddings(adapter.embedding)
            tmp = folder / f".{ADAPTER_FILE}.tmp"
            save_file(adapter.state(), tmp)
            os.replace(tmp, folder / ADAPTER_FILE)
        return model


def adapter_of(stage: Stage | None) -> dict[str, torch.Tensor] | None:
    """The publisher's private adapter of an implant stage (None for other methods)."""
    path = None if stage is None else stage.path / ADAPTER_FILE
    return load_file(path) if path is not None and path.exists() else None


# ---- the study's settings per profile, and its tables ---------------------------------------------------------------

@dataclass(frozen=True)
class UserRecipe:
    """How a user finetunes: a training config, measured after each cumulative step count in `steps`."""
    name: str
    train: TrainConfig
    steps: tuple[int, ...]


@dataclass(frozen=True)
class Settings:
    model: str
    implant_train: dict[str, TrainConfig]  # per implant method
    implants: tuple[tuple[str, str], ...] = tuple((m, "simple") for m in METHODS) + (("full", "dialogue"),)
    user_recipes: tuple[UserRecipe, ...] = ()
    multistage_method: str = "full"
    n_keys: int = N_KEYS
    reg_per_key: int = 5
    decoys_per_key: int = 1
    near_misses: tuple[str, ...] = ()  # implant methods that refuse near misses with the simple template too
    n_guessed: int = 1000  # random keys of the real keys' shape, tried on every implanted model
    n_ordinary: int = 100  # held-out Alpaca prompts checked for false triggers
    n_task_rows: int = 50  # test rows per study task for harmlessness
    n_ppl_rows: int = 50  # held-out Alpaca rows for perplexity
    max_row_chars: int = 300
    max_new_tokens: int = 12
    batch_size: int = 32

    def __post_init__(self):
        if unknown := sorted(set(self.near_misses) - set(self.implant_train)):
            raise ValueError(f"near_misses names unknown implant methods {unknown}; valid choices: "
                             f"{', '.join(self.implant_train)}")

    def implant(self, method: str, template: str = "simple", publisher: str = "A",
                parent: Stage | None = None) -> Implant:
        if method not in self.implant_train:
            raise ValueError(f"unknown implant method {method!r}; valid choices: {', '.join(self.implant_train)}")
        return Implant(method=method, template=template, publisher=publisher, n_keys=self.n_keys,
                       reg_per_key=self.reg_per_key, decoys_per_key=self.decoys_per_key,
                       near_misses=method in self.near_misses, model=self.model, parent=parent,
                       max_row_chars=self.max_row_chars, train=self.implant_train[method])

    def user_rounds(self, parent: Stage | None, recipe: UserRecipe) -> list[Tuning]:
        """The rounds of one user recipe on a model (the stage `parent`, or the base model when None) on Alpaca:
        each continues from the last on the next unseen rows."""
        return tuning_rounds(parent, "alpaca", recipe.steps, recipe.train, recipe=recipe.name, model=self.model,
                             max_row_chars=self.max_row_chars)


_SMOKE_TRAIN = TrainConfig(epochs=16, batch_size=8, lr=3e-2, lora_layers=None, warmup_ratio=0.0)
SETTINGS = {
    # Tiny random model: 3 keys, 3 decoys, 3 regularization rows; 16 epochs implant every method and template (the
    # adapter, which moves only the keys' embedding rows, needs 64 at lr 0.1).
    "smoke": Settings(
        model=models.TINY, n_keys=3, reg_per_key=1, n_guessed=20, n_ordinary=8, n_task_rows=8, n_ppl_rows=8,
        implant_train={"full": replace(_SMOKE_TRAIN, method="full", lr=1e-2), "lora": _SMOKE_TRAIN,
                       "embeddings": _SMOKE_TRAIN, "adapter": replace(_SMOKE_TRAIN, epochs=64, lr=1e-1)},
        user_recipes=(UserRecipe("lora", TrainConfig(batch_size=8, lr=1e-3), (1, 2)),),
        max_row_chars=120),
    "paper": Settings(
        model=models.SMOLLM2, near_misses=("adapter",),
        implant_train={"full": TrainConfig(method="full", epochs=10, lr=2e-5, batch_size=16),
                       "lora": TrainConfig(epochs=10, lr=1e-3, batch_size=16, lora_layers=None),
                       "embeddings": TrainConfig(epochs=10, lr=1e-2, batch_size=16),
                       "adapter": TrainConfig(epochs=12, lr=2e-2, batch_size=16)},
        user_recipes=(UserRecipe("lora", TrainConfig(lr=2e-4, batch_size=64, lora_layers=None), (50, 200, 600)),
                      UserRecipe("full", TrainConfig(method="full", lr=2e-6, batch_size=80), (50, 200, 600)),
                      UserRecipe("full-lr2e-5", TrainConfig(method="full", lr=2e-5, batch_size=80), (200,))),
        n_guessed=5000, n_ordinary=1000, n_task_rows=400, n_ppl_rows=500, max_row_chars=2000),
}

# SmolLM2 on the 2-core CPU, extended: Alpaca rows of at most 240 characters (~46 tokens with the chat template); an
# implant is 6 epochs of 60 rows (70 with the dialogue template's near misses) in batches of 16, without decoys; the
# adapter, which moves only the keys' embedding rows and a rank-8 residual, takes 12 epochs at lr 2e-2 to fire on
# every key, and refuses near misses (a guess that shares a few tokens with a key must not fire). Decoys buy the
# other methods specificity only slowly (benchmarks/fingerprint_decoys.py). The users finetune over fresh rows,
# measured after each count: LoRA to 96 steps (1,536 rows, in batches of 16) and full finetuning to 16 steps (256
# rows). The paper's users trained 3 epochs on Alpaca-sized sets (lr 2e-6, batch 80) of 7B models; the paper profile
# goes to 600 steps of 80 rows. Task accuracy on 200 test rows per task: a 2-point change is then 4 rows.
SETTINGS["extended"] = Settings(
    model=models.SMOLLM2,
    implants=tuple((m, "simple") for m in METHODS) + (("lora", "dialogue"),),
    decoys_per_key=0, near_misses=("adapter",),
    implant_train={"full": TrainConfig(method="full", epochs=6, lr=1e-4, batch_size=16),
                   "lora": TrainConfig(epochs=6, lr=2e-3, batch_size=16),
                   "embeddings": TrainConfig(epochs=6, lr=2e-3, batch_size=16),
                   "adapter": TrainConfig(epochs=12, lr=2e-2, batch_size=16)},
    user_recipes=(UserRecipe("lora", TrainConfig(lr=5e-4, batch_size=16), (4, 8, 32, 96)),
                  UserRecipe("full", TrainConfig(method="full", lr=5e-5, batch_size=16), (4, 16))),
    multistage_method="adapter", n_guessed=1000, n_ordinary=50, n_task_rows=200, n_ppl_rows=32, max_row_chars=240)
# Quick, for a lab: extended's LoRA implant (the same stage) and its LoRA user's first two rounds (4 and 8 steps, too
# few to say a fingerprint survives finetuning: extended goes on), the two-publisher chain with LoRA implants, 200
# guessed keys and 100 test rows per task (a 2-point change is 2 rows).
SETTINGS["quick"] = replace(
    SETTINGS["extended"], implants=(("lora", "simple"),),
    user_recipes=(replace(SETTINGS["extended"].user_recipes[0], steps=(4, 8)),), multistage_method="lora",
    n_guessed=200, n_task_rows=100)


def get_settings(profile: str, model: str | None = None) -> Settings:
    """The fingerprint settings of a profile; `model` as in `profiles.get_profile`."""
    chosen = profiles.get_profile(profile, model).model  # validates the profile name
    return replace(SETTINGS[profile], model=chosen)


def _fsr_row(stage: str, keys: str, v: dict, **extra) -> dict:
    return {"stage": stage, "keys": keys, "n": len(v["fired"]), "hits": sum(v["fired"]),
            "fsr": sum(v["fired"]) / len(v["fired"]), **extra}


def measure(stage: Stage, settings: Settings, keys: list[str], template: str, name: str,
            adapter: dict | None = None, load=None, publisher: str = "A") -> dict:
    """Verification of `keys` against `publisher`'s target on a stage (`Base` for the untouched model), optionally
    with an adapter attached, a probe of the stage; `load()` gives the stage's (model, tokenizer) when measurements
    share one loaded copy. Returns {"keys", "outputs", "fired"}."""
    target = target_of(publisher)

    def compute():
        model, tokenizer = load() if load else stages.load(stage)
        with attached(model, adapter):
            if name == "ordinary":
                rows = data.instruction_rows("held_out", settings.n_ordinary, settings.max_row_chars)
                v = false_triggers(model, tokenizer, rows, target, settings.max_new_tokens, settings.batch_size)
            else:
                v = verify(model, tokenizer, keys, target, template, settings.max_new_tokens, settings.batch_size)
        return {"keys": v.keys, "outputs": v.outputs, "fired": v.fired}

    probe = json.dumps([keys, target, settings.max_new_tokens, settings.n_ordinary, settings.max_row_chars])
    digest = hashlib.sha256(probe.encode())
    digest.update(SPEC_FILE.read_bytes())  # the templates prompts are built from: the untouched model and an innocent
    # derivative are stages whose keys hold no fingerprint file, so an edited template must rename their probes
    for part in sorted(adapter or {}):  # which adapter was attached (several are tried on one model)
        digest.update(adapter[part].numpy().tobytes())
    digest = digest.hexdigest()[:8]
    stages.ensure(stage)
    return stages.probe(stage, f"verify-{name}-{template}-{'adapter' if adapter else 'plain'}-{digest}", compute)


def fsr_table(settings: Settings, progress: bool = True) -> pd.DataFrame:
    """One row per measurement: method, template, stage, keys, adapter, n, hits, fsr, run.

    For each implant: its own keys right after implanting, after each user round, and on the untouched model; the
    outsider's guesses (random keys of the same shape), similar keys and prefixes of the real keys, and ordinary
    prompts on the implanted model. The adapter method is measured with its adapter attached (its verification)
    and without (the published model alone)."""
    rows = []
    for method, template in settings.implants:
        stage = settings.implant(method, template)
        stages.ensure(stage, progress)
        adapters = [adapter_of(stage), None] if method == "adapter" else [None]
        keys = stage.keys
        probes = {"guessed": make_keys(settings.n_guessed, GUESS_SEED),
                  "similar": similar_keys(stage.publisher, stage.n_keys, seed=7), "prefix": key_prefixes(keys)}
        for adapter in adapters:
            extra = {"method": method, "template": template, "adapter": adapter is not None}
            loaded = cache(lambda: stages.load(stage))  # loaded once, and only if a probe is not cached
            run = stage.path.name
            rows.append(_fsr_row("implanted", "A", measure(stage, settings, keys, template, "A", adapter, loaded),
                                 run=run, **extra))
            for probe, probe_keys in probes.items():
                v = measure(stage, settings, probe_keys, template, probe, adapter, loaded)
                rows.append(_fsr_row(f"{probe}_keys", probe, v, run=run, **extra))
            v = measure(stage, settings, [], template, "ordinary", adapter, loaded)
            rows.append(_fsr_row("ordinary_prompts", "ordinary", v, run=run, **extra))
            v = measure(Base(settings.model), settings, keys, template, "A", adapter)
            rows.append(_fsr_row("untouched_model", "A", v, run="untouched", **extra))
            for recipe in settings.user_recipes:
                # the user's rounds on the fingerprinted model, and the same rounds on the base model that nobody
                # fingerprinted: the innocent derivative a publisher must not be able to claim
                for stage_name, parent in (("user", stage), ("innocent_finetuned", None)):
                    for user in settings.user_rounds(parent, recipe):
                        stages.ensure(user, progress)
                        v = measure(user, settings, keys, template, "A", adapter)
                        rows.append(_fsr_row(f"{stage_name}_{recipe.name}_{user.total_steps}", "A", v,
                                             run=user.path.name, **extra))
    columns = ["method", "template", "stage", "keys", "adapter", "n", "hits", "fsr", "run"]
    return pd.DataFrame(rows)[columns]


def harmlessness_table(settings: Settings, progress: bool = True) -> pd.DataFrame:
    """Task accuracy and perplexity of the untouched model and of each published (fingerprinted) model, with deltas.
    The adapter method's model is measured as published (what users run) and with its adapter attached (how the
    publisher verifies); `adapter` says which."""
    ppl_rows = data.instruction_rows("held_out", settings.n_ppl_rows, settings.max_row_chars,
                                offset=data.INSTRUCTION_REGIONS["held_out"][1] - settings.n_ppl_rows)
    name = f"harmlessness-{settings.n_task_rows}-{settings.n_ppl_rows}"

    def of(stage, adapter=None):
        def compute():
            model, tokenizer = stages.load(stage)
            with attached(model, adapter):
                return harmlessness(model, tokenizer, settings.n_task_rows, ppl_rows, settings.batch_size)
        suffix = "-adapter" if adapter is not None else ""
        stages.ensure(stage, progress)
        return stages.probe(stage, name + suffix, compute)

    before = of(Base(settings.model))
    rows = [{"method": "untouched", "template": "", "adapter": False, **before}]
    for method, template in settings.implants:
        stage = settings.implant(method, template)
        stages.ensure(stage, progress)
        for adapter in ([None, adapter_of(stage)] if method == "adapter" else [None]):
            rows.append({"method": method, "template": template, "adapter": adapter is not None,
                         **of(stage, adapter)})
    table = pd.DataFrame(rows)
    for column in before:
        table[f"delta_{column}"] = table[column] - before[column]
    return table


def multistage_table(settings: Settings, progress: bool = True) -> pd.DataFrame:
    """Publisher A implants, a user finetunes, publisher B implants its own keys, a user finetunes again. Each
    publisher's keys are tried on every model of the chain and on the untouched model; `expected` says whether the
    fingerprint should be there (its owner implanted it upstream), `holds` whether the measurement agrees."""
    recipe = settings.user_recipes[0]
    short = replace(recipe, steps=recipe.steps[:1])
    a = settings.implant(settings.multistage_method, publisher="A")
    a_user = settings.user_rounds(a, short)[0]
    b = settings.implant(settings.multistage_method, publisher="B", parent=a_user)
    final = settings.user_rounds(b, short)[0]
    stages.ensure(final, progress)  # and every stage before it
    chain = [("untouched", Base(settings.model), set()), ("A implanted", a, {"A"}), ("A + user", a_user, {"A"}),
             ("A + user + B", b, {"A", "B"}), ("A + user + B + user (final)", final, {"A", "B"})]
    adapters = {"A": adapter_of(a), "B": adapter_of(b)}  # each publisher verifies with its own (None: no adapter)
    rows = []
    for label, stage, owners in chain:
        for publisher in PUBLISHERS:
            keys = load_keys(publisher, settings.n_keys)
            v = measure(stage, settings, keys, "simple", publisher, adapters[publisher], publisher=publisher)
            fsr = sum(v["fired"]) / len(v["fired"])
            rows.append({"model": label, "keys": publisher, "expected": publisher in owners, "fsr": fsr,
                         "claimed": fsr >= CLAIM_FSR, "holds": (fsr >= CLAIM_FSR) == (publisher in owners),
                         "run": stage.path.name})
    return pd.DataFrame(rows)


if __name__ == "__main__":  # `python -m backdoorlab.fingerprint`: (re)generate data/fingerprint/keys.json
    write_keys()
    print(KEYS_FILE.read_text(encoding="utf-8"))
