"""Many clients, few per round: a sampler seeded per round, and DP accounting for the sampling."""

from __future__ import annotations

import math

import pytest
from conftest import write_data_dir

from fedcollm.config import ConfigError, FederationSection, load_config
from fedcollm.federation.privacy import ALL_CLIENTS, SAMPLED, epsilon, epsilon_sampled
from fedcollm.federation.transport import sample_clients


def test_per_round_reads_a_count_or_a_fraction():
    assert FederationSection(num_clients=100).per_round() == 100
    assert FederationSection(num_clients=100, clients_per_round=10).per_round() == 10
    assert FederationSection(num_clients=100, clients_per_round=0.25).per_round() == 25
    assert FederationSection(num_clients=3, clients_per_round=0.01).per_round() == 1  # never zero
    for bad in ("federation.clients_per_round=0", "federation.clients_per_round=5", "federation.clients_per_round=1.5"):
        with pytest.raises(ConfigError, match="clients_per_round must be a count in"):
            load_config(None, ["federation.num_clients=4", bad])
    with pytest.raises(ConfigError, match="min_clients must be between 1 and the clients trained per round"):
        load_config(None, ["federation.num_clients=10", "federation.clients_per_round=2", "federation.min_clients=3"])


def test_the_sample_is_a_function_of_seed_round_and_node_ids_and_leaves_the_global_rng_alone():
    import random

    nodes = [7 * k + 1000 for k in range(100)]
    a = sample_clients(nodes, 10, seed=5)
    assert len(set(a)) == 10 and set(a) <= set(nodes)
    assert sample_clients(list(reversed(nodes)), 10, seed=5) == a  # the listing order does not matter
    assert sample_clients(nodes, 10, seed=6) != a
    assert sample_clients(nodes, 200, seed=5) == sorted(nodes)  # no more than asked: everyone
    random.seed(123)
    before = random.random()
    random.seed(123)
    assert sample_clients(nodes, 10, seed=5) == a and random.random() == before  # nobody else's draws move
    # across many rounds every node is drawn about equally often (uniform sampling)
    counts = dict.fromkeys(nodes, 0)
    for t in range(300):
        for n in sample_clients(nodes, 10, seed=t):
            counts[n] += 1
    assert min(counts.values()) >= 10 and max(counts.values()) <= 55  # mean 30


def test_sampled_epsilon_shrinks_with_the_sample_and_grows_with_rounds():
    z, delta = 1.0, 1e-5
    few, half, everyone = (epsilon_sampled(z, 3, delta, 100, n) for n in (10, 50, 100))
    assert few < half < everyone
    assert epsilon_sampled(z, 6, delta, 100, 10) > few
    assert math.isinf(epsilon_sampled(0.0, 3, delta, 100, 10))
    # a sample of everyone is the plain Gaussian with replace-one sensitivity 2C, i.e. multiplier z/2:
    # dp-accounting's conversion from RDP is tighter than Mironov's Prop. 3 (``epsilon``), never looser
    loose = epsilon(z / 2, 3, delta)
    assert 0.8 * loose < everyone <= loose


def test_twenty_clients_four_per_round_sampled_afresh_with_the_sampled_accountant(tiny_models, tmp_path):
    from fedcollm.recipes.fedcollm import run_fedcollm

    data = write_data_dir(tmp_path / "data", n_train=100, n_eval=8)  # 80 questions after D^a: 4 per client
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data}", "precision=fp32",
        f"output_dir={tmp_path}", "run_name=twenty", "method=fedavg", "federation.num_clients=20",
        "federation.clients_per_round=4", "federation.rounds=2", "eval.limit=4", "eval.every_round=false",
        "dp.enabled=true", "dp.clipping_norm=1.0", "dp.noise_multiplier=0.5", "slm.lr=0.01"])
    run = run_fedcollm(cfg, progress=False)
    chosen = []
    for t in (1, 2):
        record = run.metrics()[t]
        assert record.sampled == {"clients": 4, "of": 20}
        contributors = record.clients["contributors"]
        assert len(contributors) == 4 and len(record.comm.bytes_sent_per_client) == 4
        chosen.append({c["partition-id"] for c in contributors})
        dp = record.privacy["dp"]
        assert dp["clients_averaged"] == 4 and dp["accountant"] == SAMPLED
        assert dp["epsilon"] == pytest.approx(epsilon_sampled(0.5, t, 1e-5, 20, 4))
    assert chosen[0] != chosen[1]  # a fresh sample each round
    assert ALL_CLIENTS != SAMPLED


def test_secagg_runs_over_the_sampled_clients(tiny_models, tmp_path):
    from fedcollm.recipes.fedcollm import run_fedcollm

    data = write_data_dir(tmp_path / "data", n_train=80, n_eval=8)
    cfg = load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data}", "precision=fp32",
        f"output_dir={tmp_path}", "run_name=secure", "method=fedavg", "federation.num_clients=20",
        "federation.clients_per_round=0.25", "federation.rounds=1", "eval.limit=4", "eval.every_round=false",
        "secagg.enabled=true", "secagg.timeout=600", "dp.enabled=true", "dp.noise_multiplier=0.5", "slm.lr=0.01"])
    run = run_fedcollm(cfg, progress=False)
    record = run.metrics()[1]
    assert record.sampled == {"clients": 5, "of": 20}
    assert len(record.clients["contributors"]) == 5 and record.privacy["secure_aggregation"] is True
    assert record.privacy["dp"]["clients_averaged"] == 5
    assert len(record.comm.bytes_sent_per_client) == 5  # SecAgg+'s stages went to the 5 sampled only
