"""Choice-level training and distillation (``kd.target=choices``, ``train.objective=choices``) on tiny models:
the choice scores are the evaluator's, the KL moves the student toward the teacher over the choices, and a
question that has no choice distribution is named, never a NaN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_updates import _peft  # a tiny model with a fresh LoRA adapter (no dropout)
from transformers import AutoTokenizer

from fedcollm.config import load_config
from fedcollm.data import DataError, Question, load_split, mc_request
from fedcollm.evaluate import (
    choice_scores,
    encode_request,
    loglikelihoods,
    make_choice_batches,
    pack_choices,
    score_questions,
)
from fedcollm.losses import choice_ce, choice_kl
from fedcollm.models.anatomy import pad_id
from fedcollm.updates import Transfer, choice_kd_losses, mutual_transfer


def _models(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    return {"llm": (_peft(tiny_models["llm"], seed=1), tok), "slm": (_peft(tiny_models["slm"]), tok)}


def _questions(data_dir, n=6, task="arc_easy"):
    return load_split(task, "train", data_dir)[:n]


def _naive(model, tok, q: Question) -> list[float]:
    """One sequence per choice, the whole LM head, as lm-eval computes a log-likelihood."""
    e = encode_request(tok, mc_request(q), 2048)
    out = []
    for cont in e.choices:
        ids = torch.tensor([e.context + cont])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        out.append(float(sum(logp[len(e.context) - 1 + k, t] for k, t in enumerate(cont))))
    return out


def test_choice_scores_with_gradients_are_the_evaluators_and_a_naive_computation(tiny_models, data_dir):
    model, tok = _models(tiny_models)["slm"]
    model.eval()  # no dropout: the three computations must see one model
    qs = _questions(data_dir, 6) + _questions(data_dir, 3, "commonsense_qa")  # 4 and 5 choices in one batch
    (cb,) = make_choice_batches(tok, qs, batch_size=len(qs), max_length=256, seed=0)
    scores, _ = choice_scores(model, cb)
    assert scores.requires_grad
    by_id = {}
    order = np.random.default_rng([0, 0]).permutation(len(qs))  # the batch's order (make_batches' shuffle)
    for b, i in enumerate(order):
        by_id[qs[i].id] = scores[b, : len(qs[i].choices)].detach().numpy()
    evaluator = {q.id: r.lls for q, r in zip(qs, score_questions(model, tok, qs, batch_size=4, max_length=256))}
    with torch.no_grad():
        naive = {q.id: _naive(model, tok, q) for q in qs}
    for q in qs:
        np.testing.assert_allclose(by_id[q.id], evaluator[q.id], atol=1e-5, err_msg=q.id)
        np.testing.assert_allclose(by_id[q.id], naive[q.id], atol=1e-4, err_msg=q.id)
    assert cb.valid.sum().item() == sum(len(q.choices) for q in qs)  # CSQA's fifth slot is empty for ARC


def test_a_task_reported_by_acc_norm_trains_on_the_length_normalised_scores_the_evaluator_ranks_by(
        tiny_models, data_dir, monkeypatch):
    """acc_norm's score is the log-likelihood over the choice's length in characters (lm-eval's ``len(choice)``);
    for such a task the choice distribution is built from it, and its argmax is the evaluator's ``pred_norm``."""
    from fedcollm.data import prompts

    model, tok = _models(tiny_models)["slm"]
    model.eval()
    qs = _questions(data_dir, 5)
    (raw,) = make_choice_batches(tok, qs, batch_size=5, max_length=256, seed=0)
    monkeypatch.setitem(prompts.REPORTED_METRIC, "arc_easy", "acc_norm")
    (cb,) = make_choice_batches(tok, qs, batch_size=5, max_length=256, seed=0)
    with torch.no_grad():
        scores, _ = choice_scores(model, cb)
        raw_scores, _ = choice_scores(model, raw)
    evaluator = {q.id: r for q, r in zip(qs, score_questions(model, tok, qs, batch_size=4, max_length=256))}
    order = np.random.default_rng([0, 0]).permutation(len(qs))
    for b, i in enumerate(order):
        q, r = qs[i], evaluator[qs[i].id]
        n = len(q.choices)
        chars = np.array([float(len(c)) for c in q.choices])
        np.testing.assert_allclose(scores[b, :n].numpy(), np.array(r.lls) / chars, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(raw_scores[b, :n].numpy(), r.lls, atol=1e-5)  # acc: the sums themselves
        assert int(scores[b, :n].argmax()) == r.pred_norm


def test_the_choice_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    s = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
    for tau in (1.0, 2.0):
        assert torch.allclose(choice_kl(s, s.clone(), valid, tau), torch.zeros(2), atol=1e-7)
        other = s + torch.tensor([[0.0, -1.0, 1.0, 99.0], [1.0, 0.0, 0.0, 0.0]])  # the empty slot's value is ignored
        kl = choice_kl(s, other, valid, tau)
        assert (kl > 0).all() and torch.isfinite(kl).all()
    shifted = s + 5.0  # a constant added to every choice's score is no change of distribution
    assert torch.allclose(choice_kl(s, shifted, valid), torch.zeros(2), atol=1e-6)
    ce = choice_ce(s, torch.tensor([1, 3]), valid)
    want0 = -torch.log_softmax(torch.tensor([1.0, 2.0, 0.5]), 0)[1]
    assert torch.isclose(ce[0], want0) and torch.isfinite(ce).all()


def test_the_choice_kl_is_tau_squared_times_the_teachers_expectation_of_the_log_ratio():
    """Against the formula written out: τ²·Σ_i q_t,i (log q_t,i − log q_s,i), q = softmax(s/τ) over the valid
    choices; its gradient in the student's scores is τ·(q_s − q_t) and the teacher gets none."""
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    s = torch.tensor([[1.0, 2.0, 0.5, 7.0], [0.1, -0.7, 0.3, 0.4]], requires_grad=True)
    t = torch.tensor([[0.2, -1.0, 1.5, -3.0], [2.0, 0.0, 0.5, -1.0]], requires_grad=True)
    for tau in (1.0, 2.0):
        kl = choice_kl(s, t, valid, tau)
        grad_s, grad_t = torch.autograd.grad(kl.sum(), (s, t), allow_unused=True)
        for b in range(2):
            n = int(valid[b].sum())
            qs = torch.softmax(s[b, :n].detach() / tau, 0)
            qt = torch.softmax(t[b, :n].detach() / tau, 0)
            want = tau**2 * float((qt * (qt.log() - qs.log())).sum())
            assert float(kl[b].detach()) == pytest.approx(want, rel=1e-5)
            torch.testing.assert_close(grad_s[b, :n], tau * (qs - qt), rtol=1e-5, atol=1e-6)
            assert float(grad_s[b, n:].abs().sum()) == 0.0  # the empty slot takes no part
        assert grad_t is None or float(grad_t.abs().sum()) == 0.0  # the teacher is detached


def test_one_kd_step_moves_the_students_choice_distribution_toward_the_teachers(tiny_models):
    """A hand-made question without an answer (an unlabeled D^a question: KD terms only, no CE), one SGD step
    of the SLM's whole loss: its choice distribution ends closer to the LLM's."""
    models = _models(tiny_models)
    (llm, tok), (slm, _) = models["llm"], models["slm"]
    for m in (llm, slm):
        m.eval()
    q = Question(id="hand-1", task="arc_easy", question="Which of these is a liquid at room temperature?",
                 choices=("water", "a rock", "ice", "a wooden chair"), labels=("A", "B", "C", "D"), answer=None)
    (cb,) = make_choice_batches(tok, [q], batch_size=1, max_length=256, seed=0)
    assert not bool(cb.labeled.any())
    spec = Transfer(llm_weight=0.0, slm_weight=1.0, target="choices", temperature=2.0)

    def kl_now():
        with torch.no_grad():
            return float(choice_kl(choice_scores(slm, cb)[0], choice_scores(llm, cb)[0], cb.valid, 2.0).mean())

    before = kl_now()
    assert before > 0
    opt = torch.optim.SGD([p for p in slm.parameters() if p.requires_grad], lr=0.05)
    out = choice_kd_losses(choice_scores(llm, cb), choice_scores(slm, cb), cb, spec)
    assert float(out["slm_ce"]) == 0.0  # no answer, no CE: the step is the KL's alone
    out["slm_loss"].backward()
    opt.step()
    assert kl_now() < before, (kl_now(), before)


def test_a_direction_of_weight_zero_computes_no_kl(tiny_models, data_dir, monkeypatch):
    import fedcollm.updates as updates

    models = _models(tiny_models)
    (llm, tok), (slm, _) = models["llm"], models["slm"]
    (cb,) = make_choice_batches(tok, _questions(data_dir, 4), batch_size=4, max_length=256, seed=0)
    calls = []
    real = updates.choice_kl
    monkeypatch.setattr(updates, "choice_kl", lambda s, t, v, tau: calls.append(s) or real(s, t, v, tau))
    s_f, s_g = choice_scores(llm, cb), choice_scores(slm, cb)
    out = choice_kd_losses(s_f, s_g, cb, Transfer(llm_weight=0.0, slm_weight=1.0, target="choices"))
    assert len(calls) == 1 and calls[0] is s_g[0]  # the SLM's KL only
    assert float(out["llm_kl"]) == 0.0 and float(out["llm_kd_frac"]) == 0.0 and float(out["slm_kl"]) > 0
    assert torch.isclose(out["llm_loss"], out["llm_ce"])  # the LLM: plain CE on the gold choice
    calls.clear()
    none = choice_kd_losses(s_f, s_g, cb, Transfer(llm_weight=0.0, slm_weight=0.0, target="choices"))
    assert calls == [] and float(none["llm_kl"]) == float(none["slm_kl"]) == 0.0


def test_selection_and_the_gold_token_ce_act_per_question(tiny_models, data_dir):
    models = _models(tiny_models)
    (llm, tok), (slm, _) = models["llm"], models["slm"]
    (cb,) = make_choice_batches(tok, _questions(data_dir, 6), batch_size=6, max_length=256, seed=0)
    f, g = choice_scores(llm, cb), choice_scores(slm, cb)
    ce_f, ce_g = (choice_ce(x[0], cb.gold, cb.valid) for x in (f, g))
    greater = choice_kd_losses(f, g, cb, Transfer(target="choices", select="greater"))
    assert float(greater["llm_kd_frac"]) == pytest.approx(float((ce_g < ce_f).float().mean()))
    assert float(greater["slm_kd_frac"]) == pytest.approx(float((ce_f < ce_g).float().mean()))
    plain = choice_kd_losses(f, g, cb, Transfer(target="choices", llm_weight=0.0, slm_weight=0.0))
    with_tokens = choice_kd_losses(f, g, cb, Transfer(target="choices", llm_weight=0.0, slm_weight=0.0,
                                                      token_ce=True))
    # the gold choice's token CE, computed here from the token log-probs: what the tokens target trains on
    gold_slots = torch.arange(len(cb.n_choices)) * cb.n_slots + cb.gold
    on_gold = (cb.owner[:, None] == gold_slots[None, :]).any(1)
    want = -g[1][on_gold].mean()
    assert torch.isclose(with_tokens["slm_ce"] - plain["slm_ce"], want, atol=1e-6)


def test_questions_without_a_choice_distribution_are_named_in_one_line(tiny_models, data_dir):
    _, tok = _models(tiny_models)["slm"]
    q = _questions(data_dir, 1)[0]
    one = dataclasses.replace(q, choices=q.choices[:1], labels=q.labels[:1], answer=0)
    one_msg = rf"question {q.id!r}: 1 choice\(s\); choice-level training needs >= 2"
    with pytest.raises(DataError, match=one_msg) as one_err:
        make_choice_batches(tok, [q, one], batch_size=2, max_length=256, seed=0)
    long = dataclasses.replace(q, choices=(q.choices[0], " ".join(["water"] * 40)))
    long_msg = rf"question {q.id!r}: a choice of \d+ tokens is longer than max_length 16"
    with pytest.raises(DataError, match=long_msg) as long_err:
        make_choice_batches(tok, [long], batch_size=1, max_length=16, seed=0)
    for err in (one_err, long_err):
        assert "\n" not in str(err.value)


def test_choice_kd_trains_both_models_and_the_choice_objective_trains_a_client(tiny_models, data_dir):
    """End of the chain: ``mutual_transfer`` with ``target=choices`` and ``local_update`` with the choice
    objective each move their adapters, stay finite and report their losses."""
    from fedcollm.build import client_data, load_peft, load_splits, train_settings
    from fedcollm.models.lora import get_adapter_arrays
    from fedcollm.updates import local_update

    cfg = load_config(None, [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}",
                             f"data_dir={data_dir}", "precision=fp32", "train.objective=choices",
                             "kd.target=choices", "slm.lr=0.01", "llm.lr=0.01"])
    slm, tok = load_peft(cfg.slm, cfg, "slm")
    llm, _ = load_peft(cfg.llm, cfg, "llm")
    theta = get_adapter_arrays(slm)
    omega = get_adapter_arrays(llm)
    s = train_settings(cfg, cfg.slm, 3, 1, 2, progress=False)
    assert s.objective == "choices"
    theta_k, m = local_update(slm, tok, theta, client_data(cfg, 0), s)
    assert m["steps"] == 2 and np.isfinite(m["loss"])
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(theta, theta_k))
    out, km = mutual_transfer(llm, slm, tok, theta, load_splits(cfg).aux[:8], 0.01,
                              train_settings(cfg, cfg.slm, 4, 1, 2, progress=False),
                              Transfer(target="choices", llm_weight=1.0, slm_weight=1.0))
    assert km["llm_kl"] > 0 and km["slm_kl"] > 0 and km["steps"] == 2
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(theta, out))
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(omega, get_adapter_arrays(llm)))


