"""A causal-LM task's encoding: token ids and per-token labels (``-100`` where no loss is taken).

Prompt/target tasks (E2E, instructions): each row is ``prompt ids + target ids + eos``, right-padded to
``max-length``; the labels are the ids on the target and its eos, ``-100`` on the prompt and the padding, so the
model's own loss (``model(**batch).loss``, transformers shifts the labels by one) is the cross-entropy of the target
given the prompt. Where a row is longer than ``max-length`` the prompt keeps its head, cut to leave the target at
least half the row, and the target is cut after it. The prompt is tokenized with the tokenizer's special tokens
(a Llama tokenizer's bos), the target without.

Plain text: a split's passages joined by blank lines, tokenized once and cut into contiguous blocks of
``max-length`` tokens (the last one padded); every real token is a label.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from shared.data import Encoded, Generation
from shared.tasks.causal_lm.readers import group_references

IGNORE = -100  # transformers' ignore_index: no loss at this position
E2E_SEPARATOR = " ||"  # between an MR and its text (which starts with a space): "name[Alimentum], ... || There is ..."
ALPACA = ("Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n")


def e2e_prompt(mr: str) -> str:
    return f"{mr}{E2E_SEPARATOR}"


def instruction_prompt(tokenizer, instruction: str, context: str) -> str:
    """The prompt of one Alpaca row: the tokenizer's chat template (a user turn, then the assistant's opening) where
    it has one, else Alpaca's own template."""
    if getattr(tokenizer, "chat_template", None):
        user = f"{instruction}\n\n{context}" if context else instruction
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return ALPACA.format(ctx=", paired with an input that provides further context" if context else "",
                         instruction=instruction, input=f"### Input:\n{context}\n\n" if context else "")


def pack(prompt_ids: list[list[int]], target_ids: list[list[int]], max_length: int,
         pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, max_length) input ids, attention mask and labels of prompt + target rows (right-padded)."""
    n = len(prompt_ids)
    ids = torch.full((n, max_length), int(pad_id), dtype=torch.long)
    am = torch.zeros((n, max_length), dtype=torch.long)
    labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
    for i, (p, t) in enumerate(zip(prompt_ids, target_ids, strict=True)):
        p = p[:max(1, max_length - min(len(t), max_length // 2))]
        t = t[:max_length - len(p)]
        row = p + t
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        am[i, :len(row)] = 1
        labels[i, len(p):len(row)] = torch.tensor(t, dtype=torch.long)
    return ids, am, labels


def encode_prompted(prompts: list[str], targets: list[str], groups: list[int], references: list[list[str]],
                    tokenizer, max_length: int, special_tokens: bool = True) -> Encoded:
    """Rows of (prompt, target) pairs; ``groups[i]``: row i's entry in ``references`` (its prompt's every target),
    from which the generation set is built (one entry per distinct prompt). ``special_tokens``: add the tokenizer's
    (bos) to the prompt; False where a chat template wrote them already."""
    p_ids = tokenizer(list(prompts), add_special_tokens=special_tokens)["input_ids"]
    t_ids = [t + [tokenizer.eos_token_id] for t in tokenizer(list(targets), add_special_tokens=False)["input_ids"]]
    ids, am, labels = pack(p_ids, t_ids, max_length, tokenizer.pad_token_id)
    first = {}
    for row, g in enumerate(groups):
        first.setdefault(g, row)
    gen = Generation(prompts=[prompts[first[g]] for g in range(len(references))],
                     prompt_ids=[p_ids[first[g]][:max_length] for g in range(len(references))],
                     references=references, tokenizer=tokenizer)
    return Encoded(ids, am, labels, generation=gen)


def encode_e2e(ds: Dataset, tokenizer, max_length: int, limit: int = 0) -> Encoded:
    """E2E rows; ``limit`` > 0 keeps the first ``limit`` MRs with all their references. Generation: one entry per
    MR, scored against all its references."""
    mrs, refs = group_references(ds)
    if limit and limit < len(mrs):
        mrs, refs = mrs[:limit], refs[:limit]
    index = {mr: g for g, mr in enumerate(mrs)}
    rows = [(text, target) for text, target in zip(ds["text"], ds["target"]) if text in index]
    return encode_prompted([e2e_prompt(m) for m, _ in rows], [f" {t}" for _, t in rows], [index[m] for m, _ in rows],
                           refs, tokenizer, max_length)


def encode_instruction(ds: Dataset, tokenizer, max_length: int, limit: int = 0) -> Encoded:
    """Alpaca rows (first ``limit`` if > 0); each is its own prompt, its output the one reference."""
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    prompts = [instruction_prompt(tokenizer, i, c) for i, c in zip(ds["instruction"], ds["input"])]
    outputs = list(ds["output"])
    return encode_prompted(prompts, outputs, list(range(len(ds))), [[o] for o in outputs], tokenizer, max_length,
                           special_tokens=not getattr(tokenizer, "chat_template", None))


def encode_blocks(ds: Dataset, tokenizer, max_length: int, limit: int = 0) -> Encoded:
    """Contiguous blocks of ``max_length`` tokens of the split's passages joined by blank lines (first ``limit``
    blocks if > 0); labels are the ids (padding: ``-100``)."""
    ids = tokenizer("\n\n".join(ds["text"]), add_special_tokens=False, verbose=False)["input_ids"]
    n = max(1, -(-len(ids) // max_length))
    if limit:
        n = min(n, limit)
    flat = torch.full((n * max_length,), int(tokenizer.pad_token_id), dtype=torch.long)
    real = min(len(ids), n * max_length)
    flat[:real] = torch.tensor(ids[:real], dtype=torch.long)
    am = torch.zeros(n * max_length, dtype=torch.long)
    am[:real] = 1
    input_ids, am = flat.view(n, max_length), am.view(n, max_length)
    return Encoded(input_ids, am, input_ids.masked_fill(am == 0, IGNORE))
