"""FedCoLLM in Flower's simulation engine: check the config, make (or reopen) the run folder, run it.

Algorithm 1 itself is ``federation.algorithm.fedcollm_round``; ``federation.algorithm.serve`` runs its
rounds in the ServerApp that ``federation.simulation.simulate`` submits, here and in deployment alike.
"""

from __future__ import annotations

import logging

from ..build import preflight
from ..config import Config
from ..federation.simulation import simulate
from ..runlog import RunDir

log = logging.getLogger(__name__)


def run_fedcollm(cfg: Config, resume: str | None = None, overrides: tuple[str, ...] = (),
                 progress: bool = True) -> RunDir:
    """Run FedCoLLM in Flower's simulation engine (all processes on this machine).

    With ``resume`` the run folder's own config is used (plus ``overrides``, e.g. more rounds) and the
    run continues after its last complete round.
    """
    if resume:
        run, cfg = RunDir.open(resume, overrides)  # checks the overrides, writes nothing
        preflight(cfg)
        if overrides:  # saved only once they passed: a refused resume leaves the run's config as it was
            run.save_config(cfg)
    else:
        RunDir.new_path(cfg)  # a taken run folder is refused first: nothing else is checked or written
        preflight(cfg)
        run = RunDir.create(cfg)
    log.info("run folder: %s", run.path)
    simulate(cfg, run, progress)
    return run
