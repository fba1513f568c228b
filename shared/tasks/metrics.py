"""A task's metrics, computed by well-kept libraries (scikit-learn, SciPy, sacrebleu, rouge-score), never by hand.

Each classification metric (:data:`METRICS`) takes (predictions (n,), labels (n,)) as numpy arrays and returns a
float: class indices for the classification metrics, real values for the correlations. GLUE's: accuracy, F1 of the
positive class (MRPC, QQP), Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B).

A causal-LM task's metrics (:data:`LM_METRICS`): ``perplexity`` (exp of the mean token loss on the held-out slice),
and on generated text against every reference of its prompt (:data:`GENERATION_METRICS`): ``bleu``, sacrebleu's
corpus BLEU with multiple references, divided by 100 (0..1 like the other metrics; papers print x 100),
``rouge_l``, rouge-score's ROUGE-L F-measure against the best-matching reference (Porter stemming), averaged over
prompts, and ``nist``, NLTK's corpus NIST (n = 5) on mteval-13a tokens. Which way is better is
:data:`HIGHER_IS_BETTER` (perplexity: lower).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import sacrebleu
from nltk.translate.nist_score import corpus_nist
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

Metric = Callable[[np.ndarray, np.ndarray], float]


def _correlation(fn) -> Metric:
    def metric(pred: np.ndarray, labels: np.ndarray) -> float:
        if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(labels) == 0:
            return 0.0  # a constant prediction (or label) has no correlation; SciPy would warn and return nan
        return float(fn(pred, labels)[0])
    return metric


METRICS: dict[str, Metric] = {  # name -> metric; one line each
    "accuracy": lambda p, y: float(accuracy_score(y, p)),
    "f1": lambda p, y: float(f1_score(y, p, pos_label=1, average="binary", zero_division=0.0)),
    "matthews": lambda p, y: float(matthews_corrcoef(y, p)),
    "pearson": _correlation(pearsonr),
    "spearman": _correlation(spearmanr),
}


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU / 100 of ``hypotheses`` (one per prompt) against each prompt's references (any number each)."""
    if not hypotheses:
        return 0.0
    width = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]  # None: no ref
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score) / 100.0


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over prompts of ROUGE-L F against the best-matching reference (rouge-score's ``score_multi``)."""
    if not hypotheses:
        return 0.0
    return float(np.mean([_ROUGE.score_multi(list(refs), hyp)["rougeL"].fmeasure
                          for hyp, refs in zip(hypotheses, references, strict=True)]))


_13A = Tokenizer13a()  # mteval-v13a's tokenization, sacrebleu's default for BLEU


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus NIST (n = 5, NLTK's ``corpus_nist``) on 13a-tokenized texts against every reference of each prompt;
    0 where nothing was generated. Where no text is 5 tokens long, n is the longest text's length (NLTK divides by
    the count of the texts' n-grams)."""
    hyps = [_13A(h).split() for h in hypotheses]
    longest = max((len(h) for h in hyps), default=0)
    if not longest:
        return 0.0
    return float(corpus_nist([[_13A(r).split() for r in refs] for refs in references], hyps, n=min(5, longest)))


TextMetric = Callable[[Sequence[str], Sequence[Sequence[str]]], float]
GENERATION_METRICS: dict[str, TextMetric] = {"bleu": bleu, "rouge_l": rouge_l, "nist": nist}  # on generated text
LM_METRICS = ("perplexity", *GENERATION_METRICS)  # a causal-LM task's metrics
KNOWN = (*METRICS, *LM_METRICS)

# metric -> whether a larger value is better: what the server's records, the summary and the report rank by
HIGHER_IS_BETTER: dict[str, bool] = {**{name: True for name in METRICS}, "perplexity": False, "bleu": True,
                                     "rouge_l": True, "nist": True}


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (an unknown metric: True, as every metric before perplexity)."""
    return HIGHER_IS_BETTER.get(metric, True)


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` in ``metric``'s direction."""
    return a > b if higher_is_better(metric) else a < b


def score(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names``, on (n,) predictions against (n,) labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return {name: METRICS[name](predictions, labels) for name in names}


SHORT = {"accuracy": "acc", "perplexity": "ppl", "average": "avg"}  # a metric's name in a round's log line, where shorter


def short_name(metric: str) -> str:
    return SHORT.get(metric, metric)


def score_of(record: dict) -> float:
    """A history record's headline value: ``score``, or ``accuracy`` in a record made before tasks had metrics."""
    return record["score"] if "score" in record else record["accuracy"]
