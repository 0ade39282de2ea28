"""Benchmark 7, sampling: a round's server time and memory grow with the clients sampled, not registered.

Each arm is a real ``fedcollm run`` (Flower's simulation engine, the FedAvg baseline, so the server
holds only the SLM) in its own process, so that its peak RSS is its own: N simulated nodes registered,
n of them sampled per round by ``federation.clients_per_round``, every client one step on its own two
questions. The figures are the median seconds of a round (Flower's messages, the sampled clients'
training one after another in the one worker, aggregation: everything but evaluation) over rounds 2..R
(round 1 loads the worker's model) and the server process's peak RSS, as the run logs them.

Arms: 10 of 100 (baseline), 10 of 1,000 (ten times the nodes: should cost about the same) and 20 of
100 (twice the sample: the client work doubles, so the round should take about twice as long).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Setup, row
from fedcollm.runlog import RunDir

NAME = "sampling"


def arm(setup: Setup, registered: int, sampled: int, rounds: int, workdir: Path) -> dict:
    """One ``fedcollm run`` with ``registered`` nodes and ``sampled`` per round; its per-round figures."""
    name = f"n{sampled}-of-{registered}"
    overrides = [f"slm.name={setup.slm}", f"llm.name={setup.llm}", f"precision={setup.precision}", "method=fedavg",
                 f"tasks=[{setup.task}]", "max_length=128", f"output_dir={workdir}", f"run_name={name}",
                 f"federation.num_clients={registered}", f"federation.clients_per_round={sampled}",
                 f"federation.rounds={rounds}", "federation.aux_size=4", "federation.client_size=2",
                 "federation.local_max_steps=1", "slm.batch_size=2", "eval.zero_shot=false",
                 "eval.every_round=false", "eval.limit=1", f"device={setup.device}"]
    if setup.data_dir:
        overrides.append(f"data_dir={setup.data_dir}")
    exe = [sys.executable, "-c", "import sys; from fedcollm.cli import main; sys.exit(main())"]
    done = subprocess.run([*exe, "run", *overrides], capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    records = RunDir(workdir / name).metrics()
    rounds_ = [r for r in records if r.round >= 1]
    return {"registered": registered, "sampled": sampled,
            "round_seconds": [r.seconds["train"] for r in rounds_],
            "median_round_s": statistics.median(r.seconds["train"] for r in rounds_[1:] or rounds_),
            "server_peak_rss_mb": max(r.server_peak_rss_mb for r in rounds_),
            "clients_per_round": [len(r.clients["contributors"]) for r in rounds_]}


def run(setup: Setup) -> dict:
    small, big, rounds = (10, 40, 2) if setup.quick else (100, 1000, 3)
    n = 4 if setup.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        base = arm(setup, small, n, rounds, Path(tmp))
        many = arm(setup, big, n, rounds, Path(tmp))
        double = arm(setup, small, 2 * n, rounds, Path(tmp))
    t0, rss0 = base["median_round_s"], base["server_peak_rss_mb"]
    rows = [
        row(NAME, f"round seconds, {n} of {big} nodes vs {n} of {small}", many["median_round_s"], t0,
            many["median_round_s"] / t0, ("<=", 1.5), "s"),
        row(NAME, f"server peak RSS, {n} of {big} nodes vs {n} of {small}", many["server_peak_rss_mb"], rss0,
            many["server_peak_rss_mb"] / rss0, ("<=", 1.1), "MB"),
        row(NAME, f"  round seconds, {2 * n} of {small} nodes vs {n} of {small} (grows with the sample)",
            double["median_round_s"], t0, double["median_round_s"] / t0, None, "s"),
        row(NAME, f"  server peak RSS, {2 * n} of {small} nodes vs {n} of {small}", double["server_peak_rss_mb"],
            rss0, double["server_peak_rss_mb"] / rss0, None, "MB"),
    ]
    return {"rows": rows, "arms": [base, many, double]}
