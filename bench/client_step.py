"""Benchmark 2, client update: our training step vs the ordinary transformers + PEFT loop.

Both arms train the same PEFT model (same base weights, adapter reset to the same θ and torch seeded
before every repetition) on the same batches (``train.make_batches``, what ``local_update`` builds), with
a fresh AdamW, gradient clipping and the run's autocast:

- ours: ``train.run_loop`` with ``train.sft_step``, i.e. ``updates.local_update``'s loop, which applies
  the LM head only at the positions that predict answer tokens;
- baseline: ``model(input_ids, attention_mask, labels=...)`` with -100 on every non-answer position,
  i.e. the full-vocabulary head and HF's shifted cross-entropy over every position, then backward,
  clip, step. Both give the same loss (checked and reported).

Target: ours ≥ 1.0× the baseline's tokens/s. Achieved FLOP/s (``common.train_step_flops``) is compared
with the dense-matmul peak of the run's dtype measured in the same run.
"""

from __future__ import annotations

import contextlib

import torch

from bench.common import Setup, interleaved, matmul_peak_gflops, profile_top_ops, row, to_device, train_step_flops

NAME = "client"
IGNORE = -100


def hf_labels(batch) -> torch.Tensor:
    """Labels for HF's causal-LM loss: the answer tokens in place, -100 elsewhere (HF shifts them itself)."""
    labels = torch.full_like(batch.input_ids, IGNORE)
    labels[batch.rows, batch.positions + 1] = batch.targets
    return labels


def _amp(model, autocast_dtype):
    device = next(model.parameters()).device.type
    return torch.autocast(device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()


def hf_loop(model, batches, labels, lr: float, grad_clip: float | None, autocast_dtype) -> None:
    """The plain loop every transformers + PEFT tutorial writes."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for batch, lab in zip(batches, labels):
        opt.zero_grad(set_to_none=True)
        with _amp(model, autocast_dtype):
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=lab).loss
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()


def ours_loop(model, batches, lr: float, grad_clip: float | None, autocast_dtype) -> dict:
    """``local_update``'s loop on pre-built batches (the project's client step)."""
    from fedcollm.train import run_loop, sft_step, trainable

    return run_loop(lambda e: batches, sft_step(model), [torch.optim.AdamW(trainable(model), lr=lr)],
                    grad_clip=grad_clip, autocast_dtype=autocast_dtype, progress=False)


def same_loss(model, batch, labels, autocast_dtype) -> tuple[float, float]:
    """Both arms' loss on one batch (dropout off): they must be the same objective."""
    from fedcollm.losses import answer_ce
    from fedcollm.train import answer_logits

    model.eval()
    with torch.no_grad(), _amp(model, autocast_dtype):
        ours = answer_ce(answer_logits(model, batch), batch.targets).item()
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss.item()
    return ours, hf


def run(setup: Setup, steps: int | None = None, reps: int | None = None, batch_size: int = 4) -> dict:
    from fedcollm.build import autocast_dtype
    from fedcollm.models.lora import get_adapter_arrays, set_adapter_arrays
    from fedcollm.train import make_batches

    steps = steps or (2 if setup.quick else 4)
    reps = reps or (2 if setup.quick else 4)
    cfg = setup.config()
    amp = autocast_dtype(cfg)
    model, tok = setup.peft("slm")
    theta0 = get_adapter_arrays(model)
    questions = setup.train_questions(steps * batch_size)
    batches = [to_device(b, setup.device) for b in make_batches(tok, questions, batch_size, cfg.max_length, cfg.seed)]
    labels = [hf_labels(b) for b in batches]
    lr, clip = cfg.slm.lr, cfg.grad_clip

    def reset() -> None:
        set_adapter_arrays(model, theta0)
        torch.manual_seed(cfg.seed)
        model.train()

    def ours(bs=batches) -> None:
        reset()
        ours_loop(model, bs, lr, clip, amp)

    def hf(bs=batches, ls=labels) -> None:
        reset()
        hf_loop(model, bs, ls, lr, clip, amp)

    loss_ours, loss_hf = same_loss(model, batches[0], labels[0], amp)
    ours(batches[:1])  # warm-up: one step each
    hf(batches[:1], labels[:1])
    t = interleaved({"ours": ours, "hf": hf}, reps=reps, warmup=0)
    peak = matmul_peak_gflops(torch.bfloat16 if setup.precision_name() == "bf16" else torch.float32, setup.quick)

    tokens = sum(b.n_tokens for b in batches)
    flops_ours = sum(train_step_flops(model, *b.input_ids.shape, len(b.targets))["total"] for b in batches)
    flops_hf = sum(train_step_flops(model, *b.input_ids.shape, b.input_ids.numel())["total"] for b in batches)
    tps_ours, tps_hf = tokens / t["ours"]["median_s"], tokens / t["hf"]["median_s"]
    gf_ours, gf_hf = flops_ours / t["ours"]["median_s"] / 1e9, flops_hf / t["hf"]["median_s"] / 1e9
    ratio = tps_ours / tps_hf
    figures = {
        "workload": {"model": setup.slm, "steps": len(batches), "batch_size": batch_size, "tokens": tokens,
                     "padded_tokens": sum(b.input_ids.numel() for b in batches),
                     "answer_tokens": sum(len(b.targets) for b in batches), "reps": reps,
                     "autocast": str(amp), "weights_dtype": str(next(model.parameters()).dtype)},
        "timing": t, "loss_first_batch": {"ours": loss_ours, "hf": loss_hf, "abs_diff": abs(loss_ours - loss_hf)},
        "flops": {"ours": flops_ours, "hf": flops_hf,
                  "formula": train_step_flops.__doc__.split("\n\n", 1)[1].strip()},
        "matmul_peak": peak,
        "achieved_gflops": {"ours": gf_ours, "hf": gf_hf},
        "fraction_of_peak": {"ours": gf_ours / peak["gflops"], "hf": gf_hf / peak["gflops"]},
    }
    rows = [
        row(NAME, f"tokens/s ({len(batches)} steps x {batch_size})", tps_ours, tps_hf, ratio, (">=", 1.0), "tok/s"),
        row(NAME, "s per step (median)", t["ours"]["median_s"] / len(batches), t["hf"]["median_s"] / len(batches),
            unit="s"),
        row(NAME, "same loss (first batch)", loss_ours, loss_hf),
        row(NAME, f"achieved GFLOP/s vs {peak['dtype']} matmul peak", gf_ours, peak["gflops"],
            gf_ours / peak["gflops"], unit="GFLOP/s"),
        row(NAME, "achieved GFLOP/s, hf (its own FLOPs)", gf_hf, peak["gflops"], gf_hf / peak["gflops"],
            unit="GFLOP/s"),
    ]
    out = {"rows": rows, "figures": figures}
    if ratio < 1.0:
        out["profile"] = {"ours": profile_top_ops(lambda: ours(batches[:1])),
                          "hf": profile_top_ops(lambda: hf(batches[:1], labels[:1]))}
    reset()
    model.eval()
    return out
