"""Two results on the same questions: is the difference real? (``fedcollm compare A B``)

An ablation or a rerun is only worth a sentence if its difference from the reference is larger than
the noise of a few hundred questions. Every evaluation we write keeps each question's outcome, so two
results can be compared pairwise (bootstrap interval, McNemar) per task and pooled, without rerunning
anything. A result is one of:

- a run folder (``fedcollm run``): the last evaluated round (>= 1) in ``metrics.jsonl``, roles ``llm``/``slm``
  (round 0 is the untuned models: compare against ``results/zero_shot`` or an experiment's instead);
- an experiment method file (``methods/<method>.json``): roles ``llm``/``slm`` (Standalone: mean over clients);
- a ``fedcollm eval --out`` file: one role, ``model``.

``PATH:ROLE`` picks one role of a result, e.g. ``runs/a:llm`` against ``results/zero_shot/1.5b.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import DataError
from ..runlog import RunDir
from ..stats import Comparison, compare, outcomes


def outcome_vector(result: dict, role: str, task: str) -> tuple[np.ndarray, str] | None:
    """Per-question outcomes of one role on one task and the questions' digest (None if not kept).

    Standalone keeps one evaluation per client; its outcome is the mean over clients (a fraction).
    """
    clients = result.get("clients")
    if clients and role == "slm":
        ms = [c.get(task, {}) for c in clients]
        if not all("correct" in m for m in ms):
            return None
        return np.mean([outcomes(m["correct"]) for m in ms], axis=0), ms[0]["ids_sha1"]
    m = result.get(role, {}).get(task, {})
    return (outcomes(m["correct"]), m["ids_sha1"]) if "correct" in m else None


def load_result(spec: str) -> tuple[dict, list[str]]:
    """Read ``PATH[:ROLE]`` as (result with role keys, the roles to compare)."""
    path, role = spec, ""
    if not Path(spec).exists() and ":" in spec:
        path, role = spec.rsplit(":", 1)
    p = Path(path)
    if p.is_dir():
        log = p / "metrics.jsonl"
        if not log.is_file():
            raise DataError(f"{p} is a folder without metrics.jsonl (not a fedcollm run folder)")
        tuned = [r for r in RunDir(p).metrics() if r.round >= 1 and r.eval]
        if not tuned:
            raise DataError(f"{log}: no tuned round was evaluated yet (round 0 is the zero-shot models)")
        result = {**tuned[-1].eval, "round": tuned[-1].round}
    elif p.is_file():
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}: not UTF-8 text (byte {exc.start}); expected a JSON result file") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
            raise DataError(f"{p}: not a result (expected a JSON object with llm/slm or a metrics block)")
        result = {"model": data["metrics"]} if "metrics" in data else data
    else:
        raise DataError(f"{path}: no such run folder or result file")
    roles = [r for r in ("llm", "slm", "model") if r in result]
    for r in roles:  # {task: metrics} per role; anything else would fail deep inside the comparison
        if not isinstance(result[r], dict) or not all(isinstance(m, dict) for m in result[r].values()):
            raise DataError(f"{path}: {r} is not a {{task: metrics}} mapping (not a fedcollm result)")
    if role:
        if role not in roles:
            raise DataError(f"{path} has no role {role!r}; it has {', '.join(roles) or 'none'}")
        roles = [role]
    if not roles:
        raise DataError(f"{path}: no evaluation found (expected llm/slm or a `fedcollm eval` metrics block)")
    return result, roles


@dataclass(frozen=True)
class Row:
    """``a - b`` for one role pair on one task (``task="all"``: every comparable task pooled)."""

    role: str
    task: str
    acc_a: float | None = None
    acc_b: float | None = None
    stats: Comparison | None = None
    note: str = ""


def compare_results(a: dict, roles_a: list[str], b: dict, roles_b: list[str],
                    tasks: Sequence[str] | None = None) -> list[Row]:
    """Pair roles (the only one of each, else the same names), then compare task by task and pooled.

    ``tasks`` restricts and orders the tasks (default: A's tasks that B has too).
    """
    if len(roles_a) == 1 and len(roles_b) == 1:
        pairs = [(roles_a[0], roles_b[0])]
    else:
        pairs = [(r, r) for r in roles_a if r in roles_b]
    if not pairs:
        raise DataError(f"nothing to pair: roles {roles_a} vs {roles_b}; pick one of each with PATH:ROLE")
    rows: list[Row] = []
    for ra, rb in pairs:
        label = ra if ra == rb else f"{ra} vs {rb}"
        both = [t for t in (a.get(ra, {}) if tasks is None else tasks) if t in a.get(ra, {}) and t in b.get(rb, {})]
        pooled_a, pooled_b = [], []
        for t in both:
            oa, ob = outcome_vector(a, ra, t), outcome_vector(b, rb, t)
            if oa is None or ob is None:
                rows.append(Row(label, t, note="per-question outcomes not kept"))
            elif oa[1] != ob[1]:
                rows.append(Row(label, t, note="not comparable: different questions"))
            else:
                pooled_a.append(oa[0])
                pooled_b.append(ob[0])
                rows.append(Row(label, t, float(oa[0].mean()), float(ob[0].mean()), compare(oa[0], ob[0])))
        if len(pooled_a) > 1:
            xa, xb = np.concatenate(pooled_a), np.concatenate(pooled_b)
            rows.append(Row(label, "all", float(xa.mean()), float(xb.mean()), compare(xa, xb)))
    return rows


def verdict(c: Comparison) -> str:
    if c.lo > 0:
        return "A better (significant)"
    if c.hi < 0:
        return "B better (significant)"
    return "within noise"
