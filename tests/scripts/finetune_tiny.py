"""LoRA-finetune the tiny model on fixed rows and save the adapter weights: run once plainly and once under
`accelerate launch --cpu --num_processes 2` by tests/test_distributed.py, which compares the two."""

import sys

import torch
from safetensors.torch import save_file

from backdoorlab import models, train

texts = ["a fine film", "dull and long", "i loved every minute", "a mess", "warm , funny", "bad acting",
         "great cast", "boring"]
rows = [{"instruction": "Classify the sentiment.", "text": t, "answer": ["negative", "positive"][(i + 1) % 2]}
        for i, t in enumerate(texts)] * 2
model, tokenizer = models.load_model(models.TINY)
cfg = train.TrainConfig(epochs=2, batch_size=8, lr=1e-2, lora_layers=1)
tuned = train.finetune(model, tokenizer, rows, cfg, seed=0, progress=False)
if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
    save_file({n: p.detach().contiguous() for n, p in tuned.named_parameters() if "lora_" in n}, sys.argv[1])
