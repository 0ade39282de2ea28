"""Secure aggregation, differential privacy and dropped clients, in Flower's simulation with tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedcollm.build import client_data, derive_seed, load_peft, train_settings
from fedcollm.config import load_config
from fedcollm.models.lora import get_adapter_arrays
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


def _client_updates(cfg, theta=None, server_round=1):
    """What each client computes in a round from θ (θ^0 by default), recomputed here from the same config
    (training is deterministic). Returns (θ, [(θ_k, n_k) for every partition k])."""
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta0 = get_adapter_arrays(model) if theta is None else list(theta.items())
    out = []
    for k in range(cfg.federation.num_clients):
        data = client_data(cfg, k)
        s = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "client", server_round, k), cfg.federation.local_epochs,
                     cfg.federation.local_max_steps, progress=False)
        theta_k, _ = local_update(model, tok, theta0, data, s)
        out.append((dict(theta_k), len(data)))
    return dict(theta0), out


def _assert_mean_of_contributors(cfg, run, t):
    """θ^t (FedAvg: θ^{t,0} itself) is Σ w_k θ_k / Σ w_k over exactly the round's reported contributors."""
    start = None if t == 1 else _theta(run, t - 1)
    theta0, updates = _client_updates(cfg, start, t)
    contributors = run.metrics()[t].clients["contributors"]
    assert contributors, f"round {t} has no contributors"
    total = sum(c["weight"] for c in contributors)
    for c in contributors:  # the weight is what the client reported (n_k), as the record says
        assert c["weight"] == updates[c["partition-id"]][1]
    want = {k: sum(updates[c["partition-id"]][0][k] * c["weight"] for c in contributors) / total for k in theta0}
    got = _theta(run, t)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=2e-5, err_msg=f"round {t}: {k}")
    return contributors


SPY_APP = """
[project]
name = "spy-app"
version = "0.1.0"
description = "fedcollm's apps with a spy in the ServerApp's process"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"
fab-include = ["pyproject.toml", "spy_server.py"]

[tool.flwr.app.components]
serverapp = "spy_server:server_app"
clientapp = "fedcollm.federation.client_app:app"

[tool.flwr.app.config]
config = ""
resume = ""
engine = "deployment"
progress = false
launcher-pid = 0
"""

SPY_SERVER = '''"""fedcollm\\'s ServerApp, with the tests\\' ``inprocess.Spy`` around its Grid, in Flower\\'s ServerApp
process: what reached the server in every reply, and per SecAgg+ round what reached the strategy\\'s aggregate_fit."""
import os
import pickle
import sys

from flwr.common import parameters_to_ndarrays
from flwr.serverapp import ServerApp

sys.path.insert(0, os.environ["SPY_TESTS_DIR"])
import fedcollm.federation.secagg as secagg  # noqa: E402
from fedcollm.federation import server_app as fedcollm_server_app  # noqa: E402
from inprocess import Spy  # noqa: E402

strategies = []
aggregate_fit = secagg._RoundTargets.aggregate_fit


def spy_fit(self, server_round, results, failures):
    strategies.append([parameters_to_ndarrays(res.parameters) for _, res in results])
    return aggregate_fit(self, server_round, results, failures)


secagg._RoundTargets.aggregate_fit = spy_fit
server_app = ServerApp()


@server_app.main()
def main(grid, context):
    spy = Spy(grid)
    try:
        fedcollm_server_app.main(spy, context)
    finally:
        with open(os.environ["SPY_OUT"], "wb") as f:
            pickle.dump((spy.arrays, spy.masked, strategies), f)
'''


def _run_spied(cfg, tmp_path, monkeypatch, flower: bool):
    """Run ``cfg`` with a ``Spy`` around the server's Grid: in this process, or (``flower``) in Flower's own
    ServerApp process through a Flower App of this test's (its pyproject names the spy module). Returns
    (run, arrays the server received, masked vectors it received, what reached the strategy's aggregate_fit)."""
    import pickle
    from pathlib import Path

    from inprocess import Spy, simulate_in_process

    from fedcollm.build import preflight
    from fedcollm.federation import secagg
    from fedcollm.federation.simulation import simulate
    from fedcollm.runlog import RunDir

    preflight(cfg)
    run = RunDir.create(cfg)
    if flower:
        app = tmp_path / f"spy-app-{cfg.run_name}"
        app.mkdir()
        (app / "pyproject.toml").write_text(SPY_APP)
        (app / "spy_server.py").write_text(SPY_SERVER)
        out = tmp_path / f"spied-{cfg.run_name}.pkl"
        monkeypatch.setenv("SPY_OUT", str(out))
        monkeypatch.setenv("SPY_TESTS_DIR", str(Path(__file__).parent))
        simulate(cfg, run, progress=False, app_dir=app)
        return (run, *pickle.loads(out.read_bytes()))
    strategies, fit = [], secagg._RoundTargets.aggregate_fit

    def spy_fit(self, server_round, results, failures):
        from flwr.common import parameters_to_ndarrays

        strategies.append([parameters_to_ndarrays(res.parameters) for _, res in results])
        return fit(self, server_round, results, failures)

    monkeypatch.setattr(secagg._RoundTargets, "aggregate_fit", spy_fit)
    spies = []
    simulate_in_process(cfg, run, progress=False, grid_hook=lambda grid: spies.append(Spy(grid)) or spies[-1])
    return run, spies[0].arrays, spies[0].masked, strategies


