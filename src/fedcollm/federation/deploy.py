"""Flower's deployment engine on localhost: a SuperLink and K SuperNodes as separate processes.

``launch_local`` starts a SuperLink and K SuperNodes on 127.0.0.1 (TLS and authenticated SuperNodes by
default), submits the run with ``flwr run`` and shuts everything down; README documents the same steps
across machines. Each SuperNode is started with ``--node-config "partition-id=K num-partitions=N
data-file=..."`` and holds only its own data. ``LocalFederation`` is also the local SuperLink that
``simulation.simulate`` runs Flower's simulation runtime in.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import tomli_w

from ..build import export_splits, preflight
from ..config import Config, save_config
from ..runlog import RunDir
from . import DeployError, MissingProgram
from .server_app import flower_app_dir, raise_failure
from .tls import make_certs

log = logging.getLogger(__name__)


def flower_command(name: str) -> str:
    """Flower's command ``name`` from this interpreter's environment (the one fedcollm is installed in)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class PortTaken(DeployError):
    """The SuperLink could not bind its port (another process holds it): try another."""


PR_SET_PDEATHSIG = 1  # prctl(2)


def _prctl():
    """libc's ``prctl``, resolved here, once: the child between fork and exec only calls it (no lookup, no
    import), as little as may run in a child of a process with threads. None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_ulong], ctypes.c_int
    return fn


_PRCTL = _prctl()


def child_kwargs() -> dict:
    """``subprocess.Popen`` arguments for a process that belongs to a run: a process group of its own (a Ctrl-C
    reaches the launcher, which stops its processes in order, and each group goes as one), and SIGTERM when the
    launcher dies, however it dies (SIGKILL included), by Linux's parent-death signal.

    That signal is tied to the thread that starts the child: start them from a thread that lives as long as the
    run (the main thread, as the CLI does)."""
    launcher = os.getpid()

    def in_the_child() -> None:  # between fork and exec
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != launcher:  # the launcher died before the prctl
            os._exit(1)

    return {"start_new_session": True, "preexec_fn": in_the_child}


def popen(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for a program of a run, or ``MissingProgram`` naming it when it is not installed."""
    try:
        return subprocess.Popen(args, **child_kwargs(), **kwargs)
    except FileNotFoundError:
        raise MissingProgram(f"{args[0]}: no such program in {Path(sys.executable).parent} or on PATH; install "
                             "fedcollm with its dependencies (flwr[simulation]) into this environment") from None


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM ``proc``'s process group, then SIGKILL what is left of it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def config_file(path: Path, values: dict) -> Path:
    """``values`` as the TOML file Flower takes for ``--run-config`` and ``--node-config``: its ``key=value`` text
    cannot carry a value with both kinds of quote in it (a path with ``'`` breaks it), a file carries anything."""
    path.write_text(tomli_w.dumps(values))
    return path


def listens_on(pid: int, port: int) -> bool | None:
    """Does process ``pid`` hold a listening TCP socket on ``port``? (Linux's /proc; None where that cannot be told)."""
    try:
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                        inodes.add(f"socket:[{fields[9]}]")
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
        return False
    except OSError:
        return None


