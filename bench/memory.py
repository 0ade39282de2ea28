"""Benchmark 5, simulation memory: peak memory of one real 4-client FedCoLLM round in Flower's simulation.

A child process runs ``recipes.fedcollm.run_fedcollm`` (the ``fedcollm run`` path: Ray, one ClientApp
worker, the ServerApp thread with the LLM and its SLM copy) on a tiny budget: 1 round, one local step
per client, one KD step, evaluation of 4 questions. Meanwhile this process samples the child's whole
process tree every 0.5 s from ``/proc/PID/smaps``:

- RSS summed over processes counts the weights twice: they are mmapped from the same safetensors files
  by the server and the client worker (and the page cache is shared);
- PSS summed is each process's fair share, but pages shared with processes *outside* the run (another
  job mapping the same model file) are split with them, which flatters the run;
- "dedup RSS" = every process's private anonymous memory + each file mapping (weights, libraries,
  /dev/shm) once: its private pages in each process plus its shared pages in the process that has the
  most of them. What the run needs on its own; the figure the target uses.

Target: peak dedup RSS ≤ the LLM's and SLM's base weights (in the dtype they are loaded in) + 1 GiB.
The run's own ``metrics.jsonl`` figures (server ``server_peak_rss_mb``, client ``worker-peak-rss-mb``,
both ru_maxrss) are reported beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.common import GIB, Setup, row

NAME = "memory"


def tree_sample(root_pid: int) -> dict | None:
    """One snapshot of the process tree's memory (bytes), per process and deduplicated."""
    import psutil

    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    per_proc, shared, private = {}, defaultdict(int), defaultdict(int)  # file mappings by path
    for p in procs:
        try:
            maps = p.memory_maps(grouped=True)
            name = _name(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
        rss = pss = uss = uss_anon = anon_shared = 0
        for m in maps:
            rss, pss, uss = rss + m.rss, pss + m.pss, uss + m.private_clean + m.private_dirty
            if m.path.startswith("/"):  # a file (model weights, libraries, /dev/shm): shared pages once
                shared[m.path] = max(shared[m.path], m.shared_clean + m.shared_dirty)
                private[m.path] += m.private_clean + m.private_dirty
            else:
                uss_anon += m.private_clean + m.private_dirty
                anon_shared += m.shared_clean + m.shared_dirty
        per_proc[p.pid] = {"name": name, "rss": rss, "pss": pss, "uss": uss, "uss_anon": uss_anon,
                           "anon_shared": anon_shared}
    # a file cannot be more resident than it is long; the cap removes double counts from reading the processes
    # one after another while one of them unmaps (pages turn from shared to private between the two reads)
    files = {path: min(shared[path] + private[path], _size(path)) for path in shared}
    dedup = sum(v["uss_anon"] + v["anon_shared"] for v in per_proc.values()) + sum(files.values())
    return {"rss_sum": sum(v["rss"] for v in per_proc.values()), "pss_sum": sum(v["pss"] for v in per_proc.values()),
            "dedup": dedup, "per_proc": per_proc, "files": files}


def _size(path: str) -> float:
    try:
        return os.stat(path).st_size if os.path.isfile(path) else float("inf")
    except OSError:
        return float("inf")


def _name(p) -> str:
    """``ray::ClientAppActor``, ``python raylet``-style short names for the table."""
    cmd = p.cmdline()
    if not cmd or cmd[0].startswith("ray::"):
        return p.name() if not cmd else cmd[0].strip()
    script = next((Path(a).name for a in cmd[1:4] if a.endswith(".py") or a.startswith("bench.")), "")
    return f"{Path(cmd[0]).name} {script}".strip()


def sample_until_exit(proc: subprocess.Popen, interval: float = 0.5) -> tuple[dict, list[list[float]], dict]:
    """Sample ``proc``'s tree until it exits: (snapshot at the dedup peak, timeline, per-pid peaks)."""
    t0 = time.perf_counter()
    peak: dict = {"dedup": -1}
    timeline: list[list[float]] = []
    per_pid: dict[int, dict] = {}
    while proc.poll() is None:
        s = tree_sample(proc.pid)
        if s is not None:
            server = s["per_proc"].get(proc.pid, {"rss": 0})
            timeline.append([round(time.perf_counter() - t0, 1), round(s["dedup"] / GIB, 3),
                             round(s["pss_sum"] / GIB, 3), round(server["rss"] / GIB, 3)])
            for pid, v in s["per_proc"].items():
                best = per_pid.setdefault(pid, {"name": v["name"], "rss": 0, "pss": 0})
                best["rss"], best["pss"] = max(best["rss"], v["rss"]), max(best["pss"], v["pss"])
            if s["dedup"] > peak["dedup"]:
                peak = {**s, "t": round(time.perf_counter() - t0, 1)}
        time.sleep(interval)
    return peak, timeline, per_pid


def simulate(setup: Setup, clients: int, env: dict[str, str] | None = None) -> dict:
    """Run the round in a child process under the sampler; the peak snapshot, timeline and the run's records."""
    from fedcollm.config import save_config
    from fedcollm.runlog import RunDir

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        cfg = setup.config(f"federation.num_clients={clients}", "federation.rounds=1", "federation.client_size=4",
                           "federation.aux_size=4", "federation.local_max_steps=1", "kd.max_steps=1",
                           "eval.limit=4", "eval.zero_shot=false", f"output_dir={tmp}", "run_name=run")
        save_config(cfg, Path(tmp) / "bench.yaml")
        log = Path(tmp) / "child.log"
        t0 = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "bench.memory", "--child", str(Path(tmp) / "bench.yaml")],
                                    stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    cwd=Path(__file__).resolve().parent.parent)
            peak, timeline, per_pid = sample_until_exit(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"simulation child failed ({proc.returncode}): {log.read_text()[-2000:]}")
        records = RunDir(Path(tmp) / "run").metrics()
    for pid, v in peak["per_proc"].items():  # clients report no pid: Ray names its actor processes
        v["role"] = "server" if pid == proc.pid else "client worker" if "ClientAppActor" in v["name"] else "ray runtime"
    return {"cfg": cfg, "peak": peak, "timeline": timeline, "per_pid": per_pid, "records": records,
            "wall_s": time.perf_counter() - t0, "env": env or {}}


