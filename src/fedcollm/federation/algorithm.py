"""Algorithm 1 on Flower: ``fedcollm_round`` is one round of the paper; ``serve`` runs T of them.

``serve`` is the body of the ServerApp that ``flwr run`` starts (``server_app.server_app``), the same on
Flower's simulation engine and its deployment engine. It is four named phases: ``open_run`` (load the
models, resume after the last whole round), ``log_zero_shot``, ``run_round`` (Algorithm 1 + evaluation +
checkpoint) and ``reporting.write_run_report``.
"""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from ..build import derive_seed, load_splits, peak_rss_mb
from ..config import Config, ConfigError, Engine, dump_config
from ..reporting import print_round, progress_line, write_run_report
from ..rounds import Comm, RoundRecord
from ..runlog import RoundError, RunDir
from ..tracking import Trackers
from ..updates import DivergedError
from .aggregation import PlainAggregation, SecureAggregation
from .client_app import CONFIG_KEY
from .privacy import PrivacyPolicy
from .server import CoTuningServer
from .server_opt import ServerOptimizer, make_server_optimizer
from .transport import MeteredGrid, connected_nodes, sample_clients

log = logging.getLogger(__name__)
Aggregation = PlainAggregation | SecureAggregation


def fedcollm_round(t: int, grid: Grid, nodes: list[int], server: CoTuningServer, aggregation: Aggregation,
                   server_opt: ServerOptimizer | None = None) -> RoundRecord:
    """Algorithm 1, round t: broadcast θ^t, local tuning, (secure) FedAvg, mutual KD on D^a."""
    cfg, metered = server.cfg, MeteredGrid(grid, progress=server.progress, round_no=t)
    config = ConfigRecord({CONFIG_KEY: dump_config(cfg)})  # what clients need to train (no data)
    t0 = time.perf_counter()
    # 1. broadcast θ^t; 2. each client: E epochs of ℓ_TA on D^k; 3. θ^{t,0} = Σ_k n_k θ_k / Σ_k n_k
    up = aggregation.run(t, metered, nodes, server.theta, config, cfg.federation.round_timeout,
                         derive_seed(cfg.seed, "aggregate", t))
    if up.theta is None or up.accepted < min_clients(cfg):
        raise RoundError(f"round {t}: {up.accepted} usable client updates, federation.min_clients is "
                         f"{min_clients(cfg)} ({up.problems()})")
    theta0 = up.theta if server_opt is None else server_opt.step(t, server.theta, up.theta)  # 3'. FedAdam & co.
    t1 = time.perf_counter()
    kd = server.distil(theta0, t)  # 4. R steps of CE + λ·KL both ways -> θ^{t+1}, ω^{t+1}
    return RoundRecord(
        round=t,
        seconds={"clients": t1 - t0, "kd": time.perf_counter() - t1},  # where a round's time goes
        clients=up.record(),  # who is in θ^{t,0} with which weight, who dropped where, who was rejected
        strategy=cfg.federation.strategy,
        kd=kd,
        privacy=up.privacy,
        comm=Comm([metered.sent[n] for n in nodes], [metered.received[n] for n in nodes if metered.received[n]]),
    )


def min_clients(cfg: Config) -> int:
    """The fewest usable updates a round may aggregate: ``min_clients``, else every client sampled."""
    return cfg.federation.min_clients or cfg.federation.per_round()


def largest_client(cfg: Config) -> int:
    """The largest n_k, from the split: the server never reads the clients' own files to learn it."""
    if cfg.data.client_files is not None:
        raise ConfigError("SecAgg+ with data.client_files needs secagg.max_weight (a bound on any client's number "
                          "of examples): the server does not read the clients' files to learn their sizes")
    return max(len(c) for c in load_splits(cfg).clients)


def make_aggregation(cfg: Config, engine: Engine) -> Aggregation:
    """Plain or secure aggregation, as the config asks or (secagg.enabled unset) the engine implies."""
    policy = PrivacyPolicy.of(cfg, engine)
    if not policy.secure:
        return PlainAggregation(cfg, policy)
    # SecAgg+ weights client k by w_k / max_weight: the largest weight keeps every one <= 1 (no clipping)
    max_weight = policy.max_weight(lambda: cfg.secagg.max_weight or largest_client(cfg))
    return SecureAggregation(cfg, policy, max_weight)


