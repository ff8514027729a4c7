"""Training throughput of `backdoorlab.train.finetune` against a plain `transformers.Trainer`, same rows and seed.

Both train the same model (same LoRA placement for `lora`) on the same SST-2 rows for the same epochs and batch
size; the baseline uses the Trainer's defaults and the usual causal-LM collator (`DataCollatorForLanguageModeling`,
right padding, loss on every token, logits at every position). Throughput is real (non-pad) tokens per second of
the whole call, set-up included. MFU divides the FLOPs our path executes (counted below from the shapes) by the
matmul peak measured in the same run.

    python benchmarks/bench_train.py --method lora            # SmolLM2, 2-core CPU defaults
    python benchmarks/bench_train.py --method full --size 1b  # random-initialised ~1B Llama (GPU)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from transformers import (AutoModelForCausalLM, DataCollatorForLanguageModeling, LlamaConfig, Trainer,
                          TrainingArguments)

from backdoorlab import data, frozen, models, packing, train
from backdoorlab.train import TrainConfig
from common import device, device_name, linear_params, matmul_peak, sst2_training_rows, sync, write

SIZES = {  # random-initialised Llamas with SmolLM2's vocabulary, for throughput only
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
}


def load(args):
    model, tokenizer = models.load_model(args.model)
    if args.size:
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             **SIZES[args.size])
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def pack_shapes(encoded, cfg: TrainConfig, seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(width, tail positions) of every pack the trainer runs in an epoch (its sampler's batches, as `collate` packs
    them), and of the packs in which `frozen.states` runs the frozen layers once per distinct row. Which batches
    share a pack changes by epoch, the shapes hardly."""
    lengths = [len(e["input_ids"]) for e in encoded]
    batches = list(train.LengthGroupedBatches(lengths, cfg.batch_size, seed))
    trained = []
    for batch in batches:
        rows = [encoded[i] for i in batch]
        span = max(sum(t != -100 for t in r["labels"]) for r in rows) + 1
        packs = packing.pack([r["input_ids"] for r in rows], [r["prefix"] for r in rows], tail=span)
        trained += [(packs.ids.shape[1], packs.per_pack * span)] * len(packs.ids)
    states = []
    for batch in packing.batches([e["input_ids"] for e in encoded], frozen.ROWS_PER_CALL,
                                 [e["prefix"] for e in encoded]):
        chunk = [encoded[i] for i in batch]
        packs = packing.pack([r["input_ids"] for r in chunk], [r["prefix"] for r in chunk])
        states += [(packs.ids.shape[1], 0)] * len(packs.ids)
    return trained, states


def executed_flops(model, encoded, cfg: TrainConfig, n_frozen: int, trainable: int) -> float:
    """FLOPs our path runs, counted over the packs it runs (padding and masked attention included): forward of every
    layer it runs (the frozen ones once per distinct row when their states are reused), vocabulary projection only
    at the tail slots, backward through trainable layers only (input gradients; weight gradients for full
    finetuning and for the LoRA matrices)."""
    n_layers, per_layer, d, vocab = linear_params(model)
    lora = cfg.method == "lora"
    top = n_layers - cfg.frozen_layers(n_layers)
    per_lora_layer = trainable / top if lora else 0
    trained, states = pack_shapes(encoded, cfg)
    total = 0.0
    for width, tails in trained:
        layer_fwd = 2 * per_layer * width + 4 * width * width * d
        head = 2 * vocab * d * tails
        fwd = (n_layers - n_frozen) * layer_fwd + top * 2 * per_lora_layer * width + head
        bwd = top * (2 * layer_fwd + 4 * per_lora_layer * width) + head if lora else 2 * (n_layers * layer_fwd + head)
        total += cfg.epochs * (fwd + bwd)
    return total + sum(n_frozen * (2 * per_layer * w + 4 * w * w * d) for w, _ in states)


def ours(model, tokenizer, rows, cfg, reuse: bool) -> dict:
    sync()
    start = time.perf_counter()
    tuned = train.finetune(model, tokenizer, rows, cfg, seed=0, progress=False, reuse_frozen=reuse)
    sync()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for n, p in tuned.named_parameters() if "lora_" in n) if cfg.method == "lora" else 0
    n_frozen = cfg.frozen_layers(model.config.num_hidden_layers) if reuse else 0
    encoded = [train.encode(r, tokenizer, cfg.max_length) for r in rows]
    return {"seconds": seconds, "flops": executed_flops(tuned, encoded, cfg, n_frozen, trainable)}


def trainer_baseline(model, tokenizer, rows, cfg) -> float:
    if cfg.method == "lora":
        model = train.add_lora(model, cfg)
    sync()
    start = time.perf_counter()  # tokenizing counts, as `finetune`'s does
    texts = [data.format_prompt(r, tokenizer) + r["answer"] + tokenizer.eos_token for r in rows]
    dataset = [tokenizer(t, add_special_tokens=False) for t in texts]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size,
                                 num_train_epochs=cfg.epochs, learning_rate=cfg.lr, seed=0, report_to=[],
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True,
                                 bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model.to(device()), args=args, train_dataset=dataset,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
        trainer.train()
        sync()
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--model", default=models.SMOLLM2, help="model name or hub id (tokenizer source with --size)")
    parser.add_argument("--size", choices=sorted(SIZES), help="random-initialised model of this size instead")
    parser.add_argument("--rows", type=int, default=96, help="SST-2 training rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    model, tokenizer = load(args)
    rows = sst2_training_rows(args.rows)
    cfg = TrainConfig(method=args.method, epochs=args.epochs, batch_size=args.batch_size)
    tokens = args.epochs * sum(len(train.encode(r, tokenizer, cfg.max_length)["input_ids"]) for r in rows)
    peak = matmul_peak()
    baseline_s = trainer_baseline(copy.deepcopy(model), tokenizer, rows, cfg)
    frozen.clear()
    cold = ours(copy.deepcopy(model), tokenizer, rows, cfg, reuse=True)  # a first run: frozen states computed
    lora = args.method == "lora"  # full finetuning freezes nothing, so there are no states to reuse
    warm = ours(copy.deepcopy(model), tokenizer, rows, cfg, reuse=True) if lora else cold  # a later run, same rows
    plain = ours(copy.deepcopy(model), tokenizer, rows, cfg, reuse=False) if lora else cold
    name = args.size or args.model
    result = {
        "device": device_name(), "model": name, "params": sum(p.numel() for p in model.parameters()),
        "method": args.method, "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
        "tokens": tokens, "matmul_peak_flops": peak,
        "trainer_tokens_per_s": tokens / baseline_s,
        "ours_tokens_per_s": tokens / cold["seconds"],
        "ours_warm_tokens_per_s": tokens / warm["seconds"],
        "ours_no_reuse_tokens_per_s": tokens / plain["seconds"],
        "speedup_vs_trainer": baseline_s / cold["seconds"],
        "speedup_vs_trainer_warm": baseline_s / warm["seconds"],
        "mfu": cold["flops"] / cold["seconds"] / peak,
        "mfu_no_reuse": plain["flops"] / plain["seconds"] / peak,
    }
    write(f"train_{args.method}_{name}", result)


if __name__ == "__main__":
    main()
