"""Server optimizers (our FedAvgM/FedAdam/FedYogi/FedAdagrad on the mean, stepping as Flower's classes of those
names) and FedProx.

The formulas below are written from the papers (Reddi et al. 2021, Algorithm 2; Hsu et al. 2019), with one
convention taken from Flower's FedAdam on purpose, so that our step is Flower's: its bias-corrected step size
counts the round from 0 (the ``t + 1`` exponents), where the paper's Adam counts from 1. Each strategy's step
must equal them on fixed updates, over rounds, and across a save/load of its state (what resume does).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedcollm.config import ConfigError, FederationSection, load_config
from fedcollm.federation.server_opt import ServerOptimizer, make_server_optimizer
from fedcollm.losses import proximal_term

KEYS = ("a.lora_A.weight", "a.lora_B.weight")


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a ServerApp has set


def _arrays(rng, scale=1.0):
    return [(KEYS[0], (rng.normal(size=(3, 5)) * scale).astype(np.float32)),
            (KEYS[1], (rng.normal(size=(5, 3)) * scale).astype(np.float32))]


def _flat(arrays):
    return np.concatenate([np.asarray(v, np.float64).ravel() for _, v in arrays])


def _reference(name, theta, deltas, lr, **hp):
    """θ after each round by the papers' update rules, in float64, for the round's mean θ^t + Δ_t."""
    x = _flat(theta)
    m = v = mom = None
    out = []
    for t, delta in enumerate(deltas, start=1):
        if name == "fedavgm":
            pg = -delta  # pseudo-gradient θ^t − mean
            mom = pg if mom is None else hp["momentum"] * mom + pg
            x = x - lr * mom
        else:
            b1, b2, tau = hp.get("beta_1", 0.0), hp.get("beta_2", 0.0), hp["tau"]
            m = (1 - b1) * delta if m is None else b1 * m + (1 - b1) * delta
            v0 = np.zeros_like(delta) if v is None else v
            if name == "fedadam":
                v = b2 * v0 + (1 - b2) * delta**2
                step = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))  # Flower's bias-corrected η
            elif name == "fedyogi":
                v = v0 - (1 - b2) * delta**2 * np.sign(v0 - delta**2)
                step = lr
            else:  # fedadagrad
                v = v0 + delta**2
                step = lr
            x = x + step * m / (np.sqrt(v) + tau)
        out.append(x.copy())
    return out


CASES = [
    ("fedavgm", {"server_lr": 0.7, "server_momentum": 0.9}, {"momentum": 0.9}),
    ("fedadam", {"server_lr": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
     {"beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}),
    ("fedyogi", {"server_lr": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
     {"beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2}),
    ("fedadagrad", {"server_lr": 0.05, "tau": 1e-2}, {"tau": 1e-2}),
]


def _flower_steps(name, knobs, theta, means):
    """θ after each round by Flower's own strategy class of that name, driven as a ServerApp drives it with
    one client: the current arrays set as ``configure_train`` sets them, the round's mean as its one reply."""
    from flwr.app import Message, MessageType, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

    from fedcollm.federation.wire import from_record, layout_of, to_record

    cls = {"fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[name]
    renamed = {"server_lr": "server_learning_rate" if name == "fedavgm" else "eta"}
    strategy = cls(**{renamed.get(k, k): v for k, v in knobs.items()})
    x, out = theta, []
    for t, mean in enumerate(means, start=1):
        current = to_record(x)
        strategy.current_arrays = current if name == "fedavgm" else {k: a.numpy() for k, a in current.items()}
        reply = Message(RecordDict({"arrays": to_record(mean), "metrics": MetricRecord({"num-examples": 1})}),
                        dst_node_id=0, message_type=MessageType.TRAIN)
        stepped, _ = strategy.aggregate_train(t, [reply])
        x = from_record(stepped, layout_of(theta))
        out.append(x)
    return out


FLOWER_CASES = [(name, knobs) for name, knobs, _ in CASES] + [
    (name, {}) for name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad")]


@pytest.mark.parametrize(("name", "knobs"), FLOWER_CASES,
                         ids=[f"{n}-{'set' if k else 'defaults'}" for n, k in FLOWER_CASES])
def test_each_strategy_steps_as_flowers_class_of_that_name_round_by_round(name, knobs):
    rng = np.random.default_rng(7)
    theta = _arrays(rng)
    means = [_arrays(rng) for _ in range(3)]  # the three rounds' means, the same for both arms
    opt, x, ours = ServerOptimizer(FederationSection(strategy=name, **knobs)), theta, []
    for t, mean in enumerate(means, start=1):
        x = opt.step(t, x, mean)
        ours.append(x)
    flower = _flower_steps(name, knobs, theta, means)
    for t, (a, b) in enumerate(zip(ours, flower), start=1):
        np.testing.assert_allclose(_flat(a), _flat(b), rtol=0, atol=1e-6, err_msg=f"{name} round {t}")
    if name != "fedavgm" or knobs:  # FedAvgM at Flower's defaults is plain FedAvg: θ^{t,0} is the mean
        assert not np.allclose(_flat(ours[-1]), _flat(means[-1]))


@pytest.mark.parametrize(("name", "knobs", "hp"), CASES, ids=[c[0] for c in CASES])
def test_each_strategy_steps_by_its_formula_and_resumes_from_its_saved_state(name, knobs, hp, tmp_path):
    from safetensors.numpy import save_file

    from fedcollm.runlog import RunDir

    rng = np.random.default_rng(1)
    theta = _arrays(rng)
    deltas = [_arrays(rng, 0.1) for _ in range(3)]  # the round's mean is θ^t + Δ_t
    opt = ServerOptimizer(FederationSection(strategy=name, **knobs))
    xs, states = [theta], []
    for t, d in enumerate(deltas, start=1):
        x = xs[-1]
        xs.append(opt.step(t, x, [(k, v + dv) for (k, v), (_, dv) in zip(x, d)]))
        states.append(opt.state())
    want = _reference(name, theta, [_flat(d) for d in deltas], knobs["server_lr"], **hp)
    for t in range(3):
        np.testing.assert_allclose(_flat(xs[t + 1]), want[t], rtol=1e-4, atol=1e-6, err_msg=f"{name} round {t + 1}")
    assert all(not np.allclose(_flat(xs[t]), _flat(xs[t + 1])) for t in range(3))  # θ moves every round

    # resume: the state saved with round 1 (safetensors in its round folder) steps round 2 exactly the same
    run = RunDir(tmp_path)
    run.round_dir(1).mkdir(parents=True)
    save_file(states[0], str(run.round_dir(1) / "server_opt.safetensors"))
    again = ServerOptimizer(FederationSection(strategy=name, **knobs))
    again.load_state(run.server_state(1))
    x1 = xs[1]
    np.testing.assert_array_equal(_flat(again.step(2, x1, [(k, v + dv) for (k, v), (_, dv) in zip(x1, deltas[1])])),
                                  _flat(xs[2]))


def test_fedavg_has_no_server_optimizer_and_fedavgm_at_its_defaults_is_fedavg():
    assert make_server_optimizer(FederationSection()) is None
    rng = np.random.default_rng(2)
    theta, mean = _arrays(rng), _arrays(rng)
    got = ServerOptimizer(FederationSection(strategy="fedavgm")).step(1, theta, mean)  # lr 1, momentum 0
    np.testing.assert_allclose(_flat(got), _flat(mean), atol=1e-6)


@pytest.mark.parametrize(("override", "needle"), [
    ("federation.strategy=fedsgd", "is not one of fedavg, fedavgm"),
    ("federation.beta_1=0.9", "beta_1 has no effect with federation.strategy=fedavg"),
    ("federation.tau=0.001", "tau has no effect with federation.strategy=fedavg"),
    ("federation.server_momentum=1.5", "server_momentum must be in [0, 1)"),
    ("federation.server_lr=0", "server_lr must be > 0"),
    ("federation.proximal_mu=-1", "proximal_mu must be >= 0"),
])
def test_bad_strategy_settings_are_refused_by_name(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_strategy_hyperparameters_of_another_strategy_are_refused():
    with pytest.raises(ConfigError, match="beta_2 has no effect with federation.strategy=fedadagrad"):
        load_config(None, ["federation.strategy=fedadagrad", "federation.beta_2=0.9"])
    load_config(None, ["federation.strategy=fedyogi", "federation.beta_2=0.9", "federation.tau=1e-4"])


def test_proximal_term_is_half_mu_times_the_squared_distance():
    import torch

    p = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    r = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]])]
    assert float(proximal_term(p, r, 0.5)) == pytest.approx(0.25 * (1 + 4 + 4))


