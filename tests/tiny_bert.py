"""A tiny BERT written to disk for text-model tests: a BertConfig with 2 small layers and a
WordPiece vocabulary built from the test's own words (or copied from a real checkpoint), so
training, saving, registering and scoring run in seconds with no downloads."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocab_from_texts(texts: Iterable[str]) -> list[str]:
    """Special tokens, single characters and every lower-cased word and punctuation mark."""
    words: set[str] = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    chars = {c for w in words for c in w}
    return SPECIAL + sorted(words | chars) + [f"##{c}" for c in sorted(chars)]


def write_tiny_bert(path: Path, vocab: list[str], *, hidden: int = 32, seed: int = 0) -> Path:
    """Save a randomly initialized 2-layer BERT and its WordPiece tokenizer to ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(str(path), safe_serialization=True)
    return path
