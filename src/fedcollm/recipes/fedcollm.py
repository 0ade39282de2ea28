"""FedCoLLM in Flower's simulation engine: the run folder, the ServerApp, the K simulated clients.

Algorithm 1 itself is ``federation.algorithm.fedcollm_round``; ``federation.algorithm.serve`` runs its
rounds, here and in deployment alike.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..build import device, preflight
from ..config import Config
from ..federation.algorithm import serve
from ..runlog import RunDir

log = logging.getLogger(__name__)


def run_fedcollm(cfg: Config, resume: str | None = None, overrides: tuple[str, ...] = (),
                 progress: bool = True) -> RunDir:
    """Run FedCoLLM in Flower's simulation engine (all processes on this machine).

    With ``resume`` the run folder's own config is used (plus ``overrides``, e.g. more rounds) and the
    run continues after its last complete round.
    """
    from flwr.simulation import run_simulation

    from ..federation.client_app import app as client_app

    if resume:
        run, cfg = RunDir.open(resume, overrides)  # checks the overrides, writes nothing
        preflight(cfg)
        if overrides:  # saved only once they passed: a refused resume leaves the run's config as it was
            run.save_config(cfg)
    else:
        RunDir.new_path(cfg)  # a taken run folder is refused first: nothing else is checked or written
        preflight(cfg)
        run = RunDir.create(cfg)
    if cfg.federation.update_cache:  # Ray's workers need not share this process's working directory
        cfg.federation.update_cache = str(Path(cfg.federation.update_cache).resolve())
    log.info("run folder: %s", run.path)
    failure: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            serve(grid, cfg, run, "simulation", progress)
        except BaseException as exc:  # Flower logs and swallows ServerApp errors; keep it to re-raise
            failure.append(exc)
            raise

    # Ray's coming default, taken now: a worker given no GPU keeps CUDA_VISIBLE_DEVICES as it is. Workers get
    # none only when this run's device is the CPU, and then they never use one; set, Ray stops printing a
    # FutureWarning about that default on every run
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
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
