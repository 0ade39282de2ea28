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

Several training seeds of one method are given as a comma-separated list, ``S0,S1,S2`` (``load_results``):
seed i of A is paired with seed i of B (one result on a side is the reference of every seed of the other),
each pair on the same questions; the difference is the mean over seeds and questions, its interval a
two-level bootstrap over seeds and questions (``stats.paired_bootstrap_seeds``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import DataError
from ..runlog import RunDir
from ..stats import Comparison, compare_seeds, outcomes


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


def load_results(spec: str) -> tuple[list[dict], list[str]]:
    """``PATH[:ROLE][,PATH[:ROLE]...]``: several seeds of one method (their roles must agree), or one result."""
    loaded = [load_result(part) for part in spec.split(",") if part]
    if not loaded:
        raise DataError(f"{spec!r} names no result")
    roles = loaded[0][1]
    if any(r != roles for _, r in loaded):
        raise DataError(f"{spec}: the seeds' roles differ ({', '.join('/'.join(r) for _, r in loaded)})")
    return [result for result, _ in loaded], roles


def _seeded(results: dict | Sequence[dict]) -> list[dict]:
    return [results] if isinstance(results, dict) else list(results)


def compare_results(a: dict | Sequence[dict], roles_a: list[str], b: dict | Sequence[dict], roles_b: list[str],
                    tasks: Sequence[str] | None = None) -> list[Row]:
    """Pair roles (the only one of each, else the same names), then compare task by task and pooled.

    ``a`` and ``b`` are one result each, or one per training seed (paired by position; a single result on one
    side is paired with every seed of the other). ``tasks`` restricts and orders the tasks (default: A's tasks
    that B has too).
    """
    seeds_a, seeds_b = _seeded(a), _seeded(b)
    if len(seeds_a) == 1 < len(seeds_b):
        seeds_a = seeds_a * len(seeds_b)
    if len(seeds_b) == 1 < len(seeds_a):
        seeds_b = seeds_b * len(seeds_a)
    if len(seeds_a) != len(seeds_b):
        raise DataError(f"{len(seeds_a)} seeds against {len(seeds_b)}: pair seed by seed, or give one reference")
    if len(roles_a) == 1 and len(roles_b) == 1:
        pairs = [(roles_a[0], roles_b[0])]
    else:
        pairs = [(r, r) for r in roles_a if r in roles_b]
    if not pairs:
        raise DataError(f"nothing to pair: roles {roles_a} vs {roles_b}; pick one of each with PATH:ROLE")
    rows: list[Row] = []
    first_a = seeds_a[0]
    for ra, rb in pairs:
        label = ra if ra == rb else f"{ra} vs {rb}"
        both = [t for t in (first_a.get(ra, {}) if tasks is None else tasks)
                if all(t in x.get(ra, {}) for x in seeds_a) and all(t in x.get(rb, {}) for x in seeds_b)]
        pooled_a, pooled_b = [], []
        for t in both:
            oa = [outcome_vector(x, ra, t) for x in seeds_a]
            ob = [outcome_vector(x, rb, t) for x in seeds_b]
            if any(o is None for o in oa + ob):
                rows.append(Row(label, t, note="per-question outcomes not kept"))
            elif len({o[1] for o in oa + ob}) != 1:
                rows.append(Row(label, t, note="not comparable: different questions"))
            else:
                ma, mb = np.stack([o[0] for o in oa]), np.stack([o[0] for o in ob])
                pooled_a.append(ma)
                pooled_b.append(mb)
                rows.append(Row(label, t, float(ma.mean()), float(mb.mean()), compare_seeds(ma, mb)))
        if len(pooled_a) > 1:
            xa, xb = np.concatenate(pooled_a, axis=1), np.concatenate(pooled_b, axis=1)
            rows.append(Row(label, "all", float(xa.mean()), float(xb.mean()), compare_seeds(xa, xb)))
    return rows


def verdict(c: Comparison) -> str:
    if c.lo > 0:
        return "A better (significant)"
    if c.hi < 0:
        return "B better (significant)"
    return "within noise"
