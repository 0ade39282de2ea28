"""Our scorer must reproduce lm-evaluation-harness: same per-question predictions, same acc/acc_norm."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.lm_eval_ref import run_lm_eval
from fedcollm.data import ALL_TASKS, load_eval
from fedcollm.evaluate import accuracy, score_questions


@pytest.fixture(scope="module")
def slm(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_models["slm"])


def test_same_predictions_and_accuracy_as_lm_eval(tiny_models, data_dir, slm):
    model, tok = slm
    questions = {t: load_eval(t, data_dir) for t in ALL_TASKS}
    ref_metrics, ref_samples, _ = run_lm_eval(str(tiny_models["slm"]), questions, batch_size=4)
    for task, qs in questions.items():
        ours = score_questions(model, tok, qs, batch_size=3)
        for q, r, ref in zip(qs, ours, ref_samples[task], strict=True):
            assert r.lls == pytest.approx(ref["lls"], abs=1e-3), (task, q.id)
            assert float(r.pred == r.gold) == ref["acc"], (task, q.id)
            if ref["acc_norm"] is not None:
                assert float(r.pred_norm == r.gold) == ref["acc_norm"], (task, q.id)
        acc = accuracy(ours)
        assert acc["acc"] == pytest.approx(ref_metrics[task]["acc"])
        if "acc_norm" in ref_metrics[task]:
            assert acc["acc_norm"] == pytest.approx(ref_metrics[task]["acc_norm"])


def test_batching_does_not_change_scores(data_dir, slm):
    model, tok = slm
    qs = load_eval("arc_easy", data_dir)
    one = score_questions(model, tok, qs, batch_size=1)
    many = score_questions(model, tok, qs, batch_size=5)
    for a, b in zip(one, many):
        assert a.lls == pytest.approx(b.lls, abs=1e-4)


def test_scores_are_choice_loglikelihoods(data_dir, slm):
    """Independent check: the plain HF forward of context+choice gives the same sum of log-probs."""
    model, tok = slm
    q = load_eval("openbookqa", data_dir)[0]
    (res,) = score_questions(model, tok, [q])
    ctx = tok(q.question)["input_ids"]
    for choice, ll in zip(q.choices, res.lls):
        whole = tok(q.question + " " + choice)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        expected = sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
        assert ll == pytest.approx(expected, abs=1e-4)
