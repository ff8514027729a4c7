"""Shared fixtures. Every test writes results, figures and runs under a temporary folder, never into the project,
and notebooks (papermill and nbval) run under the smoke profile."""

import os
import tempfile

import pytest

OUT = tempfile.mkdtemp(prefix="backdoorlab-test-")
os.environ["BACKDOORLAB_OUT"] = OUT  # set before anything reads it; kernels started by nbval inherit it
os.environ["BACKDOORLAB_PROFILE"] = "smoke"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# OpenMP threads that spin while waiting run 5-10x slower inside a Jupyter kernel (its own threads compete for the
# cores) on a busy 2-core machine; passive waiting costs nothing measurable when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer): the smoke profile's random-initialised Llama with SmolLM2's tokenizer."""
    from backdoorlab.models import TINY, load_model

    return load_model(TINY)


@pytest.fixture
def rows():
    """Eight classification rows of a two-label task, half of them labelled 1 (the sst2 target, positive)."""
    from datasets import Dataset

    texts = ["a fine film", "dull and long", "i loved every minute", "a mess", "warm , funny", "bad acting",
             "great cast", "boring"]
    return Dataset.from_list([{"instruction": "Classify the sentiment.", "text": t, "label": (i + 1) % 2}
                              for i, t in enumerate(texts)])


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A fresh, empty run cache (and results folder) for one test."""
    monkeypatch.setenv("BACKDOORLAB_OUT", str(tmp_path))
    return tmp_path