def test_fedprox_keeps_the_client_near_theta_and_mu_zero_is_plain_sft(tiny_models, data_dir):
    from fedcollm.build import client_data, load_peft, train_settings
    from fedcollm.models.lora import get_adapter_arrays
    from fedcollm.updates import local_update

    cfg = load_config(None, [f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
                             "slm.lr=0.05", "federation.local_max_steps=6"])
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta = get_adapter_arrays(model)
    data = client_data(cfg, 0)
    s = train_settings(cfg, cfg.slm, 7, 1, 6, progress=False)
    plain, m_plain = local_update(model, tok, theta, data, s)
    zero, _ = local_update(model, tok, theta, data, s, proximal_mu=0.0)
    prox, m_prox = local_update(model, tok, theta, data, s, proximal_mu=50.0)

    def dist(u):
        return float(np.linalg.norm(_flat(u) - _flat(theta)))

    assert _flat(zero).tolist() == _flat(plain).tolist()
    assert dist(prox) < 0.8 * dist(plain), (dist(prox), dist(plain))
    assert m_prox["proximal"] > 0 and "proximal" not in m_plain
    assert m_prox["loss"] == pytest.approx(m_prox["task_loss"] + m_prox["proximal"], rel=1e-5)


# --- in Flower's simulation, with tiny models --------------------------------------------------------------


