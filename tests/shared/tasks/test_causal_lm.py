"""Causal-LM tasks (shared/tasks/causal_lm): the loss on the target tokens only, E2E's references grouped per MR,
the scorers against sacrebleu and rouge-score directly, the metrics' directions, one federated round with pafi on a
tiny GPT-2 and a tiny Llama (e2e, tinyshakespeare) whose merged model generates in plain transformers what the wired
model generates, and the one-line refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from datasets import Dataset
from rouge_score import rouge_scorer

from shared.data import encode, load_splits
from shared.tasks import TaskError, get_task, read_local
from shared.tasks.causal_lm.encoding import IGNORE, e2e_prompt, instruction_prompt
from shared.tasks.causal_lm.readers import FOOD, food_class, group_references
from shared.tasks.metrics import better, bleu, higher_is_better, nist, rouge_l

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
FOLDERS = {"e2e": DATA / "e2e", "tinyshakespeare": DATA / "tinyshakespeare"}
MRS = ["name[Alimentum], area[city centre], familyFriendly[no]", "name[The Vaults], eatType[pub], food[English]"]


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2_dir):
    from shared.model import load_base_model

    return load_base_model(str(tiny_gpt2_dir), 0, 0, kind="causal-lm").tokenizer


def _rows(mrs: list[str], refs: list[str]) -> Dataset:
    return Dataset.from_dict({"text": mrs, "target": refs, "label": [food_class(m) for m in mrs]})


def test_the_loss_is_taken_on_the_target_tokens_only(tokenizer, tiny_gpt2_dir):
    from shared.model import load_base_model

    ds = _rows([MRS[0], MRS[0], MRS[1]], ["Alimentum is not family-friendly.", "A place in the centre.",
                                          "The Vaults is an English pub."])
    enc = encode(ds, tokenizer, 48, task=get_task("e2e"))
    assert enc.labels.shape == enc.input_ids.shape == (3, 48)
    for i, (mr, ref) in enumerate(zip(ds["text"], ds["target"])):
        prompt = tokenizer(e2e_prompt(mr))["input_ids"]
        target = tokenizer(f" {ref}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(prompt) + len(target)
        assert enc.input_ids[i, :n].tolist() == prompt + target and enc.attention_mask[i].sum() == n
        assert (enc.labels[i, :len(prompt)] == IGNORE).all() and (enc.labels[i, n:] == IGNORE).all()  # prompt, pad
        assert enc.labels[i, len(prompt):n].tolist() == target  # the reference and its eos
    model = load_base_model(str(tiny_gpt2_dir), 0, 0, kind="causal-lm").model
    batch = enc.batch(torch.arange(3))
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)
    keep = labels != IGNORE
    assert torch.allclose(out.loss, F.cross_entropy(logits[keep], labels[keep]), atol=1e-5)
    assert enc.lengths.tolist() == enc.attention_mask.sum(1).tolist()  # length-grouped batches read these


def test_a_long_row_keeps_the_prompts_head_and_half_the_row_for_the_target(tokenizer):
    ds = _rows([MRS[1] + ", " + ", ".join(f"near[Place {i}]" for i in range(30))], [" ".join(["word"] * 40)])
    enc = encode(ds, tokenizer, 32, task=get_task("e2e"))
    assert enc.attention_mask.sum() == 32 and (enc.labels[0] != IGNORE).sum() == 16


def test_plain_text_blocks_are_contiguous_and_labelled_on_every_real_token(tokenizer):
    ds = Dataset.from_dict({"text": ["First Citizen:\nBefore we proceed any further, hear me speak.", "All:\nSpeak."]})
    enc = encode(ds, tokenizer, 8, task=get_task("tinyshakespeare"))
    ids = tokenizer("\n\n".join(ds["text"]), add_special_tokens=False)["input_ids"]
    assert enc.input_ids[enc.attention_mask.bool()].tolist() == ids and enc.input_ids.shape[1] == 8
    assert torch.equal(enc.labels == IGNORE, enc.attention_mask == 0)
    assert len(encode(ds, tokenizer, 8, limit=1, task=get_task("tinyshakespeare"))) == 1


def test_e2e_trains_on_the_dev_set_and_groups_every_test_reference_per_mr():
    splits = read_local(get_task("e2e"), FOLDERS["e2e"])
    assert (len(splits["train"]), len(splits["test"])) == (4_672, 4_693)
    with open(FOLDERS["e2e"] / "testset_w_refs.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected: dict[str, list[str]] = {}
    for r in rows:
        expected.setdefault(r["mr"], []).append(r["ref"])
    mrs, refs = group_references(splits["test"])
    assert len(mrs) == 630 and dict(zip(mrs, refs)) == expected and sum(map(len, refs)) == 4_693
    assert max(map(len, refs)) > 1
    assert set(splits["train"]["label"]) <= set(range(len(FOOD) + 1)) and len(set(splits["train"]["label"])) > 1


def test_the_held_out_slice_keeps_its_first_mrs_with_all_their_references(tokenizer):
    test = load_splits("e2e", str(FOLDERS["e2e"]))["test"]
    enc = encode(test, tokenizer, 64, limit=5, task=get_task("e2e"))
    mrs, refs = group_references(test)
    assert enc.generation.prompts == [e2e_prompt(m) for m in mrs[:5]] and enc.generation.references == refs[:5]
    assert len(enc) == sum(map(len, refs[:5]))
    assert [ids[-3:] for ids in enc.generation.prompt_ids] == [tokenizer(p)["input_ids"][-3:]
                                                               for p in enc.generation.prompts]


def test_beam_search_generates_what_transformers_beam_search_does(tokenizer, tiny_gpt2_dir):
    """num-beams > 1: the evaluation's batched search (one prompt a batch at batch size = beams) returns for each
    prompt what ``model.generate`` with those beams returns for it alone, and greedy stays greedy."""
    from shared.model import load_base_model
    from shared.tasks.causal_lm.evaluation import decode, generate

    model = load_base_model(str(tiny_gpt2_dir), 0, 0, kind="causal-lm").model.eval()
    test = load_splits("e2e", str(FOLDERS["e2e"]))["test"]
    gen = encode(test, tokenizer, 64, limit=3, task=get_task("e2e")).generation
    beams = generate(model, gen, batch_size=3, max_new_tokens=8, num_beams=3)
    greedy = generate(model, gen, batch_size=3, max_new_tokens=8)
    for i, ids in enumerate(gen.prompt_ids):
        prompt = torch.tensor([ids])
        common = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, attention_mask=torch.ones_like(prompt))
        alone = model.generate(prompt, num_beams=3, early_stopping=True, **common)
        assert beams[i] == decode(tokenizer, alone[0, len(ids):].tolist())
        first = model.generate(prompt, num_beams=1, **common)
        assert greedy[i] == decode(tokenizer, first[0, len(ids):].tolist())


HYPS = ["The Vaults is an English pub.", "Alimentum is in the city centre and is not family-friendly.",
        "A coffee shop called Blue Spice."]
REFS = [["The Vaults is a pub serving English food.", "The Vaults is an English pub."],
        ["Alimentum is not family-friendly and is in the city centre.", "In the city centre there is Alimentum.",
         "Alimentum, city centre, not for families."],
        ["Blue Spice is a coffee shop."]]


def test_the_scorers_equal_sacrebleu_and_rouge_score_with_several_references_per_mr():
    streams = [[REFS[0][0], REFS[1][0], REFS[2][0]], [REFS[0][1], REFS[1][1], None], [None, REFS[1][2], None]]
    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score / 100, abs=1e-12)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = [max(scorer.score(r, h)["rougeL"].fmeasure for r in refs) for h, refs in zip(HYPS, REFS)]
    assert rouge_l(HYPS, REFS) == pytest.approx(sum(best) / 3, abs=1e-12)
    assert bleu([REFS[0][1]], [REFS[0]]) == pytest.approx(1.0) and rouge_l([REFS[0][1]], [REFS[0]]) == 1.0
    assert bleu(["completely unrelated words here"], [REFS[0]]) < 0.1
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    assert nist(HYPS, REFS) == pytest.approx(corpus_nist([[tok(r).split() for r in refs] for refs in REFS],
                                                         [tok(h).split() for h in HYPS], n=5), abs=1e-12)
    assert nist(["", ""], REFS[:2]) == 0.0
    assert nist(["The Vaults pub", ""], REFS[:2]) == pytest.approx(  # shorter than 5-grams: n = 3
        corpus_nist([[tok(r).split() for r in refs] for refs in REFS[:2]], [["The", "Vaults", "pub"], []], n=3))


def test_which_way_each_metric_is_better():
    assert not higher_is_better("perplexity") and all(map(higher_is_better, ("bleu", "rouge_l", "nist", "accuracy")))
    assert better("perplexity", 12.0, 30.0) and better("bleu", 0.6, 0.5) and not better("perplexity", 30.0, 12.0)


def test_instruction_data_reads_alpaca_json_and_prompts_with_the_chat_template(tokenizer, tmp_path):
    rows = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.json").write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}]))
    task = get_task("instruction")
    splits = read_local(task, tmp_path)
    assert splits["test"][0] == {"instruction": "Say hi.", "input": "", "output": "Hi."}
    assert tokenizer.chat_template  # SmolLM2's
    enc = encode(splits["train"], tokenizer, 128, task=task)
    prompt = tokenizer(instruction_prompt(tokenizer, "Add the numbers.", "2 and 3"), add_special_tokens=False)
    n = len(prompt["input_ids"])
    assert "2 and 3" in instruction_prompt(tokenizer, "Add the numbers.", "2 and 3") and n > 5
    assert enc.input_ids[1, :n].tolist() == prompt["input_ids"] and (enc.labels[1, :n] == IGNORE).all()
    assert enc.labels[1, n:int(enc.attention_mask[1].sum())].tolist()[-1] == tokenizer.eos_token_id
    assert enc.generation.references == [["Blue."], ["5"]]
    tokenizer_without = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer_without.chat_template = None
    assert "### Response:" in instruction_prompt(tokenizer_without, "Name a colour.", "")


def test_instruction_data_without_its_columns_is_refused_in_one_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"prompt": "Name a colour.", "completion": "Blue."}))
    (tmp_path / "test.jsonl").write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi."}))
    with pytest.raises(TaskError) as err:
        read_local(get_task("instruction"), tmp_path)
    msg = str(err.value)
    assert "no column(s) ['instruction', 'output']" in msg and "Alpaca" in msg and "\n" not in msg


@pytest.mark.parametrize("bad,needle", [
    ({"dataset": "tinyshakespeare", "partitioner": "dirichlet"}, "use partitioner='iid'"),
    ({"dataset": "instruction", "partitioner": "dirichlet"}, "use partitioner='iid'"),
    ({"dataset": "e2e", "partitioner": "iid", "local-loss": "balanced"}, "is a causal-LM task without classes"),
])
def test_settings_a_causal_lm_task_cannot_serve_are_refused_in_one_line(bad, needle):
    from shared.settings import ConfigError, parse_run_config

    with pytest.raises(ConfigError) as err:
        parse_run_config(bad)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["e2e", "tinyshakespeare"])
def test_one_federated_round_with_pafi_and_the_merged_model_generates_as_wired(name, family, request, tmp_path):
    from client.client_app import app as client_app
    from flwr.app import Context, RecordDict
    from server.server_app import main
    from shared.runtime import get_runtime
    from shared.settings import declared_defaults, parse_run_config
    from tests.support.local_grid import LocalGrid
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(f"tiny_{family}_dir")
    task = get_task(name)
    rc = {**declared_defaults(), "model": str(folder), "dataset": name, "data-dir": str(FOLDERS[name]),
          "partitioner": "dirichlet" if name == "e2e" else "iid", "mask-density": 0.05, "local-steps": 1,
          "batch-size": 4, "max-length": 48, "max-eval-examples": 3, "max-new-tokens": 6, "num-server-rounds": 1,
          "fraction-train": 1.0, "min-available-nodes": 2, "output-dir": str(tmp_path), "update-bound": "none",
          "trust-weighting": "none", "final-eval": "slice"}  # one step: FLTrust may weigh both 0; the slice's figures
    main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    history = json.loads((tmp_path / "history.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = history[-1]
    assert last["replied"] == 2 and last["aggregated"] and summary["head_names"] == []  # the tied LM head stays
    assert set(last["metrics"]) == set(task.metrics) and last["score"] == last["metrics"][task.headline]
    assert last["metrics"]["perplexity"] > 1 and summary["headline_metric"] == task.headline
    assert summary["higher_is_better"] == (name == "e2e") and summary["final_score"] == last["score"]
    assert set(summary["metrics"]) == set(task.metrics)
    if name == "e2e":
        samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
        assert [s["round"] for s in samples] == [0, 0, 0, 1, 1, 1] and all(s["references"] for s in samples)
    else:
        assert not (tmp_path / "samples.jsonl").exists()

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # plain transformers
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    wired = get_runtime(parse_run_config(rc)).base.model  # the runtime's model, at the final state
    prompt = tok([e2e_prompt(MRS[1])], return_tensors="pt")
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.no_grad():
        assert torch.equal(merged.generate(**prompt, **kwargs), wired.generate(**prompt, **kwargs))
        assert torch.allclose(merged(**prompt).logits, wired(**prompt).logits, atol=1e-5)
