"""Benchmark 3, server mutual KD: one joint KD step vs one SFT step of the LLM plus one of the SLM.

All three arms are ``train.run_loop`` over the same batches with fresh AdamW optimizers, clipping and the
run's autocast; adapters are reset before every repetition:

- KD: ``updates.mutual_kd_step`` (both forwards, CE + λ·KL both ways over the teacher's top-k, one
  backward of the sum, two optimizer steps), exactly what ``updates.mutual_transfer`` runs;
- SFT LLM and SFT SLM: ``train.sft_step`` of each model alone.

Target: time(KD) ≤ 1.15 × (time(SFT LLM) + time(SFT SLM)).

What-if (not the project's code): ``sequential_kd_step`` computes the same two losses but backpropagates
the LLM's before the SLM's forward (the SLM's teacher distribution comes from an extra no-grad forward),
so only one model's activations are alive at a time; its time and peak memory are reported beside.

Peak memory is measured in a fresh child process (``--memory-child``) so that nothing else this
process holds counts: both models are loaded and run once without gradients (the weights are mmapped,
so this pages them all in), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), then one
KD step runs and the peak is read back (``VmHWM``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import GIB, Setup, interleaved, profile_top_ops, row, to_device

NAME = "kd"


def kd_batches(setup: Setup, tok, n_steps: int, batch_size: int):
    """The server's D^a batches: a slice of the train split after the clients' slices."""
    from fedcollm.train import make_batches

    cfg = setup.config()
    aux = setup.train_questions(n_steps * batch_size, offset=1000)
    return [to_device(b, setup.device) for b in make_batches(tok, aux, batch_size, cfg.max_length, cfg.seed)]


def sequential_kd_step(llm, slm, weight: float, temperature: float, top_k: int | None):
    """What-if: ``mutual_kd_step``'s losses with one model's activations alive at a time.

    1. g' = SLM logits without grad (the LLM's teacher); 2. LLM forward, CE + λ·KL(g'‖f), backward now
    (frees the LLM's graph); 3. SLM forward, CE + λ·KL(f‖g) returned for ``run_loop`` to backpropagate.
    Costs one extra SLM forward; g' and g differ only by LoRA dropout's random mask.
    """
    from fedcollm.losses import answer_ce, kd_kl
    from fedcollm.train import answer_logits

    def step(batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            g_teacher = answer_logits(slm, batch)
        f = answer_logits(llm, batch)
        loss_f = answer_ce(f, batch.targets) + weight * kd_kl(f, g_teacher, temperature, top_k)
        loss_f.backward()
        g = answer_logits(slm, batch)
        loss_g = answer_ce(g, batch.targets) + weight * kd_kl(g, f.detach(), temperature, top_k)
        return {"loss": loss_g, "llm_loss": loss_f.detach()}

    return step


def arms(setup: Setup, batches, what_if: bool = False) -> dict:
    """The timed callables (adapters reset and optimizers fresh on every call)."""
    from fedcollm.build import autocast_dtype, transfer_spec
    from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays
    from fedcollm.train import run_loop, sft_step, trainable
    from fedcollm.updates import mutual_kd_step

    cfg = setup.config()
    amp = autocast_dtype(cfg)
    llm, _ = setup.peft("llm")
    slm, _ = setup.peft("slm")
    init = {m: get_adapter_arrays(m) for m in (llm, slm)}

    def loop(step, models, lrs) -> None:
        for m in (llm, slm):
            set_adapter_arrays(m, init[m])
            m.train()
        torch.manual_seed(cfg.seed)
        opts = [torch.optim.AdamW(trainable(m), lr=lr) for m, lr in zip(models, lrs)]
        run_loop(lambda e: batches, step, opts, grad_clip=cfg.grad_clip, autocast_dtype=amp, progress=False)

    kd = mutual_kd_step(llm, slm, transfer_spec(cfg))
    out = {
        "kd": lambda: loop(kd, (llm, slm), (cfg.llm.lr, cfg.slm.lr)),
        "sft_llm": lambda: loop(sft_step(llm), (llm,), (cfg.llm.lr,)),
        "sft_slm": lambda: loop(sft_step(slm), (slm,), (cfg.slm.lr,)),
    }
    if what_if:
        seq = sequential_kd_step(llm, slm, cfg.kd.weight, cfg.kd.temperature, cfg.kd.top_k)
        out["kd_sequential"] = lambda: loop(seq, (llm, slm), (cfg.llm.lr, cfg.slm.lr))
    return out


def run(setup: Setup, steps: int | None = None, reps: int | None = None, batch_size: int = 4,
        memory: bool = True, what_if: bool | None = None) -> dict:
    steps = steps or 1
    reps = reps or (2 if setup.quick else 4)
    what_if = not setup.quick if what_if is None else what_if
    _, tok = setup.peft("slm")
    batches = kd_batches(setup, tok, steps, batch_size)
    fns = arms(setup, batches, what_if)
    t = interleaved(fns, reps=reps, warmup=1)
    kd, sft = t["kd"]["median_s"], t["sft_llm"]["median_s"] + t["sft_slm"]["median_s"]
    ratio = kd / sft
    figures: dict = {"workload": {"llm": setup.llm, "slm": setup.slm, "steps": len(batches), "batch_size": batch_size,
                                  "tokens": sum(b.n_tokens for b in batches), "reps": reps,
                                  "kd": dataclasses.asdict(setup.config().kd)},
                     "timing": t}
    rows = [row(NAME, f"s per KD step vs SFT LLM + SFT SLM ({len(batches)} step)", kd / len(batches),
                sft / len(batches), ratio, ("<=", 1.15), "s"),
            row(NAME, "  of which SFT LLM / SFT SLM", t["sft_llm"]["median_s"] / len(batches),
                t["sft_slm"]["median_s"] / len(batches), unit="s")]
    if what_if:
        rows.append(row(NAME, "  what-if sequential KD (one graph at a time) vs SFT sum",
                        t["kd_sequential"]["median_s"] / len(batches), sft / len(batches),
                        t["kd_sequential"]["median_s"] / sft, unit="s"))
    out = {"rows": rows, "figures": figures}
    if ratio > 1.15:
        out["profile"] = {k: profile_top_ops(fn) for k, fn in fns.items()}
    if memory:
        setup.release()  # the child loads its own copies; keep this process's footprint out of its way
        figures["memory"] = {v: memory_in_child(setup, batch_size, v) for v in ("kd", "kd_sequential")[: 1 + what_if]}
        for v, mem in figures["memory"].items():
            rows.append(row(NAME, f"peak RSS of a {'KD' if v == 'kd' else 'what-if sequential KD'} step vs weights",
                            mem["peak_rss_gib"], mem["weights_gib"], mem["peak_rss_gib"] / mem["weights_gib"],
                            unit="GiB"))
            rows.append(row(NAME, "  the step's own memory (peak - resident before)", mem["step_extra_gib"],
                            unit="GiB"))
    return out


def memory_in_child(setup: Setup, batch_size: int, variant: str = "kd") -> dict:
    spec = json.dumps(setup.spec())
    proc = subprocess.run([sys.executable, "-m", "bench.kd_step", "--memory-child", spec, "--batch-size",
                           str(batch_size), "--variant", variant], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child(spec: str, batch_size: int, variant: str) -> dict:
    """Load both models, page their weights in, reset the peak counter, run one KD step, read the peak."""
    from fedcollm.train import answer_logits

    setup = Setup(**json.loads(spec))
    llm, tok = setup.peft("llm")
    slm, _ = setup.peft("slm")
    batches = kd_batches(setup, tok, 1, batch_size)
    with torch.no_grad():  # touch every weight page (mmapped from safetensors) before the baseline
        for m in (llm, slm):
            answer_logits(m, batches[0])
    weights = sum(p.numel() * p.element_size() for m in (llm, slm) for p in m.parameters())
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    arms(setup, batches, what_if=variant != "kd")[variant]()
    peak = _status_kib("VmHWM")
    return {"weights_gib": weights / GIB, "rss_before_step_gib": before * 1024 / GIB, "peak_rss_gib": peak * 1024 / GIB,
            "step_extra_gib": (peak - before) * 1024 / GIB, "method": "VmHWM after clear_refs=5, fresh process"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="internal: the KD memory measurement's child process")
    p.add_argument("--memory-child", required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--variant", default="kd", choices=["kd", "kd_sequential"])
    a = p.parse_args()
    print(json.dumps(_memory_child(a.memory_child, a.batch_size, a.variant)))
