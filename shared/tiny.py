"""A tiny BERT built from a config, saved as a Hugging Face checkpoint: fast stand-in for tests and demos.

Uses the bundled MiniLM's tokenizer (so vocabulary and text handling are real) and a random
encoder of a few thousand weights per matrix; saved as a ``BertModel`` so the classification head
is created by the same code path as for a real pre-trained checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from shared.model import bundled_model_path


def make_tiny_bert(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, inter: int = 64,
                   seed: int = 0) -> Path:
    """Create (once) and return a tiny BERT checkpoint folder at ``path``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=inter, max_position_embeddings=128)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