def open_run(cfg: Config, run: RunDir, progress: bool) -> tuple[CoTuningServer, ServerOptimizer | None, int]:
    """The server's models, data and optimizer, with the state of the run's last whole round when resuming."""
    server = CoTuningServer(cfg, progress=progress)
    server_opt = make_server_optimizer(cfg.federation)
    done = run.last_round()
    run.truncate_after(done)  # a round logged but killed before its checkpoint was complete is run again
    if done:
        run.load_round(done, server.llm, server.slm)
        if server_opt is not None:
            server_opt.load_state(run.server_state(done))
        log.info("resuming %s after round %d of %d", run.path, done, cfg.federation.rounds)
    return server, server_opt, done


def log_zero_shot(cfg: Config, run: RunDir, server: CoTuningServer) -> None:
    """Round 0: the base models' accuracy and the adapters' sizes (kept when a run resumes before round 1)."""
    if run.metrics():
        return
    t0 = time.perf_counter()
    record = RoundRecord(round=0, eval=server.evaluate(adapters=False) if cfg.eval.zero_shot else {},
                         params=server.parameter_counts(), seconds={"eval": time.perf_counter() - t0})
    run.log(record)
    print_round(record)


def run_round(t: int, grid: Grid, nodes: list[int], cfg: Config, run: RunDir, server: CoTuningServer,
              aggregation: Aggregation, server_opt: ServerOptimizer | None = None,
              online: int | None = None) -> RoundRecord:
    """Round t: Algorithm 1, then evaluation, then the log line, then the checkpoint (its DONE ends the round).

    ``nodes`` are the clients this round trains, sampled from ``online`` nodes when rounds sample."""
    t0 = time.perf_counter()
    try:
        record = fedcollm_round(t, grid, nodes, server, aggregation, server_opt)
    except (RoundError, DivergedError) as exc:  # nothing of round t is saved: the run can go on from t - 1
        what = f"round {t}: {exc}" if isinstance(exc, DivergedError) else str(exc)
        raise RoundError(f"{what}; rounds 1-{t - 1} are saved in {run.path}: continue with "
                         f"`fedcollm run --resume {run.path}` (overrides such as llm.lr=... allowed)") from None
    t1 = time.perf_counter()
    record.sampled = {"clients": len(nodes), "of": online or len(nodes)}
    if cfg.eval.every_round or t == cfg.federation.rounds:
        record.eval = server.evaluate()
    record.seconds = {**record.seconds, "train": t1 - t0, "eval": time.perf_counter() - t1}
    record.server_peak_rss_mb = peak_rss_mb()
    run.log(record)  # then the checkpoint: its DONE marks the round finished, metrics included
    run.save_round(t, server.llm, server.slm, server_opt.state() if server_opt is not None else None)
    return record


def serve(grid: Grid, cfg: Config, run: RunDir, engine: Engine, progress: bool = True) -> None:
    """The ServerApp's body: set up (or resume), run the remaining rounds, write the report. ``engine``: which of
    Flower's engines drives the run (it decides SecAgg+'s default)."""
    server, server_opt, done = open_run(cfg, run, progress)
    log_zero_shot(cfg, run, server)
    trackers = Trackers(run.path, cfg)  # TensorBoard / MLflow: catch up on every logged round they lack
    trackers.sync(run.metrics())
    aggregation = make_aggregation(cfg, engine)
    took: list[float] = []
    for t in range(done + 1, cfg.federation.rounds + 1):
        # wait for all K clients before this process's first round; later rounds go on with those alive;
        # then train all of them, or the round's sample of clients_per_round
        want = cfg.federation.num_clients if t == done + 1 else min_clients(cfg)
        online = connected_nodes(grid, want, min_clients(cfg), cfg.federation.connect_timeout)
        nodes = sample_clients(online, cfg.federation.per_round(), derive_seed(cfg.seed, "sample", t))
        start = time.perf_counter()
        record = run_round(t, grid, nodes, cfg, run, server, aggregation, server_opt, len(online))
        trackers.sync([record])  # after its checkpoint: a tracker never holds a round the run would redo
        took.append(time.perf_counter() - start)
        print_round(record, progress_line(f"{run.path.name} ({cfg.method})", t, cfg.federation.rounds, took))
    write_run_report(run, cfg, announce=engine == "deployment")  # in simulation `fedcollm run` names it last
    trackers.finish()  # final adapters, report and plots as MLflow artifacts
