"""Benchmark 9, choice-level KD: one server KD step on each question's answer choices vs on its gold tokens.

The workload is cpu-paper's own D^a (``packing.workload``: the preset's cut of the four tasks, so the batches
mix CommonsenseQA's five letter choices with ARC's and OpenBookQA's four sentences). Both arms are
``train.run_loop`` over the same questions in the same batches with fresh AdamW, clipping and the run's
autocast, adapters reset before each repetition:

- tokens (the baseline): ``updates.mutual_kd_step`` on the gold answer's tokens, packed as the preset packs;
- choices: ``updates.mutual_choice_step``: both models score every choice of each question in the
  scorer's packed tree-mask layout, with gradients, and distil over the choice distributions.

Figure: D^a examples/s of each arm. Target: a choices step costs at most 2× a tokens step per example
(choices examples/s ≥ 0.5 × tokens examples/s).
"""

from __future__ import annotations

import torch

from bench.common import Setup, interleaved, row, to_device
from bench.packing import workload

NAME = "choice-kd"


def run(setup: Setup, batches: int | None = None, reps: int | None = None, batch_size: int = 4) -> dict:
    import dataclasses

    from fedcollm.build import autocast_dtype, transfer_spec
    from fedcollm.evaluate import make_choice_batches
    from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays
    from fedcollm.train import make_batches, run_loop, trainable
    from fedcollm.updates import mutual_choice_step, mutual_kd_step

    n_batches = batches or (2 if setup.quick else 12)
    reps = reps or (2 if setup.quick else 3)
    cfg, _, aux = workload(setup, n_batches, batch_size)
    amp = autocast_dtype(cfg)
    slm, tok = setup.peft("slm")
    llm, _ = setup.peft("llm")
    start = {"slm": get_adapter_arrays(slm), "llm": get_adapter_arrays(llm)}
    mask_dtype = amp or next(slm.parameters()).dtype
    tokens = [to_device(b, setup.device) for b in make_batches(tok, aux, batch_size, cfg.max_length, cfg.seed,
                                                                packed=cfg.packing)]
    choices = make_choice_batches(tok, aux, batch_size, cfg.max_length, cfg.seed, mask_dtype=mask_dtype)
    spec = transfer_spec(cfg)
    steps = {"tokens": (tokens, mutual_kd_step(llm, slm, spec)),
             "choices": (choices, mutual_choice_step(llm, slm, dataclasses.replace(spec, target="choices")))}

    def arm(name):
        def go() -> None:
            set_adapter_arrays(slm, start["slm"])
            set_adapter_arrays(llm, start["llm"])
            torch.manual_seed(cfg.seed)
            slm.train()
            llm.train()
            data, step = steps[name]
            opts = [torch.optim.AdamW(trainable(llm), lr=1e-4), torch.optim.AdamW(trainable(slm), lr=1e-4)]
            run_loop(lambda e: data, step, opts, grad_clip=cfg.grad_clip, autocast_dtype=amp, progress=False)
        return go

    t = interleaved({"tokens": arm("tokens"), "choices": arm("choices")}, reps=reps)
    eps = {a: len(aux) / t[a]["median_s"] for a in ("tokens", "choices")}
    per_batch = {name: sum(b.n_tokens for b in data) / len(data) for name, (data, _) in steps.items()}
    figures = {"timing": t, "examples": len(aux), "tokens_per_batch": per_batch}
    rows = [row(NAME, f"KD step D^a examples/s, choices vs tokens (cpu-paper batches of {batch_size})",
                eps["choices"], eps["tokens"], eps["choices"] / eps["tokens"], (">=", 0.5), "ex/s"),
            row(NAME, "  tokens per batch, choices layout / tokens layout",
                figures["tokens_per_batch"]["choices"] / figures["tokens_per_batch"]["tokens"])]
    set_adapter_arrays(slm, start["slm"])
    set_adapter_arrays(llm, start["llm"])
    slm.eval()
    llm.eval()
    return {"rows": rows, "figures": figures}
