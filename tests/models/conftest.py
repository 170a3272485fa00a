"""Shared fixtures for the model tests: one tiny untrained release per session (it takes ~30 s)."""

from __future__ import annotations

import pytest

from tests.support import require_module

# The worker extra (make setup installs it); under CI a missing one fails every model test.
torch = require_module("torch")
require_module("monai")
require_module("transformers")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from neuroradix.models.tokenizer import train_tokenizer

    texts = [
        "No pleural effusion. Mild emphysema in both upper lobes.",
        "Heart size normal. A nodule in the right lower lobe.",
    ] * 10
    return train_tokenizer(texts, vocab_size=300)
