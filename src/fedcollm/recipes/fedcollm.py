"""FedCoLLM: Algorithm 1 on Flower, and the driver that runs it (simulation by default).

``fedcollm_round`` is the paper's Algorithm 1, one round; everything else here is bookkeeping
(evaluation, checkpoints, resume, the summary).
"""

from __future__ import annotations

import logging
import os
import time

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from ..config import Config, dump_config
from ..federation.aggregation import MeteredGrid, PlainAggregation, SecureAggregation, connected_nodes
from ..federation.client_app import CONFIG_KEY
from ..federation.server import CoTuningServer
from ..runlog import RoundError, RunDir
from .common import derive_seed, device, load_splits, peak_rss_mb, preflight
from .summary import print_round, write_summary

log = logging.getLogger(__name__)
Aggregation = PlainAggregation | SecureAggregation


def fedcollm_round(t: int, grid: Grid, nodes: list[int], server: CoTuningServer, aggregation: Aggregation) -> dict:
    """Algorithm 1, round t: broadcast θ^t, local tuning, (secure) FedAvg, mutual KD on D^a."""
    cfg, metered = server.cfg, MeteredGrid(grid)
    config = ConfigRecord({CONFIG_KEY: dump_config(cfg)})  # what clients need to train (no data)
    # 1. broadcast θ^t; 2. each client: E epochs of ℓ_TA on D^k; 3. θ^{t,0} = Σ_k n_k θ_k / Σ_k n_k
    up = aggregation.run(t, metered, nodes, server.theta, config, cfg.federation.round_timeout,
                         derive_seed(cfg.seed, "aggregate", t))
    if up.theta is None or up.accepted < min_clients(cfg):
        raise RoundError(f"round {t}: {up.accepted} usable client updates, federation.min_clients is "
                         f"{min_clients(cfg)} ({up.problems()})")
    kd = server.transfer(up.theta, t)  # 4. R steps of CE + λ·KL both ways -> θ^{t+1}, ω^{t+1}
    return {
        "clients": up.record(),  # who is in θ^{t,0} with which weight, who dropped where, who was rejected
        "kd": kd,
        "privacy": up.privacy,
        "comm": {
            "bytes_sent_per_client": [metered.sent[n] for n in nodes],
            "bytes_received_per_client": [metered.received[n] for n in nodes if metered.received[n]],
        },
    }


def min_clients(cfg: Config) -> int:
    return cfg.federation.min_clients or cfg.federation.num_clients


def make_aggregation(cfg: Config, server: CoTuningServer) -> Aggregation:
    if not cfg.secure_aggregation():
        return PlainAggregation(cfg, server.theta)
    # SecAgg+ weights client k by n_k / max_weight: the largest D^k keeps every weight <= 1 (no clipping).
    # Under DP every client sends weight 1 (aggregation.py says why), so 1 is the largest.
    max_weight = 1 if cfg.dp.enabled else cfg.secagg.max_weight or max(len(c) for c in load_splits(cfg).clients)
    return SecureAggregation(cfg, max_weight)


def serve(grid: Grid, cfg: Config, run: RunDir, progress: bool = True) -> None:
    """The ServerApp's body: set up (or resume), run the remaining rounds, write the summary."""
    server = CoTuningServer(cfg, progress=progress)
    done = run.last_round()
    run.truncate_after(done)  # a round logged but killed before its checkpoint was complete is run again
    if done:
        run.load_round(done, server.llm, server.slm)
        log.info("resuming %s after round %d of %d", run.path, done, cfg.federation.rounds)
    if not run.records():  # a run resumed before its first round keeps its zero-shot record
        t0 = time.perf_counter()
        record = {"round": 0, "eval": server.evaluate(adapters=False) if cfg.eval.zero_shot else {},
                  "params": server.parameter_counts(), "seconds": {"eval": time.perf_counter() - t0}}
        run.log(record)
        print_round(record)
    aggregation = make_aggregation(cfg, server)
    for t in range(done + 1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        # wait for all K clients before this process's first round; later rounds go on with those alive
        want = cfg.federation.num_clients if t == done + 1 else min_clients(cfg)
        nodes = connected_nodes(grid, want, min_clients(cfg), cfg.federation.connect_timeout)
        try:
            record = {"round": t, **fedcollm_round(t, grid, nodes, server, aggregation)}
        except RoundError as exc:
            raise RoundError(f"{exc}; rounds 1-{t - 1} are saved in {run.path}: continue with "
                             f"`fedcollm run --resume {run.path}`") from None
        t1 = time.perf_counter()
        if cfg.eval.every_round or t == cfg.federation.rounds:
            record["eval"] = server.evaluate()
        record["seconds"] = {"train": t1 - t0, "eval": time.perf_counter() - t1}
        record["server_peak_rss_mb"] = peak_rss_mb()
        run.log(record)  # then the checkpoint: its DONE marks the round finished, metrics included
        run.save_round(t, server.llm, server.slm)
        print_round(record)
    write_summary(run, cfg)


def run_fedcollm(cfg: Config, resume: str | None = None, overrides: tuple[str, ...] = (),
                 progress: bool = True) -> RunDir:
    """Run FedCoLLM in Flower's simulation engine (all processes on this machine).

    With ``resume`` the run folder's own config is used (plus ``overrides``, e.g. more rounds) and the
    run continues after its last complete round.
    """
    from flwr.simulation import run_simulation

    from ..federation.client_app import app as client_app

    if resume:
        run, cfg = RunDir.open(resume, overrides)
    else:
        RunDir.new_path(cfg)  # a taken run folder is refused first: nothing else is checked or written
        preflight(cfg)
        run = RunDir.create(cfg)
    cfg.federation.engine = "simulation"  # how this process drives the run (decides SecAgg+'s default)
    log.info("run folder: %s", run.path)
    failure: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            serve(grid, cfg, run, progress)
        except BaseException as exc:  # Flower logs and swallows ServerApp errors; keep it to re-raise
            failure.append(exc)
            raise

    workers = cfg.federation.sim_workers
    cpus = max(1, (os.cpu_count() or 1) // workers)  # Ray's CPUs are logical: each worker gets its share
    gpus = 1.0 / workers if device(cfg).type == "cuda" else 0.0  # Ray hides the GPU from workers given none
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=cfg.federation.num_clients,
                   # a simulated client worker that dies is restarted (max_restarts), as a SuperNode starts a
                   # fresh ClientApp process: the messages it held fail, the round goes on without them
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": -1},
                                   "init_args": {"num_cpus": cpus * workers, "include_dashboard": False}})
    if failure:
        raise failure[0]
    return run
