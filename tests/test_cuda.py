"""The training loop, the server's distillation and the scorer on a CUDA GPU, against the CPU.

Skipped where no GPU is visible (CI). On a GPU machine, with tiny random-weight models: a client update,
the mutual KD and the scorer run on the device (``device=cuda``), give the CPU's numbers in float32, and
stay finite in bf16 (what ``precision: auto`` picks on a GPU). LoRA dropout is 0 here: the GPU and the
CPU draw dropout masks from different generators.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcollm.build import (
    autocast_dtype,
    client_data,
    eval_questions,
    evaluate_model,
    load_peft,
    load_splits,
    train_settings,
    transfer_spec,
)
from fedcollm.config import load_config
from fedcollm.models.lora import get_adapter_arrays
from fedcollm.updates import local_update, mutual_transfer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(tiny_models, data_dir, device, precision):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
        f"precision={precision}", f"device={device}", "slm.lora.dropout=0", "llm.lora.dropout=0", "slm.lr=0.01",
        "llm.lr=0.01", "federation.num_clients=2", "kd.top_k=16", "eval.limit=12"])


def _flat(arrays):
    return np.concatenate([np.asarray(v, np.float64).ravel() for _, v in arrays])


def _client_and_kd(cfg):
    slm, tok = load_peft(cfg.slm, cfg, "slm")
    llm, _ = load_peft(cfg.llm, cfg, "llm")
    theta0 = get_adapter_arrays(slm)
    s = train_settings(cfg, cfg.slm, 3, 1, 4, progress=False)
    theta_k, m = local_update(slm, tok, theta0, client_data(cfg, 0), s)
    theta_r, kd = mutual_transfer(llm, slm, tok, theta_k, load_splits(cfg).aux[:8], cfg.llm.lr, s, transfer_spec(cfg))
    acc = evaluate_model(slm, tok, cfg, eval_questions(cfg), progress=False)
    return {"device": next(slm.parameters()).device.type, "theta0": theta0, "theta_k": theta_k, "theta_r": theta_r,
            "omega": get_adapter_arrays(llm), "loss": m["loss"], "kd": kd, "acc": acc}


def test_gpu_float32_matches_the_cpu(tiny_models, data_dir):
    gpu = _client_and_kd(_cfg(tiny_models, data_dir, "cuda", "fp32"))
    cpu = _client_and_kd(_cfg(tiny_models, data_dir, "cpu", "fp32"))
    assert gpu["device"] == "cuda" and cpu["device"] == "cpu"
    np.testing.assert_allclose(_flat(gpu["theta0"]), _flat(cpu["theta0"]))  # the same seeded init on both
    for key in ("theta_k", "theta_r", "omega"):
        np.testing.assert_allclose(_flat(gpu[key]), _flat(cpu[key]), rtol=1e-3, atol=1e-4, err_msg=key)
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-4)
    for k in ("llm_kl", "slm_kl"):
        assert gpu["kd"][k] == pytest.approx(cpu["kd"][k], rel=1e-3, abs=1e-5)
    for task, m in cpu["acc"].items():  # the scorer picks the same answers
        same = sum(a == b for a, b in zip(m["correct"], gpu["acc"][task]["correct"]))
        assert same >= len(m["correct"]) - 1, task


def test_gpu_bfloat16_trains_and_scores(tiny_models, data_dir):
    cfg = _cfg(tiny_models, data_dir, "cuda", "auto")
    assert autocast_dtype(cfg) == torch.bfloat16  # precision auto picks bf16 on a GPU
    out = _client_and_kd(cfg)
    for key in ("theta_k", "theta_r", "omega"):
        flat = _flat(out[key])
        assert np.all(np.isfinite(flat)), key
    assert not np.allclose(_flat(out["theta_k"]), _flat(out["theta0"]))  # the client moved θ
    assert all(0 <= m["acc"] <= 1 for m in out["acc"].values())


def test_a_killed_centralized_loop_resumes_on_the_gpu_with_dropout_replayed(tiny_models, data_dir, tmp_path,
                                                                            monkeypatch):
    import fedcollm.updates as updates
    from fedcollm.models.lora import read_adapter_arrays
    from fedcollm.recipes.baselines import centralized

    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
        "precision=fp32", "device=cuda", "llm.lr=0.01", "federation.num_clients=2", "federation.rounds=3",
        "federation.client_size=6", "federation.aux_size=4", "eval.limit=4"])  # LoRA dropout 0.05: RNG matters
    centralized(cfg, save_to=tmp_path / "whole")
    real_save = updates.LoopCheckpoint.save

    def killed(self, model, opt, at):
        real_save(self, model, opt, at)
        if at.step % self.every == 0:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(updates.LoopCheckpoint, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        centralized(cfg, save_to=tmp_path / "part")
    monkeypatch.undo()
    centralized(cfg, save_to=tmp_path / "part")
    want = dict(read_adapter_arrays(tmp_path / "whole" / "llm"))
    got = dict(read_adapter_arrays(tmp_path / "part" / "llm"))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
