"""The ServerApp that ``flwr run`` starts, on either of Flower's engines, and the Flower App that names it.

``flwr run`` starts ``server_app`` in a process of its own; it reads from the run config the path of a
resolved config (``config``) or of a run folder to continue (``resume``), and ``engine`` (``simulation``
or, by default, ``deployment``: it decides SecAgg+'s default). Its clients are
``fedcollm.federation.client_app:app`` on both engines.

That process is not the caller's, so an error that ends the run is written to the run folder
(``failure.json``: its type and message) and ``raise_failure`` raises it again in the caller, as one line.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.resources
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ..build import preflight
from ..config import ConfigError
from ..runlog import RunDir
from .algorithm import serve

log = logging.getLogger(__name__)
FAILURE = "failure.json"  # in the run folder: the error that ended the ServerApp's process


def flower_app_dir() -> Path:
    """The Flower App that ``flwr run`` submits: ``fedcollm/flower_app/pyproject.toml``, package data naming the
    installed package's ServerApp and ClientApp (so it is there in a wheel install as in a checkout)."""
    return Path(str(importlib.resources.files("fedcollm").joinpath("flower_app")))


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    engine = str(rc.get("engine") or "deployment")
    if engine not in ("simulation", "deployment"):
        raise ConfigError(f"run config engine={engine!r}: choose simulation or deployment")
    if rc.get("resume"):
        run, cfg = RunDir.open(str(rc["resume"]))
        preflight(cfg)
    elif rc.get("config"):
        from ..config import load_config

        cfg = load_config(str(rc["config"]))
        RunDir.new_path(cfg)  # a taken run folder is refused first, as in simulation
        preflight(cfg)
        run = RunDir.create(cfg)
    else:
        raise ConfigError("flwr run needs --run-config \"config='/abs/path.yaml'\" (or resume='RUN_DIR')")
    if int(rc.get("launcher-pid") or 0) > 0:
        end_with(int(rc["launcher-pid"]))
    (run.path / FAILURE).unlink(missing_ok=True)
    try:  # on a real network SecAgg+ is on unless the config says not
        serve(grid, cfg, run, engine, progress=bool(rc.get("progress", False)))
    except BaseException as exc:
        kind = type(exc)
        (run.path / FAILURE).write_text(json.dumps({"type": f"{kind.__module__}.{kind.__qualname__}",
                                                    "message": str(exc), "errno": getattr(exc, "errno", None)}))
        raise


def end_with(pid: int) -> None:
    """End this process, and every process it started, as soon as process ``pid`` (the ``fedcollm run`` that
    launched it) is gone.

    Flower starts the ServerApp's process in a session of its own, so a launcher killed outright (SIGKILL,
    a lost terminal) would leave it training on, into the run folder that a ``--resume`` is about to use; in
    simulation this process also started Ray's cluster, whose agents would outlive it. Rounds are written whole
    or not at all, so ending at any moment loses only the round in progress."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.warning("the launcher (pid %d) is gone: ending the ServerApp", pid)
                end_tree(os.getpid())
                os._exit(1)
            except PermissionError:  # alive, another user's: not ours to judge
                pass

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), read from Linux's /proc; [] where there is none."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or no /proc
            continue
    found, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parent.items() if pp == todo[-1]]
        todo.pop()
        found += kids
        todo += kids
    return found


def end_tree(pid: int, grace: float = 3.0) -> None:
    """SIGTERM every descendant of ``pid`` (taken before any dies: an orphan is re-parented and lost), then
    SIGKILL those still there after ``grace`` seconds."""
    tree = descendants(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(map(_running, tree)):
            time.sleep(0.1)


def _running(pid: int) -> bool:
    """Process ``pid`` exists and is not a zombie (ended, waiting for its parent to read its status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def raise_failure(run: RunDir) -> None:
    """Raise again, here, the error that ended ``run``'s ServerApp in its own process (if one did).

    Our own error types (and Python's) come back as themselves, so the CLI prints them as it prints any;
    anything else becomes a RuntimeError naming its type."""
    path = run.path / FAILURE
    if not path.exists():
        return
    failure = json.loads(path.read_text())
    path.unlink()
    module, _, name = failure["type"].rpartition(".")
    kind: type = RuntimeError
    if module == "builtins" or module.startswith("fedcollm."):
        found = getattr(builtins if module == "builtins" else importlib.import_module(module), name, None)
        kind = found if isinstance(found, type) and issubclass(found, BaseException) else RuntimeError
    message = failure["message"] if kind is not RuntimeError else f"{failure['type']}: {failure['message']}"
    try:  # an OSError keeps its errno: a full disk and a missing file end with different exit codes
        exc = kind(failure["errno"], message) if issubclass(kind, OSError) and failure.get("errno") else kind(message)
    except TypeError:  # an error type that wants other arguments
        exc = RuntimeError(f"{failure['type']}: {failure['message']}")
    raise exc


