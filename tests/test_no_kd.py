"""no_kd, the baseline that isolates the distillation: Algorithm 1 with λ = 0 both ways is FedAvg's θ followed
by SFT on D^a for the SLM, and SFT on D^a alone for the LLM (same seeds, same examples)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file

from fedcollm.build import budget, derive_seed, kd_batch_size, load_peft, load_splits, train_settings
from fedcollm.config import load_config
from fedcollm.models.lora import load_adapter, read_adapter_arrays
from fedcollm.recipes.experiment import no_transfer
from fedcollm.recipes.fedcollm import run_fedcollm
from fedcollm.runlog import RunDir
from fedcollm.updates import local_update


def _arrays(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def test_no_kd_is_fedavg_then_sft_on_the_aux_data_for_each_model(tiny_models, data_dir, tmp_path):
    # LoRA dropout 0: in the joint step the LLM draws its dropout masks before the SLM, so with dropout the
    # two models' draws differ from two separate loops; without it the updates are deterministic functions
    common = [f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
              "precision=fp32", f"output_dir={tmp_path}", "federation.rounds=1", "federation.num_clients=2",
              "eval.limit=3", "eval.every_round=false", "llm.lora.dropout=0", "slm.lora.dropout=0",
              "llm.lr=0.01", "slm.lr=0.01", "kd.top_k=16", "tracking=[]"]
    fedavg = RunDir(run_fedcollm(load_config(None, [*common, "method=fedavg", "run_name=fedavg"]), progress=False).path)
    # explicit weights both ways (as the cpu-paper preset sets them): no_kd must zero each, not only λ
    cfg = no_transfer(load_config(None, [*common, "run_name=no_kd", "kd.llm_weight=1", "kd.slm_weight=0.5"]))
    no_kd = RunDir(run_fedcollm(cfg, progress=False).path)

    aux = load_splits(cfg).aux
    epochs, max_steps = budget(cfg).kd_loop
    seed = derive_seed(cfg.seed, "server", 1)  # the server step's seed in round 1
    for role, section, start in (("slm", cfg.slm, fedavg.round_dir(1) / "theta"), ("llm", cfg.llm, None)):
        model, tok = load_peft(section, cfg, role)
        if start is not None:
            load_adapter(model, start)  # the SLM starts from FedAvg's θ^{1,0}, the LLM from its fresh ω
        lr = cfg.kd.slm_lr or cfg.slm.lr if role == "slm" else cfg.kd.llm_lr or cfg.llm.lr
        settings = train_settings(cfg, section, seed, epochs, max_steps, progress=False,
                                  batch_size=kd_batch_size(cfg), lr=lr)
        want, _ = local_update(model, tok, None, aux, settings)  # plain SFT on D^a
        got = read_adapter_arrays(no_kd.round_dir(1) / ("theta" if role == "slm" else "omega"))
        assert [k for k, _ in got] == [k for k, _ in want] and want
        for (key, value), (_, expected) in zip(got, want):
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=f"{role} {key}")
    # and the SLM's round really started from FedAvg's mean: θ^1 of no_kd differs from FedAvg's θ^1 only by SFT
    assert any(not np.array_equal(v, _arrays(fedavg.round_dir(1) / "theta")[k])
               for k, v in _arrays(no_kd.round_dir(1) / "theta").items())
