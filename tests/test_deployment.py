"""Flower's deployment engine on localhost: a SuperLink and SuperNodes as separate processes finish a round."""

from __future__ import annotations

from fedcollm.config import load_config
from fedcollm.federation.deploy import launch_local


def test_localhost_deployment_completes_a_round(tiny_models, data_dir, tmp_path):
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path / 'runs'}", "run_name=deployed", "federation.rounds=1", "federation.num_clients=2",
        "eval.limit=4", "kd.top_k=16",
    ])
    run = launch_local(cfg, tmp_path / "work", port=39610)
    (zero, first) = run.records()
    assert first["round"] == 1 and first["comm"]["updates_accepted"] == 2
    assert len({c["worker-pid"] for c in first["per_client"]}) == 2  # each SuperNode ran its own ClientApp process
    assert (run.round_dir(1) / "theta" / "adapter_model.safetensors").is_file()
