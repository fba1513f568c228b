"""A causal-LM task's evaluation (its ``evaluator`` hook, called by :func:`shared.training.evaluate`).

Every round on the held-out slice: the token-level loss (mean next-token cross-entropy over the labelled tokens,
the target tokens of a prompt/target task) and ``perplexity`` = exp(loss). A generation task (E2E, instructions)
also generates greedily from each distinct prompt of the slice, in batches of left-padded prompts with the KV cache
(``model.generate``, at most ``max-new-tokens`` new tokens, cut at eos), and scores the texts against every
reference of their prompt (:data:`shared.tasks.metrics.GENERATION_METRICS`: BLEU, ROUGE-L). The first
:data:`SAMPLES` generations come back with the figures (the server writes them to ``samples.jsonl``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.data import Encoded, Generation
from shared.device import autocast, model_device, to_device
from shared.tasks.metrics import GENERATION_METRICS
from shared.training import Evaluation

IGNORE = -100
LM_EVAL_TOKENS = 4096  # tokens per loss batch: its logits are tokens x vocabulary floats (49,152 for SmolLM2)
SAMPLES = 3  # generations kept per evaluation
MAX_PERPLEXITY_LOSS = 50.0  # exp(50): an untrained model's perplexity stays a finite number


@torch.no_grad()
def evaluate_lm(model: nn.Module, data: Encoded, task, batch_size: int, precision: str,
                max_new_tokens: int, num_beams: int = 1) -> Evaluation:
    """Token loss and ``task``'s metrics of ``model`` on ``data`` (eval mode, the model's device)."""
    was_training = model.training
    model.eval()
    try:
        loss = token_loss(model, data, batch_size, precision)
        metrics = {"perplexity": math.exp(min(loss, MAX_PERPLEXITY_LOSS))}
        samples: list[dict] = []
        wanted = [m for m in task.metrics if m in GENERATION_METRICS]
        if wanted and data.generation is not None:
            gen = data.generation
            texts = generate(model, gen, batch_size, max_new_tokens, precision, num_beams)
            metrics.update({m: GENERATION_METRICS[m](texts, gen.references) for m in wanted})
            samples = [{"prompt": p, "generated": t, "references": r}
                       for p, t, r in list(zip(gen.prompts, texts, gen.references))[:SAMPLES]]
    finally:
        model.train(was_training)
    return Evaluation(loss=loss, metrics={m: metrics[m] for m in task.metrics}, samples=samples)


def token_loss(model: nn.Module, data: Encoded, batch_size: int, precision: str) -> float:
    """Mean cross-entropy over every labelled next token of ``data`` (batches of rows of similar length, at most
    :data:`LM_EVAL_TOKENS` tokens each)."""
    device = model_device(model)
    rows = max(1, min(batch_size, LM_EVAL_TOKENS // max(1, int(data.input_ids.shape[1]))))
    total, count = 0.0, 0
    for idx in data.eval_batches(rows):
        batch = to_device(data.batch(idx), device)
        n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the positions transformers' shifted loss averages
        if n == 0:
            continue
        with autocast(device, precision):
            out = model(**batch)
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


def max_positions(model: nn.Module) -> int | None:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def generate(model: nn.Module, gen: Generation, batch_size: int, max_new_tokens: int,
             precision: str = "fp32", num_beams: int = 1) -> list[str]:
    """Greedy (or ``num_beams``-beam search) continuations of ``gen``'s prompts (decoded, special tokens dropped,
    stripped), in its order.

    Prompts are batched longest first and left-padded, so every row's new tokens start at the same column; a batch
    gets at most as many new tokens as the model's positions leave after its prompts. With beams, a batch holds
    ``batch_size / num_beams`` prompts (the search keeps that many rows per prompt) and each ends when its beams
    are done (``early_stopping``)."""
    tok, device = gen.tokenizer, model_device(model)
    order = sorted(range(len(gen)), key=lambda i: -len(gen.prompt_ids[i]))
    limit = max_positions(model)
    out = [""] * len(gen)
    per_batch = max(1, batch_size // max(1, num_beams))
    search = {"num_beams": num_beams, "early_stopping": True} if num_beams > 1 else {"num_beams": 1}
    for start in range(0, len(order), per_batch):
        rows = order[start:start + per_batch]
        width = max(len(gen.prompt_ids[i]) for i in rows)
        budget = min(max_new_tokens, limit - width) if limit else max_new_tokens
        if budget < 1:
            continue
        ids = torch.full((len(rows), width), int(tok.pad_token_id), dtype=torch.long)
        am = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            p = gen.prompt_ids[i]
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            am[r, width - len(p):] = 1
        batch = to_device({"input_ids": ids, "attention_mask": am}, device)
        with autocast(device, precision):
            seqs = model.generate(**batch, max_new_tokens=budget, do_sample=False, use_cache=True, **search,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for r, i in enumerate(rows):
            out[i] = decode(tok, seqs[r, width:].tolist())
    return out


def decode(tokenizer, new_ids: list[int]) -> str:
    """The text of generated ids up to (not including) the first eos."""
    eos = tokenizer.eos_token_id
    if eos in new_ids:
        new_ids = new_ids[:new_ids.index(eos)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).strip()
