"""Instruction finetuning on `accelerate`: LoRA (peft) or full, loss on the answer tokens only.

The same code runs on the CPU, on one GPU in bf16, and on many GPUs under ``accelerate launch``.
Rows are ``{"instruction", "text", "answer"}``; the prompt is formatted by `data.format_prompt`.
Batches of similar length are packed (`packing`): the prompt prefix rows share runs once per batch, and each row's
answer sits in a tail slot, so the vocabulary projection (a fifth of SmolLM2's forward pass) runs only there.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import frozen, packing
from .data import format_prompt, prompt_prefix


METHODS = ("lora", "full", "embeddings")
# A checkpoint (the trainable weights and the optimizer's state: four times the weights for full finetuning) is
# written after an epoch only once this many seconds have passed since training started or last saved, so a killed
# run loses at most about this much training, and a run of short epochs (a GPU's) does not spend them saving.
CHECKPOINT_EVERY_S = 60.0
LOG_EVERY = 32  # steps between reads of the loss for the progress bar: each read waits for the GPU to catch up
LOADER_WORKERS = 2  # on a GPU, processes that pack batches ahead of the step (on the CPU the cores are the model's)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "lora"  # "lora", "full", or "embeddings" (only the input-embedding module trains)
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_layers: int | None = 10  # LoRA on the top n layers only (None: all); lower layers need no backward pass
    max_length: int = 256

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown training method {self.method!r}; valid choices: {', '.join(METHODS)}")

    def frozen_layers(self, n_layers: int) -> int:
        """How many bottom layers of an `n_layers` model this config never trains."""
        return max(0, n_layers - self.lora_layers) if self.method == "lora" and self.lora_layers else 0


def encode(row: dict, tokenizer, max_length: int, seq2seq: bool = False) -> dict:
    """Token ids of prompt + answer + end-of-turn, with labels on the answer tokens only, and how many leading tokens
    are the prompt prefix other rows share (`packing`).

    Causal models read one sequence; for a seq2seq model the prompt is the encoder input and the answer the labels.
    """
    prompt = tokenizer(format_prompt(row, tokenizer), add_special_tokens=seq2seq).input_ids
    answer = tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if seq2seq:
        return {"input_ids": prompt[-max_length:], "labels": answer}
    kept = prompt[-(max_length - len(answer)):]  # keep the end of an overlong prompt, where the question is
    prefix = packing.prefix_lengths(tokenizer, [prompt], [prompt_prefix(row, tokenizer)])[0] if kept == prompt else 0
    return {"input_ids": kept + answer, "labels": [-100] * len(kept) + answer, "prefix": prefix}


def left_pad(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """A seq2seq batch: encoder inputs left-padded, answer labels right-padded with -100."""
    width = max(len(r["input_ids"]) for r in batch)
    label_width = max(len(r["labels"]) for r in batch)
    return {"input_ids": torch.tensor([[pad_id] * (width - len(r["input_ids"])) + r["input_ids"] for r in batch]),
            "attention_mask": torch.tensor([[0] * (width - len(r["input_ids"])) + [1] * len(r["input_ids"])
                                            for r in batch]),
            "labels": torch.tensor([r["labels"] + [-100] * (label_width - len(r["labels"])) for r in batch])}


def collate(batch: list[dict], pad_id: int, seq2seq: bool = False) -> dict[str, torch.Tensor]:
    """A training batch. Causal rows go into packs (`packing`) whose tail slots hold each row's answer and the
    position before it; `labels` is (packs, slots, span) over those tokens, -100 in empty slots, so every tensor of
    the batch has one entry per pack. Rows carrying frozen-layer `states` give `inputs_embeds`, not `input_ids`."""
    if seq2seq:
        return left_pad(batch, pad_id)
    span = max(sum(t != -100 for t in r["labels"]) for r in batch) + 1
    packs = packing.pack([r["input_ids"] for r in batch], [r["prefix"] for r in batch], tail=span, pad_id=pad_id)
    labels = torch.full((len(packs.ids), packs.per_pack, span), -100)
    for (p, slot, _), r in zip(packs.rows, batch):
        answer = r["labels"][-span:]
        labels[p, slot, span - len(answer):] = torch.tensor(answer)
    out = {"input_ids": packs.ids, "attention_mask": packs.mask, "position_ids": packs.position_ids, "labels": labels}
    if "states" in batch[0]:
        out["inputs_embeds"] = packs.embed([r["states"] for r in batch])
        del out["input_ids"]
    return out


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Shuffled batches of similar length (less padding); a new order every epoch (`set_epoch`), fixed by the seed
    and the epoch alone, so iterating twice in one epoch (as a DataLoader with workers does) gives the same order.
    With `shard=(rank, processes)`, process `rank`'s share of each batch (the whole batch when it has fewer rows
    than processes), so n processes together train on the batches one would."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 50,
                 shard: tuple[int, int] = (0, 1)):
        self.lengths, self.batch_size, self.seed, self.group, self.epoch = lengths, batch_size, seed, group, 0
        self.shard = shard

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        order = rng.sample(range(len(self.lengths)), len(self.lengths))
        span = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        rank, n = self.shard
        return iter(b[rank * len(b) // n:(rank + 1) * len(b) // n] if len(b) >= n else b for b in batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.lengths) / self.batch_size)


def packed_forward(model, batch: dict[str, torch.Tensor], **kwargs):
    """The model's output on a packed batch (`collate`), with logits only at the tail slots. No key-value cache:
    training never reads one, and building it copies every layer's keys and values (benchmarks/profile_gpu.py)."""
    width, keep = batch["position_ids"].shape[1], batch["labels"][0].numel()
    inputs = {k: batch[k] for k in ("input_ids", "inputs_embeds") if k in batch}
    with packing.attention_kernels(batch["attention_mask"].device):
        return model(**inputs, attention_mask=packing.attention_mask(model, batch["attention_mask"]),
                     position_ids=batch["position_ids"],
                     logits_to_keep=torch.arange(width - keep, width, device=batch["labels"].device),
                     **{"use_cache": False, **kwargs})


