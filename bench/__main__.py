"""``python -m bench``: the project's benchmarks on the real offline models, a table and a JSON file.

    FEDCOLLM_DATA_DIR=/work/shared/data python -m bench --out results/bench/bench.json
    python -m bench --quick --only comm,kd          # tiny workload, two benchmarks (smoke)

Each benchmark compares ours with a baseline side by side in this run, on the same work; the table
shows the figure, both values, their ratio and the target. The JSON holds the exact command, the
machine, the precision, every benchmark's figures (timings of every repetition, FLOPs, bytes by
object type, memory per process) and, for a missed target, the profile that shows where it goes.
It is rewritten after every benchmark, so a failure keeps what finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import choice_kd, client_step, comm, eval_scorer, kd_step, memory, packing, sampling, scaling
from bench.common import LLM, SLM, BackgroundLoad, Setup, choose_threads, machine

# memory first (its child must not share pages with models this process holds); kd last (it releases them)
BENCHMARKS = {"memory": memory, "eval": eval_scorer, "comm": comm, "client": client_step, "scaling": scaling,
              "sampling": sampling, "packing": packing, "choice-kd": choice_kd, "kd": kd_step}
console = Console(width=170)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.4g}"
    return str(v)


def table(rows: list[dict]) -> Table:
    t = Table(title="FedCoLLM benchmarks (ratio = ours / baseline unless the figure says otherwise)")
    for col, kw in (("benchmark", {}), ("figure", {}), ("ours", {"justify": "right"}),
                    ("baseline", {"justify": "right"}), ("ratio", {"justify": "right"}), ("target", {}),
                    ("met?", {})):
        t.add_column(col, **kw)
    for r in rows:
        met = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: ""}[r["met"]]
        unit = f" {r['unit']}" if r["unit"] and r["ours"] is not None and not isinstance(r["ours"], str) else ""
        t.add_row(r["bench"], r["figure"], _fmt(r["ours"]) + unit, _fmt(r["baseline"]), _fmt(r["ratio"]),
                  r["target"] or "", met)
    return t


def precision_info(setup: Setup) -> dict:
    from fedcollm.build import autocast_dtype, dtype

    cfg = setup.config()
    return {"requested": setup.precision, "resolved": setup.precision_name(), "weights_dtype": str(dtype(cfg)),
            "autocast": str(autocast_dtype(cfg)), "device": setup.device}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="tiny workload (smoke run, ~3 min)")
    p.add_argument("--out", default="results/bench/bench.json")
    p.add_argument("--slm", default=SLM)
    p.add_argument("--llm", default=LLM)
    p.add_argument("--data-dir", default=None, help="default: $FEDCOLLM_DATA_DIR")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--threads", default="auto",
                   help="torch threads: N, or auto (all cores when idle, 1 when other processes use the CPU)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(BENCHMARKS)
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    import flwr  # noqa: F401  (flwr sets its logger's level on import: import it before quieting it)

    for name in ("flwr", "lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    setup = Setup(slm=args.slm, llm=args.llm, data_dir=args.data_dir, precision=args.precision, quick=args.quick)
    out_path = Path(args.out)
    report: dict = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env": {"FEDCOLLM_DATA_DIR": os.environ.get("FEDCOLLM_DATA_DIR")},
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(), "threads_requested": args.threads, "precision": precision_info(setup),
        "setup": setup.spec(),
        "benchmarks": {},
    }
    t_all = time.perf_counter()
    for name in [n for n in BENCHMARKS if n in only]:
        threads = choose_threads(args.threads)  # again for every benchmark: other jobs come and go
        console.print(f"[bold]running {name}[/bold] with {threads['threads']} thread(s) "
                      f"({BENCHMARKS[name].__doc__.splitlines()[0]})")
        t0 = time.perf_counter()
        with BackgroundLoad() as load:
            try:
                res = BENCHMARKS[name].run(setup)
            except Exception as exc:  # keep the other benchmarks' results
                res = {"rows": [], "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                console.print(f"[red]{name} failed: {res['error']}[/red]")
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["threads"] = threads
        res["other_busy_cores_during"] = load.cores
        report["benchmarks"][name] = res
        report["rows"] = [r for b in report["benchmarks"].values() for r in b["rows"]]
        report["duration_s"] = round(time.perf_counter() - t_all, 1)
        report["load_average_at_end"] = list(os.getloadavg())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    setup.release()
    rows = report.get("rows", [])
    report["targets"] = {"met": [f"{r['bench']}: {r['figure']}" for r in rows if r["met"] is True],
                         "missed": [f"{r['bench']}: {r['figure']}" for r in rows if r["met"] is False],
                         "failed_benchmarks": [n for n, b in report["benchmarks"].items() if "error" in b]}
    out_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(table(rows))
    for name, b in report["benchmarks"].items():
        console.print(f"  {name}: {b['threads']['threads']} torch thread(s), other processes used "
                      f"{b['other_busy_cores_during']} of {b['threads']['cores']} cores meanwhile, {b['seconds']} s")
    t = report["targets"]
    console.print(f"targets met {len(t['met'])}, missed {len(t['missed'])}"
                  + (f", failed benchmarks: {', '.join(t['failed_benchmarks'])}" if t["failed_benchmarks"] else "")
                  + f"; {report['duration_s']:.0f} s in all; JSON: {out_path}")
    return report


if __name__ == "__main__":
    raise SystemExit(1 if main()["targets"]["failed_benchmarks"] else 0)