def test_a_choice_batch_pads_and_masks_as_the_scorer_does(tiny_models, data_dir):
    _, tok = _models(tiny_models)["slm"]
    qs = _questions(data_dir, 3)
    encoded = [encode_request(tok, mc_request(q), 256) for q in qs]
    cb = pack_choices(encoded, pad_id(tok), torch.float32)
    assert cb.n_tokens == sum(cb.lengths) == sum(len(e.context) + sum(len(c) - 1 for c in e.choices) for e in encoded)
    assert cb.mask.shape == (3, 1, cb.input_ids.shape[1], cb.input_ids.shape[1])
    model, _ = _models(tiny_models)["slm"]
    model.eval()
    with torch.no_grad():
        lls = loglikelihoods(model, encoded, pad_id(tok), batch_size=3)
        scores, _ = choice_scores(model, cb)
    for b, e in enumerate(encoded):
        np.testing.assert_allclose(scores[b, : len(e.choices)].numpy(), lls[b], atol=1e-5)


def test_proxy_tuning_adds_alpha_times_the_slms_change_to_the_llms_logits(tiny_models, data_dir):
    from fedcollm.evaluate import ProxyTuned, choice_logits
    from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays

    models = _models(tiny_models)
    (llm, tok), (slm, _) = models["llm"], models["slm"]
    rng = np.random.default_rng(0)
    set_adapter_arrays(slm, [(k, rng.normal(size=v.shape).astype(np.float32)) for k, v in get_adapter_arrays(slm)])
    for m in (llm, slm):
        m.eval()
    qs = _questions(data_dir, 4)
    (cb,) = make_choice_batches(tok, qs, batch_size=4, max_length=256, seed=0)
    with torch.no_grad():
        f, g = choice_logits(llm, cb), choice_logits(slm, cb)
        with slm.disable_adapter():
            g0 = choice_logits(slm, cb)
        assert not torch.allclose(g, g0)  # the SLM's adapter changes its logits
        for alpha in (0.0, 0.5, 2.0):
            got = choice_logits(ProxyTuned(llm, slm, alpha), cb)
            torch.testing.assert_close(got, f + alpha * (g - g0))
    zero = score_questions(ProxyTuned(llm, slm, 0.0), tok, qs, max_length=256)
    alone = score_questions(llm, tok, qs, max_length=256)
    np.testing.assert_allclose([x for r in zero for x in r.lls], [x for r in alone for x in r.lls], atol=1e-5)


