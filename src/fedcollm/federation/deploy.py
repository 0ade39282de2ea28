"""Flower's deployment engine on localhost: a SuperLink and K SuperNodes as separate processes.

``launch_local`` starts a SuperLink and K SuperNodes on 127.0.0.1 (TLS and authenticated SuperNodes by
default), submits the run with ``flwr run`` and shuts everything down; README documents the same steps
across machines. Each SuperNode is started with ``--node-config "partition-id=K num-partitions=N
data-file=..."`` and holds only its own data. ``LocalFederation`` is also the local SuperLink that
``simulation.simulate`` runs Flower's simulation runtime in.
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..build import export_splits, preflight
from ..config import Config, save_config
from ..runlog import RunDir
from . import DeployError
from .server_app import flower_app_dir, raise_failure
from .tls import make_certs

log = logging.getLogger(__name__)


def flower_command(name: str) -> str:
    """Flower's command ``name`` from this interpreter's environment (the one fedcollm is installed in)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class LocalFederation:
    """A SuperLink and SuperNodes as separate processes on 127.0.0.1, torn down on exit.

    With ``tls`` (the default) the SuperLink serves TLS with a certificate from ``tls.make_certs`` and
    only admits SuperNodes whose public key was registered (``flwr supernode register``); without it,
    everything runs ``--insecure`` (a trusted test network only). With ``simulation`` the SuperLink runs
    Flower's simulation runtime instead (its SuperNodes are simulated, none is started; insecure, as nothing
    leaves this machine). The processes run in ``cwd`` (default: the work folder).
    """

    def __init__(self, workdir: str | Path, port: int, num_nodes: int, tls: bool = True, simulation: bool = False,
                 cwd: str | Path | None = None) -> None:
        self.work = Path(workdir).resolve()
        self.port, self.tls, self.simulation = port, tls and not simulation, simulation
        self.cwd = Path(cwd).resolve() if cwd else self.work
        self.home = self.work / "flwr-home"
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.certs = make_certs(self.work / "certs", num_nodes) if self.tls else None
        conn = f'root-certificates = "{self.certs.ca}"' if self.certs else "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local-deploy"\n\n[superlink.local-deploy]\n'
            f'address = "127.0.0.1:{port}"\n{conn}\n')
        # Flower's daemons spawn flower-superexec / flwr-serverapp / flwr-clientapp by name: ours first on PATH.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "FLWR_HOME": str(self.home),
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
        if simulation:  # Ray's coming default, taken now (Ray prints a FutureWarning on every run without it):
            # a worker given no GPU keeps CUDA_VISIBLE_DEVICES; workers get none only when the run is on the CPU
            self.env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        for var in ("FEDCOLLM_CACHE", "FEDCOLLM_DATA_DIR"):  # the daemons run in the work folder
            if self.env.get(var):
                self.env[var] = str(Path(self.env[var]).expanduser().resolve())
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)
        return self.procs[name]

    def __enter__(self) -> LocalFederation:
        security = (["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.server_cert),
                     "--ssl-keyfile", str(self.certs.server_key), "--enable-supernode-auth"]
                    if self.certs else ["--insecure"])
        proc = self._start("superlink", [flower_command("flower-superlink"), *security, "--host", "127.0.0.1",
                                         "--port", str(self.port), "--isolation", "subprocess",
                                         "--database", str(self.home / "state.db"),
                                         *(["--simulation"] if self.simulation else [])])
        self._wait_health(proc)
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs.values()):
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([flower_command("flwr"), *args], env=self.env, cwd=self.cwd, timeout=timeout,
                              capture_output=True, text=True)

    def add_supernode(self, i: int, node_config: str, key: Path | None = None, register: bool = True,
                      name: str | None = None) -> subprocess.Popen:
        """Start SuperNode ``i`` (its own port); with TLS, authenticate it with ``key`` (registered first)."""
        if self.certs:
            key = key or self.certs.node_keys[i]
            if register:
                done = self.flwr("supernode", "register", f"{key}.pub", "local-deploy")
                if done.returncode != 0:
                    why = (done.stdout + done.stderr).strip()[-300:]
                    raise DeployError(f"flwr supernode register {key}.pub failed: {why}")
            security = ["--root-certificates", str(self.certs.ca), "--auth-supernode-private-key", str(key)]
        else:
            security = ["--insecure"]
        return self._start(name or f"supernode-{i}", [
            flower_command("flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(self.port + 1 + i), "--node-config", node_config, "--max-retries", "3"])

    def _wait_health(self, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        scheme = "https" if self.certs else "http"
        ctx = ssl.create_default_context(cafile=str(self.certs.ca)) if self.certs else None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise DeployError(f"SuperLink exited with code {proc.returncode} (port {self.port} taken?); "
                                  f"see {self.logs / 'superlink.log'}")
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", timeout=2, context=ctx):
                    return
            except OSError:
                time.sleep(0.3)
        raise DeployError(f"SuperLink on 127.0.0.1:{self.port} did not become healthy in {timeout:.0f} s; "
                          f"see {self.logs / 'superlink.log'}")


def launch_local(cfg: Config, workdir: str | Path, port: int = 39500, timeout: float = 86400.0,
                 tls: bool = True) -> RunDir:
    """Run ``cfg`` on a localhost deployment: 1 SuperLink + K SuperNodes, each its own process."""
    # the ServerApp runs in the work folder: every path it reads must be absolute
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    cfg.run_name = cfg.run_name or time.strftime("fedcollm-deploy-%Y%m%d-%H%M%S")
    if cfg.data_dir:
        cfg.data_dir = str(Path(cfg.data_dir).resolve())
    for section in (cfg.llm, cfg.slm):
        if Path(section.name).expanduser().exists():  # a local folder or .gguf file, not a built-in name
            section.name = str(Path(section.name).expanduser().resolve())
    RunDir.new_path(cfg)  # refuse a taken run folder and a config that cannot run before starting any process
    preflight(cfg)
    # the work folder's split is scratch, remade for this run: an earlier run's client files (another K)
    # would make export_splits refuse the folder
    shutil.rmtree(Path(workdir).resolve() / "client-data", ignore_errors=True)
    k = cfg.federation.num_clients
    with LocalFederation(workdir, port, k, tls) as fed:
        cfg_path = fed.work / "run-config.yaml"
        save_config(cfg, cfg_path)
        files = export_splits(cfg, fed.work / "client-data")  # each SuperNode gets only its own D^k
        for i in range(k):
            fed.add_supernode(i, f"partition-id={i} num-partitions={k} data-file='{files[i]}'")
        log.info("SuperLink 127.0.0.1:%d (%s) and %d SuperNodes started; logs in %s", port,
                 "TLS, authenticated SuperNodes" if tls else "insecure", k, fed.logs)
        run = RunDir(Path(cfg.output_dir) / cfg.run_name)
        try:
            done = fed.flwr("run", str(flower_app_dir()), "local-deploy", "--stream", "--run-config",
                            f"config='{cfg_path}'", timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"the run did not finish in {timeout:.0f} s (--timeout); rounds 1-{run.last_round()} "
                              f"are saved in {run.path}") from None
        (fed.logs / "flwr-run.log").write_text(done.stdout + done.stderr)
        raise_failure(run)  # the ServerApp's own error, if it ended the run
        if done.returncode != 0:
            raise DeployError(f"flwr run failed (exit {done.returncode}); see {fed.logs / 'flwr-run.log'}")
    if run.last_round() < cfg.federation.rounds:
        raise DeployError(f"deployment run ended after round {run.last_round()} of {cfg.federation.rounds}; "
                          f"see {fed.logs}")
    return run
