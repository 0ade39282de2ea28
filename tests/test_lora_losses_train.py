from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedcollm.data import load_split
from fedcollm.evaluate import adapter_enabled, score_questions
from fedcollm.losses import answer_ce, kd_kl, kd_kl_tokens
from fedcollm.models.lora import (
    AdapterError,
    LoraSpec,
    arrays_nbytes,
    attach_lora,
    count_parameters,
    get_adapter_arrays,
    load_adapter,
    load_adapter_model,
    save_adapter,
    set_adapter_arrays,
)
from fedcollm.train import answer_logits, make_batches, run_loop, sft_step, trainable


def _peft(path, seed=0):
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return attach_lora(base, LoraSpec(r=4, alpha=8, dropout=0.0), seed=seed)


def _perturb(model, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [(k, v + rng.normal(0, 0.5, v.shape).astype(np.float32)) for k, v in get_adapter_arrays(model)]
    set_adapter_arrays(model, arrays)
    return arrays


def test_adapter_round_trip_gives_identical_outputs(tiny_models, data_dir):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    a, b = _peft(tiny_models["slm"], seed=0), _peft(tiny_models["slm"], seed=1)
    arrays = _perturb(a)
    qs = load_split("arc_easy", "train", data_dir)[:4]
    before = [r.lls for r in score_questions(b, tok, qs)]
    set_adapter_arrays(b, get_adapter_arrays(a))
    got, want = score_questions(b, tok, qs), score_questions(a, tok, qs)
    assert [r.lls for r in got] == [r.lls for r in want]
    assert [r.lls for r in got] != before  # the adapter really changed the model
    assert [k for k, _ in get_adapter_arrays(b)] == [k for k, _ in arrays]  # order is the state dict's
    counts = count_parameters(a)
    assert counts["trainable"] == sum(v.size for _, v in arrays) and counts["trainable"] < counts["total"]
    assert arrays_nbytes(arrays) == 4 * counts["trainable"]


def test_adapter_switch_off_scores_the_base(tiny_models, data_dir):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    base = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32)
    qs = load_split("openbookqa", "train", data_dir)[:3]
    plain = [x for r in score_questions(base, tok, qs) for x in r.lls]
    model = _peft(tiny_models["slm"])
    _perturb(model)
    with adapter_enabled(model, False):
        off = [x for r in score_questions(model, tok, qs) for x in r.lls]
    on = [x for r in score_questions(model, tok, qs) for x in r.lls]
    assert off == pytest.approx(plain) and on != pytest.approx(plain)


def test_peft_save_load(tiny_models, data_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    model = _peft(tiny_models["slm"])
    _perturb(model)
    save_adapter(model, tmp_path / "ad")
    qs = load_split("arc_easy", "train", data_dir)[:3]
    want = [x for r in score_questions(model, tok, qs) for x in r.lls]
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["slm"]), tmp_path / "ad")
    assert [x for r in score_questions(reloaded, tok, qs) for x in r.lls] == pytest.approx(want, abs=1e-5)
    other = _peft(tiny_models["slm"], seed=3)
    load_adapter(other, tmp_path / "ad")
    assert [x for r in score_questions(other, tok, qs) for x in r.lls] == pytest.approx(want, abs=1e-5)
    with pytest.raises(AdapterError, match="no PEFT adapter"):
        load_adapter(other, tmp_path / "missing")


@pytest.mark.parametrize("bad,match", [
    (lambda a: a[1:], "missing"),
    (lambda a: a + [("extra.weight", a[0][1])], "unexpected"),
    (lambda a: [(a[0][0], a[0][1][:, :1])] + a[1:], "has shape"),
    (lambda a: [(a[0][0], np.full_like(a[0][1], np.nan))] + a[1:], "NaN or Inf"),
])
def test_bad_adapter_updates_are_refused(tiny_models, bad, match):
    model = _peft(tiny_models["slm"])
    arrays = get_adapter_arrays(model)
    with pytest.raises(AdapterError, match=match):
        set_adapter_arrays(model, bad(arrays))
    assert all(np.array_equal(x, y) for (_, x), (_, y) in zip(arrays, get_adapter_arrays(model)))  # untouched


