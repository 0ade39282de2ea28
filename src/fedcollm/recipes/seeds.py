"""Several training seeds of one experiment: each seed an experiment folder, one report over all of them.

A seeded experiment is a folder of ``seed-N/`` experiment folders (``fedcollm experiment ... --out
DIR/seed-N seed=N split_seed=S``): the same splits and questions in each (``split_seed``), the seed changing
only the training's randomness (LoRA init, batch order, dropout). ``write_seeds_report`` (``fedcollm report
DIR``) reads every seed's test results and writes ``DIR/report.md``: each seed's accuracies, their mean ± sd,
and each claim with its paired interval over questions and seeds (``compare.compare_results`` with one result
per seed). A result file beside the methods, ``seed-N/extra/NAME.json`` (a ``fedcollm eval --out`` file, e.g. the
LLM proxy-tuned by the SLM), joins the tables and claims as method ``NAME``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..plots import TASK_NAMES, task_label
from .compare import compare_results

#: (model, a, b, expectation): the claims of a seeded run of FedCoLLM against its baselines
CLAIMS = (
    ("slm", "fedcollm", "fedavg", "better"),
    ("slm", "fedcollm", "no_kd", "better"),
    ("slm", "fedcollm", "no_kd", "no harm"),
    ("llm", "fedcollm", "no_kd", "no harm"),
    ("llm", "fedcollm", "no_kd", "better"),
    ("llm", "proxy", "no_kd", "better"),
    ("llm", "proxy", "fedcollm", "better"),
)


def seed_folders(folder: Path) -> list[tuple[int, Path]]:
    """``(seed, path)`` of every ``seed-N/`` experiment folder, by seed."""
    found = [(int(p.name.split("-", 1)[1]), p) for p in folder.glob("seed-*")
             if p.name.split("-", 1)[1].isdigit() and (p / "methods").is_dir()]
    return sorted(found)


def is_seeded(folder: Path) -> bool:
    return bool(seed_folders(Path(folder)))


def load_seed(path: Path) -> dict[str, dict]:
    """A seed's test results: ``methods/METHOD.json`` and ``extra/NAME.json`` (its one role as ``llm``)."""
    out = {p.stem: json.loads(p.read_text()) for p in (path / "methods").glob("*.json")
           if not p.name.endswith(".dev.json")}
    for p in sorted((path / "extra").glob("*.json")):
        data = json.loads(p.read_text())
        out[p.stem] = {"llm": data.get("metrics", data.get("llm", {})), "from": str(p.relative_to(path.parent))}
    return out


def _pooled(result: dict, role: str, tasks: list[str]) -> float | None:
    ms = [result.get(role, {}).get(t) for t in tasks]
    if not all(ms):
        return None
    return sum(m["acc"] * m["n"] for m in ms) / sum(m["n"] for m in ms)


def write_seeds_report(folder: str | Path) -> Path:
    """``report.md`` of a seeded experiment (see the module docstring); returns its path."""
    folder = Path(folder)
    seeds = seed_folders(folder)
    results = {s: load_seed(p) for s, p in seeds}
    methods = sorted({m for r in results.values() for m in r}, key=_order)
    found = {t for r in results.values() for m in r.values() for role in ("llm", "slm")
             if isinstance(m.get(role), dict) for t in m[role]}
    tasks = [t for t in TASK_NAMES if t in found] + sorted(found - set(TASK_NAMES))
    cols = [*(task_label(t) for t in tasks), "pooled"]
    listed = ", ".join(str(s) for s, _ in seeds)
    lines = [f"# Seeded experiment `{folder.name}`: {len(seeds)} training seeds ({listed})",
             "", "Each seed is an experiment folder (`seed-N/`) on the same splits and test questions; the seed "
             "changes LoRA init, batch order and dropout. Test accuracy %, whole test sets as scored "
             "(n per task in the claims).", "", "## Each seed", "",
             f"| method | model | seed | {' | '.join(cols)} |", "|---|---|---|" + "---|" * len(cols)]
    per: dict[tuple[str, str], list[list[float | None]]] = {}
    for m in methods:
        for role in ("llm", "slm"):
            for s, _ in seeds:
                r = results[s].get(m)
                if not r or role not in r:
                    continue
                row = [100 * r[role][t]["acc"] if t in r[role] else None for t in tasks]
                pooled = _pooled(r, role, tasks)
                row.append(None if pooled is None else 100 * pooled)
                per.setdefault((m, role), []).append(row)
                twin = r.get("identical_to", {}).get(role)
                note = f" (= {twin}: bit-identical adapter, scored once)" if twin else ""
                lines.append(f"| {m}{note} | {role.upper()} | {s} | " + " | ".join(_fmt(x) for x in row) + " |")
    lines += ["", "## Mean ± sd over seeds", "", f"| method | model | seeds | {' | '.join(cols)} |",
              "|---|---|---|" + "---|" * len(cols)]
    for (m, role), rows in per.items():
        cells = []
        for j in range(len(cols)):
            xs = [r[j] for r in rows if r[j] is not None]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{statistics.mean(xs):.1f} ± {sd:.1f}" if xs else "-")
        lines.append(f"| {m} | {role.upper()} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims, paired over questions and seeds", "",
              "Difference in accuracy points (a − b), seed i of a against seed i of b on the same questions; the "
              "95% interval is a two-level bootstrap (10,000 resamples of the seeds, and of the questions shared by "
              "every seed drawn). \">\" holds when the whole interval is above 0; \"≥\" (no harm) unless it is wholly "
              "below 0.", "", "| claim | task | questions × seeds | a − b | 95% interval | verdict |",
              "|---|---|---|---|---|---|"]
    symbol = {"better": ">", "no harm": "≥"}
    for role, a, b, expect in CLAIMS:
        got = [results[s] for s, _ in seeds if a in results[s] and b in results[s]]
        if not got:
            continue
        claim = f"{role.upper()}: {a} {symbol[expect]} {b}"
        for r in compare_results([g[a] for g in got], [role], [g[b] for g in got], [role], tasks):
            task = "**all**" if r.task == "all" else task_label(r.task)
            if r.stats is None:
                lines.append(f"| {claim} | {task} | - | - | - | {r.note} |")
                continue
            c = r.stats
            lines.append(f"| {claim} | {task} | {c.n} × {c.seeds} | {c.diff:+.1f} | [{c.lo:+.1f}, {c.hi:+.1f}] | "
                         f"{c.verdict(expect)} |")
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _order(method: str) -> tuple[int, str]:
    known = ("zero_shot", "standalone", "fedavg", "centralized", "no_kd", "fedcollm", "fedcollm_paper", "proxy")
    return (known.index(method) if method in known else len(known), method)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"
