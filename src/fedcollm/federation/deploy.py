"""Flower's deployment engine: the ServerApp for ``flwr run``, and a localhost launcher.

``flwr run`` starts ``server_app`` below in a process next to the SuperLink; it reads the path of a
resolved config from the run config (``config``) or a run folder to continue (``resume``). Clients
use the same ``fedcollm.federation.client_app:app`` as in simulation; each SuperNode is started with
``--node-config "partition-id=K num-partitions=N [data-dir=...]"`` and holds only its own data.

``launch_local`` starts a SuperLink and K SuperNodes as separate processes on 127.0.0.1, submits the
run and shuts everything down; README documents the same steps across machines.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..config import Config, ConfigError, save_config
from ..recipes.common import export_splits, preflight
from ..runlog import RunDir

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # the folder holding pyproject.toml ([tool.flwr.app])
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from ..recipes.fedcollm import serve

    rc = context.run_config
    if rc.get("resume"):
        run, cfg = RunDir.open(str(rc["resume"]))
    elif rc.get("config"):
        from ..config import load_config

        cfg = load_config(str(rc["config"]))
        preflight(cfg)
        run = RunDir.create(cfg)
    else:
        raise ConfigError("flwr run needs --run-config \"config='/abs/path.yaml'\" (or resume='RUN_DIR')")
    cfg.federation.engine = "deployment"  # real network: SecAgg+ on unless the config says otherwise
    serve(grid, cfg, run, progress=False)


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _wait_health(port: int, proc: subprocess.Popen, logfile: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited with code {proc.returncode}; see {logfile}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"SuperLink on 127.0.0.1:{port} did not become healthy in {timeout:.0f} s")


def launch_local(cfg: Config, workdir: str | Path, port: int = 39500, timeout: float = 3600.0) -> RunDir:
    """Run ``cfg`` on a localhost deployment: 1 SuperLink + K SuperNodes, each its own process."""
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    cfg.run_name = cfg.run_name or time.strftime("fedcollm-deploy-%Y%m%d-%H%M%S")
    if cfg.data_dir:
        cfg.data_dir = str(Path(cfg.data_dir).resolve())
    RunDir.new_path(cfg)  # refuse a taken run folder and a config that cannot run before starting any process
    preflight(cfg)
    work = Path(workdir).resolve()
    home = work / "flwr-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cfg_path = work / "run-config.yaml"
    save_config(cfg, cfg_path)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    # Flower's daemons spawn flower-superexec / flwr-serverapp / flwr-clientapp by name: keep ours first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    procs: list[subprocess.Popen] = []
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, args: list[str]) -> None:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process below
        procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work))

    try:
        start("superlink", [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                            "--isolation", "subprocess", "--database", str(home / "state.db")])
        _wait_health(port, procs[0], logs / "superlink.log")
        k = cfg.federation.num_clients
        files = export_splits(cfg, work / "client-data")  # each SuperNode gets only its own D^k
        for i in range(k):
            node_cfg = f"partition-id={i} num-partitions={k} data-file='{files[i]}'"
            start(f"supernode-{i}", [_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                     "--port", str(port + 1 + i), "--node-config", node_cfg])
        log.info("SuperLink 127.0.0.1:%d and %d SuperNodes started; logs in %s", port, k, logs)
        cmd = [_bin("flwr"), "run", str(PROJECT_ROOT), "local-deploy", "--stream",
               "--run-config", f"config='{cfg_path}'"]
        done = subprocess.run(cmd, env=env, cwd=work, timeout=timeout, capture_output=True, text=True)
        (logs / "flwr-run.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"flwr run failed (exit {done.returncode}); see {logs / 'flwr-run.log'}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    run = RunDir(Path(cfg.output_dir) / cfg.run_name)
    if run.last_round() < cfg.federation.rounds:
        raise RuntimeError(f"deployment run ended after round {run.last_round()} of {cfg.federation.rounds}; "
                           f"see {logs}")
    return run
