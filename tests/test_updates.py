"""Algorithm 1's two training updates on tiny models: client SFT and the server's mutual KD step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedcollm.data import load_split
from fedcollm.models.lora import LoraSpec, attach_lora, get_adapter_arrays
from fedcollm.train import make_batches, run_loop, sft_step, trainable
from fedcollm.updates import TrainSettings, local_update, mutual_kd_step, mutual_transfer


def _peft(path, seed=0):
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return attach_lora(base, LoraSpec(r=4, alpha=8, dropout=0.0), seed=seed)


def _changed(a, b):
    return any(not np.allclose(x, y) for (_, x), (_, y) in zip(a, b))


@pytest.fixture
def pair(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    return _peft(tiny_models["llm"]), _peft(tiny_models["slm"]), tok


def test_local_update_starts_from_theta_and_changes_it(pair, data_dir):
    _, slm, tok = pair
    theta = get_adapter_arrays(slm)
    data = load_split("arc_easy", "train", data_dir)[:8]
    s = TrainSettings(lr=1e-2, batch_size=4, progress=False)
    new, metrics = local_update(slm, tok, theta, data, s)
    assert metrics["steps"] == 2 and _changed(theta, new)
    again, _ = local_update(slm, tok, theta, data, s)  # same θ, same seed: same θ_k
    assert not _changed(new, again)


def test_mutual_transfer_moves_both_adapters(pair, data_dir):
    llm, slm, tok = pair
    omega0, theta0 = get_adapter_arrays(llm), get_adapter_arrays(slm)
    aux = load_split("openbookqa", "train", data_dir)[:8]
    s = TrainSettings(lr=1e-2, batch_size=4, progress=False)
    theta, m = mutual_transfer(llm, slm, tok, theta0, aux, 1e-2, s, weight=1.0, temperature=1.0, top_k=16)
    assert _changed(theta0, theta) and _changed(omega0, get_adapter_arrays(llm))
    assert m["llm_kl"] > 0 and m["slm_kl"] > 0 and m["steps"] == 2


def test_kd_with_zero_weight_is_plain_sft_for_each_model(tiny_models, data_dir):
    """λ = 0: the joint step gives exactly the updates of two separate SFT steps."""
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    batches = make_batches(tok, load_split("arc_easy", "train", data_dir)[:8], 4, 128, seed=0)
    joint_llm, joint_slm = _peft(tiny_models["llm"]), _peft(tiny_models["slm"])
    opts = [torch.optim.AdamW(trainable(m), lr=1e-2) for m in (joint_llm, joint_slm)]
    run_loop(lambda e: batches, mutual_kd_step(joint_llm, joint_slm, 0.0, 1.0, None), opts, progress=False)
    for path, joint in (("llm", joint_llm), ("slm", joint_slm)):
        alone = _peft(tiny_models[path])
        run_loop(lambda e: batches, sft_step(alone), [torch.optim.AdamW(trainable(alone), lr=1e-2)], progress=False)
        for (k, a), (_, b) in zip(get_adapter_arrays(joint), get_adapter_arrays(alone)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=k)


def test_kd_pulls_models_together(tiny_models, data_dir):
    """With only the KL term switched on strongly, the two answer distributions get closer."""
    from fedcollm.losses import kd_kl
    from fedcollm.train import answer_logits

    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    llm, slm = _peft(tiny_models["llm"]), _peft(tiny_models["slm"])
    batches = make_batches(tok, load_split("arc_easy", "train", data_dir)[:8], 8, 128, seed=0)

    def gap():
        with torch.no_grad():
            return kd_kl(answer_logits(slm, batches[0]), answer_logits(llm, batches[0])).item()

    before = gap()
    opts = [torch.optim.AdamW(trainable(m), lr=2e-2) for m in (llm, slm)]
    step = mutual_kd_step(llm, slm, 1.0, 1.0, None)

    def kl_only(b):
        out = step(b)
        return {**out, "loss": out["llm_kl"] + out["slm_kl"]}

    run_loop(lambda e: batches, kl_only, opts, epochs=10, progress=False)
    assert gap() < before


@pytest.mark.parametrize("who", ["llm", "slm", "client"])
def test_an_update_that_diverges_is_refused_before_anyone_saves_or_scores_it(pair, data_dir, who):
    from fedcollm.updates import DivergedError

    llm, slm, tok = pair
    data = load_split("arc_easy", "train", data_dir)[:12]
    huge, fine = 1e30, 1e-3  # finite learning rates that config validation lets through; 1e30 overflows
    s = TrainSettings(lr=huge if who != "llm" else fine, batch_size=4, progress=False)
    with pytest.raises(DivergedError, match="non-finite .* lower the learning rate"):
        if who == "client":
            local_update(slm, tok, get_adapter_arrays(slm), data, s)
        else:
            mutual_transfer(llm, slm, tok, get_adapter_arrays(slm), data, huge if who == "llm" else fine, s,
                            1.0, 1.0, 16)
