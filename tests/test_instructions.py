"""Instruction data as a task: prompt/response lines (ours, Alpaca's, FlowerTune's) train with CE on the response
tokens only, are scored by their held-out responses' NLL and perplexity, and show it per round."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from fedcollm.config import load_config
from fedcollm.data import DataError, load_eval, load_split, training_pair
from fedcollm.data.instructions import ALPACA, ALPACA_INPUT
from fedcollm.data.schema import is_instructions
from fedcollm.train import make_batches

WORDS = "lease tenant rent notice repair deposit landlord month term clause".split()


def write_instructions(folder, layout="prompt", n=(24, 6), seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "dev"), n):
        lines = []
        for i in range(count):
            ask = " ".join(rng.choice(WORDS) for _ in range(6))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "."
            rec = {"prompt": {"id": f"{split}-{i}", "prompt": f"Explain: {ask}\nAnswer:", "response": " " + answer},
                   "alpaca": {"instruction": f"Explain {ask}.", "input": ask if i % 2 else "", "output": answer},
                   "flowertune": {"instruction": f"Explain {ask}.", "response": answer}}[layout]
            lines.append(json.dumps(rec))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("layout", ["prompt", "alpaca", "flowertune"])
def test_each_layout_is_read_as_prompt_and_response(tmp_path, layout):
    task = str(write_instructions(tmp_path / layout, layout))
    assert is_instructions(task)
    train = load_split(task, "train")
    assert len(train) == 24 and all(len(q.choices) == 1 and q.answer == 0 for q in train)
    first = json.loads((tmp_path / layout / "train.jsonl").read_text().splitlines()[1])
    prompt, answer = training_pair(train[1])
    if layout == "prompt":
        assert (prompt, answer) == (first["prompt"], first["response"])
    elif layout == "alpaca":  # line 1 has an input: Alpaca's prompt with its Input section
        assert prompt == ALPACA_INPUT.format(**first) and answer == first["output"]
    else:
        assert prompt == ALPACA.format(instruction=first["instruction"]) and answer == first["response"]


def test_the_loss_covers_the_response_tokens_only(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    for q in load_split(str(write_instructions(tmp_path / "i")), "train")[:4]:
        (batch,) = make_batches(tok, [q], batch_size=1, max_length=256, seed=0)
        prompt, response = training_pair(q)
        ids, n_prompt = tok(prompt + response)["input_ids"], len(tok(prompt)["input_ids"])
        assert batch.input_ids[0].tolist() == ids
        assert batch.targets.tolist() == ids[n_prompt:], q.id  # the response's tokens, none of the prompt's
        assert batch.positions.tolist() == list(range(n_prompt - 1, len(ids) - 1))  # each predicted by its previous


@pytest.mark.parametrize("packed", [False, True])
def test_the_training_loss_is_the_mean_nll_of_the_response_tokens(tiny_models, tmp_path, packed):
    """The client's step on a batch of instruction lines, padded or packed: its loss is the mean −log p of the
    responses' tokens under a plain forward pass of each prompt+response, and no prompt token enters it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedcollm.train import sft_step

    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32).eval()
    qs = load_split(str(write_instructions(tmp_path / "i")), "train")[:3]
    (batch,) = make_batches(tok, qs, batch_size=3, max_length=256, seed=0, packed=packed)
    with torch.no_grad():
        loss = float(sft_step(model)(batch)["loss"])
        nlls = []
        for q in qs:
            prompt, response = training_pair(q)
            ids, n_prompt = tok(prompt + response)["input_ids"], len(tok(prompt)["input_ids"])
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            nlls += [-float(logp[k - 1, ids[k]]) for k in range(n_prompt, len(ids))]
    assert loss == pytest.approx(sum(nlls) / len(nlls), rel=1e-4)


