"""A run's folder: resolved config, metrics JSONL, per-round adapters, and resume.

Layout::

    RUN_DIR/config.yaml              the resolved config (what --resume runs again)
    RUN_DIR/metrics.jsonl            one JSON object per finished round (round 0 = zero-shot)
    RUN_DIR/rounds/NNN/theta/        global SLM adapter θ after round NNN (PEFT format)
    RUN_DIR/rounds/NNN/omega/        server LLM adapter ω after round NNN (PEFT format)
    RUN_DIR/rounds/NNN/server_opt.safetensors   the server optimizer's state (FedAdam & co. only)
    RUN_DIR/rounds/NNN/DONE          written last: a round without it is ignored
    RUN_DIR/report.md                summary when the run ends

A round is written to a temporary folder and renamed into place, so a run killed at any moment leaves
only whole rounds behind, and ``--resume`` continues after the last of them. A kill while a metrics
line is being appended leaves a truncated last line: it is dropped with a warning (that round had no
checkpoint yet, so it runs again); a broken line anywhere else means the log was damaged otherwise,
and is refused in one line.

``--resume`` overrides are checked (``open``) before anything is written; the caller saves the config
(``save_config``) only once its own checks have passed, so a refused resume leaves the run as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .config import Config, ConfigError, check_output_folder, load_config, save_config
from .models.lora import load_adapter, save_adapter
from .rounds import RoundRecord

log = logging.getLogger(__name__)
SERVER_STATE = "server_opt.safetensors"


class RoundError(RuntimeError):
    """A round that cannot produce an aggregate (fewer usable client updates than ``min_clients``).

    The rounds before it are on disk, so the run can be resumed once enough clients are back.
    """


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def new_path(cfg: Config) -> Path:
        """Where ``create`` will put the run; refused if an earlier run is there (results are never overwritten)."""
        path = Path(cfg.output_dir) / (cfg.run_name or time.strftime("fedcollm-%Y%m%d-%H%M%S"))
        check_output_folder(path, "run folder")  # output_dir (or the run folder) must not be a file
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"run folder {path} already holds a run; use --resume {path} or another run_name")
        return path

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        """A new folder under ``output_dir`` with the resolved config in it."""
        path = cls.new_path(cfg)
        path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, path / "config.yaml")
        return cls(path)

    @classmethod
    def open(cls, path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> tuple[RunDir, Config]:
        """An existing run and its config with ``overrides`` (e.g. ``federation.rounds=5``) applied.

        Nothing is written: the caller checks the result (``build.preflight``) and then saves it with
        ``save_config``. Saving first would leave a refused override (``slm.name=typo``) in the run's
        config, and every later ``--resume`` would fail on it. The metrics log is read once here, so a
        damaged one is refused before anything starts.
        """
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise ConfigError(f"{run.path} is not a run folder (no config.yaml)")
        cfg = load_config(run.path / "config.yaml", overrides)
        run.metrics()
        return run, cfg

    def save_config(self, cfg: Config) -> None:
        """Write the (checked) config that a resumed run goes on with; atomic, so a kill leaves the old one."""
        tmp = self.path / "config.yaml.tmp"
        save_config(cfg, tmp)
        tmp.replace(self.path / "config.yaml")

    def round_dir(self, t: int) -> Path:
        return self.path / "rounds" / f"{t:03d}"

    def last_round(self) -> int:
        """The last round whose checkpoint is complete (0 when none)."""
        done = [int(p.parent.name) for p in (self.path / "rounds").glob("*/DONE") if p.parent.name.isdigit()]
        return max(done, default=0)

    def save_round(self, t: int, llm, slm, server_state: dict[str, np.ndarray] | None = None) -> None:
        """θ (and ω, and the server optimizer's state) of round t, all or nothing."""
        final = self.round_dir(t)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(slm, tmp / "theta")
        if llm is not None:
            save_adapter(llm, tmp / "omega")
        if server_state is not None:
            save_file({k: np.ascontiguousarray(v) for k, v in server_state.items()}, str(tmp / SERVER_STATE))
        (tmp / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def load_round(self, t: int, llm, slm) -> None:
        load_adapter(slm, self.round_dir(t) / "theta")
        if llm is not None:
            load_adapter(llm, self.round_dir(t) / "omega")

    def server_state(self, t: int) -> dict[str, np.ndarray]:
        """The server optimizer's state saved with round t ({} when the run has none, e.g. plain FedAvg)."""
        path = self.round_dir(t) / SERVER_STATE
        try:
            return load_file(str(path)) if path.is_file() else {}
        except SafetensorError as exc:
            raise ConfigError(f"{path}: unreadable server optimizer state ({exc})") from None

    def log(self, record: RoundRecord) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")

    def metrics(self) -> list[RoundRecord]:
        """The logged rounds. A truncated last line (a kill mid-append) is dropped with a warning; a broken
        line before it, or a record that is not a JSON object, is a ConfigError naming file and line."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        lines = [(n, raw) for n, raw in enumerate(path.read_bytes().split(b"\n"), 1) if raw.strip()]
        records = []
        for i, (lineno, raw) in enumerate(lines):
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                if i == len(lines) - 1:
                    log.warning("%s:%d: dropped a truncated last record (a run killed while logging); "
                                "its round runs again on --resume", path, lineno)
                    break
                raise ConfigError(f"{path}:{lineno}: corrupt record ({str(exc).splitlines()[0][:120]}); "
                                  "only a truncated last line can be dropped, so this run folder cannot be "
                                  "read as it is") from None
            records.append(RoundRecord.from_json(record, f"{path}:{lineno}"))
        return records

    def truncate_after(self, t: int) -> None:
        """Drop metrics of rounds past the last checkpoint (killed after logging a round, before its DONE)."""
        keep = [r for r in self.metrics() if r.round <= t]
        tmp = self.path / "metrics.jsonl.tmp"  # atomic: a kill here must not lose the rounds kept
        tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in keep))
        tmp.replace(self.path / "metrics.jsonl")