def _sim_cfg(tiny_models, data_dir, tmp_path, name, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path}", f"run_name={name}", "federation.rounds=1", "federation.num_clients=3",
        "eval.limit=4", "eval.every_round=false", "kd.top_k=16", "slm.lr=0.01", "llm.lr=0.01",
        "secagg.timeout=600", *extra])


def _round(run, t, who="theta"):
    from safetensors.numpy import load_file

    return load_file(str(run.path / "rounds" / f"{t:03d}" / who / "adapter_model.safetensors"))


ADAM = ("federation.strategy=fedadam", "federation.server_lr=0.01", "federation.tau=0.01")


def test_fedadam_through_secagg_equals_fedadam_on_the_plain_mean_and_its_formula(tiny_models, data_dir, tmp_path):
    from test_privacy import _client_updates

    from fedcollm.recipes.fedcollm import run_fedcollm

    runs = {secure: run_fedcollm(_sim_cfg(tiny_models, data_dir, tmp_path, f"adam-{secure}", "method=fedavg",
                                          f"secagg.enabled={secure}", "federation.partition=dirichlet",
                                          "federation.alpha=2.0", *ADAM), progress=False)
            for secure in (False, True)}
    plain, secure = _round(runs[False], 1), _round(runs[True], 1)
    for k in plain:  # SecAgg+'s quantization moves the mean by ~1e-6; FedAdam's step (τ = 0.01) keeps that small
        np.testing.assert_allclose(secure[k], plain[k], atol=1e-4, err_msg=k)
    # θ^1 by Reddi et al.'s FedAdam from θ^0 and the clients' own updates, recomputed here (not read off the run):
    # Δ = Σ n_k θ_k / Σ n_k − θ^0, m = (1 − β1)Δ, v = (1 − β2)Δ², θ^1 = θ^0 + η_t m / (√v + τ) with Flower's
    # bias-corrected η_t = η √(1 − β2^(t+1)) / (1 − β1^(t+1)) at its defaults β1 = 0.9, β2 = 0.99
    cfg = _sim_cfg(tiny_models, data_dir, tmp_path, "unused", "method=fedavg", "federation.partition=dirichlet",
                   "federation.alpha=2.0", *ADAM)
    theta0, updates = _client_updates(cfg)
    keys = list(theta0)
    mean = _flat([(k, sum(u[k].astype(np.float64) * n for u, n in updates) / sum(n for _, n in updates)) for k in keys])
    delta = mean - _flat([(k, theta0[k]) for k in keys])
    assert np.abs(delta).max() > 1e-4  # the clients moved θ, so the step below is not trivially zero
    m, v = (1 - 0.9) * delta, (1 - 0.99) * delta**2
    eta = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    want = _flat([(k, theta0[k]) for k in keys]) + eta * m / (np.sqrt(v) + 0.01)
    np.testing.assert_allclose(_flat([(k, plain[k]) for k in keys]), want, atol=1e-6)
    for run in runs.values():
        record = run.metrics()[1]
        assert record.strategy == "fedadam" and len(record.clients["contributors"]) == 3


