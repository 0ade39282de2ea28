"""What every benchmark shares: the workload setup, side-by-side timing, FLOP counts, rows of the table.

Targets are ratios of two things measured in one process on the same weights, batches and dtype, so
every timed comparison goes through ``interleaved``: warm-up, then the arms alternate (ABBA order) and
the median of the repetitions is compared. Absolute seconds are reported too, but on a shared CPU they
move with the machine's load; the ratios move much less.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedcollm.precision import cpu_info

SLM = "qwen2.5-coder-0.5b-instruct"
LLM = "qwen2.5-coder-1.5b-instruct"
GIB = 2**30


# ---------------------------------------------------------------------------------------------- workload


@dataclass
class Setup:
    """Which models, data and precision the benchmarks run on (real built-ins by default, tiny ones in tests).

    Models are loaded once and shared between benchmarks (``peft``): each caller gets the adapter reset to
    its initial value, so no benchmark sees another's training.
    """

    slm: str = SLM
    llm: str = LLM
    data_dir: str | None = None
    precision: str = "auto"
    task: str = "arc_easy"
    quick: bool = False
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    _models: dict = field(default_factory=dict, repr=False)

    def spec(self) -> dict:
        """The fields a child process needs to rebuild this setup (no loaded models)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    def config(self, *overrides: str):
        """The project's typed config for this workload (same knobs as a run; max_length as the demo's)."""
        from fedcollm.config import load_config

        base = [f"slm.name={self.slm}", f"llm.name={self.llm}", f"precision={self.precision}", "max_length=128",
                f"tasks=[{self.task}]"]
        if self.data_dir:
            base.append(f"data_dir={self.data_dir}")
        return load_config(None, [*base, *overrides])

    def peft(self, role: str):
        """(PEFT model on the device, tokenizer) for ``slm``/``llm``, adapter reset to its seeded init."""
        from fedcollm.build import load_peft
        from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays

        if role not in self._models:
            cfg = self.config()
            model, tok = load_peft(getattr(cfg, role), cfg, role)
            model.to(self.device)
            self._models[role] = (model, tok, get_adapter_arrays(model))
        model, tok, theta0 = self._models[role]
        set_adapter_arrays(model, theta0)
        model.eval()
        return model, tok

    def release(self) -> None:
        """Drop the cached models (before a benchmark that measures memory in a child process)."""
        self._models.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def precision_name(self) -> str:
        from fedcollm.precision import resolve_precision

        return resolve_precision(self.precision)

    def train_questions(self, n: int, offset: int = 0):
        from fedcollm.data import load_split

        qs = load_split(self.task, "train", self.config().data_dir)
        if len(qs) < offset + n:
            qs = (qs * (1 + (offset + n) // max(len(qs), 1)))  # tiny test data: reuse questions
        return qs[offset : offset + n]


def to_device(batch, device: str):
    """A ``train.Batch`` on ``device`` (the project's loop leaves batches where make_batches built them)."""
    if device == "cpu":
        return batch
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)})


# ---------------------------------------------------------------------------------------------- timing


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(arms: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, dict]:
    """Time each arm ``reps`` times, alternating their order every repetition (ABBA), after ``warmup`` runs.

    Returns per arm: median and min wall seconds, median CPU seconds of this process, and every run.
    """
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            _sync()
            t0, c0 = time.perf_counter(), time.process_time()
            arms[name]()
            _sync()
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {k: summarize([w for w, _ in v], [c for _, c in v]) for k, v in runs.items()}


def summarize(wall: Sequence[float], cpu: Sequence[float] = ()) -> dict:
    out = {"median_s": statistics.median(wall), "min_s": min(wall), "runs_s": [round(w, 4) for w in wall]}
    if cpu:
        out["cpu_median_s"] = statistics.median(cpu)
    return out


def matmul_peak_gflops(dtype: torch.dtype, quick: bool = False) -> dict:
    """Dense matmul GFLOP/s in ``dtype`` (bench/precision_probe.py's kernel), best of two model-shaped GEMMs."""
    from bench.precision_probe import gflops

    shapes = {"slm_mlp": (512, 896, 4864), "llm_mlp": (512, 1536, 8960)}
    rounds = 2 if quick else 3
    got = {k: round(gflops(dtype, *s, reps=3, rounds=rounds), 1) for k, s in shapes.items()}
    return {"gflops": max(got.values()), "by_shape": got, "dtype": str(dtype).replace("torch.", "")}


# ---------------------------------------------------------------------------------------------- FLOPs


