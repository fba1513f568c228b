"""Causal-LM tasks: the model loads with its LM head (``kind="causal-lm"``) and the task encodes and evaluates itself.

* ``e2e``: E2E NLG, meaning representation -> restaurant description; loss on the target tokens only; scored with
  BLEU (headline), ROUGE-L and NIST against all references of each MR, and perplexity.
* ``tinyshakespeare``: plain-text LM on contiguous token blocks; perplexity (headline, lower is better).
* ``instruction``: Alpaca-format instruction data (a local .json/.jsonl folder, or the Hub's ``tatsu-lab/alpaca``),
  prompted with the tokenizer's chat template where it has one; ROUGE-L (headline), BLEU, perplexity.

Readers: :mod:`.readers`; encodings (per-token labels): :mod:`.encoding`; evaluation: :mod:`.evaluation`.
"""

from __future__ import annotations

from shared.tasks.base import HubSource, Task
from shared.tasks.causal_lm.encoding import encode_blocks, encode_e2e, encode_instruction
from shared.tasks.causal_lm.evaluation import evaluate_lm
from shared.tasks.causal_lm.readers import (INSTRUCTION_COLUMNS, e2e_from_hub, instruction_from_hub, read_e2e,
                                            read_instruction, read_plain_text)

TASKS = (
    Task("e2e", "E2E NLG: restaurant meaning representation -> text (BLEU, ROUGE-L, NIST, perplexity); data-dir "
         "../shared/data/e2e", "causal-lm", (), False, ("bleu", "rouge_l", "nist", "perplexity"), "bleu",
         HubSource("tuetschek/e2e_nlg", None, {"train": "validation", "test": "test"},
                   {"text": "meaning_representation", "target": "human_reference"}, convert=e2e_from_hub),
         read_e2e, columns=("text", "target", "label"), encoder=encode_e2e, evaluator=evaluate_lm, skew="food"),
    Task("tinyshakespeare", "plain-text language modelling on contiguous token blocks (perplexity); data-dir "
         "../shared/data/tinyshakespeare", "causal-lm", (), False, ("perplexity",), "perplexity",
         HubSource("karpathy/tiny_shakespeare", None, {"train": "train", "test": "test"}, {"text": "text"},
                   convert=lambda split: split),
         read_plain_text, columns=("text",), encoder=encode_blocks, evaluator=evaluate_lm, skew=None),
    Task("instruction", "instruction tuning on Alpaca-format data (instruction, input, output) from a .json/.jsonl "
         "folder or the Hub (ROUGE-L, BLEU, perplexity)", "causal-lm", (), False, ("rouge_l", "bleu", "perplexity"),
         "rouge_l",
         HubSource("tatsu-lab/alpaca", None, {"train": "train"}, {c: c for c in INSTRUCTION_COLUMNS},
                   convert=instruction_from_hub),
         read_instruction, columns=INSTRUCTION_COLUMNS, encoder=encode_instruction, evaluator=evaluate_lm,
         skew=None),
)
