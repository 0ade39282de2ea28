"""Secure aggregation, differential privacy and dropped clients, in Flower's simulation with tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedcollm.federation.secagg as secagg
import fedcollm.recipes.fedcollm as recipe
from fedcollm.config import load_config
from fedcollm.models.lora import get_adapter_arrays
from fedcollm.recipes.common import client_data, derive_seed, load_peft, settings
from fedcollm.recipes.fedcollm import run_fedcollm
from fedcollm.updates import local_update


def _cfg(tiny_models, data_dir, tmp_path, name, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path}", f"run_name={name}", "federation.rounds=1", "federation.num_clients=3",
        "eval.limit=4", "eval.every_round=false", "kd.top_k=16", "slm.lr=0.01", "llm.lr=0.01",
        "secagg.timeout=600", *extra])


def _theta(run, t):
    return load_file(str(run.path / "rounds" / f"{t:03d}" / "theta" / "adapter_model.safetensors"))


def _client_updates(cfg):
    """What each client computes in round 1, recomputed here from the same config (training is deterministic)."""
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta0 = get_adapter_arrays(model)
    out = []
    for k in range(cfg.federation.num_clients):
        data = client_data(cfg, k)
        s = settings(cfg, cfg.slm, derive_seed(cfg.seed, "client", 1, k), cfg.federation.local_epochs,
                     cfg.federation.local_max_steps, progress=False)
        theta_k, _ = local_update(model, tok, theta0, data, s)
        out.append((dict(theta_k), len(data)))
    return dict(theta0), out


class Spy:
    """Wraps the server's Grid: keeps every array that reaches the server in a reply, at any stage."""

    def __init__(self, grid, arrays):
        self.grid, self.arrays = grid, arrays

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if not r.has_error():
                for record in r.content.array_records.values():
                    self.arrays += [a.numpy() for a in record.values()]
        return replies


def _spy_on_server(monkeypatch):
    seen, strategies = [], []
    round_fn, secure_fn = recipe.fedcollm_round, secagg.secure_train_round
    monkeypatch.setattr(recipe, "fedcollm_round", lambda t, grid, *a: round_fn(t, Spy(grid, seen), *a))

    def secure(*a, **k):
        res = secure_fn(*a, **k)
        strategies.append(res.strategy)
        return res

    monkeypatch.setattr("fedcollm.federation.aggregation.secure_train_round", secure)
    return seen, strategies


def _holds(arrays, update):
    """Does any array the server received carry this client's adapter (packed, or any one tensor of it)?"""
    flat = np.concatenate([v.ravel() for v in update.values()])
    parts = [flat] + [v.ravel() for v in update.values() if np.abs(v).max() > 0]
    return any(a.size == p.size and np.allclose(a.ravel(), p, atol=1e-6) for a in arrays for p in parts)


@pytest.mark.parametrize("secure", [True, False])
def test_secagg_server_never_holds_a_client_update_and_the_mean_equals_fedavg(
        secure, tiny_models, data_dir, tmp_path, monkeypatch):
    # Dirichlet split: clients of different sizes, so the weighting by n_k is part of what is checked
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"secure-{secure}", "method=fedavg", f"secagg.enabled={secure}",
               "federation.partition=dirichlet", "federation.alpha=2.0")
    seen, strategies = _spy_on_server(monkeypatch)
    run = run_fedcollm(cfg, progress=False)
    theta0, updates = _client_updates(cfg)
    assert len({n for _, n in updates}) > 1
    want = {k: sum(u[k] * n for u, n in updates) / sum(n for _, n in updates) for k in theta0}
    got = _theta(run, 1)  # FedAvg baseline: θ^1 is the aggregate itself (no KD step after it)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=2e-5, err_msg=k)  # SecAgg+ quantization: ~1e-6 here
    moved = [u for u, _ in updates if any(not np.array_equal(u[k], theta0[k]) for k in theta0)]
    assert len(moved) == 3
    if secure:
        assert not any(_holds(seen, u) for u in moved), "a client's unmasked adapter reached the server"
        (targets,) = strategies  # what reached the strategy: only the unmasked mean, once per client
        assert len(targets.seen) == 3
        for arrays in targets.seen:
            np.testing.assert_allclose(np.concatenate([a.ravel() for a in arrays]),
                                       np.concatenate([want[k].ravel() for k in theta0]), atol=2e-5)
    else:  # the spy works: without SecAgg+ the server holds every client's adapter
        assert all(_holds(seen, u) for u in moved)
    assert run.records()[-1]["privacy"]["secure_aggregation"] is secure


@pytest.mark.parametrize("secure", [False, True])
def test_dp_clips_each_update_and_reports_epsilon(secure, tiny_models, data_dir, tmp_path):
    clip = 0.01
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"dp-{secure}", "method=fedavg", f"secagg.enabled={secure}",
               "dp.enabled=true", f"dp.clipping_norm={clip}", "dp.noise_multiplier=0.0")
    run = run_fedcollm(cfg, progress=False)
    theta0, updates = _client_updates(cfg)
    assert all(np.sqrt(sum(np.sum((u[k] - theta0[k]) ** 2) for k in theta0)) > 5 * clip for u, _ in updates)
    got = _theta(run, 1)
    step = np.sqrt(sum(np.sum((got[k] - theta0[k]) ** 2) for k in theta0))
    assert 0.5 * clip < step <= clip * 1.01  # the mean of clipped updates: never longer than the clip
    dp = run.records()[-1]["privacy"]["dp"]
    assert dp["clipping_norm"] == clip and dp["noise_std"] == 0.0 and dp["epsilon"] == float("inf")


