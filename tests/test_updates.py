"""Algorithm 1's two training updates on tiny models: client SFT and the server's mutual KD step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedcollm.data import load_split
from fedcollm.models.lora import LoraSpec, attach_lora, get_adapter_arrays
from fedcollm.train import make_batches, run_loop, sft_step, trainable
from fedcollm.updates import TrainSettings, Transfer, local_update, mutual_kd_step, mutual_transfer


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
    theta, m = mutual_transfer(llm, slm, tok, theta0, aux, 1e-2, s, Transfer(top_k=16))
    assert _changed(theta0, theta) and _changed(omega0, get_adapter_arrays(llm))
    assert m["llm_kl"] > 0 and m["slm_kl"] > 0 and m["steps"] == 2


def test_kd_with_zero_weight_is_plain_sft_for_each_model(tiny_models, data_dir):
    """λ = 0: the joint step gives exactly the updates of two separate SFT steps."""
    tok = AutoTokenizer.from_pretrained(tiny_models["slm"])
    batches = make_batches(tok, load_split("arc_easy", "train", data_dir)[:8], 4, 128, seed=0)
    joint_llm, joint_slm = _peft(tiny_models["llm"]), _peft(tiny_models["slm"])
    opts = [torch.optim.AdamW(trainable(m), lr=1e-2) for m in (joint_llm, joint_slm)]
    step = mutual_kd_step(joint_llm, joint_slm, Transfer(0.0, 0.0, top_k=None))
    run_loop(lambda e: batches, step, opts, progress=False)
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
    step = mutual_kd_step(llm, slm, Transfer(top_k=None))

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
                            Transfer(top_k=16))


def _two_sequences(vocab=6):
    """A batch of two sequences, 2 answer tokens each, and logits where the LLM (f) is better on the gold
    answer of sequence 0 and the SLM (g) on sequence 1."""
    from fedcollm.train import Batch

    rows, targets = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 3, 4])
    batch = Batch(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), rows,
                  torch.tensor([1, 2, 1, 2]), targets)
    good, bad = torch.zeros(4, vocab), torch.zeros(4, vocab)
    good[torch.arange(4), targets] = 4.0  # confident and right
    bad[torch.arange(4), (targets + 1) % vocab] = 4.0  # confident and wrong
    first = (rows == 0)[:, None]
    f = torch.where(first, good, bad).requires_grad_()
    g = torch.where(first, bad, good).requires_grad_()
    return batch, f, g


def test_selective_distillation_picks_per_sequence_the_side_with_the_lower_ce():
    from fedcollm.losses import kd_kl_tokens
    from fedcollm.updates import kd_losses

    batch, f, g = _two_sequences()
    out = kd_losses(f, g, batch, Transfer(select="greater", top_k=None))
    kl_f_tokens = kd_kl_tokens(f, g)  # the LLM's KL toward the SLM, per token
    kl_g_tokens = kd_kl_tokens(g, f)
    # the LLM distils only sequence 1 (where the SLM is better), the SLM only sequence 0; the rest add 0
    torch.testing.assert_close(out["llm_kl"], kl_f_tokens[2:].sum() / 4)
    torch.testing.assert_close(out["slm_kl"], kl_g_tokens[:2].sum() / 4)
    assert float(out["llm_kd_frac"]) == float(out["slm_kd_frac"]) == 0.5
    plain = kd_losses(f, g, batch, Transfer(select="none", top_k=None))  # the paper: every sequence
    torch.testing.assert_close(plain["llm_kl"], kl_f_tokens.mean())
    # gradients: the LLM's KL does not move its logits on sequence 0, where its own distribution is the target
    (grad_f,) = torch.autograd.grad(out["llm_kl"], f)
    assert torch.all(grad_f[:2] == 0) and torch.any(grad_f[2:] != 0)


@pytest.mark.parametrize("mix", ["add", "convex"])
@pytest.mark.parametrize("select", ["none", "greater", "gated"])
def test_every_mix_and_selection_is_plain_sft_at_zero_kd_weight(mix, select):
    from fedcollm.losses import answer_ce
    from fedcollm.updates import kd_losses

    batch, f, g = _two_sequences()
    out = kd_losses(f, g, batch, Transfer(llm_weight=0.0, slm_weight=0.0, mix=mix, select=select, top_k=None))
    torch.testing.assert_close(out["llm_loss"], answer_ce(f, batch.targets))
    torch.testing.assert_close(out["slm_loss"], answer_ce(g, batch.targets))
    one_way = kd_losses(f, g, batch, Transfer(llm_weight=0.0, slm_weight=0.5, mix=mix, select=select, top_k=None))
    torch.testing.assert_close(one_way["llm_loss"], answer_ce(f, batch.targets))  # LLM ← SLM off, SLM ← LLM on
    assert float(one_way["slm_loss"]) != pytest.approx(float(answer_ce(g, batch.targets)))


def test_convex_mix_weighs_ce_and_kl_as_fedmkt():
    from fedcollm.updates import kd_losses

    batch, f, g = _two_sequences()
    out = kd_losses(f, g, batch, Transfer(llm_weight=0.1, slm_weight=0.1, mix="convex", top_k=None))
    torch.testing.assert_close(out["llm_loss"], 0.9 * out["llm_ce"] + 0.1 * out["llm_kl"])


def test_gated_transfer_lets_the_llm_distil_only_where_the_slm_is_closer_and_the_llm_unsure():
    from fedcollm.losses import kd_kl_tokens
    from fedcollm.train import Batch
    from fedcollm.updates import gate, kd_losses

    # four one-token answers, gold token 0 of 4: the gold probability of each model set by hand
    def logits(p_gold):
        p = torch.tensor([[q, (1 - q) / 3, (1 - q) / 3, (1 - q) / 3] for q in p_gold])
        return p.log().requires_grad_()

    llm = [0.30, 0.70, 0.30, 0.45]  # unsure, sure, unsure, unsure
    slm = [0.60, 0.90, 0.20, 0.45]  # closer, closer, further, a tie
    f, g = logits(llm), logits(slm)
    rows = torch.arange(4)
    batch = Batch(torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long), rows,
                  torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    seq = [-torch.tensor(x).log() for x in (llm, slm)]  # each sequence's CE on its gold answer
    assert gate(seq[0], seq[1], 0.5).tolist() == [True, False, False, False]  # only the first qualifies
    assert gate(seq[0], seq[1], 0.8).tolist() == [True, True, False, False]  # a sure LLM at 0.7 < 0.8 is unsure
    out = kd_losses(f, g, batch, Transfer(select="gated", confidence=0.5, top_k=None))
    torch.testing.assert_close(out["llm_kl"], kd_kl_tokens(f, g)[0] / 4)  # sequence 0's KL, averaged over all 4
    assert float(out["llm_kd_frac"]) == 0.25
    torch.testing.assert_close(out["slm_kl"], kd_kl_tokens(g, f).mean())  # SLM ← LLM: every sequence, the paper's
    assert float(out["slm_kd_frac"]) == 1.0


def test_the_update_cache_key_changes_with_everything_that_changes_an_update(data_dir, monkeypatch):
    """The same inputs give one key; a change of resolved device, resolved precision, package version, the update's
    code, its seed or the prompt format each give another, so no update is ever served for one computed otherwise."""
    import torch

    from fedcollm import precision
    from fedcollm.build import client_data
    from fedcollm.config import load_config
    from fedcollm.federation import update_cache

    cfg = load_config(None, [f"data_dir={data_dir}", "precision=auto", "device=auto"])
    data = client_data(cfg, 0)
    theta = [("a.lora_A.weight", np.zeros((2, 3), np.float32))]

    def key(c=cfg):
        return update_cache.update_key(c, theta, data, 7)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    base = key()
    assert key() == base
    assert key(load_config(None, [f"data_dir={data_dir}", "precision=bf16", "device=cpu"])) == base  # auto, resolved
    changed = {}
    with monkeypatch.context() as m:  # the same config on a machine without fast bf16: fp32
        m.setattr(precision, "cpu_has_fast_bf16", lambda: False)
        changed["precision"] = key()
    with monkeypatch.context() as m:  # the same config on a GPU machine: cuda (and its precision pinned)
        m.setattr(torch.cuda, "is_available", lambda: True)
        changed["device"] = key(load_config(None, [f"data_dir={data_dir}", "precision=bf16"]))
    with monkeypatch.context() as m:
        m.setattr(update_cache, "version", lambda name: "9.9.9")
        changed["version"] = key()
    with monkeypatch.context() as m:  # an edit to the loop, the losses, the prompts or the adapter code
        m.setattr(update_cache, "code_digest", lambda modules=update_cache.UPDATE_CODE: "edited")
        changed["code"] = key()
    changed["seed"] = update_cache.update_key(cfg, theta, data, 8)  # the update's own seed (order, dropout)
    with monkeypatch.context() as m:  # another prompt format for the same questions
        m.setattr(update_cache, "training_pair", lambda q: ("Q: " + q.question, " " + q.choices[q.answer]))
        changed["prompt"] = key()
    assert all(v != base for v in changed.values()) and len(set(changed.values())) == len(changed), changed


def test_the_code_digest_reads_the_modules_source(tmp_path, monkeypatch):
    from fedcollm.federation.update_cache import code_digest

    (tmp_path / "mod_under_test.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest(("mod_under_test",))
    (tmp_path / "mod_under_test.py").write_text("x = 2\n")
    code_digest.cache_clear()
    assert code_digest(("mod_under_test",)) != before
    digested = set(code_digest.__wrapped__.__defaults__[0])
    assert digested >= {"fedcollm.train", "fedcollm.losses", "fedcollm.data.prompts", "fedcollm.updates",
                        "fedcollm.build", "fedcollm.federation.client_app"}  # train_settings; the client's step