def test_a_bad_line_is_named_by_file_and_line(tmp_path):
    folder = write_instructions(tmp_path / "i")
    lines = (folder / "train.jsonl").read_text().splitlines()
    for bad, needle in [({"prompt": "p", "response": "  "}, "the response is empty"),
                        ({"prompt": "", "response": "r"}, "the prompt is empty"),
                        ({"question": "q", "answer": 1}, "not a prompt line"),
                        ({"prompt": "p", "response": 3}, "response must be a string")]:
        (folder / "train.jsonl").write_text("\n".join([*lines[:2], json.dumps(bad), *lines[2:]]) + "\n")
        with pytest.raises(DataError) as err:
            load_split(str(folder), "train")
        assert str(err.value).startswith(f"{folder / 'train.jsonl'}:3: {needle}"), str(err.value)


def test_choice_level_training_refuses_instruction_data(tiny_models, tmp_path):
    from fedcollm.build import preflight

    task = str(write_instructions(tmp_path / "i"))
    for knob in ("kd.target=choices", "train.objective=choices"):
        cfg = load_config(None, [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"tasks=[{task}]",
                                 f"output_dir={tmp_path / 'runs'}", knob])
        with pytest.raises(DataError, match="is instruction data .* need questions with two or more choices"):
            preflight(cfg)


def test_a_run_on_instruction_data_reports_the_perplexity_per_round(tiny_models, tmp_path, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedcollm.evaluate import evaluate_tasks
    from fedcollm.recipes.fedcollm import run_fedcollm

    task = str(write_instructions(tmp_path / "leases"))
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"tasks=[{task}]", "precision=fp32",
        f"output_dir={tmp_path / 'runs'}", "run_name=leases", "federation.rounds=1", "federation.num_clients=2",
        "eval.split=dev", "kd.top_k=16", "slm.lr=0.01", "llm.lr=0.01", f"data_dir={data_dir}",
        f"eval.tasks=[{task},arc_easy]"])  # a multiple-choice task scored beside it
    run = run_fedcollm(cfg, progress=False)
    zero, last = run.metrics()[0], run.metrics()[-1]
    for record in (zero, last):
        n_arc = len(load_eval("arc_easy", data_dir, split="dev"))
        assert all(record.eval[role]["arc_easy"]["n"] == n_arc and "acc" in record.eval[role]["arc_easy"]
                   for role in ("llm", "slm"))
    for record in (zero, last):
        for role in ("llm", "slm"):
            m = record.eval[role][task]
            assert m["n"] == 6 and m["tokens"] > 6 and m["ppl"] == pytest.approx(math.exp(m["nll"]))
            assert "acc" not in m
    assert last.eval["slm"][task]["nll"] < zero.eval["slm"][task]["nll"]  # it trained on such responses
    assert "ppl " in (run.path / "report.md").read_text() and (run.path / "accuracy_per_round.png").exists()
    # the figure is the plain NLL of the responses: a forward pass over prompt+response says the same
    slm = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    qs = load_eval(task, split="dev")
    total, tokens = 0.0, 0
    for q in qs:
        prompt, response = training_pair(q)
        ctx, whole = tok(prompt)["input_ids"], tok(prompt + response)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(slm(torch.tensor([whole])).logits[0].float(), -1)
        total -= sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
        tokens += len(whole) - len(ctx)
    ours = evaluate_tasks(slm, tok, [task], questions={task: qs}, progress=False)[task]
    assert ours["tokens"] == tokens and ours["nll"] == pytest.approx(total / tokens, rel=1e-4)
    assert zero.eval["slm"][task]["nll"] == pytest.approx(total / tokens, rel=1e-4)


@pytest.mark.parametrize("layout", ["alpaca", "flowertune"])
def test_an_input_that_is_not_text_is_refused_in_either_alpaca_prompt_layout(tmp_path, layout):
    folder = write_instructions(tmp_path / layout, layout)
    lines = (folder / "train.jsonl").read_text().splitlines()
    bad = {**json.loads(lines[0]), "input": 5}
    (folder / "train.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: input must be a string"):
        load_split(str(folder), "train")