def by_slot(tails: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(packs * slots, span, ...) from a tensor over a packed batch's positions whose last ones are the tail slots;
    `labels.flatten(0, 1)` lines up with it."""
    return tails[:, -labels[0].numel():].unflatten(1, labels.shape[1:]).flatten(0, 1)


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens, with logits computed only at the answers."""
    labels = batch["labels"]
    if model.config.is_encoder_decoder:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    logits, labels = by_slot(packed_forward(model, batch).logits, labels), labels.flatten(0, 1)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def add_lora(model, cfg: TrainConfig):
    """LoRA on every linear layer of the top `cfg.lora_layers` blocks (all blocks when None), never the LM head."""
    from peft import LoraConfig, get_peft_model

    head = model.get_output_embeddings()
    targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) and m is not head})
    n_layers = model.config.num_hidden_layers
    layers = None if cfg.lora_layers is None else list(range(cfg.frozen_layers(n_layers), n_layers))
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, layers_to_transform=layers,
                        task_type="SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM")
    return get_peft_model(model, config)


def set_trainable(model, method: str) -> None:
    """Full: every parameter trains. Embeddings: only the parameters of the input-embedding module (whatever module
    sits there, e.g. a fingerprint adapter around the embedding; with tied embeddings the output head moves too)."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    for p in model.parameters():
        p.requires_grad_(method == "full" or id(p) in embeddings)


def save_checkpoint(path: Path, model, optimizer, schedule, epochs_done: int) -> None:
    """Trainable weights, optimizer and schedule after `epochs_done` epochs, in one file that appears atomically."""
    state = {"epochs_done": epochs_done, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "params": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, optimizer, schedule) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns the number of epochs already done."""
    state = torch.load(path, weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["epochs_done"]


def loader_options(device: torch.device) -> dict:
    """DataLoader settings: on a GPU, batches are packed in worker processes ahead of the step, into pinned memory
    for asynchronous copies; on the CPU, in the training process (workers would take the model's cores)."""
    if device.type != "cuda":
        return {}
    return {"num_workers": LOADER_WORKERS, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}


def finetune(model, tokenizer, rows, cfg: TrainConfig, seed: int = 0, progress: bool = True,
             checkpoint: Path | None = None, reuse_frozen: bool = True, loss_fn=answer_loss):
    """Finetune `model` on `rows` and return it (a peft model for LoRA), in eval mode, unwrapped. `loss_fn(model,
    batch)` is the objective (default: cross-entropy on the answer tokens).

    With `checkpoint`, the state after each epoch is saved there and a killed run resumes from its last epoch,
    giving the same weights as an uninterrupted one. With `reuse_frozen`, layers below the lowest trainable one
    run once per distinct row (`frozen.states`, shared with earlier runs on the same model) instead of every step.
    """
    set_seed(seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                              mixed_precision="bf16" if torch.cuda.is_available() else "no")
    if cfg.method == "lora":
        model = add_lora(model, cfg)
    else:
        set_trainable(model, cfg.method)
    seq2seq = model.config.is_encoder_decoder
    encoded = [encode(r, tokenizer, cfg.max_length, seq2seq) for r in rows]
    model.to(accelerator.device)  # the frozen layers run where training runs
    n_frozen = frozen.trainable_depth(model) if reuse_frozen else 0
    if frozen.supported(model, n_frozen):
        for row, states in zip(encoded, frozen.states(model, n_frozen, [e["input_ids"] for e in encoded],
                                                      [e["prefix"] for e in encoded])):
            row["states"] = states
    else:
        n_frozen = 0
    # `batch_size` is the global batch: each of n processes packs its own share of every batch (a packed batch has
    # one entry per pack, not per row, so accelerate cannot split it), so n GPUs train like one
    sampler = LengthGroupedBatches([len(e["input_ids"]) for e in encoded], cfg.batch_size, seed,
                                   shard=(accelerator.process_index, accelerator.num_processes))
    loader = torch.utils.data.DataLoader(encoded, batch_sampler=sampler,
                                         collate_fn=functools.partial(collate, pad_id=tokenizer.pad_token_id,
                                                                      seq2seq=seq2seq),
                                         **loader_options(accelerator.device))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=torch.cuda.is_available())
    steps = math.ceil(len(loader) / cfg.grad_accum) * cfg.epochs
    warmup = int(cfg.warmup_ratio * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warmup), max(0.0, (steps - s) / max(1, steps - warmup))))
    done = load_checkpoint(checkpoint, model, optimizer, schedule) if checkpoint and checkpoint.exists() else 0
    # the loader and the schedule stay ours: a prepared loader would deal whole batches out to the processes, and a
    # prepared schedule steps once per process, as if the global batch were n times ours
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    bar = tqdm(total=len(loader) * cfg.epochs, initial=len(loader) * done, desc="train",
               disable=not progress or not accelerator.is_main_process)
    # The step never waits for the GPU: batches arrive packed and pinned, copies are asynchronous, and the loss is
    # summed on the device and read only every LOG_EVERY steps (when a progress bar shows it).
    running = torch.zeros((), device=accelerator.device)
    saved_at = time.perf_counter()
    for epoch in range(done, cfg.epochs):
        sampler.set_epoch(epoch)  # the batch order of each epoch depends on its index only
        for batch in loader:
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model), frozen.only_layers(accelerator.unwrap_model(model), n_frozen):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                if accelerator.sync_gradients:
                    schedule.step()
                optimizer.zero_grad()
            bar.update()
            if not bar.disable:
                running += loss.detach()
                if bar.n % LOG_EVERY == 0:
                    bar.set_postfix(loss=f"{running.item() / LOG_EVERY:.3f}")
                    running.zero_()
        due = time.perf_counter() - saved_at >= CHECKPOINT_EVERY_S
        if checkpoint and due and epoch + 1 < cfg.epochs and accelerator.is_main_process:
            save_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, schedule, epoch + 1)
            saved_at = time.perf_counter()
    bar.close()
    return accelerator.unwrap_model(model).eval()
