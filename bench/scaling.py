"""Benchmark 6, scaling: how a round's time grows with the number of clients and the sequence length.

Timed in-process from the components, not through the Flower simulation (whose per-message overhead is a
constant that benchmark 4/5 cover): in simulation one worker runs the K clients in turn, so a round is

    K × ``updates.local_update`` (each on its own D^k)  +  FedAvg  +  ``updates.mutual_transfer`` on D^a

and that is what is timed, with the project's functions, for K = 2, 4, 8 at a fixed D^k and D^a size.
For the sequence length, rows of exactly L tokens are built (the question and its answer, preceded by
other questions' text as extra context, so the answer tokens are the same at every L) and one client
step and one KD step (``train.run_loop`` with ``sft_step``/``mutual_kd_step``) are timed at each L.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Setup, interleaved, row, to_device

NAME = "scaling"


def fedavg(updates: list[tuple[list, int]]) -> list:
    """Sample-weighted mean of named arrays (the arithmetic of Flower's FedAvg, without the messages)."""
    total = sum(n for _, n in updates)
    return [(k, sum(arrs[i][1] * (n / total) for arrs, n in updates).astype(np.float32))
            for i, (k, _) in enumerate(updates[0][0])]


def time_round(setup: Setup, clients: int, per_client: int, aux_size: int) -> dict:
    """Seconds of one round's compute with K clients: every local update, FedAvg, the server's transfer."""
    from fedcollm.build import train_settings, transfer_spec
    from fedcollm.models.lora import get_adapter_arrays
    from fedcollm.updates import local_update, mutual_transfer

    cfg = setup.config()
    slm, tok = setup.peft("slm")  # clients and server share one SLM object here: same work, one copy
    llm, _ = setup.peft("llm")
    theta = get_adapter_arrays(slm)  # θ^t: the seeded initial adapter
    client_s = train_settings(cfg, cfg.slm, cfg.seed, 1, None, progress=False)
    server_s = train_settings(cfg, cfg.slm, cfg.seed, 1, None, progress=False)
    aux = setup.train_questions(aux_size, offset=1000)
    t0 = time.perf_counter()
    updates, per = [], []
    for k in range(clients):
        data = setup.train_questions(per_client, offset=k * per_client)
        tc = time.perf_counter()
        theta_k, _ = local_update(slm, tok, theta, data, client_s)
        per.append(time.perf_counter() - tc)
        updates.append((theta_k, len(data)))
    theta_avg = fedavg(updates)
    ts = time.perf_counter()
    mutual_transfer(llm, slm, tok, theta_avg, aux, cfg.llm.lr, server_s, transfer_spec(cfg))
    end = time.perf_counter()
    return {"round_s": end - t0, "clients_s": ts - t0, "client_s_each": per, "server_kd_s": end - ts}


def fixed_length_batch(tok, questions, length: int, filler_questions):
    """A batch whose rows are all exactly ``length`` tokens, answers at the end (see module docstring)."""
    from fedcollm.train import collate, encode_example

    filler = tok(" ".join(f"{q.question} {' '.join(q.choices)}" for q in filler_questions))["input_ids"]
    while len(filler) < length:
        filler = filler + filler
    rows = []
    for q in questions:
        ids, n_answer = encode_example(tok, q, length)
        rows.append((filler[: length - len(ids)] + ids, n_answer))
    return collate(rows, tok.pad_token_id if tok.pad_token_id is not None else 0)


def time_lengths(setup: Setup, lengths: list[int], batch_size: int, reps: int, warmup: int = 1) -> dict:
    """Median seconds of one client step and one KD step at each sequence length."""
    from fedcollm.build import autocast_dtype, transfer_spec
    from fedcollm.train import run_loop, sft_step, trainable
    from fedcollm.updates import mutual_kd_step

    cfg = setup.config()
    amp = autocast_dtype(cfg)
    slm, tok = setup.peft("slm")
    llm, _ = setup.peft("llm")
    slm.train()
    llm.train()
    qs = setup.train_questions(batch_size)
    filler = setup.train_questions(64, offset=2000)
    kd = mutual_kd_step(llm, slm, transfer_spec(cfg))

    lr = {id(slm): cfg.slm.lr, id(llm): cfg.llm.lr}

    def step(fn, models, batch):
        def go() -> None:
            opts = [torch.optim.AdamW(trainable(m), lr=lr[id(m)]) for m in models]
            run_loop(lambda e: [batch], fn, opts, grad_clip=cfg.grad_clip, autocast_dtype=amp, progress=False)
        return go

    arms = {}
    for n in lengths:
        b = to_device(fixed_length_batch(tok, qs, n, filler), setup.device)
        arms[f"client@{n}"] = step(sft_step(slm), (slm,), b)
        arms[f"kd@{n}"] = step(kd, (llm, slm), b)
    out = interleaved(arms, reps=reps, warmup=warmup)
    slm.eval()
    llm.eval()
    return out


def run(setup: Setup, clients: list[int] | None = None, lengths: list[int] | None = None, per_client: int | None = None,
        aux_size: int | None = None, batch_size: int = 4) -> dict:
    clients = clients or ([2, 4] if setup.quick else [2, 4, 8])
    lengths = lengths or ([64, 128] if setup.quick else [64, 128, 256])
    per_client = per_client or (4 if setup.quick else 8)
    aux_size = aux_size or (4 if setup.quick else 8)
    if not setup.quick:
        time_round(setup, 1, batch_size, batch_size)  # warm-up: one client step and one KD step
    by_k = {k: time_round(setup, k, per_client, aux_size) for k in clients}
    by_len = time_lengths(setup, lengths, batch_size, reps=1 if setup.quick else 2, warmup=0 if setup.quick else 1)
    k0, l0 = clients[0], lengths[0]
    slope = (by_k[clients[-1]]["clients_s"] - by_k[k0]["clients_s"]) / (clients[-1] - k0)
    rows = [row(NAME, f"round s, K={k} ({per_client} ex/client, {aux_size} D^a ex)", v["round_s"],
                by_k[k0]["round_s"], v["round_s"] / by_k[k0]["round_s"], unit="s") for k, v in by_k.items()]
    rows.append(row(NAME, "  added s per client / server KD s per round", slope,
                    float(np.mean([v["server_kd_s"] for v in by_k.values()])), unit="s"))
    for what in ("client", "kd"):
        base = by_len[f"{what}@{l0}"]["median_s"]
        rows += [row(NAME, f"{what} step s at L={n} (x{n / l0:g} tokens vs L={l0})", by_len[f"{what}@{n}"]["median_s"],
                     base, by_len[f"{what}@{n}"]["median_s"] / base, unit="s") for n in lengths]
    figures = {"by_clients": {str(k): v for k, v in by_k.items()},
               "by_length": by_len,
               "method": "in-process components (local_update x K + FedAvg + mutual_transfer), not Flower simulation",
               "workload": {"per_client": per_client, "aux_size": aux_size, "batch_size": batch_size,
                            "clients": clients, "lengths": lengths}}
    return {"rows": rows, "figures": figures}
