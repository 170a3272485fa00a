"""Byte-level BPE tokenizer for report text, trained locally and saved with the weights.

Special tokens follow BART: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4.
Nothing is fetched from a hub: :func:`load_tokenizer` reads a local folder only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Union

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from neuroradix.errors import ConfigError

__all__ = ["SPECIAL_TOKENS", "train_tokenizer", "load_tokenizer"]

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _wrap(tok):
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, out_dir: Union[str, Path, None] = None, min_frequency: int = 2
):
    """Train a byte-level BPE on ``texts``; save it to ``out_dir`` (if given) and return it.

    Returns a ``transformers`` fast tokenizer (``PreTrainedTokenizerFast``).
    """

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (the byte alphabet), got {vocab_size}"
        )
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok = _wrap(bpe._tokenizer)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(directory: Union[str, Path]):
    """Load a tokenizer saved by :func:`train_tokenizer` (or a local BART folder's tokenizer)."""

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(f"{directory}: no tokenizer.json (tokenizers are never downloaded)")
    tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, name) is None:
            raise ConfigError(f"{directory}: tokenizer has no {name.replace('_id', '')}")
    return tok
