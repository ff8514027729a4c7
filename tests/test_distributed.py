import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("scripts") / "finetune_tiny.py"


def test_two_cpu_processes_train_like_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, SCRIPT, one], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, two],
                   env=env, check=True, timeout=300)
    single, double = load_file(one), load_file(two)
    assert single.keys() == double.keys() and single
    moved = max(single[k].abs().max() for k in single if "lora_B" in k)  # B starts at zero
    assert moved > 1e-3  # training happened, so the comparison below means something
    for key in single:  # each process scores half of every batch; gloo averages the gradients
        torch.testing.assert_close(double[key], single[key], atol=1e-4, rtol=1e-3)