def _gib(v: float) -> float:
    return round(v / GIB, 3)


def where(peak: dict) -> dict:
    """The peak's dedup RSS split into what it is made of (GiB)."""
    weights = sum(v for k, v in peak["files"].items() if k.endswith(".safetensors"))
    out = {"model weight files (mmapped, counted once)": weights,
           "other files (libraries, /dev/shm)": sum(peak["files"].values()) - weights}
    for v in peak["per_proc"].values():
        key = f"private heap/anon: {v['role']}"
        out[key] = out.get(key, 0) + v["uss_anon"] + v["anon_shared"]
    return {k: _gib(v) for k, v in out.items()}


def describe(sim: dict) -> dict:
    """The JSON figures of one simulated round: peaks, the run's own RSS figures, memory per process."""
    peak, round1 = sim["peak"], sim["records"][-1]
    by_role = defaultdict(lambda: defaultdict(int))
    for v in peak["per_proc"].values():
        for k in ("rss", "pss", "uss", "uss_anon"):
            by_role[v["role"]][k] += v[k]
    return {
        "env": sim["env"], "wall_s": round(sim["wall_s"], 1),
        "peak": {"dedup_rss": peak["dedup"], "pss_sum": peak["pss_sum"], "rss_sum": peak["rss_sum"], "at_s": peak["t"]},
        "metrics_jsonl": {"server_peak_rss": round1.server_peak_rss_mb * 2**20,
                          "worker_peak_rss": max(c["worker-peak-rss-mb"]
                                                 for c in round1.clients["contributors"]) * 2**20},
        "at_peak_by_role_gib": {role: {k: _gib(v) for k, v in d.items()} for role, d in by_role.items()},
        "at_peak_per_process_gib": {str(pid): {"name": v["name"], "role": v["role"],
                                               **{k: _gib(v[k]) for k in ("rss", "pss", "uss", "uss_anon")}}
                                    for pid, v in sorted(peak["per_proc"].items(), key=lambda kv: -kv[1]["pss"])},
        "at_peak_largest_files_gib": {k: _gib(v) for k, v in sorted(peak["files"].items(), key=lambda kv: -kv[1])[:6]},
        "at_peak_where": where(peak),
        "per_process_peaks_gib": {str(pid): {"name": v["name"], "rss": _gib(v["rss"]), "pss": _gib(v["pss"])}
                                  for pid, v in sim["per_pid"].items() if v["rss"] > 50 * 2**20},
        "timeline_s_dedup_pss_serverrss_gib": sim["timeline"][:: max(1, len(sim["timeline"]) // 200)],
    }


# glibc keeps freed heap blocks for reuse, so a process's RSS stays at its high-water mark of *freed* training
# buffers; served by mmap (>= 64 KiB here) they go back to the OS at free. An env var: no code change needed.
ALLOCATOR_WHAT_IF = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run(setup: Setup, clients: int = 4, what_if: bool | None = None) -> dict:
    from fedcollm.build import dtype

    setup.release()  # nothing of ours mapped while the child runs
    sims = {"as is": simulate(setup, clients)}
    if what_if if what_if is not None else not setup.quick:
        sims["what-if " + " ".join(f"{k}={v}" for k, v in ALLOCATOR_WHAT_IF.items())] = simulate(
            setup, clients, ALLOCATOR_WHAT_IF)
    base = sims["as is"]
    cfg, params = base["cfg"], base["records"][0].params
    size = 2 if dtype(cfg) == torch.bfloat16 else 4
    weights = {k: params[k]["base"] * size for k in ("llm", "slm")}
    total_w = weights["llm"] + weights["slm"]
    bound = total_w + GIB
    figures = {"workload": {"clients": clients, "rounds": 1, "precision": cfg.precision,
                            "weights_dtype": str(dtype(cfg)), "client_size": 4, "aux_size": 4, "eval_limit": 4,
                            "local_steps": 1, "kd_steps": 1},
               "weights_bytes": weights, "runs": {k: describe(v) for k, v in sims.items()}}
    d = figures["runs"]["as is"]
    peak, m = d["peak"], d["metrics_jsonl"]
    rows = [
        row(NAME, f"peak dedup RSS of a {clients}-client round / (LLM+SLM weights + 1 GiB)", peak["dedup_rss"] / GIB,
            bound / GIB, peak["dedup_rss"] / bound, ("<=", 1.0), "GiB"),
        row(NAME, "  peak PSS sum (fair share) vs LLM+SLM weights", peak["pss_sum"] / GIB, total_w / GIB,
            peak["pss_sum"] / total_w, unit="GiB"),
        row(NAME, "  peak RSS sum (shared pages counted per process)", peak["rss_sum"] / GIB, total_w / GIB,
            peak["rss_sum"] / total_w, unit="GiB"),
        row(NAME, "  server process peak RSS (metrics.jsonl) vs weights", m["server_peak_rss"] / GIB, total_w / GIB,
            m["server_peak_rss"] / total_w, unit="GiB"),
        row(NAME, "  client worker peak RSS (metrics.jsonl) vs SLM", m["worker_peak_rss"] / GIB, weights["slm"] / GIB,
            m["worker_peak_rss"] / weights["slm"], unit="GiB"),
    ]
    rows += [row(NAME, f"  at the peak: {k}", v, unit="GiB") for k, v in d["at_peak_where"].items()]
    for name, w in figures["runs"].items():
        if name != "as is":
            rows.append(row(NAME, f"  {name}: peak dedup / bound", w["peak"]["dedup_rss"] / GIB, bound / GIB,
                            w["peak"]["dedup_rss"] / bound, unit="GiB"))
    out = {"rows": rows, "figures": figures}
    if peak["dedup_rss"] > bound:
        out["profile"] = {"at_peak_gib": d["at_peak_where"], "at_s": peak["at_s"],
                          "bound_gib": _gib(bound), "weights_gib": _gib(total_w)}
    return out


def _child(config_path: str) -> None:
    from fedcollm.config import load_config
    from fedcollm.recipes.fedcollm import run_fedcollm

    run_fedcollm(load_config(config_path), progress=False)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="internal: the simulated round whose memory is measured")
    p.add_argument("--child", required=True)
    _child(p.parse_args().child)
