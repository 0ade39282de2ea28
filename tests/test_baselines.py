"""Baselines on tiny models: each runs through the shared loop/scorer and reports every task."""

from __future__ import annotations

from fedcollm.build import budget, load_splits
from fedcollm.config import load_config
from fedcollm.recipes.baselines import centralized, standalone, zero_shot
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


def test_the_budget_gives_every_method_the_examples_the_readme_states(tiny_models, data_dir, tmp_path):
    cfg = _cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3")
    splits = load_splits(cfg)
    sizes = [len(c) for c in splits.clients]
    assert min(sizes) > 4 and len(splits.aux) == 8  # 2 clients of 6, D^a 4 per task (the caps below bind)
    b = budget(cfg, splits)  # no caps: E = kd.epochs = 1 pass a round over each D^k and over D^a
    assert b.client == tuple(sizes) and b.kd == 8
    assert b.federated_client_examples() == 3 * sum(sizes)  # FedAvg and FedCoLLM's clients
    assert [b.standalone_examples(k) for k in range(2)] == [3 * n for n in sizes]
    assert b.centralized_examples() == 3 * (sum(sizes) + 8) and b.centralized_loop() == (3, None)  # 3 whole passes
    capped = _cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3", "federation.local_max_steps=1",
                  "slm.batch_size=2", "kd.max_steps=1", "llm.batch_size=4")
    b = budget(capped, load_splits(capped))
    # a round: each client 1 step of 2 examples; the server 1 KD step of 2 (KD batches at the SLM's size,
    # both models see one batch) → 6 examples, 3 rounds = 18 = 5 steps of 4 for Centralized
    assert b.client == (2, 2) and b.kd == 2 and b.centralized_examples() == 18
    assert b.centralized_loop() == (1, 5) and b.standalone_loop() == (3, 3)  # 5 steps of 4 in one pass of 20
    own = budget(_cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3", "federation.local_max_steps=1",
                      "slm.batch_size=2", "kd.max_steps=1", "llm.batch_size=4", "kd.batch_size=3"))  # KD's own batch
    assert own.kd == 3 and own.centralized_examples() == 3 * (2 + 2 + 3)


def test_fedavg_is_the_federation_without_the_llm(tiny_models, data_dir, tmp_path):
    run = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "method=fedavg", "run_name=fa"), progress=False)
    last = run.metrics()[-1]
    assert set(last.eval) == {"slm"} and last.kd == {} and len(last.clients["contributors"]) == 2
    assert not (run.round_dir(1) / "omega").exists() and (run.round_dir(1) / "theta").is_dir()


def test_a_killed_centralized_resumes_after_its_last_round_and_equals_an_uninterrupted_one(
        tiny_models, data_dir, tmp_path, monkeypatch):
    import numpy as np
    import pytest

    import fedcollm.updates as updates
    from fedcollm.models.lora import read_adapter_arrays

    cfg = _cfg(tiny_models, data_dir, tmp_path, "federation.rounds=3")
    whole = centralized(cfg, save_to=tmp_path / "whole")
    assert not (tmp_path / "whole" / "centralized-loop").exists()  # the loop state goes once the adapter is kept

    saves = []
    real_save = updates.LoopCheckpoint.save

    def killed_after_round_1(self, model, opt, at):
        real_save(self, model, opt, at)
        if at.step % self.every == 0:
            saves.append(at.step)
            raise KeyboardInterrupt("killed")  # as a kill right after the first round's checkpoint

    monkeypatch.setattr(updates.LoopCheckpoint, "save", killed_after_round_1)
    with pytest.raises(KeyboardInterrupt):
        centralized(cfg, save_to=tmp_path / "part")
    monkeypatch.undo()
    (first,) = saves
    assert first > 0 and (tmp_path / "part" / "centralized-loop" / "loop.pt").is_file()
    steps_run = []
    real_loop = updates.run_loop
    monkeypatch.setattr(updates, "run_loop", lambda *a, **k: steps_run.append(k["start"].step) or real_loop(*a, **k))
    resumed = centralized(cfg, save_to=tmp_path / "part")
    assert steps_run == [first]  # it went on after the checkpoint, not from step 0
    want = dict(read_adapter_arrays(tmp_path / "whole" / "llm"))
    got = dict(read_adapter_arrays(tmp_path / "part" / "llm"))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert resumed["llm"]["arc_easy"]["correct"] == whole["llm"]["arc_easy"]["correct"]


def test_a_killed_standalone_skips_the_clients_that_finished(tiny_models, data_dir, tmp_path, monkeypatch):
    import fedcollm.recipes.baselines as baselines

    cfg = _cfg(tiny_models, data_dir, tmp_path)
    first = standalone(cfg, save_to=tmp_path / "sa")
    (tmp_path / "sa" / "slm-client-1" / "metrics.json").unlink()  # as if killed while client 1 trained
    trained = []
    real = baselines.local_update
    monkeypatch.setattr(baselines, "local_update", lambda *a, **k: trained.append(k["desc"]) or real(*a, **k))
    again = standalone(cfg, save_to=tmp_path / "sa")
    assert trained == ["standalone client 1"]
    def outcomes(clients):  # everything but the seconds each scoring took
        return [{t: {k: v for k, v in m.items() if k != "seconds"} for t, m in c.items()} for c in clients]

    assert outcomes(again["clients"]) == outcomes(first["clients"])
    assert (tmp_path / "sa" / "slm-client-1" / "metrics.json").is_file()