def test_kd_kl_zero_iff_same_distribution():
    torch.manual_seed(0)
    a = torch.randn(6, 50)
    assert kd_kl(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl(a, a.clone(), temperature=2.0, top_k=10).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(6, 50)
    assert kd_kl(a, b).item() > 1e-3 and kd_kl(a, b, top_k=5).item() > 1e-3
    # the teacher is detached: gradients flow into the student only
    s, t = a.clone().requires_grad_(), b.clone().requires_grad_()
    kd_kl(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_kd_kl_is_the_teachers_expectation_of_the_log_ratio_and_its_gradient_is_p_s_minus_p_t():
    """Against formulas written here: KL(p_t || p_s) = Σ p_t (log p_t − log p_s), τ² times at temperature τ on the
    teacher's top k (both renormalised there); at τ = 1 its gradient in the student's logits is p_s − p_t (the
    reverse KL's is not)."""
    torch.manual_seed(1)
    s, t = torch.randn(5, 40, dtype=torch.float64) * 3, torch.randn(5, 40, dtype=torch.float64) * 3

    def forward_kl(s, t, tau=1.0, k=None):
        s, t = s / tau, t / tau
        if k is not None:
            t, idx = t.topk(k, dim=-1)
            s = s.gather(-1, idx)
        p_t = torch.exp(t - torch.logsumexp(t, -1, keepdim=True))
        log_p_s = s - torch.logsumexp(s, -1, keepdim=True)
        return (p_t * (torch.log(p_t) - log_p_s)).sum(-1) * tau**2

    torch.testing.assert_close(kd_kl_tokens(s, t).double(), forward_kl(s, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_kl_tokens(s, t, 2.0, 7).double(), forward_kl(s, t, 2.0, 7), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(kd_kl_tokens(s, t).double(), forward_kl(t, s), rtol=1e-2)  # not symmetric here
    student = s.clone().float().requires_grad_()
    kd_kl_tokens(student, t.float()).sum().backward()
    torch.testing.assert_close(student.grad.double(), torch.softmax(s, -1) - torch.softmax(t, -1), rtol=1e-4,
                               atol=1e-5)


def test_answer_logits_match_full_forward(tiny_models, data_dir):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["slm"], dtype=torch.float32)
    (batch,) = make_batches(tok, load_split("arc_easy", "train", data_dir)[:3], 3, 128, seed=0)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ours = answer_logits(model, batch)
    assert torch.allclose(ours, full[batch.rows, batch.positions], atol=1e-5)
    labels = batch.input_ids[batch.rows, batch.positions + 1]
    assert torch.equal(labels, batch.targets)  # each position predicts the next token
    assert answer_ce(ours, batch.targets).item() > 0


def test_sft_loop_lowers_the_loss_and_only_moves_the_adapter(tiny_models, data_dir):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    model = _peft(tiny_models["slm"])
    qs = load_split("arc_easy", "train", data_dir)[:16]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(trainable(model), lr=1e-2)
    first = run_loop(lambda e: make_batches(tok, qs, 4, 128, seed=0, epoch=e), sft_step(model), [opt],
                     epochs=1, progress=False)
    last = run_loop(lambda e: make_batches(tok, qs, 4, 128, seed=0, epoch=e + 1), sft_step(model), [opt],
                    epochs=4, progress=False)
    assert first["steps"] == 4 and last["steps"] == 16
    assert last["loss"] < first["loss"]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


def test_wrapping_a_fresh_or_a_saved_adapter_prints_no_library_deprecation_noise(tiny_models, tmp_path):
    """PEFT 0.21 under transformers >= 5.24 warns `is_gradient_checkpointing is deprecated` on every wrap;
    the CLI promises one line per error, so both ways in (attach_lora, load_adapter_model) mute exactly it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter(_peft(tiny_models["slm"]), tmp_path / "ad")
        load_adapter_model(AutoModelForCausalLM.from_pretrained(tiny_models["slm"]), tmp_path / "ad")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_a_packed_batch_gives_the_padded_batchs_logits_and_training(tiny_models, data_dir):
    from fedcollm.updates import TrainSettings, local_update

    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    qs = load_split("commonsense_qa", "train", data_dir)[:6] + load_split("openbookqa", "train", data_dir)[:6]
    model = _peft(tiny_models["slm"])
    _perturb(model)  # a non-zero LoRA B, so the adapter path is in the logits
    padded = make_batches(tok, qs, 4, 128, seed=0)
    packed = make_batches(tok, qs, 4, 128, seed=0, packed=True)
    assert [b.input_ids.shape[0] for b in packed] == [1, 1, 1] and all(b.n_sequences == 4 for b in packed)
    assert sum(b.input_ids.numel() for b in packed) < sum(b.input_ids.numel() for b in padded)  # no padding
    for a, b in zip(padded, packed):
        assert torch.equal(a.rows, b.rows) and torch.equal(a.targets, b.targets)
        assert torch.equal(b.input_ids[0, b.positions + 1], b.targets)  # each position predicts its answer token
        with torch.no_grad():  # a token never sees another sequence: the same logits as the padded rows
            torch.testing.assert_close(answer_logits(model, b), answer_logits(model, a), atol=1e-5, rtol=1e-5)
    start = get_adapter_arrays(model)
    out = {}
    for flag in (False, True):
        settings = TrainSettings(lr=1e-2, batch_size=4, epochs=2, max_length=128, progress=False, packed=flag)
        out[flag] = local_update(model, tok, start, qs, settings)
    assert out[True][1]["steps"] == out[False][1]["steps"] == 6
    assert out[True][1]["tokens"] == out[False][1]["tokens"]  # the same examples: real tokens only
    for (key, a), (_, b) in zip(out[False][0], out[True][0]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=key)