def linear_params(model) -> tuple[int, int]:
    """(frozen linear weights in the decoder, LoRA weights): what a token's matmuls multiply by."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = lora = 0
    for name, mod in inner.get_decoder().named_modules():
        if isinstance(mod, torch.nn.Linear):
            if "lora_" in name:
                lora += mod.weight.numel()
            else:
                base += mod.weight.numel()
    return base, lora


def train_step_flops(model, batch_size: int, seq_len: int, head_rows: int) -> dict[str, float]:
    """Matmul FLOPs of one LoRA training step (forward + backward), counted analytically.

    With T = batch_size * seq_len tokens (padding is computed, so it counts), N = frozen decoder linear
    weights, n = LoRA weights, d = hidden size, V = vocab, H = rows where the LM head is applied:

    - forward: 2·N·T + 2·n·T (linears) + 4·T·seq_len·d·layers (QKᵀ and PV over the full masked square)
      + 2·d·V·H (LM head);
    - backward: frozen weights get no weight-gradient, only the input-gradient (1× their forward);
      LoRA weights get both (2×); attention needs 4 matmuls for 2 forward ones (2×); the frozen head
      only its input-gradient (1×).

    Elementwise work (norms, softmax, rotary, optimizer) is left out: it is small next to the matmuls.
    """
    cfg = model.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    n_base, n_lora = linear_params(model)
    tokens = batch_size * seq_len
    lin, lo = 2 * n_base * tokens, 2 * n_lora * tokens
    attn = 4 * tokens * seq_len * d * layers
    head = 2 * d * vocab * head_rows
    fwd = lin + lo + attn + head
    bwd = lin + 2 * lo + 2 * attn + head
    return {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd), "head": float(2 * head)}


# ---------------------------------------------------------------------------------------------- table rows


@dataclass
class Row:
    """One line of the table: a figure, ours vs the baseline, their ratio and the target it must meet."""

    bench: str
    figure: str
    ours: float | str | None = None
    baseline: float | str | None = None
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    unit: str = ""

    def dict(self) -> dict:
        return dataclasses.asdict(self)


def check(ratio: float | None, op: str, bound: float) -> tuple[str, bool | None]:
    """The target as text and whether ``ratio`` meets it (None when there is nothing to compare)."""
    text = f"{op} {bound:g}"
    if ratio is None:
        return text, None
    ok = {">=": ratio >= bound, "<=": ratio <= bound, "==": abs(ratio - bound) < 1e-12}[op]
    return text, bool(ok)


def row(bench: str, figure: str, ours, baseline=None, ratio: float | None = None,
        target: tuple[str, float] | None = None, unit: str = "") -> dict:
    """A table row as a dict (ratio rounded; target given as (op, bound), e.g. ('>=', 3))."""
    text, met = check(ratio, *target) if target else (None, None)
    r = round(ratio, 4) if isinstance(ratio, float) else ratio
    return Row(bench, figure, _round(ours), _round(baseline), r, text, met, unit).dict()


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


# ---------------------------------------------------------------------------------------------- profiles


def profile_top_ops(fn: Callable[[], object], top: int = 15) -> str:
    """torch.profiler's table of the ops with the most self CPU time in one call of ``fn`` (for misses)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=48)


# ---------------------------------------------------------------------------------------------- threads


def op_latency_ms(threads: int, reps: int = 30) -> float:
    """Median ms of one parallel elementwise op (1M floats) with ``threads`` OpenMP threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.ones(1 << 20)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.add_(1.0)
        times.append(time.perf_counter() - t0)
    torch.set_num_threads(saved)
    return 1e3 * statistics.median(times)


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``; steal time left out)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class BackgroundLoad:
    """Cores' worth of CPU that *other* processes used while the block ran (this process and its finished
    children subtracted), so a result says how busy the machine was around it."""

    cores: float = float("nan")

    def __enter__(self) -> BackgroundLoad:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_cpu_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        others = (_busy_cpu_s() - self.busy0) - (_own_cpu_s() - self.own0)
        self.cores = round(max(0.0, others) / max(wall, 1e-9), 2)


def choose_threads(requested: str, cores: int | None = None) -> dict:
    """Torch threads for a benchmark: a number, or ``auto`` = all cores on an idle machine, else one.

    When other processes keep cores busy, each multi-threaded op waits for its OpenMP team to be
    scheduled (milliseconds per op; a 0.5B forward measured 25x slower with 2 threads than with 1 on this
    2-core VM under a background job), which would measure the scheduler, not the code; one thread is
    only time-sliced, which slows both arms of a comparison alike. ``auto`` looks for 1 s at what other
    processes use and at one op's latency with all threads vs one; any sign of other load means 1 thread.
    ``python -m bench`` decides again before every benchmark. Child processes (KD memory, the Flower
    simulation) get the same count through OMP_NUM_THREADS.
    """
    cores = cores or os.cpu_count() or 1
    probe = None
    if requested == "auto":
        with BackgroundLoad() as load:
            time.sleep(1.0)
        probe = {"other_busy_cores": load.cores, "all_threads_op_ms": op_latency_ms(cores),
                 "one_thread_op_ms": op_latency_ms(1)}
        busy = load.cores >= 0.25 or probe["all_threads_op_ms"] > 4 * probe["one_thread_op_ms"]
        n = 1 if busy else cores
    else:
        n = int(requested)
    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return {"requested": requested, "threads": n, "cores": cores, "probe": probe}


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict:
    """What the figures were measured on (CPU and its bf16 flags, threads, library versions, GPU, load)."""
    import flwr
    import peft
    import transformers

    try:
        import lm_eval

        lm_eval_version = getattr(lm_eval, "__version__", "?")
    except ImportError:
        lm_eval_version = None
    try:
        import psutil

        ram = round(psutil.virtual_memory().total / GIB, 1)
    except ImportError:
        ram = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_info(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "ram_gib": ram,
        "gpu": gpu, "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "flwr": flwr.__version__, "lm_eval": lm_eval_version},
        "load_average_at_start": list(os.getloadavg()),
    }
