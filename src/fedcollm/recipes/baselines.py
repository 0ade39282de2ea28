"""The paper's baselines, each a few lines over the same loop, scorer and splits as FedCoLLM.

- Zero-Shot: the base LLM and SLM, no adapter.
- Standalone: each client tunes its own SLM adapter on its D^k alone for T·E epochs (the passes it
  would make over D^k in T federated rounds); reported as the mean over clients.
- FedAvg: ``run_fedcollm`` with ``method=fedavg`` (Algorithm 1 without the server's LLM and step 4).
- Centralized: the LLM adapter tuned on the union of every D^k and D^a for T·E epochs (with step
  caps: as many examples as the federation trains on).
"""

from __future__ import annotations

import math

import numpy as np

from ..build import derive_seed, eval_questions, evaluate_model, load_peft, load_splits, train_settings
from ..config import Config
from ..models.lora import get_adapter_arrays
from ..updates import local_update

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


def standalone(cfg: Config) -> dict[str, Metrics]:
    """Each client alone; ``slm`` holds the mean over clients, ``clients`` each client's metrics."""
    model, tok = load_peft(cfg.slm, cfg, "slm")
    theta0 = get_adapter_arrays(model)
    per_client = []
    fed = cfg.federation
    epochs = fed.rounds * fed.local_epochs
    max_steps = None if fed.local_max_steps is None else fed.local_max_steps * fed.rounds
    for k, data in enumerate(load_splits(cfg).clients):
        settings = train_settings(cfg, cfg.slm, derive_seed(cfg.seed, "standalone", k), epochs, max_steps)
        local_update(model, tok, theta0, data, settings, desc=f"standalone client {k}")
        per_client.append(_evaluate(model, tok, cfg))
    mean = {t: {m: float(np.mean([c[t][m] for c in per_client])) for m in ("acc", "acc_norm")}
            for t in per_client[0]}
    return {"slm": mean, "clients": per_client}


def centralized_max_steps(cfg: Config, splits) -> int | None:
    """With step caps (CPU budgets), Centralized may see as many examples as the federation trained on.

    Without caps it makes the same number of passes (None). With ``local_max_steps`` or
    ``kd.max_steps`` the federation sees fewer examples than full passes, and uncapped Centralized
    would get several times its compute, flattering the "FedCoLLM ≈ Centralized" comparison.
    """
    fed, kd = cfg.federation, cfg.kd
    if fed.local_max_steps is None and kd.max_steps is None:
        return None

    def seen(n: int, epochs: int, cap: int | None, batch: int) -> int:
        return n * epochs if cap is None else min(n * epochs, cap * batch)

    per_round = sum(seen(len(c), fed.local_epochs, fed.local_max_steps, cfg.slm.batch_size) for c in splits.clients)
    per_round += seen(len(splits.aux), kd.epochs, kd.max_steps, cfg.llm.batch_size)
    return max(1, math.ceil(fed.rounds * per_round / cfg.llm.batch_size))


def centralized(cfg: Config) -> dict[str, Metrics]:
    """The LLM adapter on all the data the federation has (every D^k and D^a), same number of passes."""
    model, tok = load_peft(cfg.llm, cfg, "llm")
    splits = load_splits(cfg)
    data = [q for client in splits.clients for q in client] + splits.aux
    epochs = cfg.federation.rounds * cfg.federation.local_epochs
    settings = train_settings(cfg, cfg.llm, derive_seed(cfg.seed, "centralized"), epochs,
                              centralized_max_steps(cfg, splits))
    local_update(model, tok, None, data, settings, desc="centralized LLM")
    return {"llm": _evaluate(model, tok, cfg)}
