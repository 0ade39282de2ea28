"""Baselines on tiny models: each runs through the shared loop/scorer and reports every task."""

from __future__ import annotations

from fedcollm.build import load_splits
from fedcollm.config import load_config
from fedcollm.recipes.baselines import centralized, centralized_max_steps, standalone, zero_shot
from fedcollm.recipes.fedcollm import run_fedcollm


def _cfg(tiny_models, data_dir, tmp_path, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path}", "federation.num_clients=2", "federation.rounds=1", "federation.client_size=6",
        "federation.aux_size=4", "tasks=arc_easy,openbookqa", "eval.limit=4", "llm.lr=0.01", "slm.lr=0.01", *extra])


def test_zero_shot_standalone_centralized(tiny_models, data_dir, tmp_path):
    cfg = _cfg(tiny_models, data_dir, tmp_path)
    zs = zero_shot(cfg)
    assert set(zs) == {"llm", "slm"} and set(zs["slm"]) == {"arc_easy", "openbookqa"}
    sa = standalone(cfg)
    assert len(sa["clients"]) == 2 and set(sa["slm"]) == {"arc_easy", "openbookqa"}
    acc = [c["arc_easy"]["acc"] for c in sa["clients"]]
    assert abs(sa["slm"]["arc_easy"]["acc"] - sum(acc) / 2) < 1e-9
    ce = centralized(cfg)
    assert set(ce["llm"]) == {"arc_easy", "openbookqa"}


def test_centralized_sees_as_many_examples_as_a_capped_federation(tiny_models, data_dir, tmp_path):
    cfg = _cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3")
    splits = load_splits(cfg)
    assert centralized_max_steps(cfg, splits) is None  # no caps: T·E full passes over the union
    sizes = [len(c) for c in splits.clients]
    assert min(sizes) > 4 and len(splits.aux) == 8  # 2 clients of 6, D^a 4 per task (the caps below bind)
    capped = _cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3", "federation.local_max_steps=1",
                  "slm.batch_size=2", "kd.max_steps=1", "llm.batch_size=4")
    # a round: each client 1 step of 2 examples, the server 1 KD step of 4 → 8 examples, 3 rounds = 24 = 6 steps of 4
    assert centralized_max_steps(capped, load_splits(capped)) == 6


def test_fedavg_is_the_federation_without_the_llm(tiny_models, data_dir, tmp_path):
    run = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "method=fedavg", "run_name=fa"), progress=False)
    last = run.metrics()[-1]
    assert set(last["eval"]) == {"slm"} and last["kd"] == {} and len(last["clients"]["contributors"]) == 2
    assert not (run.round_dir(1) / "omega").exists() and (run.round_dir(1) / "theta").is_dir()
