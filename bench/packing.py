"""Benchmark 8, packed batches: the client and KD steps on cpu-paper's own batches, padded vs packed.

The workload is what a cpu-paper round trains: the first batches of client 0's D^k and of D^a, cut from
the four tasks exactly as the preset cuts them (``fedcollm/presets/cpu-paper.yaml``, its
``train_size``), so the batches mix CommonsenseQA's long prompts with OpenBookQA's short ones. Both arms
run ``train.run_loop`` over the same examples in the same batches with fresh AdamW, clipping and the
run's autocast, adapters reset before each repetition:

- padded (the baseline): right-padded rows, ``train.make_batches(..., packed=False)``;
- packed: each batch's sequences end to end in one row (``packed=True``), no padding token computed.

Figures: examples/s of each arm for the client step (SLM SFT) and the KD step (both models,
``updates.mutual_kd_step``), the padding share of the padded batches, and the first batch's loss in both
layouts (the same objective, so equal up to rounding). Target: packed ≥ 1.0× padded in each step.
"""

from __future__ import annotations

import torch

from bench.common import Setup, interleaved, row, to_device

NAME = "packing"


def workload(setup: Setup, n_batches: int, batch_size: int):
    """(client 0's first examples, D^a's first examples) as the cpu-paper preset cuts them (tiny data: a few)."""
    from fedcollm.build import load_splits
    from fedcollm.config import load_config, load_preset

    overrides = [f"slm.name={setup.slm}", f"llm.name={setup.llm}", f"precision={setup.precision}"]
    if setup.data_dir:
        overrides.append(f"data_dir={setup.data_dir}")
    if setup.quick:  # the tests' tiny data has 60 questions per task
        overrides.append("federation.train_size=40")
    everything = [*overrides, "tasks=[arc_easy,arc_challenge,openbookqa,commonsense_qa]"]
    cfg = load_config(None, everything) if setup.quick else load_preset("cpu-paper", everything)
    splits = load_splits(cfg)
    n = n_batches * batch_size
    return cfg, splits.clients[0][:n], splits.aux[:n]


def run(setup: Setup, batches: int | None = None, reps: int | None = None, batch_size: int = 4) -> dict:
    from fedcollm.build import autocast_dtype, transfer_spec
    from fedcollm.losses import answer_ce
    from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays
    from fedcollm.train import answer_logits, make_batches, run_loop, sft_step, trainable
    from fedcollm.updates import mutual_kd_step

    n_batches = batches or (2 if setup.quick else 12)
    reps = reps or (2 if setup.quick else 3)
    cfg, client, aux = workload(setup, n_batches, batch_size)
    amp = autocast_dtype(cfg)
    slm, tok = setup.peft("slm")
    llm, _ = setup.peft("llm")
    start = {"slm": get_adapter_arrays(slm), "llm": get_adapter_arrays(llm)}

    def built(data, packed):
        return [to_device(b, setup.device) for b in make_batches(tok, data, batch_size, cfg.max_length, cfg.seed,
                                                                 packed=packed)]

    layouts = {"client": {p: built(client, p) for p in (False, True)}, "kd": {p: built(aux, p) for p in (False, True)}}

    def reset() -> None:
        set_adapter_arrays(slm, start["slm"])
        set_adapter_arrays(llm, start["llm"])
        torch.manual_seed(cfg.seed)
        slm.train()
        llm.train()

    def client_arm(packed):
        def go() -> None:
            reset()
            run_loop(lambda e: layouts["client"][packed], sft_step(slm), [torch.optim.AdamW(trainable(slm), lr=1e-4)],
                     grad_clip=cfg.grad_clip, autocast_dtype=amp, progress=False)
        return go

    def kd_arm(packed):
        def go() -> None:
            reset()
            opts = [torch.optim.AdamW(trainable(llm), lr=1e-4), torch.optim.AdamW(trainable(slm), lr=1e-4)]
            run_loop(lambda e: layouts["kd"][packed], mutual_kd_step(llm, slm, transfer_spec(cfg)), opts,
                     grad_clip=cfg.grad_clip, autocast_dtype=amp, progress=False)
        return go

    reset()
    slm.eval()
    with torch.no_grad(), torch.autocast(setup.device, dtype=amp, enabled=amp is not None):
        loss = {p: answer_ce(answer_logits(slm, layouts["client"][p][0]), layouts["client"][p][0].targets).item()
                for p in (False, True)}
    t = {"client": interleaved({"padded": client_arm(False), "packed": client_arm(True)}, reps=reps),
         "kd": interleaved({"padded": kd_arm(False), "packed": kd_arm(True)}, reps=reps)}
    rows, figures = [], {"timing": t, "first_batch_loss": {"padded": loss[False], "packed": loss[True]}}
    for step, data in (("client", client), ("kd", aux)):
        padded = layouts[step][False]
        real = sum(b.n_tokens for b in padded)
        figures[step] = {"examples": len(data), "real_tokens": real,
                         "padded_tokens": sum(b.input_ids.numel() for b in padded)}
        eps = {arm: len(data) / t[step][arm]["median_s"] for arm in ("padded", "packed")}
        rows.append(row(NAME, f"{step} step examples/s (cpu-paper batches of {batch_size})", eps["packed"],
                        eps["padded"], eps["packed"] / eps["padded"], (">=", 1.0), "ex/s"))
        rows.append(row(NAME, f"{step}: padding tokens / real tokens (padded layout)",
                        figures[step]["padded_tokens"] / real - 1))
    rows.append(row(NAME, "same loss (first client batch), packed vs padded", loss[True], loss[False]))
    reset()
    slm.eval()
    llm.eval()
    return {"rows": rows, "figures": figures}