@pytest.mark.parametrize("secure", [False, True])
def test_dp_averages_every_client_the_same(secure, tiny_models, data_dir, tmp_path):
    # clients of different sizes, a clip that never binds, no noise: θ^1 must be the unweighted mean,
    # since the noise and ε assume one client moves the mean by at most C/m
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"dp-unit-{secure}", "method=fedavg", f"secagg.enabled={secure}",
               "federation.partition=dirichlet", "federation.alpha=2.0", "dp.enabled=true",
               "dp.clipping_norm=1000", "dp.noise_multiplier=0.0")
    run = run_fedcollm(cfg, progress=False)
    theta0, updates = _client_updates(cfg)
    assert len({n for _, n in updates}) > 1
    unweighted = {k: sum(u[k] for u, _ in updates) / len(updates) for k in theta0}
    weighted = {k: sum(u[k] * n for u, n in updates) / sum(n for _, n in updates) for k in theta0}
    assert max(np.abs(unweighted[k] - weighted[k]).max() for k in theta0) > 1e-3  # the two differ here
    got = _theta(run, 1)
    for k in theta0:
        np.testing.assert_allclose(got[k], unweighted[k], atol=2e-5, err_msg=k)
    assert sorted(c["num-examples"] for c in run.records()[-1]["per_client"]) == sorted(n for _, n in updates)


def test_dp_noise_is_for_the_clients_averaged(tiny_models, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOLLM_FAULT", "raise:2:1")  # one of three clients fails: the mean is over two
    cfg = _cfg(tiny_models, data_dir, tmp_path, "dp-m", "method=fedavg", "dp.enabled=true",
               "dp.clipping_norm=0.3", "dp.noise_multiplier=2.0", "federation.min_clients=2")
    run = run_fedcollm(cfg, progress=False)
    theta0 = dict(_client_updates(cfg)[0])
    noise = np.concatenate([(_theta(run, 1)[k] - theta0[k]).ravel() for k in theta0])
    dp = run.records()[-1]["privacy"]["dp"]
    assert dp["clients_averaged"] == 2 and dp["noise_std"] == pytest.approx(2.0 * 0.3 / 2)
    assert np.std(noise) == pytest.approx(dp["noise_std"], rel=0.1)


def test_dp_noise_has_the_std_flower_promises(tiny_models, data_dir, tmp_path):
    cfg = _cfg(tiny_models, data_dir, tmp_path, "dp-noise", "method=fedavg", "dp.enabled=true",
               "dp.clipping_norm=0.3", "dp.noise_multiplier=2.0")
    run = run_fedcollm(cfg, progress=False)
    theta0, updates = _client_updates(cfg)
    got = _theta(run, 1)
    noise = np.concatenate([(got[k] - theta0[k]).ravel() for k in theta0])
    dp = run.records()[-1]["privacy"]["dp"]
    assert dp["noise_std"] == pytest.approx(2.0 * 0.3 / 3)
    assert np.std(noise) == pytest.approx(dp["noise_std"], rel=0.1)  # the clipped mean is tiny next to it
    assert 0 < dp["epsilon"] < float("inf")


@pytest.mark.parametrize("secure", [True, False])
def test_a_round_survives_a_killed_client_and_bad_updates(secure, tiny_models, data_dir, tmp_path, monkeypatch):
    # client 1's process dies in round 1; without SecAgg+ client 2 also sends NaN and is rejected by name
    monkeypatch.setenv("FEDCOLLM_FAULT", "exit:1:1" if secure else "exit:1:1;nan:2:1")
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"kill-{secure}", "federation.num_clients=4",
               f"federation.min_clients={2 if secure else 1}", "federation.sim_workers=4", "federation.rounds=2",
               f"secagg.enabled={secure}", "secagg.reconstruction_threshold=0.5")
    run = run_fedcollm(cfg, progress=False)
    first, second = run.records()[1:]
    # Flower's actor pool may route one more message to the worker while Ray restarts it: that client
    # fails too (collateral, simulation only), so the round must survive one or two lost clients
    survivors = {c["partition-id"] for c in first["per_client"]}
    assert 1 not in survivors and len(first["comm"]["client_errors"]) in (1, 2)
    if secure:
        assert len(survivors) == first["comm"]["updates_accepted"] == 4 - len(first["comm"]["client_errors"])
    else:
        rejected, errors = first["comm"]["updates_rejected"], first["comm"]["client_errors"]
        assert 2 not in survivors and len(survivors) == first["comm"]["updates_accepted"] >= 1
        assert (len(rejected) == 1 and "contains NaN or Inf" in rejected[0]) or len(errors) == 2
    # Ray restarts the dead worker; a message sent while it is still restarting fails like a dropout
    assert second["comm"]["updates_accepted"] + len(second["comm"]["client_errors"]) == 4
    assert second["comm"]["updates_accepted"] >= 2 and run.last_round() == 2


def test_too_few_clients_stop_the_run_with_one_line_and_keep_finished_rounds(tiny_models, data_dir, tmp_path,
                                                                            monkeypatch, capsys):
    from fedcollm.cli import main

    monkeypatch.setenv("FEDCOLLM_FAULT", "raise:0:2;raise:1:2")
    argv = ["run", f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}",
            "precision=fp32", f"output_dir={tmp_path}", "run_name=short", "federation.rounds=2",
            "federation.num_clients=3", "federation.min_clients=2", "eval.limit=4", "kd.top_k=16"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fedcollm: error: round 2: 1 usable client updates, federation.min_clients is 2")
    assert f"--resume {tmp_path / 'short'}" in err
    assert (tmp_path / "short" / "rounds" / "001" / "DONE").is_file()
    assert not (tmp_path / "short" / "rounds" / "002").exists()
