"""Real-model checks (slow: `make test-slow`; builds the offline models on first use, ~5 min)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.slow
SLM, LLM = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"


@pytest.fixture(scope="module")
def data_dir():
    d = os.environ.get("FEDCOLLM_DATA_DIR")
    if not d:
        pytest.skip("set FEDCOLLM_DATA_DIR to the real datasets")
    return d


def test_offline_pair_shares_one_tokenizer_and_knows_paris():
    from fedcollm.models.sources import check_same_tokenizer, load_model

    slm, slm_tok = load_model(SLM)
    llm, llm_tok = load_model(LLM)
    check_same_tokenizer(slm_tok, llm_tok, SLM, LLM, slm.config.vocab_size, llm.config.vocab_size)
    for model, tok in ((slm, slm_tok), (llm, llm_tok)):
        ids = tok("The capital of France is", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert "Paris" in tok.decode(out[0])


def test_scorer_matches_lm_eval_on_the_real_slm(data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.lm_eval_ref import run_lm_eval
    from fedcollm.data import load_eval
    from fedcollm.evaluate import score_questions
    from fedcollm.models.sources import resolve_model

    path = resolve_model(SLM)
    qs = load_eval("arc_challenge", data_dir, limit=40)
    _, ref, _ = run_lm_eval(path, {"arc_challenge": qs}, batch_size=8, dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = score_questions(model, AutoTokenizer.from_pretrained(path), qs, batch_size=8)
    assert [float(r.pred == r.gold) for r in ours] == [s["acc"] for s in ref["arc_challenge"]]
    assert [float(r.pred_norm == r.gold) for r in ours] == [s["acc_norm"] for s in ref["arc_challenge"]]
