"""Shared fixtures: paths to the real data, a tiny BERT built from a config, a run helper."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    path = DATA / "sst2"
    if not (path / "train.tsv").is_file():
        pytest.fail(f"real test data missing: {path} (clone this repository beside ../shared)")
    return path


@pytest.fixture(scope="session")
def agnews_dir() -> Path:
    return DATA / "agnews"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT checkpoint (random weights, real tokenizer) saved once per session."""
    from shared.tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide GPT-2 (Conv1D projections, biases; SmolLM2's tokenizer, no pad token) saved once."""
    from shared.tiny import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2") / "model")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama (no biases, grouped KV heads; SmolLM2's tokenizer, no pad token) saved once."""
    from shared.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


TINY_MODELS = {"bert": "tiny_model_dir", "gpt2": "tiny_gpt2_dir", "llama": "tiny_llama_dir"}  # family -> fixture


@pytest.fixture()
def tiny_cfg(tiny_model_dir, sst2_dir):
    """A RunConfig on the tiny model and real SST-2 (fast enough for unit tests)."""
    from shared.config import RunConfig

    return RunConfig(model=str(tiny_model_dir), data_dir=str(sst2_dir), mask_density=0.05, local_steps=2,
                     batch_size=8, max_length=32, max_eval_examples=64)