def test_eval_proxy_scores_the_steered_llm_and_names_what_it_used(tiny_models, data_dir, tmp_path, capsys):
    import json

    from fedcollm.cli import main
    from fedcollm.models.lora import get_adapter_arrays, save_adapter, set_adapter_arrays

    _, (slm, _) = _models(tiny_models)["llm"], _models(tiny_models)["slm"]
    rng = np.random.default_rng(1)
    set_adapter_arrays(slm, [(k, rng.normal(size=v.shape).astype(np.float32)) for k, v in get_adapter_arrays(slm)])
    save_adapter(slm, tmp_path / "theta")
    common = ["eval", "--model", str(tiny_models["llm"]), "--tasks", "arc_easy", "--limit", "4", "--split", "dev",
              "--precision", "fp32", "--data-dir", str(data_dir)]
    assert main([*common, "--proxy", str(tmp_path / "theta")]) == 2
    assert "--proxy needs --proxy-model" in capsys.readouterr().err
    out = tmp_path / "proxy.json"
    assert main([*common, "--proxy", str(tmp_path / "theta"), "--proxy-model", str(tiny_models["slm"]),
                 "--proxy-alpha", "0.5", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["proxy"] == {"slm": str(tiny_models["slm"]), "adapter": str(tmp_path / "theta"), "alpha": 0.5}
    assert saved["metrics"]["arc_easy"]["n"] == 4


def test_preflight_names_a_question_without_a_choice_distribution_before_round_one(tiny_models, tmp_path):
    """The same refusal, from ``preflight``: before any run folder, not when the KD batches are built after the
    clients' first round."""
    import json

    from fedcollm.build import load_splits, preflight

    task = tmp_path / "med"
    task.mkdir()
    rows = [{"id": f"t{i}", "question": f"Which organ {i}?", "choices": ["liver", "kidney"], "answer": 0}
            for i in range(20)]
    rows[3]["choices"] = ["liver", " ".join(["kidney"] * 60)]
    (task / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "dev.jsonl").write_text(json.dumps({**rows[0], "id": "d0", "question": "Which organ, dev?"}) + "\n")
    base = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"tasks=[{task}]", "max_length=32",
            "federation.num_clients=2", "federation.aux_fraction=0.5", f"output_dir={tmp_path / 'runs'}",
            "eval.split=dev"]
    cfg = load_config(None, base)
    preflight(cfg)  # the tokens target truncates, as lm-eval does: nothing to refuse
    in_aux = "t3" in {q.id for q in load_splits(cfg).aux}  # t3 is in D^a or in a client's D^k, not both
    for knob, refuses in (("kd.target=choices", in_aux), ("train.objective=choices", not in_aux)):
        if refuses:
            with pytest.raises(DataError, match=r"question 't3': a choice of \d+ tokens is longer than max_length 32"):
                preflight(load_config(None, [*base, knob]))
        else:
            preflight(load_config(None, [*base, knob]))
    with pytest.raises(DataError, match="question 't3'"):  # both on: refused whichever holds it
        preflight(load_config(None, [*base, "kd.target=choices", "train.objective=choices"]))
    assert not (tmp_path / "runs").exists()
