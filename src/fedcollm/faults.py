"""Fault injection for tests and drills: make one client misbehave on purpose, from the environment.

``FEDCOLLM_FAULT="KIND:PARTITION:ROUND"`` (several separated by ``;``) makes the client with that
partition id, in that round, do KIND instead of replying normally:

- ``exit``: its process dies mid-round (``os._exit``), as a crashed or killed client would;
- ``kill-node``: it kills its parent process too (the SuperNode in deployment) and dies; deployment
  only: in simulation the parent is Ray's raylet, and the whole simulation would go;
- ``raise``: the train handler raises (Flower returns an error reply);
- ``drop-STAGE``: under SecAgg+, the client fails in that protocol stage (``setup``, ``share_keys``,
  ``collect_masked_vectors`` or ``unmask``) with an error reply and stays alive: a drop whose stage
  and timing are exact, unlike ``exit`` in simulation, where the dead worker is not replaced and every
  later message handed to it fails as well;
- ``nan`` / ``scale`` / ``shape`` / ``keys``: it replies with a NaN, 1000×-scaled, wrongly shaped
  or renamed adapter.

Nothing happens when the variable is unset; the README's fault table lists what each one shows.
``check_env`` (called by ``build.preflight``) refuses a malformed value in one line before a run
starts; unchecked, every client would fail on it inside Ray with a traceback.
"""

from __future__ import annotations

import functools
import os
import signal

import numpy as np

from .config import ConfigError
from .models.lora import NamedArrays

ENV = "FEDCOLLM_FAULT"
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")  # SecAgg+'s stages, for drop-STAGE
KINDS = ("exit", "kill-node", "raise", "nan", "scale", "shape", "keys", *(f"drop-{s}" for s in STAGES))


@functools.lru_cache(maxsize=8)
def parse(text: str) -> tuple[tuple[str, int, int], ...]:
    """``KIND:PARTITION:ROUND[;...]`` as (kind, partition, round) triples; ConfigError naming the variable.

    Parsed once per value: a client asks ``planned`` for every message it handles."""
    faults = []
    for spec in filter(None, (s.strip() for s in text.split(";"))):
        parts = spec.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{ENV}={text!r}: {spec!r} is not KIND:PARTITION:ROUND")
        kind, part, rnd = parts
        if kind not in KINDS:
            raise ConfigError(f"{ENV}={text!r}: unknown fault kind {kind!r}; choose from {', '.join(KINDS)}")
        if not (part.isdigit() and rnd.isdigit() and int(rnd) >= 1):
            raise ConfigError(f"{ENV}={text!r}: in {spec!r} PARTITION must be an integer >= 0 and ROUND >= 1")
        faults.append((kind, int(part), int(rnd)))
    return tuple(faults)


def check_env() -> None:
    """Refuse a malformed ``FEDCOLLM_FAULT`` before a run starts (one line, not a traceback per client)."""
    parse(os.environ.get(ENV, ""))


def planned(partition_id: int, server_round: int) -> str | None:
    for kind, part, rnd in parse(os.environ.get(ENV, "")):
        if part == partition_id and rnd == server_round:
            return kind
    return None


def before_training(kind: str | None) -> None:
    """The faults that end the round for this client before it replies."""
    if kind == "exit":
        os._exit(17)
    if kind == "kill-node":
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(17)
    if kind == "raise":
        raise RuntimeError("injected client failure (FEDCOLLM_FAULT)")


def in_secagg_stage(partition_id: int, server_round: int, stage: str) -> None:
    """The ``drop-STAGE`` fault: fail this SecAgg+ stage for this client (an error reply, as a dropout)."""
    if planned(partition_id, server_round) == f"drop-{stage}":
        raise RuntimeError(f"injected drop in SecAgg+ stage {stage} (FEDCOLLM_FAULT)")


def corrupt(kind: str | None, theta: NamedArrays) -> NamedArrays:
    """The faults that reply with a bad update."""
    if kind == "nan":
        return [(k, np.full_like(v, np.nan)) if i == 0 else (k, v) for i, (k, v) in enumerate(theta)]
    if kind == "scale":
        return [(k, v * 1000.0) for k, v in theta]
    if kind == "shape":
        return [(k, v[..., :-1]) if i == 0 else (k, v) for i, (k, v) in enumerate(theta)]
    if kind == "keys":
        return [(k + ".extra", v) if i == 0 else (k, v) for i, (k, v) in enumerate(theta)]
    return theta