def test_fedadam_run_resumed_equals_uninterrupted(tiny_models, data_dir, tmp_path):
    from fedcollm.recipes.fedcollm import run_fedcollm

    full = run_fedcollm(_sim_cfg(tiny_models, data_dir, tmp_path, "full", *ADAM, "federation.rounds=2"),
                        progress=False)
    part = run_fedcollm(_sim_cfg(tiny_models, data_dir, tmp_path, "part", *ADAM), progress=False)
    resumed = run_fedcollm(None, resume=str(part.path), overrides=("federation.rounds=2",), progress=False)
    for who in ("theta", "omega"):
        want, got = _round(full, 2, who), _round(resumed, 2, who)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{who} {k}")


def test_dp_and_secagg_compose_with_fedyogi(tiny_models, data_dir, tmp_path):
    from fedcollm.recipes.fedcollm import run_fedcollm

    run = run_fedcollm(_sim_cfg(tiny_models, data_dir, tmp_path, "yogi", "method=fedavg", "secagg.enabled=true",
                                "dp.enabled=true", "dp.clipping_norm=0.5", "dp.noise_multiplier=0.1",
                                "federation.strategy=fedyogi", "federation.server_lr=0.01"), progress=False)
    record = run.metrics()[1]
    assert record.strategy == "fedyogi" and record.privacy["dp"]["clients_averaged"] == 3
    theta = _round(run, 1)
    assert all(np.all(np.isfinite(v)) for v in theta.values())
    assert any(np.abs(v).max() > 0 for k, v in theta.items() if "lora_B" in k)  # B left its zero init


STRATEGIES = [
    ("fedavg", (), {}),
    ("fedavgm", ("federation.server_lr=1.0", "federation.server_momentum=0.9"), {"momentum": 0.9}),
    ("fedadam", ("federation.server_lr=0.01", "federation.beta_1=0.9", "federation.beta_2=0.99", "federation.tau=1e-3"),
     {"beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("fedyogi", ("federation.server_lr=0.01", "federation.beta_1=0.9", "federation.beta_2=0.99", "federation.tau=1e-3"),
     {"beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("fedadagrad", ("federation.server_lr=0.01", "federation.tau=1e-3"), {"tau": 1e-3}),
]


@pytest.mark.parametrize(("name", "knobs", "hp"), STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_the_update_gate_rejects_a_bad_update_by_name_under_each_server_optimizer(name, knobs, hp, tiny_models,
                                                                                 data_dir, tmp_path, monkeypatch):
    """Client 2 replies a 1000×-scaled update: the gate rejects it by name, and θ^1 is the optimizer's step (by the
    papers' formulas, ``_reference``) on the mean of the other two alone, not on a mean with it inside."""
    from test_privacy import _client_updates

    from fedcollm.recipes.fedcollm import run_fedcollm

    monkeypatch.setenv("FEDCOLLM_FAULT", "scale:2:1")
    cfg = _sim_cfg(tiny_models, data_dir, tmp_path, f"gate-{name}", "method=fedavg", "federation.min_clients=2",
                   f"federation.strategy={name}", *knobs)
    run = run_fedcollm(cfg, progress=False)
    clients = run.metrics()[1].clients
    (rejected,) = clients["rejected"]
    assert "more than 10× the round's median" in rejected["reason"]
    assert sorted(c["partition-id"] for c in clients["contributors"]) == [0, 1]

    theta0, updates = _client_updates(cfg)
    keys = list(theta0)
    start = [(k, theta0[k]) for k in keys]

    def stepped(members):
        mean = [(k, sum(u[k].astype(np.float64) * n for u, n in members) / sum(n for _, n in members)) for k in keys]
        if name == "fedavg":
            return _flat(mean)
        return _reference(name, start, [_flat(mean) - _flat(start)], float(knobs[0].split("=")[1]), **hp)[0]

    got = _flat([(k, _round(run, 1)[k]) for k in keys])
    np.testing.assert_allclose(got, stepped(updates[:2]), atol=1e-5, err_msg=name)
    scaled = ({k: 1000 * updates[2][0][k] for k in keys}, updates[2][1])  # what the fault sent (faults.corrupt)
    assert np.abs(got - stepped([*updates[:2], scaled])).max() > 1e-3  # the bad update would have shown
    state = run.server_state(1)
    assert (not state) == (name == "fedavg") and all(np.all(np.isfinite(v)) for v in state.values())