def _holds(arrays, update):
    """Does any array the server received carry this client's adapter (packed, or any one tensor of it)?"""
    flat = np.concatenate([v.ravel() for v in update.values()])
    parts = [flat] + [v.ravel() for v in update.values() if np.abs(v).max() > 0]
    return any(a.size == p.size and np.allclose(a.ravel(), p, atol=1e-6) for a in arrays for p in parts)


def _readable(masked, updates, sec):
    """For each client, the largest share of one received SecAgg+ vector that is its own quantized update: the
    value Flower's client computes before it adds its masks (θ_k weighted by n_k / max_weight, clipped, scaled to
    the quantization range; its stochastic rounding moves it by less than 1). About 1 when a vector is unmasked;
    about 2^-31 per value when the masks are there (they are uniform over the 2^32 of the modulus)."""
    max_weight = max(n for _, n in updates)
    c, q = sec.clipping_range, sec.quantization_range
    shares = []
    for update, n in updates:
        flat = np.concatenate([v.ravel() for v in update.values()]).astype(np.float64)
        dq = round(n / max_weight * q) / q
        pre = (np.clip(flat * dq, -c, c) + c) * (q / (2 * c))
        shares.append(max(float(np.mean(np.abs(v[1].astype(np.float64) - pre) <= 1)) for v in masked
                          if v[1].size == pre.size))
    return shares


@pytest.mark.parametrize("secure, flower, masks", [
    pytest.param(True, True, True, id="secagg-through-flower", marks=pytest.mark.flower),
    pytest.param(True, False, True, id="secagg"),
    pytest.param(True, False, False, id="secagg-masks-zeroed"),
    pytest.param(False, False, True, id="plain"),
])
def test_secagg_server_reads_no_client_update_and_the_mean_equals_fedavg(
        secure, flower, masks, tiny_models, data_dir, tmp_path, monkeypatch, request):
    """What the server receives is decoded, SecAgg+'s masked vectors included: no client's update (its adapter, or
    its quantized vector before masking) can be read from it, while the unmasked sum gives FedAvg's mean. The
    controls show that the spy does read: without SecAgg+ every adapter, with SecAgg+'s masks zeroed (on both
    sides, so the sum stays right) every quantized vector."""
    if not masks:
        import importlib

        # the modules, not the functions of the same name that their packages export
        client_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
        server_workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

        def no_mask(seed, num_range, dimensions_list):
            return [np.zeros(d, dtype=np.int64) for d in dimensions_list]

        monkeypatch.setattr(client_mod, "pseudo_rand_gen", no_mask)
        monkeypatch.setattr(server_workflow, "pseudo_rand_gen", no_mask)
    # Dirichlet split: clients of different sizes, so the weighting by n_k is part of what is checked
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"spied-{request.node.callspec.id}", "method=fedavg",
               f"secagg.enabled={secure}", "federation.partition=dirichlet", "federation.alpha=2.0")
    run, arrays, masked, strategies = _run_spied(cfg, tmp_path, monkeypatch, flower)
    theta0, updates = _client_updates(cfg)
    assert len({n for _, n in updates}) > 1
    want = {k: sum(u[k] * n for u, n in updates) / sum(n for _, n in updates) for k in theta0}
    got = _theta(run, 1)  # FedAvg baseline: θ^1 is the aggregate itself (no KD step after it)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=2e-5, err_msg=k)  # SecAgg+ quantization: ~1e-6 here
    moved = [u for u, _ in updates if any(not np.array_equal(u[k], theta0[k]) for k in theta0)]
    assert len(moved) == 3
    assert run.metrics()[-1].privacy["secure_aggregation"] is secure
    if not secure:  # the spy works: without SecAgg+ the server holds every client's adapter
        assert all(_holds(arrays, u) for u in moved) and not masked
        return
    assert not any(_holds(arrays, u) for u in moved), "a client's unmasked adapter reached the server"
    assert len(masked) == 3  # one masked vector per client reached the server, and was decoded here
    shares = _readable(masked, updates, cfg.secagg)
    if masks:
        assert max(shares) < 0.01, f"a client's quantized update can be read from what the server received: {shares}"
    else:  # the spy reads a vector that is not masked, value for value
        assert min(shares) > 0.99, shares
    (targets,) = strategies  # what reached the strategy: only the unmasked mean, once per client
    assert len(targets) == 3
    for arrays_k in targets:
        np.testing.assert_allclose(np.concatenate([a.ravel() for a in arrays_k]),
                                   np.concatenate([want[k].ravel() for k in theta0]), atol=2e-5)


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
    dp = run.metrics()[-1].privacy["dp"]
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
    contributors = run.metrics()[-1].clients["contributors"]
    assert sorted(c["num-examples"] for c in contributors) == sorted(n for _, n in updates)
    assert {c["weight"] for c in contributors} == {1}  # the record says every client weighed the same


