"""The paper's baselines, each a few lines over the same loop, scorer and splits as FedCoLLM.

- Zero-Shot: the base LLM and SLM, no adapter.
- Standalone: each client tunes its own SLM adapter on its D^k alone, as many examples as its T
  federated local updates would see; reported as the mean over clients.
- FedAvg: ``run_fedcollm`` with ``method=fedavg`` (Algorithm 1 without the server's LLM and step 4).
- Centralized: the LLM adapter tuned on the union of every D^k and D^a, as many examples as the whole
  federation trains on, T·(Σ_k client examples + KD examples).

Every count comes from ``build.budget`` (README, "Budgets"): the methods see the same examples by
construction.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from ..build import budget, derive_seed, eval_questions, evaluate_model, load_peft, load_splits, train_settings
from ..config import Config
from ..models.lora import get_adapter_arrays, save_adapter
from ..updates import LoopCheckpoint, local_update

Metrics = dict[str, dict[str, float]]


def _evaluate(model, tok, cfg: Config, adapter: bool = True) -> Metrics:
    return evaluate_model(model, tok, cfg, eval_questions(cfg), adapter)


def zero_shot(cfg: Config) -> dict[str, Metrics]:
    out = {}
    for role, section in (("llm", cfg.llm), ("slm", cfg.slm)):
        model, tok = load_peft(section, cfg, role)
        out[role] = _evaluate(model, tok, cfg, adapter=False)
        del model
    return out


def standalone(cfg: Config, save_to: Path | None = None) -> dict[str, Metrics]:
    """Each client alone; ``slm`` holds the mean over clients, ``clients`` each client's metrics.

    ``save_to``: each client's final adapter goes to ``save_to/slm-client-K`` (PEFT folders), its figures
    to ``metrics.json`` in it, written last: a killed run skips the clients that finished."""
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta0 = get_adapter_arrays(model)
    per_client = []
    epochs, max_steps = budget(cfg).standalone_loop()
    for k, data in enumerate(load_splits(cfg).clients):
        done = None if save_to is None else save_to / f"slm-client-{k}" / "metrics.json"
        if done is not None and done.is_file():
            per_client.append(json.loads(done.read_text()))
            continue
        settings = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "standalone", k), epochs, max_steps)
        local_update(model, tok, theta0, data, settings, desc=f"standalone client {k}")
        per_client.append(_evaluate(model, tok, cfg))
        if done is not None:
            save_adapter(model, done.parent)
            done.write_text(json.dumps(per_client[-1]) + "\n")
    return {"slm": client_mean(per_client), "clients": per_client}


def client_mean(per_client: list[Metrics]) -> Metrics:
    """Standalone's figure: each metric's mean over the clients (every client scores the same questions)."""
    return {t: {**{m: float(np.mean([c[t][m] for c in per_client])) for m in ("acc", "acc_norm")},
                "n": per_client[0][t]["n"]} for t in per_client[0]}


def centralized(cfg: Config, save_to: Path | None = None) -> dict[str, Metrics]:
    """The LLM adapter on all the data the federation has (every D^k and D^a's labeled questions), same number of
    passes (its final adapter to ``save_to/llm`` when given)."""
    model, tok = load_peft(cfg.llm, cfg, "llm")
    splits = load_splits(cfg)
    data = [q for client in splits.clients for q in client] + [q for q in splits.aux if q.answer is not None]
    epochs, max_steps = budget(cfg, splits).centralized_loop()
    settings = train_settings(cfg, cfg.llm, derive_seed(cfg.seed, "centralized"), epochs, max_steps)
    checkpoint = None
    if save_to is not None:  # one checkpoint per round's worth of steps: a kill loses at most that much
        total = epochs * math.ceil(len(data) / cfg.llm.batch_size)
        total = total if max_steps is None else min(total, max_steps)
        checkpoint = LoopCheckpoint(save_to / "centralized-loop", max(1, math.ceil(total / cfg.federation.rounds)))
    local_update(model, tok, None, data, settings, desc="centralized LLM", checkpoint=checkpoint)
    if save_to is not None:
        save_adapter(model, save_to / "llm")
        shutil.rmtree(checkpoint.folder, ignore_errors=True)  # the final adapter is kept; the loop state is done
    return {"llm": _evaluate(model, tok, cfg)}
