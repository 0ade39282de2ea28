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
from ..federation.client_app import CONFIG_KEY
from ..federation.records import from_record, payload_bytes, to_record
from ..federation.server import CoTuningServer
from ..federation.strategy import CheckedFedAvg
from ..runlog import RunDir
from .common import peak_rss_mb, preflight
from .summary import print_round, write_summary

log = logging.getLogger(__name__)


class RoundError(RuntimeError):
    """A round that cannot produce an aggregate (too few valid client updates)."""


def fedcollm_round(t: int, grid: Grid, strategy: CheckedFedAvg, server: CoTuningServer, timeout: float) -> dict:
    """Algorithm 1, round t: broadcast θ^t, local tuning, FedAvg, mutual KD on D^a."""
    theta = server.theta
    strategy.reference = theta
    config = ConfigRecord({CONFIG_KEY: dump_config(server.cfg)})  # what clients need to train (no data)
    messages = list(strategy.configure_train(t, to_record(theta), config, grid))  # 1. broadcast θ^t
    replies = list(grid.send_and_receive(messages, timeout=timeout))  # 2. clients: E epochs of ℓ_TA on D^k
    theta_avg, client_metrics = strategy.aggregate_train(t, replies)  # 3. θ^{t,0} = Σ_k n_k θ_k / n
    if theta_avg is None:
        raise RoundError(f"round {t}: no valid client update arrived ({len(replies)} replies)")
    kd = server.transfer(from_record(theta_avg), t)  # 4. R steps of CE + λ·KL both ways -> θ^{t+1}, ω^{t+1}
    ok = [r for r in replies if not r.has_error()]
    return {
        "clients": {k: float(v) for k, v in (client_metrics or {}).items()},
        "per_client": [dict(r.content["metrics"]) for r in ok if "metrics" in r.content.metric_records],
        "kd": kd,
        "comm": {
            "bytes_sent_per_client": [payload_bytes(m.content) for m in messages],
            "bytes_received_per_client": [payload_bytes(r.content) for r in ok],
            "updates_accepted": len(ok) - len(strategy.rejected),
            "updates_rejected": [f"node {n}: {why}" for n, why in strategy.rejected],
            "client_errors": [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()],
        },
    }


def serve(grid: Grid, cfg: Config, run: RunDir, progress: bool = True) -> None:
    """The ServerApp's body: set up (or resume), run the remaining rounds, write the summary."""
    server = CoTuningServer(cfg, progress=progress)
    done = run.last_round()
    if done:
        run.load_round(done, server.llm, server.slm)
        run.truncate_after(done)
        log.info("resuming %s after round %d of %d", run.path, done, cfg.federation.rounds)
    else:
        t0 = time.perf_counter()
        record = {"round": 0, "eval": server.evaluate(adapters=False) if cfg.eval.zero_shot else {},
                  "params": server.parameter_counts(), "seconds": {"eval": time.perf_counter() - t0}}
        run.log(record)
        print_round(record)
    k = cfg.federation.num_clients
    strategy = CheckedFedAvg(server.theta, max_update_norm=cfg.federation.max_update_norm,
                             outlier_factor=cfg.federation.update_outlier_factor, fraction_evaluate=0.0,
                             min_available_nodes=k, min_train_nodes=cfg.federation.min_clients or k)
    for t in range(done + 1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        record = {"round": t, **fedcollm_round(t, grid, strategy, server, timeout=24 * 3600)}
        t1 = time.perf_counter()
        if cfg.eval.every_round or t == cfg.federation.rounds:
            record["eval"] = server.evaluate()
        record["seconds"] = {"train": t1 - t0, "eval": time.perf_counter() - t1}
        record["server_peak_rss_mb"] = peak_rss_mb()
        run.save_round(t, server.llm, server.slm)
        run.log(record)
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

    cpus = cfg.federation.sim_cpus_per_client or os.cpu_count() or 1
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=cfg.federation.num_clients,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False}})
    if failure:
        raise failure[0]
    return run