def test_dp_noise_is_for_the_clients_averaged(tiny_models, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOLLM_FAULT", "raise:2:1")  # one of three clients fails: the mean is over two
    cfg = _cfg(tiny_models, data_dir, tmp_path, "dp-m", "method=fedavg", "dp.enabled=true",
               "dp.clipping_norm=0.3", "dp.noise_multiplier=2.0", "federation.min_clients=2")
    run = run_fedcollm(cfg, progress=False)
    theta0 = dict(_client_updates(cfg)[0])
    noise = np.concatenate([(_theta(run, 1)[k] - theta0[k]).ravel() for k in theta0])
    dp = run.metrics()[-1].privacy["dp"]
    assert dp["clients_averaged"] == 2 and dp["noise_std"] == pytest.approx(2.0 * 0.3 / 2)
    assert np.std(noise) == pytest.approx(dp["noise_std"], rel=0.1)


def test_dp_noise_has_the_std_z_c_over_m(tiny_models, data_dir, tmp_path):
    cfg = _cfg(tiny_models, data_dir, tmp_path, "dp-noise", "method=fedavg", "dp.enabled=true",
               "dp.clipping_norm=0.3", "dp.noise_multiplier=2.0")
    run = run_fedcollm(cfg, progress=False)
    theta0, updates = _client_updates(cfg)
    got = _theta(run, 1)
    noise = np.concatenate([(got[k] - theta0[k]).ravel() for k in theta0])
    dp = run.metrics()[-1].privacy["dp"]
    assert dp["noise_std"] == pytest.approx(2.0 * 0.3 / 3)
    assert np.std(noise) == pytest.approx(dp["noise_std"], rel=0.1)  # the clipped mean is tiny next to it
    assert 0 < dp["epsilon"] < float("inf")


@pytest.mark.parametrize("secure", [pytest.param(True, marks=pytest.mark.flower, id="secagg-through-flower"),
                                    pytest.param(False, id="plain")])
def test_a_killed_client_is_reported_and_theta_is_the_mean_of_the_reported_contributors(
        secure, tiny_models, data_dir, tmp_path, monkeypatch):
    # client 1's process dies in round 1. Flower's simulation does not replace a dead worker: messages it is
    # handed later fail too, but whatever timing does, the record must tell the truth
    monkeypatch.setenv("FEDCOLLM_FAULT", "exit:1:1")
    cfg = _cfg(tiny_models, data_dir, tmp_path, f"kill-{secure}", "method=fedavg", "federation.num_clients=4",
               f"federation.min_clients={2 if secure else 1}", "federation.sim_workers=4", "federation.rounds=2",
               f"secagg.enabled={secure}", "secagg.reconstruction_threshold=0.5")
    run = run_fedcollm(cfg, progress=False)
    assert run.last_round() == 2
    nodes = set()
    for t in (1, 2):
        clients = run.metrics()[t].clients
        inside = {c["node"] for c in _assert_mean_of_contributors(cfg, run, t)}
        for d in clients["dropped"]:  # a node dropped before its update was masked/sent is not inside, and after it is
            assert (d["node"] in inside) is (d["stage"] == "unmask"), d
        assert clients["rejected"] == []
        nodes |= inside | {d["node"] for d in clients["dropped"]}
        if t == 1:
            assert 1 not in {c["partition-id"] for c in clients["contributors"]}
            died = [d for d in clients["dropped"] if d["stage"] == ("collect_masked_vectors" if secure else "train")]
            assert died, clients
    assert len(nodes) == 4  # every node is accounted for, in both rounds
    for t in (1, 2):
        clients = run.metrics()[t].clients
        assert {c["node"] for c in clients["contributors"]} | {d["node"] for d in clients["dropped"]} == nodes


STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


def test_a_drop_in_each_secagg_stage_is_reported_with_its_stage(tiny_models, data_dir, tmp_path, monkeypatch):
    # round t: partition t-1 fails in SecAgg+ stage t-1 (an error reply; its process lives on, so nothing else
    # fails). A drop in unmask comes after its masked update is in the sum: it stays a contributor.
    monkeypatch.setenv("FEDCOLLM_FAULT", ";".join(f"drop-{s}:{i}:{i + 1}" for i, s in enumerate(STAGES)))
    cfg = _cfg(tiny_models, data_dir, tmp_path, "stages", "method=fedavg", "secagg.enabled=true",
               "federation.num_clients=4", "federation.min_clients=3", "federation.rounds=4",
               "secagg.reconstruction_threshold=0.5")
    run = run_fedcollm(cfg, progress=False)
    node_of = {}
    for t in range(1, 5):
        node_of.update({c["partition-id"]: c["node"] for c in run.metrics()[t].clients["contributors"]})
    assert sorted(node_of) == [0, 1, 2, 3]
    for t, stage in enumerate(STAGES, start=1):
        clients = run.metrics()[t].clients
        (drop,) = clients["dropped"]
        assert (drop["node"], drop["stage"]) == (node_of[t - 1], stage)
        assert "injected drop in SecAgg+ stage" in drop["reason"]
        inside = {c["partition-id"] for c in _assert_mean_of_contributors(cfg, run, t)}
        assert inside == ({0, 1, 2, 3} if stage == "unmask" else {0, 1, 2, 3} - {t - 1}), stage
        assert clients["rejected"] == []
        assert run.metrics()[t].privacy["secure_aggregation"] is True


def test_a_nan_update_is_rejected_by_name_and_a_failed_client_is_reported(tiny_models, data_dir, tmp_path,
                                                                         monkeypatch):
    # plain FedAvg: client 1's handler raises (an error reply, its process lives), client 2 replies NaN
    monkeypatch.setenv("FEDCOLLM_FAULT", "raise:1:1;nan:2:1")
    cfg = _cfg(tiny_models, data_dir, tmp_path, "nan", "method=fedavg", "federation.num_clients=4",
               "federation.min_clients=2")
    run = run_fedcollm(cfg, progress=False)
    clients = run.metrics()[1].clients
    assert {c["partition-id"] for c in _assert_mean_of_contributors(cfg, run, 1)} == {0, 3}
    (drop,) = clients["dropped"]
    (rejected,) = clients["rejected"]
    assert drop["stage"] == "train" and "injected client failure" in drop["reason"]
    assert "contains NaN or Inf" in rejected["reason"]
    assert len({drop["node"], rejected["node"], *(c["node"] for c in clients["contributors"])}) == 4


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


def test_the_policy_decides_weights_clip_and_noise_and_speaks_flowers_clipping_key():
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM  # what fixedclipping_mod reads

    from fedcollm.config import load_config
    from fedcollm.federation.privacy import CLIPPING_NORM_KEY, PrivacyPolicy, client_weight

    assert CLIPPING_NORM_KEY == KEY_CLIPPING_NORM
    plain = PrivacyPolicy.of(load_config(None, []), "simulation")
    dp = PrivacyPolicy.of(load_config(None, ["dp.enabled=true", "dp.clipping_norm=0.5", "dp.noise_multiplier=2"]),
                          "simulation")
    assert (plain.weight(37), dp.weight(37)) == (37, 1)
    assert plain.weigher() is None and dp.weigher()(37) == 1
    assert plain.client_config() == {} and dp.client_config() == {CLIPPING_NORM_KEY: 0.5}
    # each client reads its SecAgg+ weight off the config the server sent, by the same rule
    assert client_weight(dp.client_config(), 37) == 1 and client_weight(plain.client_config(), 37) == 37
    assert dp.max_weight(lambda: 500) == 1.0 and plain.max_weight(lambda: 500) == 500.0
    mean = [("a", np.zeros((200, 100), np.float32))]
    assert plain.noise(mean, 4, seed=1) is mean
    noisy = dp.noise(mean, 4, seed=1)[0][1]
    assert noisy.dtype == np.float32 and np.std(noisy) == pytest.approx(2 * 0.5 / 4, rel=0.02)
    np.testing.assert_array_equal(dp.noise(mean, 4, seed=1)[0][1], noisy)  # a resumed round adds the same noise
    assert not np.array_equal(dp.noise(mean, 4, seed=2)[0][1], noisy)
    assert dp.record(3, 4)["dp"]["noise_std"] == pytest.approx(0.25) and "dp" not in plain.record(3, 4)
