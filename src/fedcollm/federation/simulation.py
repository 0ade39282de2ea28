"""Flower's simulation engine through its supported path: a local SuperLink in simulation mode, and ``flwr run``.

``simulate`` starts ``flower-superlink --simulation`` on a free 127.0.0.1 port (a throwaway ``FLWR_HOME``),
submits the Flower App (``server_app.flower_app_dir()``: the installed package's ServerApp and ClientApp) with
the federation's size and Ray's resources as ``--federation-config``, streams the run's output, and shuts
the SuperLink down. The ServerApp continues the run folder the caller created and checked, in the caller's
working directory, so every relative path of its config means what it meant here.

A simulated client whose process dies is not replaced (Flower's simulation runtime has no restart): the
messages later handed to it fail, and the rounds go on without them, as they do without a lost SuperNode.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ..build import device
from ..config import Config
from ..runlog import RunDir
from . import DeployError
from .deploy import LocalFederation, PortTaken, config_file
from .server_app import flower_app_dir, raise_failure

CONNECTION = "local-deploy"  # LocalFederation's name for its SuperLink in FLWR_HOME/config.toml
PORT_ATTEMPTS = 5


def federation_config(cfg: Config) -> str:
    """``--federation-config`` for ``cfg``: K simulated SuperNodes and ``sim_workers`` Ray workers that share
    this machine's CPUs (Ray's CPUs are logical: each worker gets its share) and, on CUDA, its GPU."""
    workers = cfg.federation.sim_workers
    cpus = max(1, (os.cpu_count() or 1) // workers)
    gpus = 1.0 / workers if device(cfg).type == "cuda" else 0.0  # Ray hides the GPU from workers given none
    # log-to-driver off: the workers' own output (weights loading bars, blank lines) stays in Ray's log files;
    # the server reports every client's reply as it comes
    return (f"num-supernodes={cfg.federation.num_clients} client-resources-num-cpus={cpus} "
            f"client-resources-num-gpus={gpus} init-args-num-cpus={cpus * workers} init-args-log-to-driver=false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_error(log: Path) -> str:
    """The line of ``log`` that says what failed: its last exception line, or its last line."""
    lines = [line.strip(" │╭╮╰╯─") for line in log.read_text(errors="replace").splitlines()]  # rich's boxes off
    lines = [line for line in lines if line]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return (errors or lines or ["no output"])[-1] + f" (see {log})"


def simulate(cfg: Config, run: RunDir, progress: bool = True, app_dir: str | Path | None = None,
             timeout: float | None = None) -> None:
    """Run (or continue) ``run`` with ``cfg`` on Flower's simulation engine; return once it has ended.

    ``app_dir``: the Flower App to submit (default: fedcollm's own; another one may wrap its apps). The run's
    own error comes back as itself (``server_app.raise_failure``); Flower's, as a ``DeployError`` naming its log,
    also when the SuperLink dies mid-run or the run outlasts ``timeout`` seconds (None: no limit).
    """
    app = str(app_dir or flower_app_dir())
    work = Path(tempfile.mkdtemp(prefix="fedcollm-flower-"))  # kept when Flower fails: its logs say why
    run_config = {"resume": str(run.path.resolve()), "engine": "simulation", "progress": progress,
                  "launcher-pid": os.getpid()}
    for attempt in range(PORT_ATTEMPTS):  # another process may take the port between our check and the bind
        try:
            with LocalFederation(work / str(attempt), _free_port(), 0, simulation=True, cwd=Path.cwd()) as fed:
                log = fed.logs / "flwr-run.log"
                code = fed.stream(["run", app, CONNECTION, "--stream", "--federation-config", federation_config(cfg),
                                   "--run-config", str(config_file(fed.work / "run-config.toml", run_config))],
                                  log, progress, timeout)
            break
        except PortTaken:
            if attempt == PORT_ATTEMPTS - 1:
                raise
        except DeployError:
            raise_failure(run)  # the run's own error first, if it ended the run
            raise
    try:
        raise_failure(run)  # the run's own error: one line, as in this process
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if code != 0 or run.last_round() < cfg.federation.rounds:
        raise DeployError(f"the simulation ended after round {run.last_round()} of {cfg.federation.rounds} "
                          f"(flwr run exit {code}): {_last_error(log)}")
    shutil.rmtree(work, ignore_errors=True)