class LocalFederation:
    """A SuperLink and SuperNodes as separate processes on 127.0.0.1, torn down on exit.

    With ``tls`` (the default) the SuperLink serves TLS with a certificate from ``tls.make_certs`` and
    only admits SuperNodes whose public key was registered (``flwr supernode register``); without it,
    everything runs ``--insecure`` (a trusted test network only). With ``simulation`` the SuperLink runs
    Flower's simulation runtime instead (its SuperNodes are simulated, none is started; insecure, as nothing
    leaves this machine). The processes run in ``cwd`` (default: the work folder), each in a process group of
    its own that dies with this process (``child_kwargs``).
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
        with open(self.logs / f"{name}.log", "w") as out:  # the child keeps its own copy of the descriptor
            self.procs[name] = popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)
        return self.procs[name]

    def __enter__(self) -> LocalFederation:
        security = (["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.server_cert),
                     "--ssl-keyfile", str(self.certs.server_key), "--enable-supernode-auth"]
                    if self.certs else ["--insecure"])
        proc = self._start("superlink", [flower_command("flower-superlink"), *security, "--host", "127.0.0.1",
                                         "--port", str(self.port), "--isolation", "subprocess",
                                         "--database", str(self.home / "state.db"),
                                         *(["--simulation"] if self.simulation else [])])
        try:
            self._wait_health(proc)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            stop(p)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """A short ``flwr`` command against this SuperLink (register a key, list nodes), its output captured."""
        proc = popen([flower_command("flwr"), *args], env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            stop(proc, grace=5.0)
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stream(self, args: list[str], log: Path, show: bool, timeout: float | None = None) -> int:
        """Run ``flwr ARGS`` to its end, its output into ``log`` and, with ``show``, onto stdout as it comes
        (progress bars redraw in place: chunks, not lines). It never waits on a dead SuperLink or past
        ``timeout`` seconds: either stops it and raises a ``DeployError`` naming the log."""
        end = None if timeout is None else time.monotonic() + timeout
        superlink = self.procs["superlink"]
        with log.open("wb") as f:
            proc = popen([flower_command("flwr"), *args], env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(proc.stdout, selectors.EVENT_READ)
                    while True:
                        if sel.select(timeout=1.0):
                            chunk = proc.stdout.read1(4096)
                            if not chunk:
                                break
                            f.write(chunk)
                            if show:
                                sys.stdout.buffer.write(chunk)
                                sys.stdout.flush()
                        elif superlink.poll() is not None:
                            raise DeployError(f"the SuperLink exited with code {superlink.returncode} during the run;"
                                              f" see {self.logs / 'superlink.log'}")
                        if end is not None and time.monotonic() > end:
                            raise DeployError(f"flwr {args[0]} did not end within {timeout:.0f} s; see {log}")
                try:
                    return proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    raise DeployError(f"flwr {args[0]} closed its output but did not exit; see {log}") from None
            finally:  # Ctrl-C, SIGTERM, a timeout: stop it now, not at its next line of output
                if proc.poll() is None:
                    stop(proc, grace=10.0)
                proc.stdout.close()

    def add_supernode(self, i: int, node_config: dict, key: Path | None = None, register: bool = True,
                      name: str | None = None) -> subprocess.Popen:
        """Start SuperNode ``i`` (its own port) with ``node_config`` (written as a TOML file); with TLS, authenticate
        it with ``key`` (registered first)."""
        name = name or f"supernode-{i}"
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
        node_file = config_file(self.work / f"{name}.node-config.toml", node_config)
        return self._start(name, [
            flower_command("flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
            "--port", str(self.port + 1 + i), "--node-config", str(node_file), "--max-retries", "3"])

    def _wait_health(self, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        """Until the SuperLink answers on its port, and that port is held by this process (not another server)."""
        scheme = "https" if self.certs else "http"
        ctx = ssl.create_default_context(cafile=str(self.certs.ca)) if self.certs else None
        deadline = time.time() + timeout
        log_file = self.logs / "superlink.log"
        while time.time() < deadline:
            if proc.poll() is not None:
                text = log_file.read_text(errors="replace") if log_file.exists() else ""
                if "address already in use" in text.lower():
                    raise PortTaken(f"SuperLink could not bind 127.0.0.1:{self.port}: the port is taken; "
                                    f"see {log_file}")
                raise DeployError(f"SuperLink exited with code {proc.returncode} before it served "
                                  f"127.0.0.1:{self.port}; see {log_file}")
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", timeout=2, context=ctx):
                    if listens_on(proc.pid, self.port) is not False:  # ours answered, not a stranger on the port
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise DeployError(f"SuperLink on 127.0.0.1:{self.port} did not become healthy in {timeout:.0f} s; "
                          f"see {log_file}")


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
            fed.add_supernode(i, {"partition-id": i, "num-partitions": k, "data-file": str(files[i])})
        log.info("SuperLink 127.0.0.1:%d (%s) and %d SuperNodes started; logs in %s", port,
                 "TLS, authenticated SuperNodes" if tls else "insecure", k, fed.logs)
        run = RunDir(Path(cfg.output_dir) / cfg.run_name)
        run_config = config_file(fed.work / "run-config.toml", {"config": str(cfg_path)})
        log_path = fed.logs / "flwr-run.log"
        try:
            code = fed.stream(["run", str(flower_app_dir()), "local-deploy", "--stream", "--run-config",
                               str(run_config)], log_path, show=False, timeout=timeout)
        except DeployError as exc:
            raise_failure(run)
            raise DeployError(f"{exc}; rounds 1-{run.last_round()} are saved in {run.path}") from None
        raise_failure(run)  # the ServerApp's own error, if it ended the run
        if code != 0:
            raise DeployError(f"flwr run failed (exit {code}); see {log_path}")
    if run.last_round() < cfg.federation.rounds:
        raise DeployError(f"deployment run ended after round {run.last_round()} of {cfg.federation.rounds}; "
                          f"see {fed.logs}")
    return run
